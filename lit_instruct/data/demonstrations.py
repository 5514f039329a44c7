"""Demonstrations (prompt -> ideal response) for SFT: encoding with the loss on response tokens only, and the data
module."""

from __future__ import annotations

from typing import Literal, Optional

from torch.utils.data import DataLoader

from lit_instruct.data.batching import LMCollator
from lit_instruct.data.module import PromptDataModule, Stats, overlong_prompt
from lit_instruct.data.prompt_format import (
    DEFAULT_TEMPLATE,
    ChatTemplateMode,
    PromptFormat,
    check_prompt_field,
)
from lit_instruct.data.records import check_range, check_text_fields
from lit_instruct.objectives import IGNORE_INDEX


def check_demonstration(row: dict) -> Optional[str]:
    """The problem with a ``{"prompt", "response"}`` row, or ``None``."""
    return check_prompt_field(row) or check_text_fields(row, ("response",))


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
        return overlong_prompt(len(prompt_ids), max_length, "the response")
    truncated = len(response_ids) > room
    response_ids = response_ids[:room]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids, truncated


class SFTDataModule(PromptDataModule):
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

    fields = ("prompt", "response")
    name = "sft"
    default_length = 1024

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
        self.train_examples: list[dict] = []
        self.val_examples: list[dict] = []
        self.val_prompts: list[str] = []

    def encode(self, row: dict, fmt: PromptFormat, stats: Stats) -> dict | str:
        result = encode_demonstration(self.tokenizer, row["prompt"], row["response"], self.max_length, fmt, self.hparams.min_response_tokens)
        if isinstance(result, str):
            return result
        ids, labels, cut = result
        stats.cut += cut
        return {"input_ids": ids, "labels": labels, "prompt": row["prompt"]}

    def load(self) -> None:
        h = self.hparams
        encoded = self.encode_splits(self.read_splits(check_demonstration, h.train_file, h.val_file), self.encode)
        self.train_examples, self.val_examples = encoded["train"], encoded["val"]
        self.report(h.train_file, "demonstrations", cut="responses")
        fmt = self.prompt_format()
        self.val_prompts = [fmt.prompt(e["prompt"]) for e in self.val_examples]

    def sample_prompts(self, n: int) -> list[str]:
        return self.val_prompts[:n]

    def collator(self) -> LMCollator:
        return LMCollator(self.tokenizer.pad_token_id, self.hparams.pad_to_multiple_of)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_examples, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_examples)
