"""Reading tables (CSV, JSONL, Parquet or a DataFrame) and turning cells into model inputs/targets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class Table:
    """Rows as dicts plus where they came from (for error messages and relative media paths)."""

    def __init__(self, frame: pd.DataFrame, source: str = "<dataframe>", base_dir: str | Path = ".") -> None:
        self.frame = frame.reset_index(drop=True)
        self.source = source
        self.base_dir = Path(base_dir)
        self.records: list[dict[str, Any]] = self.frame.to_dict("records")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def subset(self, rows: list[int] | np.ndarray) -> "Table":
        return Table(self.frame.iloc[list(rows)], self.source, self.base_dir)

    def where(self, row: int) -> str:
        """Human location of a row: CSV rows are 1-based data rows; line = row + 1 (header)."""
        return f"row {row + 1}" + (f" (line {row + 2})" if self.source.endswith((".csv", ".tsv")) else "")


def read_table(path: str | Path, base_dir: str | Path | None = None) -> Table:
    """Read a CSV / TSV / JSONL / Parquet file. Media paths in it are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unsupported table format {path.suffix!r}; use one of {sorted(TABLE_FORMATS)}")
    try:
        if kind in ("csv", "tsv"):
            # Strings stay strings ("007" is a label, not 7); numeric columns are parsed when used.
            frame = pd.read_csv(path, sep="," if kind == "csv" else "\t", dtype=str, keep_default_na=False, na_values=[""])
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(path)
    except Exception as e:
        raise ValueError(f"{path}: cannot read table: {e}") from e
    return Table(frame, str(path), base_dir if base_dir is not None else path.parent)


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
    return Table(pd.DataFrame.from_records(list(data)), "<records>", base_dir)


def is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
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
    """float(value), also for '1,5'-free strings; raises ValueError with the offending text."""
    if is_empty(value):
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError(f"not a number: {str(value)[:40]!r}") from None


def resolve_media(value: Any, base_dir: Path) -> Any:
    """Relative path strings are taken from the table's folder; other values pass through."""
    if isinstance(value, str):
        p = Path(value).expanduser()
        return p if p.is_absolute() else base_dir / p
    return value
