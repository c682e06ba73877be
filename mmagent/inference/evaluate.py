"""Evaluation: metrics per target over a model's predictions, and the modality-ablation table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmagent.inference import Predictions, run_model
from mmagent.metrics import main_metric, target_metrics
from mmagent.model import MultimodalModel


def compute_metrics(model: MultimodalModel, preds: Predictions, detailed: bool = True) -> dict[str, dict[str, Any]]:
    return {k: target_metrics(model.heads[k].spec, preds.outputs[k], preds.targets[k], detailed) for k in model.heads if k in preds.targets}


def evaluate(
    model: MultimodalModel, loader: DataLoader, device: torch.device | str = "cpu", drop: Iterable[str] = ()
) -> tuple[dict[str, dict[str, Any]], Predictions]:
    preds = run_model(model, loader, device, drop)
    return compute_metrics(model, preds), preds


def ablation_table(
    model: MultimodalModel, loader: DataLoader, device: torch.device | str = "cpu", baseline: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, float]]:
    """Main metric per target with all inputs, then with each input dropped in turn.

    ``{"all inputs": {target: value}, "without text": {...}, ...}``"""
    if baseline is None:
        baseline, _ = evaluate(model, loader, device)
    table = {"all inputs": _main(model, baseline)}
    if len(model.input_names) > 1:
        for name in model.input_names:
            metrics, _ = evaluate(model, loader, device, drop=[name])
            table[f"without {name}"] = _main(model, metrics)
    return table


def _main(model: MultimodalModel, metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    for k, m in metrics.items():
        name, _ = main_metric(model.heads[k].spec)
        out[f"{k}/{name}"] = float(m.get(name, float("nan")))
    return out
