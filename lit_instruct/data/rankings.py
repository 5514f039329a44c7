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
from lit_instruct.data.problems import DataError
from lit_instruct.data.prompt_format import (
    DEFAULT_TEMPLATE,
    ChatTemplateMode,
    PromptFormat,
    check_prompt_field,
    encode_pair,
    prompt_key,
)
from lit_instruct.data.records import check_range, check_text_fields, read_rows
from lit_instruct.objectives import better_pairs

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
    ended = row.get("ended")
    if ended is not None and (not isinstance(ended, list) or len(ended) != len(completions)
                              or not all(isinstance(e, bool) for e in ended)):
        return f"'ended' must be a list of {len(completions)} booleans (one per completion), got {ended!r}"
    return None


def as_ranking(row: dict) -> tuple[str, list[str], list[int]]:
    """(prompt, completions, ranks) of a validated row; a pairwise row is K = 2 with ranks [0, 1]."""
    if "chosen" in row:
        return row["prompt"], [row["chosen"], row["rejected"]], [0, 1]
    return row["prompt"], list(row["completions"]), list(row["ranking"])


#: What the reward stage trains on when completions are cut to fit the context (and lose the EOS the reward is read
#: at): every comparison (``keep``), only those with neither side cut (``drop``), or all but those with both sides
#: cut (``drop_both``). See :class:`RewardDataModule`.
CutComparisons = Literal["keep", "drop", "drop_both"]


def count_comparisons(ranks: list[int]) -> int:
    """The non-tied pairs of one prompt's completions."""
    return sum(ri < rj for ri in ranks for rj in ranks)


def count_cut_comparisons(ranks: list[int], cut: list[bool]) -> tuple[int, int]:
    """(one side cut, both sides cut): the non-tied pairs of one prompt whose completions were cut to fit."""
    sides = [cut[i] + cut[j] for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]
    return sides.count(1), sides.count(2)


def kept_comparisons(cut: list[bool], policy: CutComparisons) -> list[list[bool]]:
    """``[i][j]``: whether ``policy`` keeps the comparison of completions i and j, given which were cut."""
    keep = {"keep": lambda a, b: True, "drop": lambda a, b: not (a or b), "drop_both": lambda a, b: not (a and b)}[policy]
    return [[keep(a, b) for b in cut] for a in cut]


def apply_cut_policy(group: dict, policy: CutComparisons) -> tuple[Optional[dict], int]:
    """``group`` as the reward stage trains on it under ``policy``, and how many of its comparisons were dropped.

    Completions left in no comparison are removed (they would go through the model for nothing); a ``pair_mask``
    (``[i][j]``, False: not compared) marks the comparisons left out among the rest. ``None``: no comparison is left.
    """
    ranks, cut = group["ranks"], group.get("cut") or [False] * len(group["ranks"])
    if policy == "keep" or not any(cut):
        return group, 0
    keep = kept_comparisons(cut, policy)
    pairs = [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]
    kept = [(i, j) for i, j in pairs if keep[i][j]]
    if not kept:
        return None, len(pairs)
    slots = sorted({k for pair in kept for k in pair})
    out = {**group, **{key: [group[key][k] for k in slots] for key in ("input_ids", "ranks", "cut")}}
    sub = [[keep[i][j] for j in slots] for i in slots]
    if not all(all(row) for row in sub):
        out["pair_mask"] = sub
    return out, len(pairs) - len(kept)


def expand_to_pairs(groups: list[dict]) -> list[dict]:
    """The ablation: every non-tied pair of every prompt (that its ``pair_mask`` keeps) as its own K = 2 example."""
    pairs = []
    for g in groups:
        ids, ranks = g["input_ids"], g["ranks"]
        cut, keep = g.get("cut") or [False] * len(ids), g.get("pair_mask")
        for i in range(len(ids)):
            for j in range(len(ids)):
                if ranks[i] < ranks[j] and (keep is None or keep[i][j]):
                    pairs.append({"input_ids": [ids[i], ids[j]], "ranks": [0, 1], "cut": [cut[i], cut[j]], "prompt": g["prompt"]})
    return pairs


