"""What a bad input is: :class:`DataError` and the :class:`Problem` s it lists, one ``FILE:LINE: what is wrong`` (or
``FILE:row N: what is wrong``) each; all the bad rows of a file are reported together (the first
:data:`MAX_REPORTED` of them), so a user fixes a file in one pass."""

from __future__ import annotations

from dataclasses import dataclass

MAX_REPORTED = 10


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

