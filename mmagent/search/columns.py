"""Column inference for ``mmagent fit``: what each column of a bare table is, and why.

For every column but the label we decide one kind:

``text``         free text (several words per cell, many distinct values)
``categorical``  a few distinct short values (a colour, a country, a product code)
``numeric``      numbers (also numbers stored as text: the CSV reader keeps every cell a string)
``image``        paths to image files — by extension *and* by decoding a sample of them
``audio``        paths to audio files — same
``ignore``       not a feature: empty, constant, an id (unique per row), a copy of the label,
                 media paths that do not decode, or (given held-out tables) the column the
                 splits were cut on: a recording number whose test values never occur in training

The label column gives the task: ``multilabel`` when cells hold ``a|b`` sets, ``regression`` for
numbers with many distinct values, else ``classification``. Each decision keeps its reason, so
the printed schema explains itself, and ``--column-type COL=KIND`` overrides any of them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from mmagent.data.tables import Table, is_empty, parse_number, resolve_media
from mmagent.encoders.media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, MediaError, audio_seconds, load_audio, load_image

ColumnKind = Literal["text", "categorical", "numeric", "image", "audio", "ignore"]
TaskKind = Literal["classification", "multilabel", "regression"]
KINDS: tuple[str, ...] = ("text", "categorical", "numeric", "image", "audio", "ignore")

MEDIA_SAMPLE = 8  # files decoded per media column: enough to tell, cheap on a large table
ID_NAME = re.compile(r"(^|[_\s-])(id|uuid|guid|key|index|idx)$|^(id|uuid|guid|index|idx)([_\s-]|$)", re.IGNORECASE)
MULTILABEL_SEPARATOR = "|"


class ColumnDecision(BaseModel):
    """One column's kind and the reason for it."""

    column: str
    kind: ColumnKind
    reason: str
    overridden: bool = False


class Schema(BaseModel):
    """The inferred schema of a table: the label's task and a decision per other column."""

    label: str
    task: TaskKind
    task_reason: str
    columns: list[ColumnDecision]

    def of_kind(self, kind: str) -> list[str]:
        return [c.column for c in self.columns if c.kind == kind]

    def table(self) -> str:
        """The schema as an aligned text table, for the terminal and the run report."""
        rows = [("column", "kind", "why")] + [(c.column, c.kind + (" (given)" if c.overridden else ""), c.reason) for c in self.columns]
        rows.append((self.label, f"label: {self.task}", self.task_reason))
        width = [max(len(r[i]) for r in rows) for i in range(2)]
        lines = [f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]}" for r in rows]
        lines.insert(1, "-" * min(100, max(len(line) for line in lines)))
        return "\n".join(lines)


