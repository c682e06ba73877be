"""The data layer's error type: every problem named by file, row and column.

Its own module so that reading tables (``tables.py``) and checking rows (``validation.py``) can
both raise it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LISTED = 50


@dataclass
class Problem:
    """One bad cell, row, column or file. ``row`` is the 0-based data row (-1: not a row)."""

    source: str
    row: int
    column: str
    message: str
    where: str = ""

    def __str__(self) -> str:
        where = self.where or (f"row {self.row + 1}" if self.row >= 0 else "")
        column = f"column {self.column!r}: " if self.column else ""
        return ", ".join(p for p in (self.source, where) if p) + f", {column}{self.message}"


class DataError(ValueError):
    """Bad rows or columns; ``problems`` holds each one."""

    def __init__(self, problems: list[Problem], header: str | None = None, hint: bool = True, one_line: bool = False) -> None:
        self.problems = problems
        if one_line and header:  # a whole-table problem: the header says it all
            super().__init__(header)
            return
        shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        tip = "\nFix these rows, or set data.on_bad_row: skip to leave them out (they are listed in the run folder)." if hint else ""
        super().__init__((header or f"{len(problems)} problem(s) in the data:") + "\n" + shown + more + tip)


def table_error(source: str, message: str, column: str = "") -> DataError:
    """A problem with a whole table (its header, its size): one line, no per-row hint."""
    return DataError([Problem(source, -1, column, message, where="header" if column else "")], header=f"{source}: {message}", one_line=True)
