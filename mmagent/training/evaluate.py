"""Run a model over a dataset; metrics per target; the modality-ablation table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmagent.data.dataset import Collator, FeatureCache, MultimodalDataset
from mmagent.data.tables import Table
from mmagent.model import MultimodalModel
from mmagent.training.metrics import main_metric, target_metrics


@dataclass
class Predictions:
    logits: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]  # probabilities, or values for regression
    targets: dict[str, np.ndarray]
    gates: np.ndarray | None  # (N, M) for gated fusion


def make_loader(model: MultimodalModel, table: Table, batch_size: int, with_targets: bool = True, num_workers: int = 0, cache: FeatureCache | None = None) -> DataLoader:
    ds = MultimodalDataset(table, model, with_targets=with_targets, skip=cache.names if cache else None)
    # A private generator keeps evaluation from drawing on the global RNG (training reproducibility).
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=Collator(model, cache), generator=torch.Generator())


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a collated batch (nested dicts of tensors / EncoderOutputs) to ``device``."""
    from mmagent.encoders.base import EncoderOutput

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, EncoderOutput):
            return EncoderOutput(move(x.tokens), move(x.mask), move(x.pooled))
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        return x

    return move(batch)


@torch.no_grad()
def run_model(model: MultimodalModel, loader: Iterable[dict[str, Any]], device: torch.device | str = "cpu", drop: Iterable[str] = ()) -> Predictions:
    """Predict every batch. ``drop``: inputs treated as missing for every row (ablation)."""
    model.eval()
    device = torch.device(device)
    drop_idx = [model.input_names.index(d) for d in drop]
    logits: dict[str, list] = {k: [] for k in model.heads}
    targets: dict[str, list] = {k: [] for k in model.heads}
    gates = []
    for batch in loader:
        batch = to_device(batch, device)
        present = batch["present"].clone()
        present[:, drop_idx] = False
        out = model(batch["inputs"], present, batch.get("cached"))
        for k in model.heads:
            logits[k].append(out.logits[k].float().cpu())
            if k in batch["targets"]:
                targets[k].append(batch["targets"][k].cpu())
        if out.gates is not None:
            gates.append(out.gates.float().cpu())
    cat = {k: torch.cat(v) for k, v in logits.items()}
    return Predictions(
        logits={k: v.numpy() for k, v in cat.items()},
        outputs={k: model.heads[k].predict(v).numpy() for k, v in cat.items()},
        targets={k: torch.cat(v).numpy() for k, v in targets.items() if v},
        gates=torch.cat(gates).numpy() if gates else None,
    )


def compute_metrics(model: MultimodalModel, preds: Predictions, detailed: bool = True) -> dict[str, dict[str, Any]]:
    return {k: target_metrics(model.heads[k].spec, preds.outputs[k], preds.targets[k], detailed) for k in model.heads if k in preds.targets}


def evaluate(model: MultimodalModel, loader: DataLoader, device: torch.device | str = "cpu", drop: Iterable[str] = ()) -> tuple[dict[str, dict[str, Any]], Predictions]:
    preds = run_model(model, loader, device, drop)
    return compute_metrics(model, preds), preds


def ablation_table(model: MultimodalModel, loader: DataLoader, device: torch.device | str = "cpu", baseline: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
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
