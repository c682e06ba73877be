"""``drift_profile.json``: what a run's inputs and answers looked like when it was trained, the
yardstick that :mod:`mmagent.lifecycle.drift` measures new data against.

Reference data, and why:

- raw input features (text length, image size and brightness, audio duration and loudness,
  numbers, categories) describe a sample of the *training* rows;
- features that depend on something fitted on the training rows are measured on the *validation*
  rows, which that fit never saw: vocabulary coverage (the vocabulary comes from the training
  texts; training texts would all score 1.0) and the embedding distance (centroids are the mean
  pooled embeddings of training rows, one per training label when the target is a class, else
  one per input; the distance is to the nearest centroid);
- the agent's answers (label shares, confidence, escalation and unknown-input shares) are those on validation.

Numeric features are kept as quantile bins (up to :data:`MAX_BINS`, at least :data:`MIN_PER_BIN`
reference rows each) and categorical ones as the shares of their frequent values, everything else
pooled as ``__other__``: the form PSI needs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmagent.data.tables import Table, is_empty, label_text
from mmagent.io import write_json
from mmagent.lifecycle import observe
from mmagent.runs import RunFolderError, read_json

PROFILE_FILE = "drift_profile.json"
VERSION = 1
MAX_BINS = 10
MIN_PER_BIN = 20
MAX_CATEGORIES = 30
OTHER = "__other__"
MAX_ROWS = 2000  # rows summarised per split
EMBED_ROWS = 512  # rows embedded per split (a forward pass each)
MAX_CENTROIDS = 200


# -- bins ------------------------------------------------------------------------------------------
def numeric_bins(values: Sequence[float]) -> dict[str, Any]:
    """Quantile cut points and the reference share of each bin (``x < cut`` goes left)."""
    x = np.asarray(values, dtype=np.float64)
    k = int(min(MAX_BINS, max(2, len(x) // MIN_PER_BIN)))
    cuts = np.unique(np.quantile(x, np.arange(1, k) / k)) if len(x) else np.array([])
    ref = {"kind": "numeric", "cuts": [float(c) for c in cuts], "n": len(x), "mean": float(x.mean()) if len(x) else None}
    ref["shares"] = [float(s) for s in bin_shares(ref, values)]
    return ref


def categorical_bins(values: Sequence[str]) -> dict[str, Any]:
    """Shares of the frequent values (at least MIN_PER_BIN rows), the rest as ``__other__``."""
    names, counts = np.unique(np.asarray([str(v) for v in values], dtype=object), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    kept = [str(names[i]) for i in order if counts[i] >= MIN_PER_BIN][:MAX_CATEGORIES]
    ref = {"kind": "categorical", "categories": kept, "n": len(values), "all_shares": {str(n): int(c) / max(1, len(values)) for n, c in zip(names, counts)}}
    ref["shares"] = [float(s) for s in bin_shares(ref, values)]
    return ref


def bin_shares(ref: Mapping[str, Any], values: Sequence[Any]) -> np.ndarray:
    """The share of ``values`` in each of the reference's bins (sums to 1; zeros when empty)."""
    if ref["kind"] == "numeric":
        counts = np.bincount(np.searchsorted(np.asarray(ref["cuts"]), np.asarray(values, dtype=np.float64), side="right"), minlength=len(ref["cuts"]) + 1)
    else:
        index = {c: i for i, c in enumerate(ref["categories"])}
        counts = np.bincount([index.get(str(v), len(index)) for v in values], minlength=len(index) + 1)
    return counts / max(1, counts.sum())


