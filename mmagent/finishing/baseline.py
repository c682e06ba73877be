"""The obvious baseline every run must beat: predicting the training data's label shares for
every input (majority class; label prevalence for multilabel), or its mean value for regression.

A model that does not beat it on validation has learnt nothing usable. The end of a run records the
comparison (``calibration.json``, sealed with the run); the agent then escalates every input, the
report and ``mmagent fit`` say so, and ``fit`` exits with status 3.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mmagent.data.dataset import encode_target
from mmagent.data.tables import Table
from mmagent.metrics import LOWER_IS_BETTER, target_metrics
from mmagent.specs import TargetSpec

KIND = {"classification": "majority-class", "multilabel": "label-prevalence", "regression": "training-mean"}


def baseline_outputs(spec: TargetSpec, train: Table, n: int) -> np.ndarray:
    """The baseline's outputs for ``n`` rows, learnt from the training table's targets alone."""
    y = np.stack([encode_target(spec, r.get(spec.column)).numpy() for r in train.records])
    if spec.type == "classification":
        counts = np.bincount(y[y >= 0].astype(int), minlength=len(spec.labels)).astype(np.float64)
        return np.tile(counts / max(counts.sum(), 1.0), (n, 1))
    if spec.type == "multilabel":
        return np.tile(np.nanmean(y, axis=0), (n, 1))
    return np.full(n, float(np.nanmean(y)))


def compare_with_baseline(spec: TargetSpec, metric: str, model_value: float, train: Table, y_val: np.ndarray) -> dict[str, Any] | None:
    """``metric`` of the model on validation against the baseline's; None when the metric is not
    defined for both (too few rows, one class)."""
    base = target_metrics(spec, baseline_outputs(spec, train, len(y_val)), y_val, detailed=False).get(metric)
    if not isinstance(base, (int, float)) or not isinstance(model_value, (int, float)) or math.isnan(base) or math.isnan(model_value):
        return None
    larger_better = metric not in LOWER_IS_BETTER
    beats = model_value > base if larger_better else model_value < base
    return {"target": spec.column, "metric": metric, "model": float(model_value), "baseline": float(base), "kind": KIND[spec.type], "beats": bool(beats)}


def verdict(check: dict[str, Any]) -> str:
    """One sentence for the terminal, the report and the agent's reason."""
    return (
        f"the model does not beat the {check['kind']} baseline on validation ({check['target']}/{check['metric']} "
        f"{check['model']:.4g} vs {check['baseline']:.4g}): every input is escalated until a better run is promoted"
    )
