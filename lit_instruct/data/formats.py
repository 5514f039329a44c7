"""Reading data sources as numbered values: JSON Lines, JSON arrays, Parquet, Arrow and CSV files, ``datasets``
directories and hub datasets, and plain-text corpora.

Text is decoded as UTF-8 line by line, so that a bad byte is reported at its line; a JSON object with a key given
twice is refused (JSON parsers disagree on which value wins). :func:`lit_instruct.data.records.read_rows` turns the
values into validated rows.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_instruct import bundled
from lit_instruct.data.problems import DataError, Problem, RowNumber, raise_problems

#: Local file suffixes read through a ``datasets`` builder (``.json`` is read with :mod:`json`, see
#: :func:`read_rows`); any other existing file is read as JSON Lines.
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
#: Suffixes that make a missing source a missing file rather than a hub dataset name.
DATA_SUFFIXES = (".jsonl", ".json", *BUILDERS)
#: ``SOURCE@SPLIT``: a split name (``datasets`` slicing such as ``train[:100]`` included) after the last ``@``.
_SPLIT = re.compile(r".+@[\w.\-\[\]:%+]+")


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


def read_lines(path: str | Path) -> list[tuple[int, str | Problem]]:
    """``(line_number, text)`` for every line of a text file, decoded as UTF-8 line by line (a leading BOM
    dropped); a line that is not valid UTF-8 comes as a :class:`Problem` (``FILE:LINE: invalid UTF-8 (...)``)
    instead of its text."""
    source = str(path)
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


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (lines joined with ``\\n``); every line that is not valid UTF-8 is reported in one
    :class:`DataError`."""
    lines = read_lines(path)
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


def _parse_line(text: str) -> Any:
    """The JSON value of one line, or a :class:`BadValue` saying what is wrong with it."""
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as e:
        return BadValue(f"duplicate key {e.key!r}")
    except json.JSONDecodeError as e:
        return BadValue(f"not valid JSON ({e.msg} at column {e.colno})")


@dataclass(frozen=True)
class BadValue:
    """A line or array element that could not be read: :func:`read_rows` reports it with the other bad rows."""

    message: str


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line; a line that is not UTF-8, not JSON, or an object with
    a duplicate key comes as a :class:`BadValue` (:func:`read_rows` reports them with the other bad rows)."""
    for number, text in read_lines(path):
        if isinstance(text, Problem):
            yield number, BadValue(text.message)
        elif text.strip():
            yield number, _parse_line(text)


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


def _dataset_values(source: str, dataset: Any) -> Iterator[tuple[int, Any]]:
    """``(row_number, row)`` for each row of a ``datasets.Dataset``, 1-based, values as plain Python."""
    names = list(dataset.column_names)
    if len(dataset) == 0:
        raise DataError(f"{source}: no rows")
    number = 0
    for batch in dataset.with_format(None).iter(batch_size=1000):
        for values in zip(*(batch[name] for name in names)):
            number += 1
            yield RowNumber(number), {name: _plain(v) for name, v in zip(names, values)}


def _json_values(path: str | Path) -> Iterator[tuple[int, Any]] | None:
    """Rows of a ``.json`` file that holds one JSON array (row numbers), or ``None`` for JSON Lines."""
    source = str(path)
    lines = read_lines(path)
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


def read_values(path: str | Path) -> tuple[Iterable[tuple[int, Any]], list[str] | None]:
    """The numbered values of a source (line numbers for JSON Lines, :class:`RowNumber` s otherwise; a value that
    cannot be read comes as a :class:`BadValue`), and its column names when it has a schema (``None``: JSON).

    ``path`` is one of:

    * ``bundled:NAME``, a ``.jsonl`` file (or any file without a suffix below): JSON Lines, numbered by line;
    * a ``.json`` file: JSON Lines (numbered by line) or one JSON array of objects (numbered by row);
    * a ``.parquet``, ``.arrow`` (Arrow stream, as ``Dataset.save_to_disk`` writes) or ``.csv`` file (every
      column read as text), read with ``datasets.load_dataset``, numbered by row;
    * a local directory (``datasets.load_dataset(DIR)``, or ``load_from_disk`` for a ``save_to_disk``
      directory) or a ``datasets`` hub name, as ``NAME`` (split ``train``) or ``NAME@SPLIT``.
    """
    source = str(path)
    kind, target, split = _source(path)
    if kind in ("file", "dataset"):
        dataset = _load_dataset(source, target, split)
        return _dataset_values(source, dataset), list(dataset.column_names)
    values = _json_values(target) if kind == "json" else None
    return (iter_jsonl(target) if values is None else values), None


def read_documents(path: str | Path) -> list[str]:
    """Read a plain-text corpus whose documents are separated by blank lines (every line that is not valid
    UTF-8 reported in one :class:`DataError`)."""
    text = read_text(path)
    docs = [d.strip() for d in text.split("\n\n")]
    return [d for d in docs if d]