# -- building --------------------------------------------------------------------------------------
def build_profile(agent: Any, train: Table, validation: Table, seed: int = 0) -> dict[str, Any]:
    """The profile of ``agent`` (a loaded :class:`~mmagent.agent.Agent`) and its training data."""
    inputs = list(agent.model.spec.inputs)
    rng = np.random.default_rng(seed)
    train_rows = _sample(train, MAX_ROWS, rng)
    val_rows = _sample(validation, MAX_ROWS, rng)
    vocab = {i.key: observe.vocabulary(r.get(i.columns[0]) for r in train.records) for i in inputs if i.modality == "text"}

    reference = observe.summarize_inputs(inputs, train_rows.records, train.base_dir)
    held_out = observe.summarize_inputs(inputs, val_rows.records, validation.base_dir, vocab)
    for key, values in held_out.items():
        if key.endswith("/coverage"):
            reference[key] = values

    centroids = _centroids(agent, inputs, _sample(train_rows, EMBED_ROWS, rng))
    tap = observe.EmbeddingTap(agent.model, inputs)
    try:
        tap.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decisions = [d.model_dump(mode="json") for d in agent.act_many(val_rows, explain=False)]
        pooled = tap.take(len(val_rows))
    finally:
        tap.close()
    reference.update(observe.embedding_observations(inputs, val_rows.records, pooled, {k: v["vectors"] for k, v in centroids.items()}))
    answers = observe.summarize_results(decisions, agent.target)

    features = {key: _bins(values) for key, values in reference.items() if values}
    return {
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": agent.target,
        "rows": {"train": len(train), "validation": len(validation), "summarised_train": len(train_rows), "summarised_validation": len(val_rows)},
        "inputs": {i.key: {"modality": i.modality, "columns": list(i.columns)} for i in inputs},
        "features": features,
        "vocabulary": vocab,
        "centroids": {k: {"labels": v["labels"], "vectors": np.round(v["vectors"], 5).tolist()} for k, v in centroids.items()},
        "predictions": {
            "label": categorical_bins(answers.get(f"{observe.PREDICTION}/label", [])),
            "confidence": numeric_bins(answers.get(f"{observe.PREDICTION}/confidence", [])),
            "escalation_share": float(np.mean(answers[f"{observe.PREDICTION}/escalated"])) if answers.get(f"{observe.PREDICTION}/escalated") else 0.0,
            "unknown_share": float(np.mean(answers[f"{observe.PREDICTION}/unknown"])) if answers.get(f"{observe.PREDICTION}/unknown") else 0.0,
        },
    }


def _bins(values: list[Any]) -> dict[str, Any]:
    return categorical_bins(values) if isinstance(values[0], str) else numeric_bins(values)


def _sample(table: Table, n: int, rng: np.random.Generator) -> Table:
    return table if len(table) <= n else table.subset(sorted(rng.choice(len(table), n, replace=False).tolist()))


def _centroids(agent: Any, inputs: list[Any], rows: Table) -> dict[str, dict[str, Any]]:
    """Per watched input: the mean normalised pooled embedding of the training rows, per training
    label when the agent's target is a class (up to MAX_CENTROIDS labels), else one."""
    watched = [i for i in inputs if i.modality in observe.EMBEDDED]
    if not watched or len(rows) == 0:
        return {}
    tap = observe.EmbeddingTap(agent.model, watched)
    try:
        tap.clear()
        agent.probabilities(rows)
        pooled = tap.take(len(rows))
    finally:
        tap.close()
    head = agent.model.heads[agent.target].spec
    labels = [label_text(r.get(agent.target)) for r in rows.records] if head.type == "classification" else ["*"] * len(rows)
    out = {}
    for inp in watched:
        present = np.array([not is_empty(r.get(inp.columns[0])) for r in rows.records])
        if inp.key not in pooled or not present.any():
            continue
        emb, labs = observe.normalized(pooled[inp.key][present]), np.asarray(labels, dtype=object)[present]
        names = sorted(set(labs))
        if len(names) > MAX_CENTROIDS:
            names, labs = ["*"], np.asarray(["*"] * len(labs), dtype=object)
        out[inp.key] = {"labels": names, "vectors": np.stack([observe.normalized(emb[labs == n].mean(0)) for n in names])}
    return out


# -- files -----------------------------------------------------------------------------------------
def write_profile(run_dir: str | Path, train: Table, validation: Table, device: Any = "cpu") -> Path:
    """Build the profile of a finished run (its saved agent) and write it atomically."""
    from mmagent.agent import Agent

    run_dir = Path(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. an escalation target not reached: the report says so
        agent = Agent.load(run_dir, device=device)
    path = run_dir / PROFILE_FILE
    write_json(path, build_profile(agent, train, validation))
    return path


def profile_at_end_of_training(run_dir: Path, train: Table, validation: Table, device: Any, progress: bool = True) -> None:
    """The training hook: a run whose profile cannot be built is still a finished run, so the
    failure is a warning that names the command to build it later, not a lost run."""
    try:
        write_profile(run_dir, train, validation, device)
    except Exception as e:  # noqa: BLE001 - see the docstring
        warnings.warn(f"{run_dir}: no {PROFILE_FILE} ({type(e).__name__}: {e}); build it with `mmagent profile {run_dir}`", UserWarning, stacklevel=2)


def read_profile(run_dir: str | Path) -> dict[str, Any]:
    """The run's profile; a run without one (trained before drift watch) is an error naming the fix."""
    path = Path(run_dir) / PROFILE_FILE
    if not path.is_file():
        raise RunFolderError(f"{run_dir} has no {PROFILE_FILE} (a run trained before drift watch); build it with `mmagent profile {run_dir}`")
    profile = read_json(path)
    if profile.get("version") != VERSION or "features" not in profile:
        raise RunFolderError(f"{path}: not a drift profile of version {VERSION}; rebuild it with `mmagent profile {run_dir}`")
    return profile


def centroid_arrays(profile: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v["vectors"], dtype=np.float64) for k, v in profile.get("centroids", {}).items()}