class RankedCollator:
    """Collate prompts with K_i completions each: every completion is one row of a flat (n, t) batch.

    ``group``/``slot`` place row r at ``[group[r], slot[r]]`` of the (b, k_max) reward grid; ``ranks``,
    ``mask`` and ``cut`` (the completion was cut to fit) are (b, k_max); ``pair_mask`` (b, k_max, k_max) is False
    on the comparisons a group's ``pair_mask`` leaves out; ``comparisons`` counts the non-tied pairs compared.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, groups: list[dict]) -> dict[str, torch.Tensor]:
        rows, group, slot = [], [], []
        k_max = max(len(g["input_ids"]) for g in groups)
        ranks = torch.full((len(groups), k_max), 0, dtype=torch.long)
        mask = torch.zeros((len(groups), k_max), dtype=torch.bool)
        cut = torch.zeros((len(groups), k_max), dtype=torch.bool)
        pair_mask = torch.ones((len(groups), k_max, k_max), dtype=torch.bool)
        for b, g in enumerate(groups):
            k = len(g["ranks"])
            for s, ids in enumerate(g["input_ids"]):
                rows.append(ids)
                group.append(b)
                slot.append(s)
            ranks[b, :k] = torch.as_tensor(g["ranks"])
            mask[b, :k] = True
            if g.get("cut"):
                cut[b, :k] = torch.as_tensor(g["cut"])
            if g.get("pair_mask"):
                pair_mask[b, :k, :k] = torch.as_tensor(g["pair_mask"])
        return {
            **dict(zip(("input_ids", "attention_mask"), pad_with_mask(rows, self.pad_token_id))),
            "group": torch.as_tensor(group),
            "slot": torch.as_tensor(slot),
            "ranks": ranks,
            "mask": mask,
            "cut": cut,
            "pair_mask": pair_mask,
            "comparisons": (better_pairs(ranks, mask) & pair_mask).sum(),
        }


class RewardDataModule(PromptDataModule):
    """Rankings of K completions per prompt (K may vary row to row; ties allowed) and pairwise comparisons.

    Rows are ``{"prompt", "completions": [...], "ranking": [...]}`` (``ranking[i]`` is the rank of
    ``completions[i]``, 0 = best, equal = tie) or ``{"prompt", "chosen", "rejected"}``. A batch element is one
    prompt with all of its completions. An optional ``"ended": [bool, ...]`` (``lit-instruct label`` keeps what
    ``lit-instruct sample`` recorded) marks completions sampled without reaching EOS: they are encoded without EOS, so
    the reward is read at their last token, as PPO's rollout reads a cut response.

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
        cut_comparisons: What training does with comparisons whose completions were cut to fit ``max_length``
            (prompt + completion + EOS is longer: the EOS the reward is read at is lost, and with it perhaps all
            that tells the two apart): ``"keep"`` them, ``"drop"`` every one with either side cut, or
            ``"drop_both"``, only those with both sides cut. Completions left in no comparison, and prompts left
            with none, are dropped as well; both pair modes drop the same comparisons. Validation keeps every
            comparison whatever this says, so that runs with different settings report comparable accuracies, and
            reports accuracy on its comparisons with neither side cut as well (``val/accuracy_uncut``). The counts
            (one side / both sides cut, dropped) are printed and logged as ``data/...``. Measured in
            docs/configs.md (reward, "Cut comparisons").
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
        cut_comparisons: CutComparisons = "keep",
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
        ended = row.get("ended") or [True] * len(completions)  # sampled responses cut at the length limit: no EOS
        encoded = [encode_pair(self.tokenizer, prompt_ids, c, self.max_length, fmt, eos=e) for c, e in zip(completions, ended)]
        cut = [was_cut for _, was_cut in encoded]
        one, both = count_cut_comparisons(ranks, cut)
        stats.completions += len(encoded)
        stats.cut += sum(cut)
        stats.comparisons += count_comparisons(ranks)
        stats.comparisons_cut_one += one
        stats.comparisons_cut_both += both
        return {"input_ids": [ids for ids, _ in encoded], "ranks": ranks, "cut": cut, "prompt": prompt}

    def load(self) -> None:
        h = self.hparams
        encoded = self.encode_splits(self.read_splits(check_ranked_row, h.train_file, h.val_file), self.encode)
        train, val = self.stats["train"], self.stats["val"]
        self.train_groups, self.val_groups = [], encoded["val"]
        for group in encoded["train"]:  # validation keeps every comparison: see cut_comparisons
            kept, dropped = apply_cut_policy(group, h.cut_comparisons)
            train.comparisons_dropped += dropped
            train.prompts_dropped += kept is None
            self.train_groups += [kept] if kept is not None else []
        policy = f"cut_comparisons={h.cut_comparisons}"
        if h.cut_comparisons != "keep":
            policy += (f" dropped {train.comparisons_dropped} of {train.comparisons} training comparisons"
                       f" ({train.prompts_dropped} prompts left with none)")
        self.report(h.train_file, "prompts", cut="completions",
                    details=f": {train.completions} / {val.completions} completions, {train.comparisons} / {val.comparisons} comparisons",
                    more="; ".join([f"comparisons with one side / both sides cut: {train.comparisons_cut_one} / "
                                    f"{train.comparisons_cut_both} train, {val.comparisons_cut_one} / {val.comparisons_cut_both} val",
                                    policy] + ([f"pair_mode={h.pair_mode}"] if h.pair_mode != "grouped" else [])))
        if train.kept and not self.train_groups:
            raise DataError(f"{h.train_file}: cut_comparisons={h.cut_comparisons} dropped all {train.comparisons} training "
                            f"comparisons (their completions do not fit {self.max_length} tokens); keep them or raise max_length")
        self._demonstrations = self.read_demonstrations()  # checked now: they are used only after training
        self._policy_prompts = self.read_policy_prompts()

    def metrics(self) -> dict[str, float]:
        """``data/{train,val}_...``: prompts, completions (and those cut to fit), comparisons (those with one side or
        both sides cut, and those ``cut_comparisons`` dropped from training)."""
        out = {}
        for split, stats in self.stats.items():
            out.update({f"data/{split}_prompts": stats.kept, f"data/{split}_completions": stats.completions,
                        f"data/{split}_completions_cut": stats.cut, f"data/{split}_comparisons": stats.comparisons,
                        f"data/{split}_comparisons_cut_one": stats.comparisons_cut_one,
                        f"data/{split}_comparisons_cut_both": stats.comparisons_cut_both})
        if "train" in self.stats:
            out["data/train_comparisons_dropped"] = self.stats["train"].comparisons_dropped
            out["data/train_prompts_dropped"] = self.stats["train"].prompts_dropped
        return out

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
