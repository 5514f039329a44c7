"""Rankings of K completions per prompt and pairwise comparisons: validation, the grouped collator and the reward
stage's data module."""

from __future__ import annotations

import hashlib
from typing import Literal, Optional

import torch
from torch.utils.data import DataLoader

from lit_instruct.data.batching import pad_with_mask
from lit_instruct.data.demonstrations import check_demonstration
from lit_instruct.data.module import PromptDataModule, Stats, overlong_prompt
from lit_instruct.data.prompt_format import (
    DEFAULT_TEMPLATE,
    ChatTemplateMode,
    PromptFormat,
    check_prompt_field,
    encode_pair,
    prompt_key,
)
from lit_instruct.data.records import check_range, check_text_fields, read_rows

#: Ranks become an int64 tensor during training (10**30 overflowed it mid-run); a rank this large is a broken file.
MAX_RANK = 2**31


def check_ranked_row(row: dict) -> Optional[str]:
    """The problem with a ranked row (``prompt``, ``completions``, ``ranking``) or a pairwise row
    (``prompt``, ``chosen``, ``rejected``), or ``None``."""
    if "chosen" in row or "rejected" in row:
        problem = check_prompt_field(row) or check_text_fields(row, ("chosen", "rejected"))
        if problem:
            return problem
        if row["chosen"].strip() == row["rejected"].strip():
            return "'chosen' equals 'rejected': no comparison to learn from"
        return None
    problem = check_prompt_field(row)
    if problem:
        return problem
    completions, ranking = row.get("completions"), row.get("ranking")
    if not isinstance(completions, list):
        return "missing field 'completions' (a list of strings), or 'chosen' and 'rejected'"
    if len(completions) < 2:
        return f"K < 2: a ranking needs at least 2 completions, got {len(completions)}"
    for i, c in enumerate(completions):
        if not isinstance(c, str):
            return f"completions[{i}] must be a string, got {type(c).__name__}"
        if not c.strip():
            return f"completions[{i}] is empty"
    if not isinstance(ranking, list):
        return "missing field 'ranking' (a list of integer ranks, 0 = best)"
    if len(ranking) != len(completions):
        return f"'ranking' has {len(ranking)} entries for {len(completions)} completions"
    for i, r in enumerate(ranking):
        if isinstance(r, bool) or not isinstance(r, int):
            return f"ranking[{i}] must be an integer, got {r!r}"
        if not 0 <= r < MAX_RANK:
            return f"ranking[{i}] must be in [0, 2**31) (0 = best), got {r}"
    if len(set(ranking)) == 1:
        return f"all {len(ranking)} completions are tied: no comparison to learn from"
    return None


def as_ranking(row: dict) -> tuple[str, list[str], list[int]]:
    """(prompt, completions, ranks) of a validated row; a pairwise row is K = 2 with ranks [0, 1]."""
    if "chosen" in row:
        return row["prompt"], [row["chosen"], row["rejected"]], [0, 1]
    return row["prompt"], list(row["completions"]), list(row["ranking"])


def count_comparisons(ranks: list[int]) -> int:
    """The non-tied pairs of one prompt's completions."""
    return sum(ri < rj for ri in ranks for rj in ranks)


def expand_to_pairs(groups: list[dict]) -> list[dict]:
    """The ablation: every non-tied pair of every prompt as its own K = 2 example."""
    pairs = []
    for g in groups:
        ids, ranks = g["input_ids"], g["ranks"]
        for i in range(len(ids)):
            for j in range(len(ids)):
                if ranks[i] < ranks[j]:
                    pairs.append({"input_ids": [ids[i], ids[j]], "ranks": [0, 1], "prompt": g["prompt"]})
    return pairs


