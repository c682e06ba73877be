"""``mmagent update RUN --data NEW -o RUN2``: keep an agent current with new data.

RUN2 starts from RUN's model (``train.init_from``, see ``training/warm_start.py``: weights,
vocabularies and scales kept; head rows added for new labels) and trains on the new table plus a
*replay* share of RUN's own training rows (``replay`` x the new rows, stratified by label, seeded),
so the classes the new data lacks are not forgotten. Everything else comes from RUN's config
(encoders, fusion, training settings; ``--set`` overrides any key).

RUN2 holds ``data/train.parquet`` (new + replayed rows: RUN2's own training table, which a later
update replays from) and ``lineage.json``: the parent run and its weights' SHA-256, the SHA-256 of
the new table and of the replayed rows, the replay share, the labels added and the time.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmagent import runs
from mmagent.config import ExperimentConfig, apply_overrides, config_from_dict
from mmagent.data.dataset import fit_targets
from mmagent.data.tables import Table, is_empty, label_text, read_table, resolve_media
from mmagent.data.validation import validate_table
from mmagent.io import atomic_path, removed_on_failure, write_json
from mmagent.runs import CHECKPOINTS_DIR, LINEAGE_FILE, RunFolderError, check_new_run_dir, create_run_dir, model_dir, read_config, sha256_file
from mmagent.training.warm_start import added_labels, check_init_from

TRAIN_TABLE = "data/train.parquet"


def _ensemble_note(parent: Path, say: bool) -> dict[str, str]:
    """An ensemble parent (from ``fit``) warm-starts the update from its first model only."""
    from mmagent.ensemble import is_ensemble

    if not is_ensemble(model_dir(parent)):
        return {}
    note = "the parent is an ensemble: the update warm-starts from its first (best) model and is one model"
    if say:
        print(f"note: {note}")
    return {"note": note}


@dataclass
class UpdateResult:
    run_dir: Path
    lineage: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)


def update(
    parent: str | Path,
    data: str | Path,
    output: str | Path,
    replay: float = 0.3,
    validation: str | Path | None = None,
    test: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> UpdateResult:
    """Warm-start RUN2 (``output``) from ``parent`` on ``data`` + replayed old rows; see the module
    docstring. Everything is checked (config, parent, tables) before the run folder is created."""
    from mmagent.workflow import train  # training, then finishing

    parent, output = runs.verify_run(Path(parent).resolve()), Path(output)  # never warm-start from a damaged run
    if not replay >= 0:
        raise ValueError(f"--replay must be >= 0 (a share of the new table's rows), got {replay}")
    config = update_config(parent, output.resolve() / TRAIN_TABLE, validation, test, overrides or [])
    check_init_from(config)
    check_new_run_dir(output, "update")
    new, _ = validate_table(read_table(data), config.inputs, config.targets, config.data.on_bad_row)
    old_path, replayed = None, None
    if replay > 0:
        old_path = parent_training_table(parent)
        old = sample_replay(read_table(old_path), round(replay * len(new)), stratify_column(config), config.train.seed)
        replayed, _ = validate_table(old, config.inputs, config.targets, "skip")  # rows the parent skipped stay out
    frame = merge_tables([new] + ([replayed] if replayed is not None else []), media_columns(config))
    lineage = {
        "parent": {"run": str(parent), "weights_sha256": sha256_file(model_dir(parent) / "model.safetensors"), **_ensemble_note(parent, progress)},
        "data": {
            "new": {"path": str(Path(data).resolve()), "sha256": sha256_file(Path(data)), "rows": len(new)},
            "replay": None
            if replayed is None
            else {"source": str(old_path), "source_sha256": sha256_file(old_path), "rows_sha256": frame_sha256(replayed.frame), "rows": len(replayed)},  # type: ignore[arg-type]
        },
        "replay": replay,
        "labels_added": added_labels(_parent_targets(parent), fit_targets(new, config.targets)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with removed_on_failure(output, keep=lambda p: (p / CHECKPOINTS_DIR).exists()):
        create_run_dir(output)
        with atomic_path(output / TRAIN_TABLE) as tmp:
            frame.to_parquet(tmp, index=False)
        lineage["data"]["train"] = {"path": TRAIN_TABLE, "sha256": sha256_file(output / TRAIN_TABLE), "rows": len(frame)}
        write_json(output / LINEAGE_FILE, lineage)
        result = train(config, output, progress=progress)
    return UpdateResult(output, lineage, result.metrics)


def update_config(parent: Path, train_table: Path, validation: str | Path | None, test: str | Path | None, overrides: list[str]) -> ExperimentConfig:
    """RUN's config with the new training table, validation / test (when given; else validation
    is split off the new training table) and ``train.init_from: RUN``; ``overrides`` on top."""
    raw = copy.deepcopy(read_config(parent))
    if not raw.get("inputs"):
        raise RunFolderError(f"{parent}: not a training run folder (no config.json with inputs); update needs the run `mmagent train` or `fit` wrote")
    absolute = {k: str(Path(v).resolve()) if v is not None else None for k, v in (("validation", validation), ("test", test))}
    raw["data"] = {**raw["data"], "train": str(train_table), **absolute}
    raw["train"] = {**raw.get("train", {}), "init_from": str(parent)}
    raw["base_dir"] = str(Path.cwd())
    return config_from_dict(apply_overrides(raw, overrides))


def parent_training_table(parent: Path) -> Path:
    """The table RUN was trained on, as its config records it (replay draws from it)."""
    raw = read_config(parent)
    path = Path(raw["data"]["train"]).expanduser()
    if not path.is_absolute():
        path = Path(raw.get("base_dir", ".")) / path
    if not path.is_file():
        raise FileNotFoundError(f"replay: the parent run's training table {path} is gone; restore it or pass --replay 0")
    return path


def stratify_column(config: ExperimentConfig) -> str | None:
    """The label column replay stratifies on: the first classification / multilabel target."""
    return next((t.column for t in config.targets if t.type != "regression"), None)


def stratified_quotas(counts: dict[str, int], n: int) -> dict[str, int]:
    """``n`` rows shared among classes in proportion to ``counts`` (largest remainders); when
    ``n`` allows, every class gets at least one: a class with no replayed row is the one forgotten."""
    total = sum(counts.values())
    exact = {k: n * c / total for k, c in counts.items()}
    quotas = {k: int(v) for k, v in exact.items()}
    for k in sorted(counts, key=lambda k: (exact[k] - quotas[k], k), reverse=True)[: n - sum(quotas.values())]:
        quotas[k] += 1
    if n >= len(counts):
        for k in [k for k, q in quotas.items() if q == 0]:
            donor = max(quotas, key=lambda d: (quotas[d], d))
            quotas[donor] -= 1
            quotas[k] += 1
    return {k: min(q, counts[k]) for k, q in quotas.items()}


def sample_replay(table: Table, n: int, column: str | None, seed: int) -> Table:
    """``n`` rows of ``table`` (all of it when it has no more), stratified by ``column``, seeded."""
    if n >= len(table):
        return table
    rng = np.random.default_rng(seed)
    if column is None:
        return table.subset(sorted(rng.choice(len(table), n, replace=False).tolist()))
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(table.records):
        groups.setdefault("" if is_empty(rec.get(column)) else label_text(rec.get(column)), []).append(i)
    quotas = stratified_quotas({k: len(v) for k, v in groups.items()}, n)
    rows = [i for k in sorted(groups) for i in rng.choice(groups[k], quotas[k], replace=False).tolist()]
    return table.subset(sorted(rows))


def media_columns(config: ExperimentConfig) -> list[str]:
    return [c for i in config.inputs if i.modality in ("image", "audio") for c in i.columns]


def merge_tables(tables: list[Table], media: list[str]) -> pd.DataFrame:
    """One frame from several tables: media paths made absolute (each table's are relative to its
    own folder), and columns mixing types across files (text from a CSV, numbers from Parquet) as
    canonical text, which Parquet can store and the data layer parses as before."""
    frames = []
    for table in tables:
        frame = table.frame.copy()
        for col in media:
            if col in frame:
                frame[col] = [v if is_empty(v) else str(resolve_media(v, table.base_dir.resolve())) for v in frame[col]]
        frames.append(frame)
    merged = pd.concat(frames, ignore_index=True)
    for col in merged.columns:
        kinds = {type(v) for v in merged[col] if not is_empty(v)}
        if merged[col].dtype == object and len(kinds) > 1:
            merged[col] = [None if is_empty(v) else label_text(v) for v in merged[col]]
    return merged


def frame_sha256(frame: pd.DataFrame) -> str:
    """A fingerprint of a table's rows (as CSV text: independent of the file format and writer)."""
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def _parent_targets(parent: Path) -> list[Any]:
    from mmagent.specs import ModelSpec

    return ModelSpec.model_validate_json((model_dir(parent) / "model.json").read_text()).targets
