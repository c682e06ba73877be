"""Fitting what makes "escalate when unsure" true, at the end of a run: the unknown-input detector,
the prediction-set quantile and the confidence threshold that keeps the user's error promise,
and the same rules measured on data none of them was fitted on.

The result goes to ``calibration.json`` under :data:`mmagent.runs.ESCALATION_KEY` (and the detector
to ``unknown.json``); the agent only reads it back. Fitted on validation (the detector's Gaussians
on training rows), measured on test when there is one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmagent import runs
from mmagent.agent.calibration import choose_threshold
from mmagent.agent.conformal import prediction_set_quantile, prediction_sets, selective_threshold
from mmagent.agent.spec import DEFAULT_SET_LEVEL, AgentSpec
from mmagent.agent.unknown import UnknownDetector
from mmagent.agent.unknown_fit import Features, fit_unknown_detector
from mmagent.inference import Predictions

CURVE_POINTS = 20  # points of the risk-coverage curve kept for the report


def fit_detector(target: str, kind: str, train: Predictions, validation: Predictions, agent: AgentSpec, allow_energy: bool) -> UnknownDetector | None:
    """The unknown-input detector of the agent's target (None when the runner gave no fused vectors)."""
    if train.fused is None or validation.fused is None:
        return None
    classes = kind == "classification" and target in train.targets and target in validation.targets
    fitted = Features(train.fused, train.targets[target].astype(int) if classes else None)
    held = Features(validation.fused, validation.targets[target].astype(int) if classes else None, validation.logits[target])
    detector = fit_unknown_detector(target, fitted, held, agent.unknown.false_alarm, agent.unknown.score, allow_energy)
    detector.info["escalates"] = agent.unknown.enabled  # the verdict is always shown; it hands over only when enabled
    return detector


def fit_escalation(
    target: str,
    validation: Predictions,
    temperature: float,
    agent: AgentSpec,
    detector: UnknownDetector | None,
    test: Predictions | None = None,
    blocked: bool = False,
) -> dict[str, Any] | None:
    """For a classification target: the prediction sets' quantile at the user's error level, and
    the confidence threshold (``max_error``: Learn then Test over known inputs with a single-label
    set; ``target_coverage``: that share answered), with the held-out figures."""
    if target not in validation.targets or validation.logits[target].ndim != 2:
        return None
    probs, y, fused, logits = _labelled(validation, target, temperature)
    if len(y) == 0:
        return None
    spec = agent.escalation
    level = spec.error_level if spec else None
    set_alpha = level or DEFAULT_SET_LEVEL
    quantile = prediction_set_quantile(probs, y, set_alpha)
    entry: dict[str, Any] = {
        "target": target,
        "set_alpha": set_alpha,
        "set_quantile": min(quantile, 1.0),
        "set_escalates": level is not None,
        "unknown_escalates": detector is not None and agent.unknown.enabled,
        "blocked": blocked,  # the run does not beat its baseline: every input is escalated
    }
    known = _known(detector, fused, logits) if entry["unknown_escalates"] else np.ones(len(y), bool)
    conf, correct = probs.max(1), probs.argmax(1) == y
    if level is not None:
        eligible = known & (prediction_sets(probs, quantile).sum(1) <= 1)  # a set of two or more labels is handed over
        choice = selective_threshold(conf, correct, level, round(1.0 - spec.confidence, 10), eligible)  # type: ignore[union-attr]
        entry.update(choice.model_dump(), threshold=min(choice.threshold, 1.0))
    elif spec is not None and spec.target_coverage is not None:
        entry.update(choose_threshold(conf[known], correct[known], target_coverage=spec.target_coverage).model_dump())
    held = test if test is not None and target in test.targets else None
    entry["held_out"] = measure(entry, detector, held or validation, temperature)
    entry["held_out"]["split"] = "test" if held is not None else "validation (the data the thresholds were chosen on: optimistic)"
    return entry


def measure(entry: dict[str, Any], detector: UnknownDetector | None, preds: Predictions, temperature: float) -> dict[str, Any]:
    """The escalation rules of ``entry`` applied to labelled predictions: answered share, error
    among answered, prediction-set coverage and size, inputs flagged unknown, and the
    risk-coverage curve of the confidence alone."""
    target = entry["target"]
    probs, y, fused, logits = _labelled(preds, target, temperature)
    sets = prediction_sets(probs, entry["set_quantile"])
    known = _known(detector, fused, logits) if entry["unknown_escalates"] else np.ones(len(y), bool)
    conf, correct = probs.max(1), probs.argmax(1) == y
    answered = known & (conf >= entry.get("threshold", 0.0))
    if entry["set_escalates"]:
        answered &= sets.sum(1) <= 1
    if entry.get("reached") is False or entry.get("blocked"):
        answered[:] = False
    n_answered = int(answered.sum())
    order = np.argsort(-conf, kind="stable")
    cuts = np.unique(np.linspace(1, len(y), CURVE_POINTS).round().astype(int))
    curve = [{"coverage": round(k / len(y), 4), "error": round(float(1 - correct[order[:k]].mean()), 4)} for k in cuts]
    return {
        "rows": int(len(y)),
        "answered": n_answered,
        "coverage": round(n_answered / len(y), 4),
        "error_among_answered": round(float(1 - correct[answered].mean()), 4) if n_answered else None,
        "answered_correctly": round(float((answered & correct).mean()), 4),
        "set_coverage": round(float(sets[np.arange(len(y)), y].mean()), 4),
        "mean_set_size": round(float(sets.sum(1).mean()), 3),
        "flagged_unknown": round(float((~known).mean()), 4),
        "risk_coverage": curve,
    }


def _labelled(preds: Predictions, target: str, temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Rows with a known label: calibrated probabilities, labels, fused vectors and raw logits."""
    y = preds.targets[target].astype(int)
    keep = y >= 0
    logits = preds.logits[target][keep].astype(np.float64)
    z = logits / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    fused = preds.fused[keep] if preds.fused is not None else None
    return z / z.sum(1, keepdims=True), y[keep], fused, logits


def _known(detector: UnknownDetector | None, fused: np.ndarray | None, logits: np.ndarray) -> np.ndarray:
    if detector is None:
        return np.ones(len(logits), bool)
    return ~detector.is_unknown(detector.score(fused, logits))


def measure_run(run_dir: str | Path, preds: Predictions) -> dict[str, Any] | None:
    """A run's unknown-input and escalation rules measured on new labelled predictions (``mmagent
    evaluate``): what :func:`measure` reports, or the share flagged unknown for a target without
    escalation rules. None for a run that has neither."""
    detector = UnknownDetector.load(run_dir)
    calibration = runs.read_calibration(run_dir)
    entry = calibration.get(runs.ESCALATION_KEY)
    if entry and "set_quantile" in entry and entry["target"] in preds.targets:
        entry = {**entry, "blocked": (calibration.get(runs.BASELINE_KEY) or {}).get("beats") is False}
        temperature = float(calibration.get(entry["target"], {}).get("temperature", 1.0))
        out = measure(entry, detector, preds, temperature)
        out.pop("risk_coverage")
        return out
    if detector is not None and detector.target in preds.logits:
        flagged = detector.is_unknown(detector.score(preds.fused, preds.logits[detector.target]))
        return {"rows": int(len(flagged)), "flagged_unknown": round(float(flagged.mean()), 4)}
    return None
