"""Reading and validating user data files before any training starts.

Every problem is reported as ``FILE:LINE: what is wrong`` (JSON Lines) or ``FILE:row N: what is wrong``
(JSON arrays, Parquet, Arrow, CSV, ``datasets`` directories and hub datasets); all the bad rows of a file are
collected and reported together (the first :data:`MAX_REPORTED` of them), so a user fixes a file in one pass.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_instruct import bundled

MAX_REPORTED = 10

#: Local file suffixes read through a ``datasets`` builder (``.json`` is read with :mod:`json`, see
#: :func:`read_rows`); any other existing file is read as JSON Lines.
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
#: Suffixes that make a missing source a missing file rather than a hub dataset name.
DATA_SUFFIXES = (".jsonl", ".json", *BUILDERS)
#: ``SOURCE@SPLIT``: a split name (``datasets`` slicing such as ``train[:100]`` included) after the last ``@``.
_SPLIT = re.compile(r".+@[\w.\-\[\]:%+]+")


class DataError(ValueError):
    """Bad input data. The message names the file, the line and the problem."""


class RowNumber(int):
    """A 1-based row index (not a line number): a :class:`Problem` made with one says ``FILE:row N:``.

    :func:`read_rows` returns these for sources without lines (JSON arrays, Parquet, Arrow, CSV, hub
    datasets), so problems the data modules report later about a row (``Problem(path, number, ...)``) name
    it the same way.
    """


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str
    unit: str = "line"  # "line": ``FILE:LINE: message``; anything else, e.g. "row": ``FILE:row N: message``

    def __post_init__(self) -> None:
        if self.unit == "line" and isinstance(self.line, RowNumber):
            object.__setattr__(self, "unit", "row")

    def __str__(self) -> str:
        if self.unit == "line":
            return f"{self.path}:{self.line}: {self.message}"
        return f"{self.path}:{self.unit} {self.line}: {self.message}"


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
    if resolved.stat().st_size == 0 or not resolved.read_bytes().decode("utf-8", errors="replace").strip():
        raise DataError(f"{path}:1: file is empty")
    return resolved


#: Line ends as Python's universal newlines read them (``\n``, ``\r\n``, ``\r``).
_LINE_END = re.compile(rb"\r\n|\r|\n")


def _utf8_problem(error: UnicodeDecodeError) -> str:
    bad = error.object[error.start : error.end]
    return (f"invalid UTF-8 ({error.reason}: byte{'s' if len(bad) > 1 else ''} {' '.join(f'0x{b:02x}' for b in bad)} "
            f"at column {error.start + 1}; "
            "save the file as UTF-8)")


def read_lines(path: str | Path, source: str | None = None) -> list[tuple[int, str | Problem]]:
    """``(line_number, text)`` for every line of a text file, decoded as UTF-8 line by line (a leading BOM
    dropped); a line that is not valid UTF-8 comes as a :class:`Problem` (``FILE:LINE: invalid UTF-8 (...)``)
    instead of its text."""
    source = str(path) if source is None else source
    data = open_checked(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines: list[tuple[int, str | Problem]] = []
    for number, raw in enumerate(_LINE_END.split(data), start=1):
        try:
            lines.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as e:
            lines.append((number, Problem(source, number, _utf8_problem(e))))
    return lines


def read_text(path: str | Path, source: str | None = None) -> str:
    """The text of a UTF-8 file (lines joined with ``\\n``); every line that is not valid UTF-8 is reported in one
    :class:`DataError`."""
    lines = read_lines(path, source)
    raise_problems([text for _, text in lines if isinstance(text, Problem)])
    return "\n".join(text for _, text in lines)  # type: ignore[misc]


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook`` for :func:`json.loads`: a key given twice in one object is an error (JSON
    parsers disagree on which value wins; Python silently keeps the last)."""
    value: dict = {}
    for key, item in pairs:
        if key in value:
            raise _DuplicateKey(key)
        value[key] = item
    return value


def loads(text: str) -> Any:
    """:func:`json.loads` that refuses duplicate keys (raising ``ValueError`` with the key)."""
    return json.loads(text, object_pairs_hook=_refuse_duplicates)


