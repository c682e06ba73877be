"""Running a model over a table: loaders, moving batches to a device, collecting predictions.

The one path a sample takes at prediction time, shared by the agent, the server, evaluation and
export. Training builds on it; it never imports training.

The forward pass itself goes through a :class:`ModelRunner`: :class:`TorchRunner` (the PyTorch
model, on any device) or :class:`mmagent.inference.onnx.OnnxRunner` (the same model exported to
ONNX, run by ONNX Runtime). Everything around it (preprocessing, collation, calibration, policy)
is the same for both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmagent.data.dataset import Collator, FeatureCache, MultimodalDataset
from mmagent.data.tables import Table
from mmagent.model import MultimodalModel
from mmagent.specs import EncoderOutput


@dataclass
class Predictions:
    """Per target: raw logits, probabilities (or values for regression) and, when the table had
    them, encoded targets; plus gated fusion's per-input weights."""

    logits: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]  # probabilities, or values for regression
    targets: dict[str, np.ndarray]
    gates: np.ndarray | None  # (N, M) for gated fusion
    fused: np.ndarray | None = None  # (N, D): the vector the heads read (the unknown-input score's features)


@dataclass
class BatchOutput:
    """One forward pass: logits per target, gated fusion's per-input weights (if any) and the fused
    vector the heads read."""

    logits: dict[str, torch.Tensor]
    gates: torch.Tensor | None = None
    fused: torch.Tensor | None = None


@runtime_checkable
class ModelRunner(Protocol):
    """Runs the model's forward pass on one collated batch (on the CPU, as the loader made it).
    ``present``: (B, M) bool, the inputs each row has, in the order of the model's inputs."""

    backend: str

    def __call__(self, batch: dict[str, Any], present: torch.Tensor) -> BatchOutput: ...


class TorchRunner:
    """The PyTorch model on ``device``."""

    backend = "torch"

    def __init__(self, model: MultimodalModel, device: torch.device | str = "cpu") -> None:
        self.model, self.device = model, torch.device(device)

    def __call__(self, batch: dict[str, Any], present: torch.Tensor) -> BatchOutput:
        moved = to_device({"inputs": batch["inputs"], "cached": batch.get("cached")}, self.device)
        out = self.model(moved["inputs"], present.to(self.device), moved["cached"])
        return BatchOutput(out.logits, out.gates, out.fused)


#: What one forward call costs besides its rows, in units of the batch's longest row (Python
#: dispatch of every layer, allocations). A draft measurement with the zoo MiniLM on 2 CPU cores
#: (batch 1 against batch 16) gave ~4 rows of 8 tokens, ~2.5 of 16, ~1 of 32; 3 suits short requests.
CALL_COST_ROWS = 3.0


class LengthBatches(list):
    """Batches of row indices (a ``DataLoader`` batch sampler) in length order; ``order`` is the
    rows in the order the batches yield them (:func:`run_model` puts outputs back in table order)."""

    def __init__(self, batches: list[list[int]]) -> None:
        super().__init__(batches)
        self.order = [i for b in batches for i in b]


def padded_batches(lengths: list[float], max_batch: int, call_cost: float = CALL_COST_ROWS) -> LengthBatches:
    """Rows sorted by length and cut into batches of at most ``max_batch`` so that the padded work
    is least: a batch costs ``call_cost`` longest rows plus its rows times its longest row (each
    is padded to it). Exact (dynamic programming over the sorted rows, O(n x max_batch)). Short
    and long requests that arrive together then run as two calls instead of one padded to the
    longest, and requests of similar length still share one call."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_lengths = [lengths[i] for i in order]
    longest = max(sorted_lengths, default=1.0) or 1.0
    best = [0.0] + [float("inf")] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(max(0, end - max_batch), end):
            cost = best[start] + call_cost * longest + (end - start) * sorted_lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches, end = [], len(order)
    while end > 0:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return LengthBatches(batches[::-1])


def make_loader(
    model: MultimodalModel,
    table: Table,
    batch_size: int,
    with_targets: bool = True,
    num_workers: int = 0,
    cache: FeatureCache | None = None,
    by_length: bool = False,
) -> DataLoader:
    """A loader over ``table`` for ``model``; inputs in ``cache`` are not decoded. In table order,
    or with ``by_length`` (where batches are padded: text, variable-length audio) in the batches of
    :func:`padded_batches`; :func:`run_model` returns table order either way."""
    ds = MultimodalDataset(table, model, with_targets=with_targets, skip=cache.names if cache else None)
    collate = Collator(model, cache)
    lengths = ds.lengths() if by_length and len(ds) > 1 else None
    if lengths is not None:
        return DataLoader(ds, batch_sampler=padded_batches(lengths, batch_size), num_workers=num_workers, collate_fn=collate)
    # A private generator keeps evaluation from drawing on the global RNG (training reproducibility).
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate, generator=torch.Generator())


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a collated batch (nested dicts of tensors / EncoderOutputs) to ``device``."""

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
def run_model(
    model: MultimodalModel,
    loader: Iterable[dict[str, Any]],
    device: torch.device | str = "cpu",
    drop: Iterable[str] = (),
    runner: ModelRunner | None = None,
) -> Predictions:
    """Predict every batch. ``drop``: inputs treated as missing for every row (ablation).
    ``runner``: what runs the forward pass (default: the PyTorch model on ``device``)."""
    model.eval()
    runner = runner or TorchRunner(model, device)
    drop_idx = [model.input_names.index(d) for d in drop]
    logits: dict[str, list] = {k: [] for k in model.heads}
    targets: dict[str, list] = {k: [] for k in model.heads}
    gates, fused = [], []
    for batch in loader:
        present = batch["present"].clone()
        present[:, drop_idx] = False
        out = runner(batch, present)
        for k in model.heads:
            logits[k].append(out.logits[k].float().cpu())
            if k in batch["targets"]:
                targets[k].append(batch["targets"][k].cpu())
        if out.gates is not None:
            gates.append(out.gates.float().cpu())
        if out.fused is not None:
            fused.append(out.fused.float().cpu())
    cat = {k: torch.cat(v) for k, v in logits.items()}
    targets_cat = {k: torch.cat(v) for k, v in targets.items() if v}
    gates_cat = torch.cat(gates) if gates else None
    fused_cat = torch.cat(fused) if fused else None
    order = getattr(getattr(loader, "batch_sampler", None), "order", None)
    if order is not None:  # length-ordered batches: back to table order
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        cat = {k: v[back] for k, v in cat.items()}
        targets_cat = {k: v[back] for k, v in targets_cat.items()}
        gates_cat = gates_cat[back] if gates_cat is not None else None
        fused_cat = fused_cat[back] if fused_cat is not None else None
    return Predictions(
        logits={k: v.numpy() for k, v in cat.items()},
        outputs={k: model.heads[k].predict(v).numpy() for k, v in cat.items()},
        targets={k: v.numpy() for k, v in targets_cat.items()},
        gates=gates_cat.numpy() if gates_cat is not None else None,
        fused=fused_cat.numpy() if fused_cat is not None else None,
    )
