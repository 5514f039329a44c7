"""Reward-model stage: K-way rankings, all C(K,2) pairs of a prompt in one batch element, ties dropped.

A :class:`RewardModel` is a causal LM's transformer without its unembedding, plus a scalar head read at the
last real token of ``prompt + completion + EOS``, plus a normalisation shift (so that SFT demonstrations score
0 on average, as in the paper). Load an export with :meth:`RewardModel.from_pretrained` and score
``(prompt, completion)`` pairs with :meth:`RewardModel.score`.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import BinaryAccuracy
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, GPT2Model

from lit_instruct import bundled
from lit_instruct.batching import pad
from lit_instruct.export import read_metadata
from lit_instruct.models import EMBEDDED, DtypeName, TinyConfig, as_dtype, check_source, context_length, embedded_config, load_tokenizer, set_dropout
from lit_instruct.objectives import ranking_loss
from lit_instruct.prompts import DEFAULT_TEMPLATE, ChatTemplateMode, PromptFormat, check_prompt_field, format_response, prompt_key
from lit_instruct.records import DataError, Problem, check_range, check_text_fields, raise_problems, read_rows, split
from lit_instruct.stage import Stage, default_optimizer

LEGACY_HEAD_FILE = "reward_head.safetensors"  # exports written before the sequence-classification format
#: ``config.json`` key of a reward export that holds its normalisation (shift, raw mean and std, rows, file).
NORMALIZATION_KEY = "reward_normalization"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, with padding on the right or on the left. (b, t) -> (b,)."""
    t = attention_mask.shape[1]
    return t - 1 - attention_mask.flip(-1).long().argmax(-1)


def encode_pair(tokenizer, prompt_ids: list[int], completion: str, max_length: int, fmt: PromptFormat | None = None) -> tuple[list[int], bool]:
    """``prompt + response(completion) + EOS`` as ids, cut at ``max_length`` (the flag says whether it was cut)."""
    text = fmt.response(completion) if fmt is not None else format_response(completion)
    ids = prompt_ids + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids[:max_length], len(ids) > max_length