def parse_column_types(items: list[str] | dict[str, str] | None) -> dict[str, str]:
    """``["col=image", ...]`` (the CLI form) or a dict -> {column: kind}, checked."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else [_split_pair(i) for i in items]
    out = {}
    for column, kind in pairs:
        if kind not in KINDS:
            raise ValueError(f"--column-type {column}={kind}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        out[column] = kind
    return out


def _split_pair(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"--column-type {item!r} must look like COLUMN=KIND (e.g. photo=image)")
    column, kind = item.rsplit("=", 1)
    return column.strip(), kind.strip().lower()


# A column's kind shows in a hundred thousand rows as well as in a million (a 1M-row table took
# 18 s to infer on all of them): larger tables are read off an evenly spread sample of this size.
SCHEMA_SAMPLE_ROWS = 100_000


def infer_schema(table: Table, label: str, column_types: dict[str, str] | None = None) -> Schema:
    """Decide the task from ``label`` and a kind for every other column of ``table`` (of a spread-out
    sample of :data:`SCHEMA_SAMPLE_ROWS` rows when it has more)."""
    column_types = column_types or {}
    if label not in table.columns:
        raise ValueError(f"label column {label!r} is not in {table.source}; its columns are: {', '.join(table.columns)}")
    unknown = sorted(set(column_types) - set(table.columns))
    if unknown:
        raise ValueError(f"--column-type names column(s) {unknown} that {table.source} does not have; its columns are: {', '.join(table.columns)}")
    if len(table) > SCHEMA_SAMPLE_ROWS:  # kinds are read off a spread-out sample; every row is still checked before training
        picks = np.linspace(0, len(table) - 1, num=SCHEMA_SAMPLE_ROWS).round().astype(int)
        table = table.subset(np.unique(picks))
    labels = table.frame[label]
    task, task_reason = infer_task(labels)
    decisions = []
    for column in table.columns:
        if column == label:
            continue
        if column in column_types:
            decisions.append(ColumnDecision(column=column, kind=column_types[column], reason="set with --column-type", overridden=True))
            continue
        kind, reason = infer_column(table, column, labels)
        decisions.append(ColumnDecision(column=column, kind=kind, reason=reason))
    return Schema(label=label, task=task, task_reason=task_reason, columns=decisions)


def ignore_split_keys(schema: Schema, train: Table, held_out: list[Table]) -> Schema:
    """Ignore numeric and categorical columns that the splits were cut on: every held-out value lies
    outside the training range (numbers) or never occurs in training (categories). Such a column
    cannot generalise from train to test: it only tells the model which split a row is in.
    Columns set with ``--column-type`` are kept."""
    held_out = [t for t in held_out if len(t) >= 5]  # a handful of rows can miss a range by chance
    if not held_out:
        return schema
    columns = []
    for c in schema.columns:
        reason = None if c.overridden or c.kind not in ("numeric", "categorical") else _split_key(c, train, held_out)
        columns.append(c.model_copy(update={"kind": "ignore", "reason": reason}) if reason else c)
    return schema.model_copy(update={"columns": columns})


def _split_key(decision: ColumnDecision, train: Table, held_out: list[Table]) -> str | None:
    col = decision.column
    if any(col not in t.columns for t in held_out):
        return None
    if decision.kind == "numeric":
        seen = _column_numbers(train, col)
        parts = []
        for t in held_out:
            values = _column_numbers(t, col)
            if seen is None or values is None or np.any((values >= seen.min()) & (values <= seen.max())):
                return None
            parts.append(f"{Path(t.source).name} {values.min():g}..{values.max():g}")
        return f"the splits are cut on it: training {seen.min():g}..{seen.max():g}, {', '.join(parts)} (cannot generalise)"  # type: ignore[union-attr]
    seen_cats = {str(v).strip() for v in train.frame[col].tolist() if not is_empty(v)}
    for t in held_out:
        values = {str(v).strip() for v in t.frame[col].tolist() if not is_empty(v)}
        if not values or values & seen_cats:
            return None
    return "the splits are cut on it: no held-out value occurs in training (cannot generalise)"


def _column_numbers(table: Table, column: str) -> np.ndarray | None:
    values = _numbers([v for v in table.frame[column].tolist() if not is_empty(v)])
    return values if values is not None and len(values) else None


def infer_task(labels: Any) -> tuple[TaskKind, str]:
    """The task a label column asks for, with the reason."""
    values = [v for v in labels.tolist() if not is_empty(v)]
    if not values:
        raise ValueError("the label column is empty in every row")
    as_text = [str(v) for v in values]
    with_separator = sum(MULTILABEL_SEPARATOR in v for v in as_text)
    if with_separator >= max(1, 0.05 * len(values)):
        sets = {p.strip() for v in as_text for p in v.split(MULTILABEL_SEPARATOR) if p.strip()}
        return "multilabel", f"{with_separator} cells hold several labels separated by '{MULTILABEL_SEPARATOR}' ({len(sets)} labels)"
    numbers = _numbers(values)
    distinct = len(set(as_text))
    if numbers is not None:
        integers = bool(np.all(np.equal(np.mod(numbers, 1), 0)))
        if not integers or distinct > 20:
            return "regression", f"numbers with {distinct} distinct values" + ("" if integers else ", not whole")
        return (
            "classification",
            f"{distinct} distinct whole numbers: treated as classes (--column-type cannot change the label; set the task in the config if it is a quantity)",
        )
    if distinct < 2:
        raise ValueError(f"the label column has a single value ({as_text[0]!r}): nothing to learn")
    return "classification", f"{distinct} classes"


def infer_column(table: Table, column: str, labels: Any) -> tuple[ColumnKind, str]:
    """One column's kind and the reason, from its cells (and a decoded sample for media)."""
    cells = table.frame[column].tolist()
    present = [v for v in cells if not is_empty(v)]
    n = len(cells)
    if not present:
        return "ignore", "empty in every row"
    distinct = len({str(v).strip() for v in present})
    if distinct == 1:
        return "ignore", f"constant ({str(present[0])[:30]!r} in every filled row)"
    if _copies_label(cells, labels):
        return "ignore", "a copy of the label (would leak the answer)"
    missing = f"; empty in {n - len(present)} rows" if len(present) < n else ""

    media = _media_kind(present)
    if media is not None:
        return _check_media(table, column, present, media, missing)

    numbers = _numbers(present)
    if numbers is not None:
        whole = bool(np.all(np.equal(np.mod(numbers, 1), 0)))
        if whole and distinct == len(present) and (ID_NAME.search(column) or _is_sequence(numbers)):
            return "ignore", "id-like: a different whole number in every row" + (" (the name says id)" if ID_NAME.search(column) else ", counting up")
        stored = " stored as text" if any(isinstance(v, str) for v in present) else ""
        return "numeric", f"numbers{stored}, {distinct} distinct values{missing}"

    texts = [str(v) for v in present]
    if _are_dates(texts):
        return "ignore", "dates / times: not used as a feature (fit does not model time)"
    words = float(np.mean([len(t.split()) for t in texts]))
    if distinct == len(present) and words < 1.5 and len(present) >= 20:
        return "ignore", "id-like: a different single token in every row"
    if ID_NAME.search(column) and distinct > 0.9 * len(present):
        return "ignore", "id-like: named like an id and almost unique"
    if words <= 3 and (distinct <= 50 and distinct <= max(2, 0.2 * len(present))):
        return "categorical", f"{distinct} distinct short values{missing}"
    return "text", f"free text, {words:.1f} words on average, {distinct} distinct values{missing}"


