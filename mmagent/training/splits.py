"""Step 1 of a training run: read the train / validation / test tables, check every row, and
split a validation set off the training table when none is given."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmagent.config import ExperimentConfig
from mmagent.data.errors import table_error
from mmagent.data.tables import Table, as_table, read_table
from mmagent.data.validation import MIN_TRAIN_ROWS, Problem, check_training_data, validate_table
from mmagent.io import write_text


@dataclass
class Splits:
    train: Table
    validation: Table
    test: Table | None
    skipped: list[Problem] = field(default_factory=list)


# Checked tables by file identity and what the check depends on: a ``fit`` search trains dozens
# of candidates on the same files, and checking decodes every image and audio clip once more.
_CHECKED: dict[tuple[Any, ...], tuple[Table, list[Problem]]] = {}
_CHECKED_MAX = 8


def load_splits(config: ExperimentConfig, train_data: Any = None) -> Splits:
    """Read train / validation / test, check every row (all problems reported at once)."""
    if train_data is not None:
        train, skipped = validate_table(as_table(train_data), config.inputs, config.targets, config.data.on_bad_row)
    else:
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
    """``validate_table`` on a file, remembered while the file is unchanged (same size and mtime)
    and the inputs (but their encoders, which checking does not use), targets and bad-row policy
    are the same. Tables are never modified after checking, so sharing them is safe."""
    path = Path(config.resolve(name))
    stat = path.stat()
    key = (
        str(path.resolve()),
        stat.st_mtime_ns,
        stat.st_size,
        tuple(i.model_dump_json(exclude={"encoder"}) for i in config.inputs),
        tuple(t.model_dump_json() for t in config.targets),
        config.data.on_bad_row,
    )
    if key not in _CHECKED:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.pop(next(iter(_CHECKED)))
        _CHECKED[key] = validate_table(read_table(path), config.inputs, config.targets, config.data.on_bad_row)
    table, problems = _CHECKED[key]
    return table, list(problems)


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
        labels = [label_text(r.get(first.column)) for r in table.records]
        counts = {lab: labels.count(lab) for lab in set(labels)}
        n_val = math.ceil(config.data.validation_fraction * len(idx))
        if min(counts.values()) >= 2 and n_val >= len(counts):
            strat = labels
    train_idx, val_idx = train_test_split(idx, test_size=config.data.validation_fraction, random_state=config.train.seed, stratify=strat)
    return table.subset(sorted(train_idx)), table.subset(sorted(val_idx))


def write_skipped(path: Path, problems: list[Problem]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "row", "column", "problem"])
    for p in problems:
        w.writerow([p.source, p.row + 1, p.column, p.message])
    write_text(path, buf.getvalue())
