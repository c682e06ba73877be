"""Step 1 of a training run: read the train / validation / test tables, check every row, and
split a validation set off the training table when none is given."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmagent.config import ExperimentConfig
from mmagent.data.errors import table_error
from mmagent.data.tables import Table, read_table
from mmagent.data.validation import MIN_TRAIN_ROWS, Problem, check_training_data, validate_table
from mmagent.io import write_text


@dataclass
class Splits:
    train: Table
    validation: Table
    test: Table | None
    skipped: list[Problem] = field(default_factory=list)

    def sampled(self, config: ExperimentConfig) -> Splits:
        """These splits with training and validation cut to ``train.sample_rows`` and
        ``data.validation_rows`` (seeded, stratified samples; the same rows every time)."""
        train = sample_table(self.train, config.train.sample_rows, config)
        validation = sample_table(self.validation, config.data.validation_rows, config)
        return self if train is self.train and validation is self.validation else Splits(train, validation, self.test, self.skipped)


def load_splits(config: ExperimentConfig) -> Splits:
    """Read train / validation / test, check every row (all problems reported at once). Done once
    per fit or tune: the candidates get these :class:`Splits`, not the files."""
    train, skipped = _checked_file(config, config.data.train)  # type: ignore[arg-type]
    skipped = list(skipped)
    if config.data.validation:
        validation, bad = _checked_file(config, config.data.validation)
        skipped += bad
    else:
        train, validation = split_validation(train, config)
    test = None
    if config.data.test:
        test, bad = _checked_file(config, config.data.test)
        skipped += bad
    return check_training_data(config, Splits(train, validation, test, skipped))


def _checked_file(config: ExperimentConfig, name: str) -> tuple[Table, list[Problem]]:
    return validate_table(read_table(Path(config.resolve(name))), config.inputs, config.targets, config.data.on_bad_row)  # type: ignore[arg-type]


def shares_splits(params: Any) -> bool:
    """Whether trials that set these dotted paths can all use the base config's :class:`Splits`:
    only encoders, training and fusion settings (not the data, the targets, an input's columns, or
    the seed that cuts a validation split off the training table)."""
    return all(not (k.startswith(("data", "targets", "train.seed")) or (k.startswith("inputs") and ".encoder" not in k)) for k in params)


def split_validation(table: Table, config: ExperimentConfig) -> tuple[Table, Table]:
    """Seeded split, stratified on the first classification target when every class allows it."""
    from sklearn.model_selection import train_test_split

    from mmagent.data.tables import label_text

    if len(table) < MIN_TRAIN_ROWS:  # before scikit-learn's own, less telling error
        raise table_error(table.source, f"too few rows: need at least {MIN_TRAIN_ROWS} training rows (and some to hold out for validation), have {len(table)}")
    idx = list(range(len(table)))
    strat = None
    first = next((t for t in config.targets if t.type == "classification"), None)
    if first is not None:
        labels = [label_text(v) for v in table.column_values(first.column)]
        counts = Counter(labels)
        n_val = math.ceil(config.data.validation_fraction * len(idx))
        if min(counts.values()) >= 2 and n_val >= len(counts):
            strat = labels
    train_idx, val_idx = train_test_split(idx, test_size=config.data.validation_fraction, random_state=config.train.seed, stratify=strat)
    return table.subset(sorted(train_idx)), table.subset(sorted(val_idx))


def sample_table(table: Table, rows: int | None, config: ExperimentConfig) -> Table:
    """A seeded sample of ``rows`` rows of ``table`` (in file order), stratified on the first
    classification target when every class allows it; ``table`` itself when it has no more rows."""
    if rows is None or rows >= len(table):
        return table
    from sklearn.model_selection import train_test_split

    first = next((t for t in config.targets if t.type == "classification"), None)
    labels = None
    if first is not None and first.column in table.frame.columns:
        labels = table.frame[first.column].astype(str).to_numpy()
        counts = np.unique(labels, return_counts=True)[1]
        if counts.min() < 2 or rows < len(counts) or len(table) - rows < len(counts):
            labels = None
    kept, _ = train_test_split(np.arange(len(table)), train_size=rows, random_state=config.train.seed, stratify=labels)
    return table.subset(np.sort(kept))


def write_skipped(path: Path, problems: list[Problem]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "row", "column", "problem"])
    for p in problems:
        w.writerow([p.source, p.row + 1, p.column, p.message])
    write_text(path, buf.getvalue())
