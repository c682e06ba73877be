"""Reading tables (CSV, JSONL, Parquet or a DataFrame) and turning cells into model inputs/targets."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmagent.data.errors import DataError, Problem, table_error

# Numbers beyond this are refused: the model computes in float32 (max ~3.4e38) and standardizing
# squares values, so 1e300 or even 1e20 turns into inf and every loss into NaN.
MAX_ABS_NUMBER = 1e15

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class Table:
    """Rows as dicts plus where they came from (for error messages and relative media paths)."""

    def __init__(self, frame: pd.DataFrame, source: str = "<dataframe>", base_dir: str | Path = ".", rows: list[int] | None = None) -> None:
        dupes = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        if dupes:  # records keep only one of them: a silently lost column
            raise table_error(source, f"duplicate column header(s) {dupes}; every column needs its own name", dupes[0])
        self.frame = frame.reset_index(drop=True)
        self.source = source
        self.base_dir = Path(base_dir)
        self._records: list[dict[str, Any]] | None = None
        # Row numbers in the original file, so a subset (a validation split) still names file rows.
        self.rows = list(rows) if rows is not None else list(range(len(self.frame)))

    @property
    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts of native Python values, built on first use: a split or a sample of a
        large table that is never iterated never pays for them (a million rows: ~6 s and ~1 GB)."""
        if self._records is None:
            self._records = list(self.iter_records())
        return self._records

    def iter_records(self, chunk: int = 65_536) -> Iterator[dict[str, Any]]:
        """The rows as :attr:`records` gives them, built chunk by chunk and not kept: a pass over a
        large table (the row checks) holds one chunk's dicts, not a million."""
        if self._records is not None:
            yield from self._records
            return
        names = list(self.frame.columns)
        # column-wise tolist(): native values, NaN for missing, 5x faster than to_dict("records")
        for start in range(0, len(self.frame), chunk):
            part = self.frame.iloc[start : start + chunk]
            columns = [part[c].tolist() for c in names]
            yield from (dict(zip(names, values)) for values in zip(*columns)) if names else ({} for _ in range(len(part)))

    def column_values(self, name: str) -> list[Any]:
        """One column's cells as native values (None everywhere when the table has no such column)."""
        return self.frame[name].tolist() if name in self.frame.columns else [None] * len(self.frame)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def subset(self, rows: list[int] | np.ndarray) -> Table:
        rows = list(rows)
        return Table(self.frame.iloc[rows], self.source, self.base_dir, [self.rows[i] for i in rows])

    def where(self, row: int) -> str:
        """Human location of a row in its file: 1-based data rows; CSV line = row + 1 (header)."""
        n = self.rows[row] if 0 <= row < len(self.rows) else row
        return f"row {n + 1}" + (f" (line {n + 2})" if self.source.endswith((".csv", ".tsv")) else "")


def read_table(path: str | Path, base_dir: str | Path | None = None) -> Table:
    """Read a CSV / TSV / JSONL / Parquet file. Media paths in it are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unsupported table format {path.suffix!r}; use one of {sorted(TABLE_FORMATS)}")
    if kind == "jsonl":
        frame = _read_jsonl(path)
    else:
        try:
            if kind in ("csv", "tsv"):
                sep = "," if kind == "csv" else "\t"
                # pandas renames a repeated header to "name.1": read the header as written first.
                header = pd.read_csv(path, sep=sep, dtype=str, header=None, nrows=1, keep_default_na=False)
                _refuse_duplicates(str(path), [str(c) for c in header.iloc[0]] if len(header) else [])
                # Strings stay strings ("007" is a label, not 7); numeric columns are parsed when used.
                frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
            else:
                frame = pd.read_parquet(path)
        except DataError:
            raise
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except Exception as e:
            raise ValueError(f"{path}: cannot read table: {e}") from e
    return Table(frame, str(path), base_dir if base_dir is not None else path.parent)


def not_utf8(path: Path) -> DataError:
    """The first byte of ``path`` that is not UTF-8, named by line, row and (CSV / TSV) column:
    pandas reports a position inside whatever chunk it was decoding, and no row."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return table_error(str(path), "cannot read table: not UTF-8 text")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = ""
        sep = {".csv": b",", ".tsv": b"\t"}.get(path.suffix.lower())
        if sep and line > 1:
            header = data[: data.find(b"\n")].rstrip(b"\r").split(sep)
            cell = data[data.rfind(b"\n", 0, e.start) + 1 : e.start].count(sep)
            column = header[cell].decode("utf-8", errors="replace").strip('"') if cell < len(header) else ""
        where = f"line {line}" + (f" (row {line - 1})" if sep and line > 1 else "")
        message = f"byte {data[e.start]:#04x} is not UTF-8: save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 IN > OUT)"
        return DataError([Problem(str(path), line - 2 if sep else line - 1, column, message, where)])


