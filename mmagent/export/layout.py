"""What an export sees of a model: its forward on flat tensors (:class:`FlatWrapper`), the order
of those tensors, the batches an export is traced and checked on, and their dynamic dimensions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mmagent.data.tables import Table
from mmagent.model import MultimodalModel


class FlatWrapper(nn.Module):
    """``model.forward`` on flat tensors: (per-input tensors..., present) -> per-target logits."""

    def __init__(self, model: MultimodalModel, layout: list[tuple[str, str]]) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        self.targets = list(model.heads)

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        inputs: dict[str, dict[str, Tensor]] = {}
        for (name, key), t in zip(self.layout, tensors[:-1]):
            inputs.setdefault(name, {})[key] = t
        out = self.model(inputs, tensors[-1])
        return tuple(out.logits[t] for t in self.targets)


# -- batches ------------------------------------------------------------------------------------
def load_model(run_dir: str | Path) -> MultimodalModel:
    """A run's model (an ensemble exports as one graph of all its members)."""
    from mmagent.ensemble import load_model as load_saved_model

    run_dir = Path(run_dir)
    return load_saved_model(run_dir / "model" if (run_dir / "model").is_dir() else run_dir).eval()  # type: ignore[return-value]


def default_data(run_dir: str | Path) -> Path | None:
    """The run's own test (else validation, else train) table, if it is still where the config says."""
    cfg_path = Path(run_dir) / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = json.loads(cfg_path.read_text())
    base = Path(cfg.get("base_dir") or ".")
    for split in ("test", "validation", "train"):
        value = (cfg.get("data") or {}).get(split)
        if value:
            p = Path(value).expanduser()
            p = p if p.is_absolute() else base / p
            if p.is_file():
                return p
    return None


def batches_of(model: MultimodalModel, table: Table, batch_size: int, with_targets: bool) -> Any:
    from mmagent.inference import make_loader

    return make_loader(model, table, batch_size, with_targets=with_targets)


def flatten(batch: dict[str, Any], layout: list[tuple[str, str]]) -> tuple[Tensor, ...]:
    return tuple(batch["inputs"][name][key] for name, key in layout) + (batch["present"],)


def tensor_names(layout: list[tuple[str, str]]) -> list[str]:
    return [f"{name}.{key}" for name, key in layout] + ["present"]


def check_batches(model: MultimodalModel, table: Table, rows: int) -> list[dict[str, Any]]:
    """Two real batches of different sizes (so fixed shapes in the export would show)."""
    from mmagent.data.dataset import Collator, MultimodalDataset

    n = len(table)
    if n < 2:
        raise ValueError(f"{table.source}: need at least 2 rows to check an export, got {n}")
    first = min(rows, n)
    ds = MultimodalDataset(table, model, with_targets=False)
    collate = Collator(model)
    batches = [collate([ds[i] for i in range(first)])]
    rest = list(range(first, n))[: max(2, first // 2 + 1)] or list(range(min(3, n)))
    if len(rest) != first:
        batches.append(collate([ds[i] for i in rest]))
    return batches


def dynamic_dims(model: MultimodalModel, batches: list[dict[str, Any]], layout: list[tuple[str, str]]) -> dict[str, list[int]]:
    """Batch dim everywhere; dim 1 of padded keys (their ``_mask``/``attention_mask`` too); and
    any dim that differs between the real check batches."""
    out: dict[str, list[int]] = {}
    for name, key in layout:
        pre = model.encoders[name].preprocessor
        padded = {k for k in getattr(pre, "pad_values", {})} | {f"{k}_mask" for k in getattr(pre, "pad_values", {})}
        if "input_ids" in padded:
            padded.add("attention_mask")
        shapes = [tuple(b["inputs"][name][key].shape) for b in batches]
        dims = {0}
        if key in padded and len(shapes[0]) > 1:
            dims.add(1)
        for d in range(1, len(shapes[0])):
            if len({s[d] for s in shapes}) > 1:
                dims.add(d)
        out[f"{name}.{key}"] = sorted(dims)
    out["present"] = [0]
    return out
