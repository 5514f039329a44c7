"""Demonstrations (prompt -> ideal response) for SFT: encoding with the loss on response tokens only, and the data
module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lit_instruct import bundled
from lit_instruct.data.batching import LMCollator
from lit_instruct.data.prompt_format import (
    DEFAULT_TEMPLATE,
    ChatTemplateMode,
    PromptFormat,
    check_prompt_field,
    prompt_key,
)
from lit_instruct.data.records import (
    DataError,
    Problem,
    check_range,
    check_text_fields,
    raise_problems,
    read_rows,
    split,
)
from lit_instruct.models.causal_lm import load_tokenizer
from lit_instruct.objectives import IGNORE_INDEX


@dataclass
class EncodeStats:
    """What tokenisation did to the rows of one split."""

    rows: int = 0
    truncated: int = 0
    skipped: list[Problem] = field(default_factory=list)


def encode_demonstration(
    tokenizer, prompt, response: str, max_length: int, template: "str | PromptFormat" = DEFAULT_TEMPLATE, min_response_tokens: int = 1
) -> tuple[list[int], list[int], bool] | str:
    """Token ids and labels of one demonstration: ``fmt.prompt(prompt) + fmt.response(response) + EOS``, with
    ``fmt`` the :class:`~lit_instruct.data.prompt_format.PromptFormat` (a text template given as a string is one).

    Labels are :data:`IGNORE_INDEX` on the prompt, so the loss covers the response and its EOS. A response that
    does not fit is cut at ``max_length`` (the third value says so). Returns a message instead when the prompt
    leaves fewer than ``min_response_tokens`` tokens of room.
    """
    fmt = template if isinstance(template, PromptFormat) else PromptFormat(template=template)
    prompt_ids = tokenizer(fmt.prompt(prompt), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(fmt.response(response), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    room = max_length - len(prompt_ids)
    if room < min(min_response_tokens, len(response_ids)):
        return f"prompt is {len(prompt_ids)} tokens, leaving {max(room, 0)} of the {max_length}-token context for the response"
    truncated = len(response_ids) > room
    response_ids = response_ids[:room]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids, truncated


class SFTDataModule(L.LightningDataModule):
    """Demonstrations ``{"prompt", "response"}``, formatted with the chat template or the prompt template, loss on
    responses.

    Args:
        train_file: Demonstrations: JSONL, JSON, Parquet, Arrow or CSV, a dataset directory or a ``datasets`` name
            (``NAME`` or ``NAME@SPLIT``); ``bundled:sft.jsonl`` is the bundled set (``bundled:sft_permissive.jsonl``
            the Apache/MIT-only one). A prompt is a string or a list of ``{"role", "content"}`` messages.
        val_file: The same for validation; ``None`` splits ``train_file`` deterministically by prompt.
        columns: The file's column names for our fields, e.g. ``{prompt: question, response: answer}``.
        val_fraction: Share of prompts held out when ``val_file`` is ``None``.
        split_seed: Seed of the deterministic split.
        only_permissive: Keep only rows whose ``license`` is Apache-2.0 or MIT.
        prompt_template: Template for single-turn prompts (must contain ``{prompt}``); multi-turn prompts
            (``Human: ...``) are kept and get ``\\n\\nAssistant:`` appended. Used when no chat template applies.
        chat_template: ``"auto"``: the tokenizer's chat template when it has one (prompts, multi-turn ones
            included, go through ``apply_chat_template``), else ``prompt_template``; ``"always"``: require one;
            ``"never"``: always ``prompt_template``.
        max_length: Longest sequence in tokens; ``None`` uses the model's context length.
        min_response_tokens: A row whose prompt leaves less room than this for its response is over-long.
        overlong: What to do with over-long rows: ``"skip"`` (counted and logged) or ``"error"``.
        batch_size: Demonstrations per batch (per process).
        pad_to_multiple_of: Pad each batch's length up to a multiple of this (tensor-core friendly on GPUs).
        num_workers: DataLoader workers.
        tokenizer_name_or_path: Tokenizer; ``None`` takes the model's (the usual case).
    """

    def __init__(
        self,
        train_file: str = "bundled:sft.jsonl",
        val_file: Optional[str] = None,
        columns: Optional[dict[str, str]] = None,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        only_permissive: bool = False,
        prompt_template: str = DEFAULT_TEMPLATE,
        chat_template: ChatTemplateMode = "auto",
        max_length: Optional[int] = None,
        min_response_tokens: int = 8,
        overlong: Literal["skip", "error"] = "skip",
        batch_size: int = 8,
        pad_to_multiple_of: Optional[int] = None,
        num_workers: int = 0,
        tokenizer_name_or_path: Optional[str] = None,
    ) -> None:
        super().__init__()
        check_range("data.val_fraction", val_fraction, 0, below=1)
        check_range("data.max_length", max_length, 2, optional=True)
        check_range("data.min_response_tokens", min_response_tokens, 1)
        check_range("data.batch_size", batch_size, 1)
        check_range("data.pad_to_multiple_of", pad_to_multiple_of, 1, optional=True)
        check_range("data.num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.tokenizer = None
        self.train_examples: list[dict] = []
        self.val_examples: list[dict] = []
        self.val_prompts: list[str] = []

    # ------------------------------------------------------------------ reading
    def read(self) -> tuple[list[tuple[int, dict]], list[tuple[int, dict]], str]:
        """Validated rows of the train and validation splits (``(line, row)``), and the validation file's name."""
        h = self.hparams
        validate = lambda row: check_prompt_field(row) or check_text_fields(row, ("response",))  # noqa: E731
        keep = (lambda row: bundled.is_permissive(row.get("license"))) if h.only_permissive else None
        rows = read_rows(h.train_file, validate, keep=keep, columns=h.columns)
        if h.val_file:
            return rows, read_rows(h.val_file, validate, keep=keep, columns=h.columns), h.val_file
        train, val = split(rows, lambda r: prompt_key(r[1]["prompt"]), h.val_fraction, h.split_seed)
        return train, val, h.train_file

    def encode(self, rows, path: str, max_length: int) -> tuple[list[dict], EncodeStats]:
        h = self.hparams
        stats = EncodeStats()
        examples = []
        fmt = self.prompt_format()
        for line, row in rows:
            result = encode_demonstration(self.tokenizer, row["prompt"], row["response"], max_length, fmt, h.min_response_tokens)
            if isinstance(result, str):
                stats.skipped.append(Problem(str(path), line, result))
                continue
            ids, labels, truncated = result
            stats.rows += 1
            stats.truncated += truncated
            examples.append({"input_ids": ids, "labels": labels, "prompt": row["prompt"]})
        return examples, stats

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_examples:
            return
        module = self.trainer.lightning_module if self.trainer is not None else None
        h = self.hparams
        if h.tokenizer_name_or_path or module is None:
            self.tokenizer = load_tokenizer(h.tokenizer_name_or_path or "embedded")
        else:
            self.tokenizer = module.tokenizer
        max_length = h.max_length or (module.context_length if module is not None else 1024)
        if module is not None and max_length > module.context_length:
            raise ValueError(f"data.max_length={max_length} exceeds the model's context length {module.context_length}")
        self.prepare(max_length)

    def prepare(self, max_length: int) -> None:
        """Read, validate and tokenise both splits (called by :meth:`setup`; usable without a Trainer)."""
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.hparams.tokenizer_name_or_path or "embedded")
        train_rows, val_rows, val_path = self.read()
        if not val_rows:
            raise DataError(f"{self.hparams.train_file}: the validation split is empty (raise val_fraction or give val_file)")
        self.train_examples, train_stats = self.encode(train_rows, self.hparams.train_file, max_length)
        self.val_examples, val_stats = self.encode(val_rows, val_path, max_length)
        skipped = train_stats.skipped + val_stats.skipped
        if skipped and self.hparams.overlong == "error":
            raise_problems(skipped, "over-long rows; set data.overlong=skip to drop them instead")
        rank_zero_info(
            f"[sft data] {train_stats.rows} train / {val_stats.rows} val demonstrations from {self.hparams.train_file}; "
            f"{train_stats.truncated + val_stats.truncated} responses cut to fit {max_length} tokens; "
            f"{len(skipped)} over-long rows skipped" + (f" (first: {skipped[0]})" if skipped else "")
        )
        if not self.train_examples or not self.val_examples:
            raise DataError(f"{self.hparams.train_file}: no rows left after skipping over-long ones")
        self.val_prompts = [fmt.prompt(e["prompt"]) for e in self.val_examples] if (fmt := self.prompt_format()) else []
        self.stats = {"train": train_stats, "val": val_stats}

    def sample_prompts(self, n: int) -> list[str]:
        return self.val_prompts[:n]

    def prompt_format(self) -> PromptFormat:
        """How prompts become model input with this data's settings and tokenizer."""
        return PromptFormat.from_tokenizer(self.tokenizer, self.hparams.prompt_template, self.hparams.chat_template)

    def _loader(self, examples: list[dict], shuffle: bool) -> DataLoader:
        collate = LMCollator(self.tokenizer.pad_token_id, self.hparams.pad_to_multiple_of)
        return DataLoader(
            examples, batch_size=self.hparams.batch_size, shuffle=shuffle, collate_fn=collate, num_workers=self.hparams.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_examples, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_examples, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
