"""Fitting a run's calibration from held-out predictions: a temperature per target and the
confidence threshold at which the agent escalates.

Training calls these at the end of a run (on validation predictions) and stores the result in the
run folder's ``calibration.json``; the agent only reads it back.
"""

from __future__ import annotations

from typing import Any

import torch

from mmagent.agent.calibration import choose_threshold, expected_calibration_error, fit_temperature, fit_temperature_binary
from mmagent.inference import Predictions
from mmagent.model import MultimodalModel


def calibrate(model: MultimodalModel, preds: Predictions) -> dict[str, dict[str, float]]:
    """Temperature per classification / multilabel target, fitted on validation logits, with the
    expected calibration error before and after."""
    out = {}
    for name, head in model.heads.items():
        if head.spec.type == "regression" or name not in preds.targets:
            continue
        logits = torch.from_numpy(preds.logits[name])
        y = torch.from_numpy(preds.targets[name])
        if head.spec.type == "classification":
            keep = y >= 0
            if keep.sum() < 2:
                continue
            logits, y = logits[keep], y[keep]
            temperature = fit_temperature(logits, y)
            before = expected_calibration_error(logits.softmax(-1), y)
            after = expected_calibration_error((logits / temperature).softmax(-1), y)
        else:
            temperature = fit_temperature_binary(logits, y)
            before = _binary_ece(logits.sigmoid(), y)
            after = _binary_ece((logits / temperature).sigmoid(), y)
        out[name] = {"temperature": float(temperature), "ece_before": float(before), "ece_after": float(after)}
    return out


def escalation_threshold(model: MultimodalModel, preds: Predictions, calibration: dict[str, Any], agent: dict[str, Any]) -> dict[str, Any] | None:
    """``agent.escalation: {target_precision: 0.95}`` (or ``target_coverage``): pick the confidence
    threshold on calibrated validation predictions of the agent's target."""
    wanted = agent.get("escalation")
    target = agent.get("target") or next(iter(model.heads))
    if not wanted or model.heads[target].spec.type != "classification":
        return None
    logits = torch.from_numpy(preds.logits[target]) / calibration.get(target, {}).get("temperature", 1.0)
    y = torch.from_numpy(preds.targets[target])
    keep = y >= 0
    conf, pred = logits[keep].softmax(-1).max(-1)
    choice = choose_threshold(conf, pred == y[keep], **wanted)
    return {"target": target, **choice.model_dump()}


def _binary_ece(probs: torch.Tensor, y: torch.Tensor) -> float:
    p = probs.flatten()
    return float(expected_calibration_error(torch.stack([1 - p, p], 1), y.flatten().long()))