def _refuse_duplicates(source: str, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise table_error(source, f"duplicate column header(s) {dupes}; every column needs its own name", dupes[0])


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line (a ``.json`` file may also hold one array of objects). Errors name
    the line; a key repeated inside one object is an error (JSON keeps only the last)."""
    problems: list[Problem] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"duplicate key(s) {dupes}")
        return dict(items)

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text, object_pairs_hook=pairs)
        except ValueError as e:
            raise ValueError(f"{path}: cannot read table: {e}") from None
        lines = list(range(1, len(records) + 1))
    else:
        records, lines = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line, object_pairs_hook=pairs))
                lines.append(number)
            except ValueError as e:
                problems.append(Problem(str(path), -1, "", f"not a JSON object: {e}", where=f"line {number}"))
    for number, rec in zip(lines, records):
        if not isinstance(rec, dict) and len(problems) < 50:
            problems.append(Problem(str(path), -1, "", f"expected a JSON object of column -> value, got {type(rec).__name__}", where=f"line {number}"))
    if problems:
        raise DataError(problems, header=f"{path}: cannot read table:", hint=False)
    return pd.DataFrame.from_records(records)


def as_table(data: Any, base_dir: str | Path = ".") -> Table:
    """A Table from a path, a DataFrame, a list of record dicts or one record dict."""
    if isinstance(data, Table):
        return data
    if isinstance(data, (str, Path)):
        return read_table(data)
    if isinstance(data, pd.DataFrame):
        return Table(data, base_dir=base_dir)
    if isinstance(data, dict):
        data = [data]
    records = list(data)
    broken = [
        Problem("<records>", i, str(k), SURROGATE_MESSAGE) for i, r in enumerate(records) if isinstance(r, dict) for k, v in r.items() if has_lone_surrogate(v)
    ]
    if broken:  # pandas' string arrays would raise a bare UnicodeEncodeError
        raise DataError(broken)
    return Table(pd.DataFrame.from_records(records), "<records>", base_dir)


SURROGATE_MESSAGE = "text holds a lone surrogate (half of a broken UTF-16 pair) that no tokenizer can read; fix or drop that character"


def has_lone_surrogate(value: Any) -> bool:
    """A string that cannot be written as UTF-8 (``"\\ud800"`` from a JSON escape or a bad decode)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def is_empty(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:  # nullable Parquet / pandas columns
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return False


def label_text(value: Any) -> str:
    """Canonical label string: 1.0 -> "1", " spam " -> "spam"."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def split_labels(value: Any, separator: str) -> list[str]:
    """A multilabel cell: 'a|b', a list, or empty (no labels)."""
    if is_empty(value):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [label_text(v) for v in value]
    return [p.strip() for p in str(value).split(separator) if p.strip()]


def parse_number(value: Any) -> float:
    """float(value) for a number or numeric text; an empty cell is NaN (missing). Raises
    ValueError, quoting the cell, for text that is not a number and for inf / NaN text / numbers
    beyond ±:data:`MAX_ABS_NUMBER` (they overflow the model's float32 arithmetic)."""
    if is_empty(value):
        return float("nan")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating, str)):
        raise ValueError(f"not a number: {type(value).__name__} {show_cell(value)}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):  # OverflowError: an int with thousands of digits
        raise ValueError(f"not a number: {show_cell(value)}") from None
    if not math.isfinite(number) or abs(number) > MAX_ABS_NUMBER:
        raise ValueError(f"not a finite number within ±{MAX_ABS_NUMBER:g}: {show_cell(value)}")
    return number


def show_cell(value: Any) -> str:
    """A cell, quoted and cut short, for a message (str() of a huge int itself raises)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return repr(str(value)[:40])


def resolve_media(value: Any, base_dir: Path) -> Any:
    """Relative path strings are taken from the table's folder; other values pass through."""
    if isinstance(value, str):
        p = Path(value).expanduser()
        return p if p.is_absolute() else base_dir / p
    return value
