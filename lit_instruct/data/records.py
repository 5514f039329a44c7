"""Reading and validating user data files before any training starts: :func:`read_rows` (a source's rows with our
field names, every row checked), the field and setting checks, and the deterministic split by key.

Every problem is reported as ``FILE:LINE: what is wrong`` (JSON Lines) or ``FILE:row N: what is wrong``
(JSON arrays, Parquet, Arrow, CSV, ``datasets`` directories and hub datasets); all the bad rows of a file are
collected and reported together (see :mod:`lit_instruct.data.problems`), so a user fixes a file in one pass.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lit_instruct.data.formats import BadValue, read_values
from lit_instruct.data.problems import DataError, Problem, raise_problems

Validator = Callable[[dict], "str | None"]


def check_columns(columns: dict | None, allowed: set[str] | frozenset[str] | Iterable[str]) -> None:
    """Check a ``columns`` mapping (our field name -> the file's column name) before reading anything.

    Raises :class:`DataError` (a :class:`ValueError`) for a key that is not one of our ``allowed`` field names (a typo such as
    ``{"promt": "question"}``) or for a name that is not a non-empty string.
    """
    if columns is None:
        return
    if not isinstance(columns, dict):
        raise ValueError(f"columns must be a mapping of our field names to the file's column names, got {type(columns).__name__}")
    allowed = set(allowed)
    expected = ", ".join(repr(a) for a in sorted(allowed))
    for ours, theirs in columns.items():
        if ours not in allowed:
            close = difflib.get_close_matches(str(ours), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"data.columns: unknown field {ours!r}{hint}; the fields are {expected}")
        if not isinstance(theirs, str) or not theirs:
            raise ValueError(f"columns: field {ours!r} must map to a column name (a non-empty string), got {theirs!r}")


def _check_mapping(columns: dict | None) -> dict[str, str]:
    if not columns:
        return {}
    if not isinstance(columns, dict):
        raise ValueError(f"columns must be a mapping of our field names to the file's column names, got {type(columns).__name__}")
    for ours, theirs in columns.items():
        if not isinstance(ours, str) or not isinstance(theirs, str) or not ours or not theirs:
            raise ValueError(f"columns: names must be non-empty strings, got {ours!r}: {theirs!r}")
    return dict(columns)


def _check_present(source: str, columns: dict[str, str], present: Iterable[str]) -> None:
    """One :class:`DataError` naming every mapped column the source lacks, and the columns it has."""
    present = list(present)
    missing = [(ours, theirs) for ours, theirs in columns.items() if theirs not in present]
    if not missing:
        return
    what = ", ".join(f"{theirs!r} (for {ours!r})" for ours, theirs in missing)
    has = ", ".join(repr(c) for c in present) or "none"
    raise DataError(f"{source}: column{'s' if len(missing) > 1 else ''} {what} not found; the columns are: {has}")


def _rename(row: dict, columns: dict[str, str]) -> dict:
    """``row`` with the mapped columns under our names; the other columns as they are."""
    if not columns:
        return row
    values = {ours: row[theirs] for ours, theirs in columns.items() if theirs in row}
    sources = set(columns.values())
    renamed = {k: v for k, v in row.items() if k not in sources}
    renamed.update(values)
    return renamed


def read_rows(
    path: str | Path,
    validate: Validator,
    *,
    keep: Callable[[dict], bool] | None = None,
    columns: dict[str, str] | None = None,
) -> list[tuple[int, dict]]:
    """Read the rows of a data source (any that :func:`~lit_instruct.data.formats.read_values` reads: JSON Lines,
    JSON, Parquet, Arrow, CSV, a ``datasets`` directory or hub name), validating every row.

    ``columns`` maps our field names to the source's column names (``{"prompt": "question"}``); the mapped
    columns are renamed before validation and the other columns kept. A mapped column missing from the
    source is a :class:`DataError` naming the columns it has.

    ``validate(row)`` returns ``None`` for a good row or a message saying what is wrong with it; all the bad
    rows are reported together in one :class:`DataError` (``FILE:LINE: problem`` or ``FILE:row N: problem``).
    ``keep(row)`` filters good rows (for example by licence). Returns ``(number, row)`` pairs: line numbers
    (``int``) for JSON Lines, 1-based row indexes (:class:`~lit_instruct.data.problems.RowNumber`) otherwise.
    """
    columns = _check_mapping(columns)
    source = str(path)
    values, names = read_values(path)
    if columns:
        if names is None:  # JSON: the keys of all its objects
            values = list(values)
            names = list({key: None for _, value in values if isinstance(value, dict) for key in value})
        _check_present(source, columns, names)

    problems: list[Problem] = []
    rows: list[tuple[int, dict]] = []
    for number, value in values:
        if isinstance(value, BadValue):
            problems.append(Problem(source, number, value.message))
            continue
        if not isinstance(value, dict):
            problems.append(Problem(source, number, f"expected a JSON object, got {type(value).__name__}"))
            continue
        value = _rename(value, columns)
        message = validate(value)
        if message:
            problems.append(Problem(source, number, message))
        elif keep is None or keep(value):
            rows.append((number, value))
    raise_problems(problems)
    if not rows:
        raise DataError(f"{path}: no usable rows (all filtered out)")
    return rows


def check_text_fields(row: dict, fields: tuple[str, ...]) -> str | None:
    """The problem with ``row``'s string fields, or ``None``: each field present, a string, and non-blank."""
    for name in fields:
        if name not in row:
            return f"missing field {name!r}"
        value = row[name]
        if not isinstance(value, str):
            return f"field {name!r} must be a string, got {type(value).__name__}"
        if not value.strip():
            return f"field {name!r} is empty"
    return None


def check_range(name: str, value: Any, minimum: float, *, below: float | None = None, optional: bool = False) -> None:
    """Raise ``ValueError("NAME must be >= MIN, got VALUE")`` (``in [MIN, BELOW)`` when ``below`` is given) unless
    ``minimum <= value`` (and ``value < below``); ``None`` passes when ``optional``.

    The data modules call it in ``__init__``, so that a bad setting stops the run before any model is built.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN is no number here
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < minimum or (below is not None and value >= below):
        what = f"in [{minimum}, {below})" if below is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")


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