class RankedCollator:
    """Collate prompts with K_i completions each: every completion is one row of a flat (n, t) batch.

    ``group``/``slot`` place row r at ``[group[r], slot[r]]`` of the (b, k_max) reward grid; ``ranks`` and
    ``mask`` are (b, k_max); ``comparisons`` counts the non-tied pairs.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, groups: list[dict]) -> dict[str, torch.Tensor]:
        rows, group, slot = [], [], []
        k_max = max(len(g["input_ids"]) for g in groups)
        ranks = torch.full((len(groups), k_max), 0, dtype=torch.long)
        mask = torch.zeros((len(groups), k_max), dtype=torch.bool)
        comparisons = 0
        for b, g in enumerate(groups):
            for k, ids in enumerate(g["input_ids"]):
                rows.append(ids)
                group.append(b)
                slot.append(k)
            ranks[b, : len(g["ranks"])] = torch.as_tensor(g["ranks"])
            mask[b, : len(g["ranks"])] = True
            comparisons += count_comparisons(g["ranks"])
        return {
            **dict(zip(("input_ids", "attention_mask"), pad_with_mask(rows, self.pad_token_id))),
            "group": torch.as_tensor(group),
            "slot": torch.as_tensor(slot),
            "ranks": ranks,
            "mask": mask,
            "comparisons": torch.tensor(comparisons),
        }


class RewardDataModule(PromptDataModule):
    """Rankings of K completions per prompt (K may vary row to row; ties allowed) and pairwise comparisons.

    Rows are ``{"prompt", "completions": [...], "ranking": [...]}`` (``ranking[i]`` is the rank of
    ``completions[i]``, 0 = best, equal = tie) or ``{"prompt", "chosen", "rejected"}``. A batch element is one
    prompt with all of its completions.

    Args:
        train_file: Rankings or pairs (``bundled:rank.jsonl``, ``bundled:pairs.jsonl``): JSONL, JSON, Parquet,
            Arrow or CSV, a dataset directory or a ``datasets`` name (``NAME`` or ``NAME@SPLIT``).
        val_file: The same for validation; ``None`` splits ``train_file`` deterministically by prompt.
        columns: The file's column names for our fields, e.g. ``{chosen: preferred, rejected: dispreferred}``
            (fields: ``prompt``, ``chosen``, ``rejected``, ``completions``, ``ranking``).
        val_fraction: Share of prompts held out when ``val_file`` is ``None``.
        split_seed: Seed of the deterministic split.
        only_permissive: Keep only rows whose ``license`` is Apache-2.0 or MIT.
        prompt_template: Template for single-turn prompts (as in SFT; it is stored with the export).
        chat_template: ``"auto"`` / ``"always"`` / ``"never"``: as in SFT (the format is stored with the export,
            and PPO checks that its prompts are formatted the same way).
        max_length: Longest prompt + completion in tokens; ``None`` uses the model's context length.
        min_completion_tokens: A row whose prompt leaves less room than this for completions is over-long.
        overlong: Over-long rows are ``"skip"``-ped (counted and logged) or an ``"error"``.
        pair_mode: ``"grouped"`` (the paper: all pairs of a prompt in one batch element, each completion
            through the model once) or ``"shuffled_pairs"`` (the ablation that overfit: every pair an
            independent example, batches then count pairs).
        batch_size: Prompts per batch (pairs in ``shuffled_pairs`` mode), per process.
        demonstrations_file: SFT demonstrations whose mean reward is set to 0 after training (the paper's
            normalisation); ``None`` skips it, and PPO will refuse the export.
        normalization_rows: How many demonstrations (a fixed, hash-ordered subset) to average over, and how many
            prompts of ``policy_prompts_file`` the starting policy answers for the gain.
        policy_prompts_file: ``{"prompt"}`` rows (PPO's prompts, ``bundled:prompts.jsonl``) that the starting policy
            answers after training; the normalisation's gain makes the scores of those samples unit-variance (only
            when the module has ``gain.policy``; then this file is required).
        num_workers: DataLoader workers.
        tokenizer_name_or_path: Tokenizer; ``None`` takes the model's.
    """

    fields = ("prompt", "chosen", "rejected", "completions", "ranking")
    name = "reward"

    def __init__(
        self,
        train_file: str = "bundled:rank.jsonl",
        val_file: Optional[str] = None,
        columns: Optional[dict[str, str]] = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        only_permissive: bool = False,
        prompt_template: str = DEFAULT_TEMPLATE,
        chat_template: ChatTemplateMode = "auto",
        max_length: Optional[int] = None,
        min_completion_tokens: int = 8,
        overlong: Literal["skip", "error"] = "skip",
        pair_mode: Literal["grouped", "shuffled_pairs"] = "grouped",
        batch_size: int = 8,
        demonstrations_file: Optional[str] = "bundled:sft.jsonl",
        normalization_rows: int = 256,
        policy_prompts_file: Optional[str] = "bundled:prompts.jsonl",
        num_workers: int = 0,
        tokenizer_name_or_path: Optional[str] = None,
    ) -> None:
        super().__init__()
        check_range("data.val_fraction", val_fraction, 0, below=1)
        check_range("data.max_length", max_length, 2, optional=True)
        check_range("data.min_completion_tokens", min_completion_tokens, 1)
        check_range("data.batch_size", batch_size, 1)
        check_range("data.normalization_rows", normalization_rows, 1)
        check_range("data.num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.train_groups: list[dict] = []
        self.val_groups: list[dict] = []
        self._demonstrations: Optional[list[tuple[str, str]]] = None
        self._policy_prompts: Optional[list] = None

    def encode(self, row: dict, fmt: PromptFormat, stats: Stats) -> dict | str:
        prompt, completions, ranks = as_ranking(row)
        prompt_ids = self.tokenizer(fmt.prompt(prompt), add_special_tokens=False)["input_ids"]
        if self.max_length - len(prompt_ids) < self.hparams.min_completion_tokens:
            return overlong_prompt(len(prompt_ids), self.max_length, "completions")
        encoded = [encode_pair(self.tokenizer, prompt_ids, c, self.max_length, fmt) for c in completions]
        stats.completions += len(encoded)
        stats.cut += sum(cut for _, cut in encoded)
        stats.comparisons += count_comparisons(ranks)
        return {"input_ids": [ids for ids, _ in encoded], "ranks": ranks, "prompt": prompt}

    def load(self) -> None:
        h = self.hparams
        encoded = self.encode_splits(self.read_splits(check_ranked_row, h.train_file, h.val_file), self.encode)
        self.train_groups, self.val_groups = encoded["train"], encoded["val"]
        train, val = self.stats["train"], self.stats["val"]
        self.report(h.train_file, "prompts", cut="completions",
                    details=f": {train.completions} / {val.completions} completions, {train.comparisons} / {val.comparisons} comparisons",
                    more=f"pair_mode={h.pair_mode}" if h.pair_mode != "grouped" else "")
        self._demonstrations = self.read_demonstrations()  # checked now: they are used only after training
        self._policy_prompts = self.read_policy_prompts()

    def train_examples(self) -> list[dict]:
        if self.hparams.pair_mode == "shuffled_pairs":
            return expand_to_pairs(self.train_groups)
        return self.train_groups

    def demonstrations(self) -> list[tuple[str, str]]:
        """(prompt, response) pairs for the normalisation: a fixed subset of ``demonstrations_file`` (read and
        validated by :meth:`prepare`, before training)."""
        if self._demonstrations is None:
            self._demonstrations = self.read_demonstrations()
        return self._demonstrations

    def policy_prompts(self) -> list:
        """Prompts the starting policy answers for the normalisation's gain: a fixed, hash-ordered subset of
        ``policy_prompts_file`` (read and validated by :meth:`prepare`, before training)."""
        if self._policy_prompts is None:
            self._policy_prompts = self.read_policy_prompts()
        return self._policy_prompts

    def read_policy_prompts(self) -> list:
        h = self.hparams
        if not h.policy_prompts_file:
            return []
        rows = read_rows(h.policy_prompts_file, check_prompt_field)
        ordered = sorted(rows, key=lambda r: hashlib.sha256(prompt_key(r[1]["prompt"]).encode()).hexdigest())
        return [r["prompt"] for _, r in ordered[: h.normalization_rows]]

    def read_demonstrations(self) -> list[tuple[str, str]]:
        h = self.hparams
        if not h.demonstrations_file:
            return []
        rows = read_rows(h.demonstrations_file, check_demonstration)
        ordered = sorted(rows, key=lambda r: hashlib.sha256(prompt_key(r[1]["prompt"]).encode()).hexdigest())
        return [(r["prompt"], r["response"]) for _, r in ordered[: h.normalization_rows]]

    def collator(self) -> RankedCollator:
        return RankedCollator(self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_examples(), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_groups)
