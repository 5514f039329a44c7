"""Turning token-id lists into padded tensors (dynamic padding: each batch to its own longest row)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lit_instruct.objectives import IGNORE_INDEX


def pad(rows: Sequence[Sequence[int]], value: int, *, left: bool = False, multiple_of: int | None = None) -> torch.Tensor:
    """Stack variable-length rows into a (b, t) long tensor, padded with ``value`` on the right (or left)."""
    length = max(len(r) for r in rows)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            if left:
                out[i, length - len(row):] = torch.as_tensor(row)
            else:
                out[i, : len(row)] = torch.as_tensor(row)
    return out


def pad_with_mask(rows: Sequence[Sequence[int]], pad_token_id: int, *, left: bool = False,
                  multiple_of: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of variable-length rows: :func:`pad` with ``pad_token_id``, and 1 on every real token."""
    ids = pad(rows, pad_token_id, left=left, multiple_of=multiple_of)
    mask = pad([[1] * len(r) for r in rows], 0, left=left, multiple_of=multiple_of)
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (as ``generate`` numbers them), so that left- and right-padded rows give the
    same outputs. (b, t) -> (b, t)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class LMCollator:
    """Collate ``{"input_ids": [...], "labels": [...]}`` examples into a padded LM batch.

    Labels are padded with :data:`IGNORE_INDEX`, never derived from the pad id, so a tokenizer whose pad token
    is its EOS token still learns to emit EOS.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        m = self.pad_to_multiple_of
        input_ids, attention_mask = pad_with_mask([e["input_ids"] for e in examples], self.pad_token_id, multiple_of=m)
        labels = pad([e["labels"] for e in examples], IGNORE_INDEX, multiple_of=m)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
