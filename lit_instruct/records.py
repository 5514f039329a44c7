"""Reading and validating user data files before any training starts.

Every problem is reported as ``FILE:LINE: what is wrong``; all the bad lines of a file are collected and
reported together (the first :data:`MAX_REPORTED` of them), so a user fixes a file in one pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_instruct import bundled

MAX_REPORTED = 10


class DataError(ValueError):
    """Bad input data. The message names the file, the line and the problem."""


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def raise_problems(problems: list[Problem], what: str = "") -> None:
    """Raise one :class:`DataError` listing ``problems`` (nothing when the list is empty)."""
    if not problems:
        return
    shown = "\n".join(f"  {p}" for p in problems[:MAX_REPORTED])
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    head = f"{len(problems)} problem(s) in {problems[0].path}{' (' + what + ')' if what else ''}:"
    raise DataError(f"{head}\n{shown}{more}")


def open_checked(path: str | Path) -> Path:
    """Resolve ``path`` (``bundled:NAME`` included) and check that it is a non-empty file."""
    resolved = bundled.resolve(path)
    if not resolved.exists():
        raise DataError(f"{path}: file not found")
    if not resolved.is_file():
        raise DataError(f"{path}: not a file")
    if resolved.stat().st_size == 0 or not resolved.read_text(encoding="utf-8", errors="replace").strip():
        raise DataError(f"{path}:1: file is empty")
    return resolved


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line; a line that is not JSON is a :class:`DataError`."""
    resolved = open_checked(path)
    with resolved.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None


Validator = Callable[[dict], "str | None"]


def read_rows(path: str | Path, validate: Validator, *, keep: Callable[[dict], bool] | None = None) -> list[tuple[int, dict]]:
    """Read a JSONL file of objects, validating every row.

    ``validate(row)`` returns ``None`` for a good row or a message saying what is wrong with it; all the bad
    rows are reported together in one :class:`DataError`. ``keep(row)`` filters good rows (for example by
    licence). Returns ``(line_number, row)`` pairs.
    """
    problems: list[Problem] = []
    rows: list[tuple[int, dict]] = []
    for number, value in iter_jsonl(path):
        if not isinstance(value, dict):
            problems.append(Problem(str(path), number, f"expected a JSON object, got {type(value).__name__}"))
            continue
        message = validate(value)
        if message:
            problems.append(Problem(str(path), number, message))
        elif keep is None or keep(value):
            rows.append((number, value))
    raise_problems(problems)
    if not rows:
        raise DataError(f"{path}: no usable rows (all filtered out)")
    return rows


def check_text_fields(row: dict, fields: tuple[str, ...], *, allow_empty: tuple[str, ...] = ()) -> str | None:
    """The problem with ``row``'s string fields, or ``None``: each field present, a string, and non-blank."""
    for name in fields:
        if name not in row:
            return f"missing field {name!r}"
        value = row[name]
        if not isinstance(value, str):
            return f"field {name!r} must be a string, got {type(value).__name__}"
        if name not in allow_empty and not value.strip():
            return f"field {name!r} is empty"
    return None


def read_documents(path: str | Path) -> list[str]:
    """Read a plain-text corpus whose documents are separated by blank lines."""
    resolved = open_checked(path)
    text = resolved.read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split("\n\n")]
    return [d for d in docs if d]


def in_validation(key: str, val_fraction: float, seed: int = 0) -> bool:
    """Deterministic split: whether ``key`` (a prompt, a document) belongs to the validation split.

    Hashing the text rather than shuffling positions keeps the split stable when rows are added or reordered,
    and puts identical prompts on the same side.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def split(items: list, key: Callable[[Any], str], val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Split ``items`` into (train, validation) with :func:`in_validation` on ``key(item)``."""
    train, val = [], []
    for item in items:
        (val if in_validation(key(item), val_fraction, seed) else train).append(item)
    return train, val