def _parse_line(text: str) -> Any:
    """The JSON value of one line, or a :class:`BadValue` saying what is wrong with it."""
    try:
        return loads(text)
    except _DuplicateKey as e:
        return BadValue(f"duplicate key {e.key!r}")
    except json.JSONDecodeError as e:
        return BadValue(f"not valid JSON ({e.msg} at column {e.colno})")


@dataclass(frozen=True)
class BadValue:
    """A line or array element that could not be read: :func:`read_rows` reports it with the other bad rows."""

    message: str


def iter_jsonl(path: str | Path, *, keep_bad: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line.

    A line that is not UTF-8, not JSON, or an object with a duplicate key is yielded as a :class:`BadValue`
    when ``keep_bad`` is true (:func:`read_rows` reports them with the other bad rows); otherwise all such lines
    are reported together in one :class:`DataError` once the file has been read.
    """
    source = str(path)
    problems: list[Problem] = []
    for number, text in read_lines(path, source):
        if isinstance(text, Problem):
            value: Any = BadValue(text.message)
        elif not text.strip():
            continue
        else:
            value = _parse_line(text)
        if isinstance(value, BadValue) and not keep_bad:
            problems.append(Problem(source, number, value.message))
        else:
            yield number, value
    raise_problems(problems)


Validator = Callable[[dict], "str | None"]


def check_columns(columns: dict | None, allowed: set[str] | frozenset[str] | Iterable[str]) -> None:
    """Check a ``columns`` mapping (our field name -> the file's column name) before reading anything.

    Raises :class:`ValueError` for a key that is not one of our ``allowed`` field names (a typo such as
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
            raise ValueError(f"columns: unknown field {ours!r}{hint}; the fields are {expected}")
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


def _plain(value: Any) -> Any:
    """``value`` as plain Python (str, int, float, bool, None, list, dict): numpy and pyarrow values converted."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "as_py"):  # pyarrow scalars and arrays
        return _plain(value.as_py())
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _plain(value.tolist())
    for kind in (bool, str, int, float):  # subclasses (numpy.str_, enum values)
        if isinstance(value, kind):
            return kind(value)
    return value


def _reason(error: BaseException) -> str:
    """A one-line reason for a failed load: the underlying error when ``datasets`` wraps it."""
    if type(error).__name__ == "DatasetGenerationError" and error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No ``datasets`` progress bars while reading (restored afterwards)."""
    import datasets

    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _load(source: str, load: Callable[[], Any], split: str | None = None) -> Any:
    """Run a ``datasets`` load; any failure is a one-line :class:`DataError` naming ``source``."""
    try:
        with _quiet_progress():
            loaded = load()
        if isinstance(loaded, dict):  # a DatasetDict (load_from_disk of a saved DatasetDict)
            name = split or "train"
            if name not in loaded:
                raise DataError(f"{source}: cannot load (no split {name!r}; the splits are: {', '.join(repr(k) for k in loaded)})")
            return loaded[name]
        if split not in (None, "train"):  # load_from_disk of a single saved Dataset: it has no splits
            raise DataError(f"{source}: cannot load (no split {split!r}; a dataset saved with save_to_disk has one)")
        return loaded
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever datasets raises, the user needs the source and the reason
        raise DataError(f"{source}: cannot load ({_reason(e)})") from None


def _load_dataset(source: str, target: Path | str, split: str | None) -> Any:
    """A ``datasets.Dataset`` for a local data file, a local directory or a hub dataset name."""
    import datasets

    if isinstance(target, Path) and target.is_file():
        builder = BUILDERS[target.suffix.lower()]
        kwargs: dict[str, Any] = {}
        if builder == "csv":
            # Text exactly as written: every column a string, no "NA"/"null"/empty cell turned into a null.
            _check_utf8(target, source)
            try:
                with target.open(encoding="utf-8", newline="") as f:
                    reader = csv.reader(f)
                    header, first = next(reader, []), next(reader, None)
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                raise DataError(f"{source}: cannot load ({_reason(e)})") from None
            if not header:
                raise DataError(f"{source}:1: file is empty")
            if first is None:
                raise DataError(f"{source}: no rows")
            repeated = [name for i, name in enumerate(header) if name in header[:i]]
            if repeated:
                raise DataError(f"{source}:1: duplicate column {repeated[0]!r}")
            kwargs = {
                "keep_default_na": False,
                "features": datasets.Features({name: datasets.Value("string") for name in header}),
            }
        return _load(source, lambda: datasets.load_dataset(builder, data_files=str(target), split="train", **kwargs))
    if isinstance(target, Path) and ((target / "state.json").is_file() or (target / "dataset_dict.json").is_file()):
        # written by Dataset.save_to_disk / DatasetDict.save_to_disk, which load_dataset refuses
        return _load(source, lambda: datasets.load_from_disk(str(target)), split)
    return _load(source, lambda: datasets.load_dataset(str(target), split=split or "train"))


def _check_utf8(target: Path, source: str) -> None:
    """Every line of ``target`` that is not valid UTF-8, reported in one :class:`DataError` (read as a stream)."""
    problems: list[Problem] = []
    with target.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(Problem(source, number, _utf8_problem(e)))
    raise_problems(problems)


def _dataset_values(source: str, dataset: Any, columns: dict[str, str]) -> Iterator[tuple[int, Any]]:
    """``(row_number, row)`` for each row of a ``datasets.Dataset``, 1-based, values as plain Python."""
    names = list(dataset.column_names)
    _check_present(source, columns, names)
    if len(dataset) == 0:
        raise DataError(f"{source}: no rows")
    number = 0
    for batch in dataset.with_format(None).iter(batch_size=1000):
        for values in zip(*(batch[name] for name in names)):
            number += 1
            yield RowNumber(number), {name: _plain(v) for name, v in zip(names, values)}


def _json_values(path: str | Path, source: str) -> Iterator[tuple[int, Any]] | None:
    """Rows of a ``.json`` file that holds one JSON array (row numbers), or ``None`` for JSON Lines."""
    lines = read_lines(path, source)
    bad = [text for _, text in lines if isinstance(text, Problem)]
    first = next((text for _, text in lines if isinstance(text, Problem) or text.strip()), "")
    start = "" if isinstance(first, Problem) else first.lstrip()[:1]
    if start not in ("[", "{"):
        return None
    if bad:  # JSON Lines report their bad lines with the other bad rows; an array cannot be read at all
        if start == "[":
            raise_problems(bad)
        return None
    text = "\n".join(text for _, text in lines)  # type: ignore[misc]
    duplicates: list[str] = []
    try:
        value = json.loads(text, object_pairs_hook=lambda pairs: _note_duplicates(pairs, duplicates))
    except json.JSONDecodeError as e:
        if start == "[" and e.msg != "Extra data":
            raise DataError(f"{source}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        return None  # JSON Lines (several values): read line by line
    if isinstance(value, dict):
        if len([line for line in text.splitlines() if line.strip()]) == 1:
            return None  # JSON Lines with one row
        raise DataError(f"{source}: one JSON object; expected JSON Lines (one object per line) or a JSON array of objects")
    if not value:
        raise DataError(f"{source}: no rows (an empty JSON array)")
    if duplicates:
        return _array_items(text)
    return ((RowNumber(i), item) for i, item in enumerate(value, start=1))


def _note_duplicates(pairs: list[tuple[str, Any]], duplicates: list[str]) -> dict:
    value = dict(pairs)
    if len(value) < len(pairs):
        duplicates.append(next(k for i, (k, _) in enumerate(pairs) if any(k == other for other, _ in pairs[:i])))
    return value


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _array_items(text: str) -> Iterator[tuple[int, Any]]:
    """The elements of a valid JSON array one by one, so that an element with a duplicate key is reported as a
    :class:`BadValue` at its own row."""
    decoder = json.JSONDecoder(object_pairs_hook=_refuse_duplicates)
    index = _WHITESPACE.match(text, 0).end() + 1  # past "["
    number = 0
    while True:
        index = _WHITESPACE.match(text, index).end()
        if text[index] == "]":
            return
        number += 1
        try:
            item, index = decoder.raw_decode(text, index)
        except _DuplicateKey as e:
            item = BadValue(f"duplicate key {e.key!r}")
            _, index = json.JSONDecoder().raw_decode(text, index)
        yield RowNumber(number), item
        index = _WHITESPACE.match(text, index).end()
        if text[index] == ",":
            index += 1


def _source(path: str | Path) -> tuple[str, Path | str, str | None]:
    """``("jsonl" | "json" | "file" | "dataset", target, split)`` for a ``read_rows`` source."""
    text = str(path)
    if text.startswith(bundled.PREFIX):
        return "jsonl", path, None
    resolved = Path(text).expanduser()
    base, split = text, None
    if not resolved.exists() and not text.lower().endswith(DATA_SUFFIXES) and _SPLIT.fullmatch(text):
        base, split = text.rsplit("@", 1)
        resolved = Path(base).expanduser()
    if resolved.is_file():
        if split is not None:
            raise DataError(f"{path}: a split (@{split}) applies only to a directory or a hub dataset, and {base} is a file")
        suffix = resolved.suffix.lower()
        if suffix == ".json":
            return "json", path, None
        if suffix in BUILDERS:
            return "file", resolved, None
        return "jsonl", path, None
    if resolved.is_dir():
        return "dataset", resolved, split
    if resolved.exists():
        raise DataError(f"{path}: not a file")
    if base.startswith((".", "/", "~")) or base.lower().endswith(DATA_SUFFIXES):
        raise DataError(f"{path}: file not found")
    return "dataset", base, split


def read_rows(
    path: str | Path,
    validate: Validator,
    *,
    keep: Callable[[dict], bool] | None = None,
    columns: dict[str, str] | None = None,
) -> list[tuple[int, dict]]:
    """Read the rows of a data source, validating every row.

    ``path`` is one of:

    * ``bundled:NAME``, a ``.jsonl`` file (or any file without a suffix below): JSON Lines, numbered by line;
    * a ``.json`` file: JSON Lines (numbered by line) or one JSON array of objects (numbered by row);
    * a ``.parquet``, ``.arrow`` (Arrow stream, as ``Dataset.save_to_disk`` writes) or ``.csv`` file (every
      column read as text), read with ``datasets.load_dataset``, numbered by row;
    * a local directory (``datasets.load_dataset(DIR)``, or ``load_from_disk`` for a ``save_to_disk``
      directory) or a ``datasets`` hub name, as ``NAME`` (split ``train``) or ``NAME@SPLIT``.

    ``columns`` maps our field names to the source's column names (``{"prompt": "question"}``); the mapped
    columns are renamed before validation and the other columns kept. A mapped column missing from the
    source is a :class:`DataError` naming the columns it has.

    ``validate(row)`` returns ``None`` for a good row or a message saying what is wrong with it; all the bad
    rows are reported together in one :class:`DataError` (``FILE:LINE: problem`` or ``FILE:row N: problem``).
    ``keep(row)`` filters good rows (for example by licence). Returns ``(number, row)`` pairs: line numbers
    (``int``) for JSON Lines, 1-based row indexes (:class:`RowNumber`) otherwise.
    """
    columns = _check_mapping(columns)
    source = str(path)
    kind, target, split = _source(path)
    values: Iterable[tuple[int, Any]] | None = None
    if kind == "json":
        values = _json_values(target, source)
    elif kind in ("file", "dataset"):
        values = _dataset_values(source, _load_dataset(source, target, split), columns)
    if values is None:
        values = iter_jsonl(target, keep_bad=True)
    if columns and kind in ("jsonl", "json"):
        values = list(values)
        present: dict[str, None] = {}
        for _, value in values:
            if isinstance(value, dict):
                present.update(dict.fromkeys(value))
        _check_present(source, columns, present)

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
    """Read a plain-text corpus whose documents are separated by blank lines (every line that is not valid
    UTF-8 reported in one :class:`DataError`)."""
    text = read_text(path)
    docs = [d.strip() for d in text.split("\n\n")]
    return [d for d in docs if d]


def check_range(name: str, value: Any, minimum: float | None = None, maximum: float | None = None, *,
                below: float | None = None, optional: bool = False) -> None:
    """Raise ``ValueError("NAME must be >= MIN, got VALUE")`` unless ``minimum <= value <= maximum`` and
    ``value < below`` (each bound only when given); ``None`` passes when ``optional``.

    The data modules call it in ``__init__``, so that a bad setting stops the run before any model is built.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN is no number here
        raise ValueError(f"{name} must be a number, got {value!r}")
    upper = below if below is not None else maximum
    if minimum is not None and upper is not None:
        what = f"in [{minimum}, {upper}{')' if below is not None else ']'}"
    elif minimum is not None:
        what = f">= {minimum}"
    else:
        what = f"< {below}" if below is not None else f"<= {maximum}"
    ok = ((minimum is None or value >= minimum) and (maximum is None or value <= maximum)
          and (below is None or value < below))
    if not ok:
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