def _numbers(values: list[Any]) -> np.ndarray | None:
    """All values as floats when every one parses (the same parser training uses), else None."""
    try:
        out = np.array([parse_number(v) for v in values], dtype=float)
    except (ValueError, TypeError, OverflowError):
        return None
    return out if np.isfinite(out).all() else None


DATE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2})?)?|^\d{1,2}/\d{1,2}/\d{2,4}$")


def _are_dates(texts: list[str]) -> bool:
    """Most cells look like and parse as dates (2015-01-02, 1/2/2015, 2015-01-02 09:30)."""
    import pandas as pd

    looks = [t for t in texts if DATE.match(t.strip())]
    if len(looks) < 0.95 * len(texts):
        return False
    parsed = pd.to_datetime(pd.Series(looks), errors="coerce", format="mixed")
    return bool(parsed.notna().mean() >= 0.95)


def _is_sequence(numbers: np.ndarray) -> bool:
    """1, 2, 3, ... in some order: a row counter, not a measurement."""
    ordered = np.sort(numbers)
    return len(ordered) >= 10 and bool(np.all(np.diff(ordered) == 1))


def _copies_label(cells: list[Any], labels: Any) -> bool:
    """True when the column determines the label one-to-one (the label under another name)."""
    pairs = {(str(c).strip(), str(v).strip()) for c, v in zip(cells, labels.tolist()) if not is_empty(c) and not is_empty(v)}
    if len(pairs) < 2:
        return False
    left = {a for a, _ in pairs}
    right = {b for _, b in pairs}
    return len(pairs) == len(left) == len(right) and len(left) < 0.5 * len(cells) + 1


def _media_kind(present: list[Any]) -> str | None:
    """'image' / 'audio' when most filled cells are paths with that kind's extension."""
    suffixes = [Path(str(v)).suffix.lower() if isinstance(v, str) and len(v) < 1024 else "" for v in present]
    for kind, extensions in (("image", IMAGE_EXTENSIONS), ("audio", AUDIO_EXTENSIONS)):
        if sum(s in extensions for s in suffixes) >= 0.9 * len(present):
            return kind
    return None


def _check_media(table: Table, column: str, present: list[Any], kind: str, missing: str) -> tuple[ColumnKind, str]:
    """Decode a spread-out sample of the files: paths that do not decode are not a usable input."""
    picks = np.linspace(0, len(present) - 1, num=min(MEDIA_SAMPLE, len(present))).round().astype(int)
    ok, failures = 0, []
    for i in sorted(set(picks.tolist())):
        path = resolve_media(present[i], table.base_dir)
        try:
            if kind == "image":
                load_image(path)
            else:
                load_audio(path, target_sr=16_000, max_seconds=1.0)
            ok += 1
        except (MediaError, OSError, ValueError, RuntimeError) as e:
            failures.append(f"{Path(str(path)).name}: {str(e)[:60]}")
    tried = ok + len(failures)
    if ok == 0:
        return "ignore", f"{kind} paths, but none of {tried} sampled files decodes ({failures[0]})"
    note = f"; {len(failures)} of {tried} sampled files do not decode ({failures[0]})" if failures else ""
    return kind, f"{kind} file paths; {ok} of {tried} sampled files decode{note}{missing}"  # type: ignore[return-value]


def audio_window(table: Table, column: str, sample: int = 64, longest: float = 30.0) -> tuple[float, str]:
    """The clip length an audio encoder should take for ``column``: the 95th percentile of the
    durations of a spread-out sample of its files (read from the headers), rounded up to half a
    second, between 1 s and ``longest``. Whisper's cost grows with its window: spoken digits
    (under a second) in the 5 s default window cost 5x the work for nothing."""
    present = [v for v in table.frame[column].tolist() if not is_empty(v)]
    if not present:
        return longest, "no clips to measure"
    picks = sorted(set(np.linspace(0, len(present) - 1, num=min(sample, len(present))).round().astype(int).tolist()))
    durations = [d for d in (audio_seconds(resolve_media(present[i], table.base_dir), 16_000) for i in picks) if d > 0]
    if not durations:
        return longest, "no sampled clip has a readable length"
    p95 = float(np.percentile(durations, 95))
    window = float(min(longest, max(1.0, np.ceil(2 * p95) / 2)))
    return window, f"{window:g} s window: 95 % of {len(durations)} sampled clips last <= {p95:.2f} s (longest {max(durations):.2f} s)"