def sequence_classification_class(config):
    """The ``transformers`` ``<Family>ForSequenceClassification`` class of a config (the reward-model format)."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:
        raise ValueError(f"model type {config.model_type!r} has no sequence-classification class in transformers") from None


class RewardModel(nn.Module):
    """Scalar reward: transformer (no unembedding) -> linear head (no bias) at the last real token, plus ``reward_shift``.

    ``reward_shift`` is a Python float (the paper's normalisation: SFT demonstrations score 0 on average). It is
    never a tensor, so casting the module to bf16 (``precision: bf16-true``, DeepSpeed) cannot round it. The head
    has no bias because the ranking loss is blind to a constant (its gradient would be 0); a critic built from a
    reward model gets one (``head_bias``), since a value function must learn its level.

    The export is a Hugging Face ``<Family>ForSequenceClassification`` directory with ``num_labels=1`` (the format TRL
    and OpenRLHF read and write): ``AutoModelForSequenceClassification`` gives ``score - reward_shift`` on the same
    token ids; the shift and the rest of the normalisation are in ``config.json`` under ``reward_normalization``.
    """

    def __init__(self, backbone: nn.Module, tokenizer, prompt_template: str = DEFAULT_TEMPLATE, *,
                 head: nn.Linear | None = None, head_bias: bool = False, prompt_format: dict | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.prompt_format = prompt_format
        hidden = backbone.config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1, bias=head_bias)
            nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1))
            if head_bias:
                nn.init.zeros_(head.bias)
        elif head_bias and head.bias is None:
            weight = head.weight
            head = nn.Linear(hidden, 1, bias=True, dtype=weight.dtype, device=weight.device)
            head.weight.data.copy_(weight.data)
            nn.init.zeros_(head.bias)
        self.head = head
        self.reward_shift: float = 0.0
        self.normalization: dict | None = None

    @property
    def config(self):
        return self.backbone.config

    @property
    def context_length(self) -> int:
        return context_length(self.backbone.config)

    def format(self) -> PromptFormat:
        """How this reward model formats prompts: as recorded in its export, else its tokenizer's chat template if
        it has one (a TRL / OpenRLHF directory), else its text template."""
        if self.prompt_format:
            return PromptFormat.from_description(self.prompt_format, self.tokenizer)
        return PromptFormat.from_tokenizer(self.tokenizer, self.prompt_template, "auto")

    def format_description(self) -> dict:
        return self.prompt_format or self.format().describe()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_causal_lm(
        cls,
        name_or_path: str,
        tokenizer,
        *,
        tiny: TinyConfig | None = None,
        residual_dropout: float | None = None,
        gradient_checkpointing: bool = False,
        prompt_template: str = DEFAULT_TEMPLATE,
        dtype: "str | torch.dtype" = torch.float32,
    ) -> "RewardModel":
        """A new reward model from a causal LM (``"embedded"``, hub name or directory): its unembedding is dropped.

        A reward-model directory (``...ForSequenceClassification``, ours or TRL's / OpenRLHF's) also works: its head
        is kept, so training continues from it. Weights load in ``dtype`` (fp32 masters by default)."""
        dtype = as_dtype(dtype)
        head = None
        if name_or_path == EMBEDDED:
            backbone = GPT2Model(embedded_config(tokenizer, tiny, residual_dropout)).to(dtype)
        else:
            config = AutoConfig.from_pretrained(check_source(name_or_path))
            set_dropout(config, residual_dropout)
            if is_reward_model_dir(name_or_path):
                model = AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config, dtype=dtype)
                backbone, head = model.base_model, model.score
            else:
                backbone = AutoModel.from_pretrained(name_or_path, config=config, dtype=dtype)
        if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but {name_or_path!r} embeds fewer: they do not belong together")
        if gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return cls(backbone, tokenizer, prompt_template, head=head).train()

    @classmethod
    def from_pretrained(cls, path: str | Path, *, require_normalization: bool = True, quantization_config=None,
                        dtype: "str | torch.dtype" = torch.float32, head_bias: bool = False) -> "RewardModel":
        """Load a reward model: a lit-instruct reward export, or any Hugging Face sequence-classification directory
        with ``num_labels=1`` (TRL, OpenRLHF). Refuses one without a normalisation unless ``require_normalization``
        is off. Comes back in eval mode.

        ``dtype``: the backbone's dtype (float32 by default, whatever the directory stores; ``"bfloat16"`` halves the
        memory of a frozen model); the head computes in float32 on the backbone's output either way.
        ``quantization_config`` (a ``transformers.BitsAndBytesConfig``) loads the backbone in 8 or 4 bits."""
        path = Path(check_source(str(path)))
        dtype = as_dtype(dtype)
        meta = read_metadata(path)
        kwargs = {"quantization_config": quantization_config} if quantization_config is not None else {}
        tokenizer = load_tokenizer(str(path))
        if (path / LEGACY_HEAD_FILE).is_file():
            backbone = AutoModel.from_pretrained(path, dtype=dtype, **kwargs)
            state = load_file(path / LEGACY_HEAD_FILE)
            head = nn.Linear(backbone.config.hidden_size, 1, bias=False)
            head.weight.data.copy_(state["head.weight"])
            shift = float(state["reward_shift"]) + float(state.get("head.bias", torch.zeros(1)).sum())
            normalization = meta.get("normalization")
            if normalization:
                normalization = {**normalization, "shift": shift}
        else:
            if not is_reward_model_dir(path):
                raise ValueError(
                    f"{path}: not a reward model: expected a lit-instruct reward export or a Hugging Face "
                    "...ForSequenceClassification directory with num_labels=1"
                )
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **kwargs)
            backbone, head = model.base_model, model.score
            normalization = getattr(model.config, NORMALIZATION_KEY, None) or meta.get("normalization")
            shift = float(normalization["shift"]) if normalization else 0.0
        if require_normalization and not normalization:
            raise ValueError(
                f"{path}: this reward model has no normalisation (the shift that gives SFT demonstrations a mean "
                "reward of 0); re-run the reward stage with data.demonstrations_file set, or accept it unnormalised "
                "(model.require_reward_normalization: false)"
            )
        head = head.float() if head.weight.is_floating_point() else head
        model = cls(backbone, tokenizer, meta.get("prompt_template", DEFAULT_TEMPLATE), head=head, head_bias=head_bias,
                    prompt_format=meta.get("prompt_format"))
        model.reward_shift = shift
        model.normalization = normalization
        return model.eval()

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None, **kwargs) -> None:
        """Write a ``<Family>ForSequenceClassification`` directory (``num_labels=1``) with the normalisation in its
        config: ``AutoModelForSequenceClassification.from_pretrained(path)`` scores ``reward - reward_shift``.

        Such a head reads the last token that is not ``config.pad_token_id``; when the tokenizer pads with its EOS
        token that would skip the EOS we score, so ``pad_token_id`` is then left unset (single sequences score
        right; Transformers refuses padded batches instead of scoring the wrong token)."""
        from huggingface_hub import save_torch_state_dict

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state_dict = state_dict if state_dict is not None else self.state_dict()
        seq_cls = sequence_classification_class(self.backbone.config)
        prefix = seq_cls.base_model_prefix
        tensors = {f"{prefix}.{k[len('backbone.'):]}": _own_storage(v) for k, v in state_dict.items() if k.startswith("backbone.")}
        tensors["score.weight"] = _own_storage(state_dict["head.weight"])
        if "head.bias" in state_dict:  # a critic's head: its bias joins the shift (the format's score has no bias)
            raise ValueError("a value head with a bias is not a reward model export")
        config = copy.deepcopy(self.backbone.config)
        config.architectures = [seq_cls.__name__]
        config.num_labels = 1
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        config.pad_token_id = pad if pad != eos else None
        config.eos_token_id = eos
        setattr(config, NORMALIZATION_KEY, ({**self.normalization, "shift": self.reward_shift} if self.normalization else None))
        config.save_pretrained(path)
        save_torch_state_dict(tensors, path)

    # ------------------------------------------------------------------ scoring
    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The head at every position, shift included: (b, t) -> (b, t), float32. The critic's per-token values.

        Position ids follow the attention mask, so left- and right-padded rows give the same outputs. The head
        computes on the backbone's output cast to its own dtype (a bf16 or quantized backbone, an fp32 head)."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (b, t, h)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float() + self.reward_shift

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards of (b, t) sequences: (b,), read at each row's last real token, shift included."""
        values = self.values(input_ids, attention_mask)  # (b, t)
        return values[torch.arange(values.shape[0], device=values.device), last_token_index(attention_mask)]

    @torch.no_grad()
    def score(self, prompts: list, completions: list[str], batch_size: int = 16, max_length: int | None = None,
              prompts_are_formatted: bool = False) -> torch.Tensor:
        """Normalised rewards of ``(prompts[i], completions[i])`` pairs, in batches. Returns a (n,) CPU tensor.

        Prompts are formatted as this reward model was trained (its chat template or its text template), unless
        ``prompts_are_formatted`` (already model input)."""
        if len(prompts) != len(completions):
            raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
        max_length = max_length or self.context_length
        device = next(self.parameters()).device
        fmt = self.format()
        out = []
        for start in range(0, len(prompts), batch_size):
            rows = []
            for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size]):
                text = p if prompts_are_formatted else fmt.prompt(p)
                prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                ids, _ = encode_pair(self.tokenizer, prompt_ids[-(max_length - 1):], c, max_length, fmt)
                rows.append(ids)
            input_ids = pad(rows, self.tokenizer.pad_token_id).to(device)
            mask = pad([[1] * len(r) for r in rows], 0).to(device)
            out.append(self(input_ids, mask).cpu())
        return torch.cat(out)


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a contiguous tensor that owns its storage (DeepSpeed's parameters are views into one flat
    buffer, which safetensors refuses to write)."""
    tensor = tensor.detach().contiguous()
    return tensor if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size() else tensor.clone()


def is_reward_model_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a reward model: a lit-instruct export or a sequence-classification model with one label."""
    path = Path(path)
    if (path / LEGACY_HEAD_FILE).is_file():
        return True
    config_file = path / "config.json"
    if not config_file.is_file():
        return False
    import json

    config = json.loads(config_file.read_text())
    archs = config.get("architectures") or []
    labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
    return any(a.endswith("ForSequenceClassification") for a in archs) and labels == 1


