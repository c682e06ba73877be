"""Fitting a run's calibration from held-out predictions: a temperature per target (the
escalation thresholds and unknown-input score are fitted in :mod:`mmagent.agent.escalation`).

Training calls these at the end of a run and stores the result in the run folder's
``calibration.json``; the agent only reads it back. The temperature is fitted on the validation
split, and its effect (ECE before/after, the reliability curve) is measured on data it was *not*
fitted on: the test split when there is one, else the validation split cross-fitted (fit on one
half, measure on the other, both ways). A validation split too small to fit on, or on which the
model makes no error, keeps temperature 1.0: fitting there only sharpens every answer towards
certainty.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmagent.agent.calibration import expected_calibration_error, fit_temperature, fit_temperature_binary
from mmagent.inference import Predictions
from mmagent.model import MultimodalModel

MIN_LABELLED = 30  # fewer labelled validation rows than this: too few to fit a temperature on
SAFE_TEMPERATURE = (0.5, 5.0)  # a fitted temperature stays in this range
RELIABILITY_BINS = 10
MEASURED_ON_TEST = "test"
MEASURED_CROSS_FIT = "validation, cross-fitted (fitted on one half, measured on the other, both ways)"
MEASURED_NOT_FITTED = "validation (nothing was fitted)"


def calibrate(model: MultimodalModel, validation: Predictions, test: Predictions | None = None) -> dict[str, dict[str, Any]]:
    """Per classification / multilabel target: the temperature fitted on ``validation`` and how
    calibrated the model is before and after it, measured on held-out data (see module doc)."""
    out = {}
    for name, head in model.heads.items():
        kind = head.spec.type
        if kind == "regression" or name not in validation.targets:
            continue
        logits, y = _labelled(kind, validation.logits[name], validation.targets[name])
        if len(y) < 2:
            continue
        note = _why_not_fit(kind, logits, y)
        temperature = 1.0 if note else _fit(kind, logits, y)
        if test is not None and name in test.targets and len(_labelled(kind, test.logits[name], test.targets[name])[1]):
            measured_on = MEASURED_ON_TEST
            eval_logits, eval_y = _labelled(kind, test.logits[name], test.targets[name])
            after_probs = _probs(kind, eval_logits / temperature)
        elif note:
            measured_on, eval_logits, eval_y = MEASURED_NOT_FITTED, logits, y
            after_probs = _probs(kind, logits)
        else:
            measured_on, eval_logits, eval_y = MEASURED_CROSS_FIT, logits, y
            after_probs = _cross_fitted_probs(kind, logits, y)
        before_probs = _probs(kind, eval_logits)
        entry: dict[str, Any] = {
            "temperature": float(temperature),
            "ece_before": _ece(kind, before_probs, eval_y),
            "ece_after": _ece(kind, after_probs, eval_y),
            "measured_on": measured_on,
            "n_fitted": int(len(y)),
            "n_measured": int(len(eval_y)),
            "reliability": {
                "before": reliability_curve(*_top_label(kind, before_probs, eval_y)),
                "after": reliability_curve(*_top_label(kind, after_probs, eval_y)),
            },
        }
        if note:
            entry["note"] = note
        elif temperature in SAFE_TEMPERATURE:
            entry["note"] = f"the fitted temperature reached the bound of the safe range {list(SAFE_TEMPERATURE)}"
        out[name] = entry
    return out


def reliability_curve(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = RELIABILITY_BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins: mean confidence, accuracy and count of each non-empty bin."""
    bins = torch.clamp((confidence * n_bins).long(), max=n_bins - 1)
    out = []
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            out.append({"confidence": float(confidence[inside].mean()), "accuracy": float(correct[inside].double().mean()), "count": int(inside.sum())})
    return out


def _labelled(kind: str, logits: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with a label the model knows (classification) / with no missing entry (multilabel)."""
    logits_t, y = torch.from_numpy(logits).double(), torch.from_numpy(targets)
    if kind == "classification":
        keep = y >= 0
    else:
        keep = ~torch.isnan(y.double()).any(1)
    return logits_t[keep], y[keep]


def _why_not_fit(kind: str, logits: torch.Tensor, y: torch.Tensor) -> str | None:
    if len(y) < MIN_LABELLED:
        return f"validation has {len(y)} labelled rows, fewer than {MIN_LABELLED}: too few to fit a temperature; kept 1.0"
    wrong = (logits.argmax(-1) != y).sum() if kind == "classification" else ((logits >= 0).double() != y.double()).sum()
    if int(wrong) == 0:
        return "the model makes no error on validation: a temperature fitted there would only sharpen every answer to certainty; kept 1.0"
    return None


def _fit(kind: str, logits: torch.Tensor, y: torch.Tensor) -> float:
    low, high = SAFE_TEMPERATURE
    if kind == "classification":
        return fit_temperature(logits, y, min_t=low, max_t=high)
    return fit_temperature_binary(logits, y, min_t=low, max_t=high)


def _cross_fitted_probs(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each half's probabilities under the temperature fitted on the other half (a fixed seed
    keeps the split, and so the reported numbers, reproducible)."""
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    halves = (order[: len(y) // 2], order[len(y) // 2 :])
    probs = _probs(kind, logits).clone()
    for fit_rows, score_rows in (halves, halves[::-1]):
        temperature = _fit(kind, logits[fit_rows], y[fit_rows])
        probs[score_rows] = _probs(kind, logits[score_rows] / temperature)
    return probs


def _probs(kind: str, logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1) if kind == "classification" else logits.sigmoid()


def _top_label(kind: str, probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, correct) per prediction: the top label (classification) or each label's
    yes/no call (multilabel)."""
    if kind == "classification":
        conf, pred = probs.max(-1)
        return conf, pred == y
    p, t = probs.flatten(), y.flatten().double()
    return torch.maximum(p, 1 - p), (p >= 0.5).double() == t


def _ece(kind: str, probs: torch.Tensor, y: torch.Tensor) -> float:
    if kind == "classification":
        return float(expected_calibration_error(probs, y))
    p = probs.flatten()  # each label's yes/no call is one binary prediction
    return float(expected_calibration_error(torch.stack([1 - p, p], 1), y.flatten().long()))
