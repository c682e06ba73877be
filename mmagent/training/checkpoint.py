"""Training checkpoints for ``--resume``: weights (safetensors) + optimizer/scheduler/RNG state.

The state file is loaded with ``torch.load(weights_only=True)``: it holds only tensors and plain
Python values. The whole checkpoint folder is written atomically, so a kill mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from mmagent.io import atomic_dir, write_json
from mmagent.model import MultimodalModel


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(folder: Path, model: MultimodalModel, optimizer: torch.optim.Optimizer, scheduler: Any, progress: dict[str, Any]) -> None:
    """``progress``: plain values (epoch, step, best metric, ...), also written as JSON for humans."""
    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(), "progress": progress}, tmp / "state.pt")
        write_json(tmp / "model.json", model.spec.model_dump(mode="json"))
        write_json(tmp / "progress.json", progress)


def load_checkpoint(folder: Path, model: MultimodalModel, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {folder} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["progress"]


def checkpoint_spec(folder: Path) -> dict[str, Any] | None:
    """The fitted model spec stored with a checkpoint (labels, scales), or None if there is none."""
    path = folder / "model.json"
    return json.loads(path.read_text()) if path.is_file() else None