# ====================================================================== data


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


@dataclass
class RankedStats:
    prompts: int = 0
    completions: int = 0
    comparisons: int = 0
    truncated: int = 0
    skipped: list[Problem] = field(default_factory=list)


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
            comparisons += sum(ri < rj for ri in g["ranks"] for rj in g["ranks"])
        return {
            "input_ids": pad(rows, self.pad_token_id),
            "attention_mask": pad([[1] * len(r) for r in rows], 0),
            "group": torch.as_tensor(group),
            "slot": torch.as_tensor(slot),
            "ranks": ranks,
            "mask": mask,
            "comparisons": torch.tensor(comparisons),
        }


class RewardDataModule(L.LightningDataModule):
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
        normalization_rows: How many demonstrations (a fixed, hash-ordered subset) to average over.
        num_workers: DataLoader workers.
        tokenizer_name_or_path: Tokenizer; ``None`` takes the model's.
    """

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
        self.tokenizer = None
        self.train_groups: list[dict] = []
        self.val_groups: list[dict] = []
        self.max_length = 0
        self._demonstrations: Optional[list[tuple[str, str]]] = None

    def read(self, path: str) -> list[tuple[int, dict]]:
        keep = (lambda row: bundled.is_permissive(row.get("license"))) if self.hparams.only_permissive else None
        return read_rows(path, check_ranked_row, keep=keep, columns=self.hparams.columns)

    def encode(self, rows: list[tuple[int, dict]], path: str, stats: RankedStats) -> list[dict]:
        h = self.hparams
        groups = []
        fmt = self.prompt_format()
        for line, row in rows:
            prompt, completions, ranks = as_ranking(row)
            prompt_ids = self.tokenizer(fmt.prompt(prompt), add_special_tokens=False)["input_ids"]
            room = self.max_length - len(prompt_ids)
            if room < h.min_completion_tokens:
                stats.skipped.append(Problem(path, line, f"prompt is {len(prompt_ids)} tokens, leaving {max(room, 0)} of the {self.max_length}-token context for completions"))
                continue
            encoded = [encode_pair(self.tokenizer, prompt_ids, c, self.max_length, fmt) for c in completions]
            stats.prompts += 1
            stats.completions += len(encoded)
            stats.truncated += sum(cut for _, cut in encoded)
            stats.comparisons += sum(ri < rj for ri in ranks for rj in ranks)
            groups.append({"input_ids": [ids for ids, _ in encoded], "ranks": ranks, "prompt": prompt})
        return groups

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_groups:
            return
        h = self.hparams
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is not None and not h.tokenizer_name_or_path:
            self.tokenizer = module.tokenizer
        else:
            self.tokenizer = load_tokenizer(h.tokenizer_name_or_path or EMBEDDED)
        self.max_length = h.max_length or (module.context_length if module is not None else 256)
        self.prepare()

    def prepare(self) -> None:
        """Read, validate and tokenise both splits (called by :meth:`setup`; usable without a Trainer)."""
        h = self.hparams
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(h.tokenizer_name_or_path or EMBEDDED)
        self.max_length = self.max_length or h.max_length or 256
        rows = self.read(h.train_file)
        if h.val_file:
            train_rows, val_rows, val_path = rows, self.read(h.val_file), h.val_file
        else:
            train_rows, val_rows = split(rows, lambda r: prompt_key(r[1]["prompt"]), h.val_fraction, h.split_seed)
            val_path = h.train_file
        if not val_rows:
            raise DataError(f"{h.train_file}: the validation split is empty (raise val_fraction or give val_file)")
        train_stats, val_stats = RankedStats(), RankedStats()
        self.train_groups = self.encode(train_rows, h.train_file, train_stats)
        self.val_groups = self.encode(val_rows, val_path, val_stats)
        skipped = train_stats.skipped + val_stats.skipped
        if skipped and h.overlong == "error":
            raise_problems(skipped, "over-long rows; set data.overlong=skip to drop them instead")
        if not self.train_groups or not self.val_groups:
            raise DataError(f"{h.train_file}: no rows left after skipping over-long ones")
        self.stats = {"train": train_stats, "val": val_stats}
        self._demonstrations = self.read_demonstrations()  # checked now: it is used only after training
        rank_zero_info(
            f"[reward data] {train_stats.prompts} train / {val_stats.prompts} val prompts from {h.train_file}: "
            f"{train_stats.completions} / {val_stats.completions} completions, {train_stats.comparisons} / "
            f"{val_stats.comparisons} comparisons; {train_stats.truncated + val_stats.truncated} completions cut to "
            f"{self.max_length} tokens; {len(skipped)} over-long rows skipped" + (f" (first: {skipped[0]})" if skipped else "")
            + (f"; pair_mode={h.pair_mode}" if h.pair_mode != "grouped" else "")
        )

    def prompt_format(self) -> PromptFormat:
        """How prompts become model input with this data's settings and tokenizer."""
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.hparams.tokenizer_name_or_path or EMBEDDED)
        return PromptFormat.from_tokenizer(self.tokenizer, self.hparams.prompt_template, self.hparams.chat_template)

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

    def read_demonstrations(self) -> list[tuple[str, str]]:
        h = self.hparams
        if not h.demonstrations_file:
            return []
        rows = read_rows(h.demonstrations_file, lambda r: check_prompt_field(r) or check_text_fields(r, ("response",)))
        ordered = sorted(rows, key=lambda r: hashlib.sha256(prompt_key(r[1]["prompt"]).encode()).hexdigest())
        return [(r["prompt"], r["response"]) for _, r in ordered[: h.normalization_rows]]

    def _loader(self, examples: list[dict], shuffle: bool) -> DataLoader:
        return DataLoader(examples, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          collate_fn=RankedCollator(self.tokenizer.pad_token_id), num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_examples(), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_groups, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


# ====================================================================== module


class PairAccuracyByK(Metric):
    """Pairwise accuracy per K (the number of completions of the pair's prompt); K >= ``max_k`` share a bucket.

    The counts are summed across processes, so every process reports the same Ks (a per-K metric that only
    some processes had updated would deadlock the collective). They are integers, so casting the module to bf16
    (``precision: bf16-true``) leaves them exact.
    """

    full_state_update = False

    def __init__(self, max_k: int) -> None:
        super().__init__()
        self.max_k = max_k
        self.add_state("correct", default=torch.zeros(max_k + 1, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(max_k + 1, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pair_margin: torch.Tensor, pair_k: torch.Tensor) -> None:
        k = pair_k.clamp(max=self.max_k).long()
        self.correct.index_add_(0, k, (pair_margin > 0).long())
        self.total.index_add_(0, k, torch.ones_like(k))

    def compute(self) -> dict[int, torch.Tensor]:
        return {k: self.correct[k].double() / self.total[k] for k in range(2, self.max_k + 1) if self.total[k] > 0}



class RewardModule(Stage):
    """Train a reward model on rankings with InstructGPT's grouped loss; normalise it; export it.

    Args:
        model_name_or_path: The causal LM to start from: usually the SFT export; ``"embedded"`` builds a fresh
            tiny model; any Hugging Face causal LM (hub name or directory) works.
        tokenizer_name_or_path: Tokenizer; ``None`` takes the model's.
        tiny: Size of the embedded model (ignored for other models).
        residual_dropout: Residual/hidden dropout; ``None`` keeps the model config's value.
        optimizer: Optimizer factory (paper: Adam, LR 9e-6, cosine to 10%).
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Cosine decay ends at this fraction of the peak learning rate.
        export_dir: Where the reward-model export is written; ``None``: ``<default_root_dir>/export``.
        max_k: Validation accuracy is also reported per K for K = 2..max_k (larger K share the last bucket).
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        load_dtype: dtype the weights are loaded in, whatever the checkpoint stores: float32 (the default) keeps
            fp32 master weights under ``bf16-mixed``.
        export_dtype: dtype of the exported weights (the normalisation shift is stored exactly either way).
    """

    stage = "reward"

    def __init__(
        self,
        model_name_or_path: str = EMBEDDED,
        tokenizer_name_or_path: Optional[str] = None,
        tiny: TinyConfig = TinyConfig(),
        residual_dropout: Optional[float] = None,
        optimizer: OptimizerCallable = default_optimizer,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        export_dir: Optional[str] = None,
        max_k: int = 9,
        gradient_checkpointing: bool = False,
        load_dtype: DtypeName = "float32",
        export_dtype: DtypeName = "float32",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_factory = optimizer
        tiny = TinyConfig(**tiny) if isinstance(tiny, dict) else tiny
        self.tokenizer = load_tokenizer(tokenizer_name_or_path or model_name_or_path, tiny)
        self.rm = RewardModel.from_causal_lm(
            model_name_or_path, self.tokenizer, tiny=tiny, residual_dropout=residual_dropout,
            gradient_checkpointing=gradient_checkpointing, dtype=load_dtype,
        )
        self.val_loss = MeanMetric()
        self.val_margin = MeanMetric()
        self.val_accuracy = BinaryAccuracy()
        self.val_accuracy_by_k = PairAccuracyByK(max_k)
        self.val_length_baseline = MeanMetric()

    @property
    def context_length(self) -> int:
        return self.rm.context_length

    def rewards(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The (b, k_max) reward grid: every completion of every prompt through the model exactly once."""
        flat = self.rm(batch["input_ids"], batch["attention_mask"])  # (n,)
        grid = flat.new_zeros(batch["mask"].shape)
        return grid.index_put((batch["group"], batch["slot"]), flat)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = ranking_loss(self.rewards(batch), batch["ranks"], batch["mask"])
        self.log("train/loss", out["loss"], prog_bar=True)
        self.log("train/accuracy", (out["pair_margin"] > 0).float().mean(), prog_bar=True)
        self.log("train/margin", out["pair_margin"].mean())
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = ranking_loss(self.rewards(batch), batch["ranks"], batch["mask"])
        # The same comparisons judged by length alone ("the longer completion wins", ties count half): a reward
        # model should beat it, and on AI-judged data it is strong.
        lengths = batch["attention_mask"].sum(-1).float()
        by_length = ranking_loss(lengths.new_zeros(batch["mask"].shape).index_put((batch["group"], batch["slot"]), lengths),
                                 batch["ranks"], batch["mask"])["pair_margin"]
        self.val_length_baseline.update((by_length > 0).float() + 0.5 * (by_length == 0).float())
        self.val_loss.update(out["loss"], weight=batch["mask"].shape[0])
        self.val_margin.update(out["pair_margin"])
        probs = torch.sigmoid(out["pair_margin"])
        self.val_accuracy.update(probs, torch.ones_like(probs, dtype=torch.long))
        self.val_accuracy_by_k.update(out["pair_margin"], out["pair_k"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)
        self.log("val/accuracy", self.val_accuracy.compute(), prog_bar=True, sync_dist=True)
        self.log("val/margin", self.val_margin.compute(), sync_dist=True)
        self.log("val/length_baseline_accuracy", self.val_length_baseline.compute(), sync_dist=True)
        for k, accuracy in self.val_accuracy_by_k.compute().items():  # synced: every rank logs the same Ks
            self.log(f"val/accuracy_k{k}", accuracy)
        for metric in (self.val_loss, self.val_margin, self.val_accuracy, self.val_length_baseline, self.val_accuracy_by_k):
            metric.reset()

    def trained_module(self) -> nn.Module:
        return self.rm

    def setup(self, stage: str) -> None:
        """Take the data's prompt format now, so that the normalisation and the export use it."""
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "prompt_format"):
            self.use_format(datamodule.prompt_format())

    def use_format(self, fmt: PromptFormat) -> None:
        self.rm.prompt_template = fmt.template
        self.rm.prompt_format = fmt.describe()

    # ------------------------------------------------------------------ normalisation and export
    @torch.no_grad()
    def normalize(self, demonstrations: list[tuple[str, str]], batch_size: int = 16) -> float:
        """Set ``reward_shift`` so that the demonstrations' mean reward is 0; returns the shift.

        Every process scores the same demonstrations (a collective under ZeRO-3)."""
        was_training = self.rm.training
        self.rm.eval()
        self.rm.reward_shift = 0.0
        raw = self.rm.score([p for p, _ in demonstrations], [r for _, r in demonstrations], batch_size=batch_size)
        shift = -float(raw.double().mean())
        self.rm.reward_shift = shift
        self.rm.normalization = {"shift": shift, "raw_mean": -shift, "raw_std": float(raw.std()), "rows": len(demonstrations)}
        self.rm.train(was_training)
        return shift

    def prepare_export_from_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints are written before the normalisation: redo it from the data module's saved settings."""
        settings = {k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
        data = RewardDataModule(**settings)
        data.tokenizer = self.tokenizer
        self.use_format(data.prompt_format())
        if settings.get("demonstrations_file"):
            self.normalize(data.demonstrations())
            self.rm.normalization["file"] = settings["demonstrations_file"]

    def on_fit_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        demos = datamodule.demonstrations() if hasattr(datamodule, "demonstrations") else []
        if demos:
            shift = self.normalize(demos)
            rank_zero_info(f"[reward] normalised on {len(demos)} demonstrations: shift {shift:+.4f} (raw std {self.rm.normalization['raw_std']:.4f})")
            for logger in self.trainer.loggers:
                logger.log_metrics({"reward/normalization_shift": shift}, step=self.trainer.global_step)
            self.rm.normalization["file"] = datamodule.hparams.demonstrations_file
        else:
            rank_zero_info("[reward] no demonstrations_file: the export is not normalised, and PPO will refuse it")
        super().on_fit_end()

    def export_target(self):
        return self.rm, self.tokenizer

    def export_metadata(self) -> dict:
        normalization = {**self.rm.normalization, "shift": self.rm.reward_shift} if self.rm.normalization else None
        return {"normalization": normalization, "prompt_template": self.rm.prompt_template, "prompt_format": self.rm.prompt_format}
