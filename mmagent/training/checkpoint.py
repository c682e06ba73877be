"""Training checkpoints for ``--resume``: weights (safetensors) + optimizer/scheduler/GradScaler/RNG
state + the config they were trained with.

The state file is loaded with ``torch.load(weights_only=True)``: it holds only tensors and plain
Python values.

A checkpoint is written to ``checkpoints/.last.tmp`` and swapped in with two renames (``last`` ->
``.last.old``, ``.last.tmp`` -> ``last``), then ``.last.old`` is removed. A kill at any point leaves
either a complete ``last`` or a complete ``.last.old``; :func:`tidy_checkpoints` (run before a
resume) puts ``.last.old`` back when ``last`` is missing and removes half-written temp folders.

On resume the config must match the checkpoint's except for :data:`RESUME_MAY_CHANGE`: keys that say
how long to train or how to run, never what is learned (:func:`config_changes`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from mmagent.io import write_json
from mmagent.model import MultimodalModel

# Config keys (dotted prefixes) that may differ between a checkpoint and the run resuming it.
# epochs / max_steps extend or shorten the run: the learning-rate schedule is re-sized from the
# resume point on (the trainer says so and logs the change), so the result is not that of an
# uninterrupted run with either setting. The others do not change what is learned: when to stop
# early, checkpoint frequency, the frozen-feature cache (same features), data-loading processes,
# the device, threads, torch.compile and the AdamW kernel (the same arithmetic), the test table (used only after training), the agent policy, the tuning space, and
# where the config file lives. Everything else (data, inputs, targets, fusion, optimizer, seed,
# precision, selection metric) is refused: a resumed run would be neither the old run nor the new.
RESUME_MAY_CHANGE = (
    "train.epochs",
    "train.max_steps",
    "train.early_stopping_patience",
    "train.checkpoint_every_steps",
    "train.cache_frozen_encoders",
    "train.cpu",
    "train.threads",
    "train.compile",
    "train.fused_optimizer",
    "data.num_workers",
    "data.test",
    "agent",
    "tune",
    "base_dir",
    "recipe",
    "train.log_with",  # where the run is tracked, not what it learns
    "train.tracking_uri",
    "train.experiment",
)


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


def _tmp(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.tmp")


def _old(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def save_checkpoint(
    folder: Path,
    model: MultimodalModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
    scaler: Any = None,
    config: dict[str, Any] | None = None,
) -> None:
    """Write a complete checkpoint and swap it in for ``folder`` (see the module docstring).

    ``progress``: plain values (epoch, step, best metric, ...), also written as JSON for humans;
    ``scaler``: the fp16 ``GradScaler`` (None without one); ``config``: the experiment config as
    JSON-able dict, compared on resume."""
    folder = Path(folder)
    tmp, old = _tmp(folder), _old(folder)
    if tmp.exists():  # left by a write that was killed
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(), "progress": progress}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    torch.save(state, tmp / "state.pt")
    write_json(tmp / "model.json", model.spec.model_dump(mode="json"))
    if config is not None:
        write_json(tmp / "config.json", config)
    write_json(tmp / "progress.json", progress)  # written last: its presence marks a complete folder
    if folder.exists():
        if old.exists():  # a stale copy from a kill after the swap: ``folder`` is newer
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def tidy_checkpoints(folder: Path) -> bool:
    """Repair what a kill during :func:`save_checkpoint` can leave, and say whether ``folder`` now
    holds a complete checkpoint: ``.last.old`` becomes ``last`` again when the kill fell between the
    two renames; half-written temp folders and stale copies are removed."""
    folder = Path(folder)
    old = _old(folder)
    if not folder.exists() and old.exists():
        os.replace(old, folder)
    if folder.parent.is_dir():
        remove_leftovers(folder.parent)
    return (folder / "state.pt").is_file() and (folder / "progress.json").is_file()


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove temp files/folders our atomic writers leave when killed (``.NAME.tmp``, ``.NAME.<random>.tmp``,
    ``.NAME.old``, ``.NAME.old-PID``) directly inside ``folder``; return what was removed."""
    removed = []
    for p in Path(folder).iterdir():
        if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.endswith(".old") or ".old-" in p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def load_checkpoint(folder: Path, model: MultimodalModel, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any = None) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, GradScaler and RNG state; return the progress dict."""
    missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {folder} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["progress"]


def checkpoint_spec(folder: Path) -> dict[str, Any] | None:
    """The fitted model spec stored with a checkpoint (labels, scales), or None if there is none."""
    path = folder / "model.json"
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_config(folder: Path, fallback: Path | None = None) -> dict[str, Any] | None:
    """The config stored with a checkpoint; checkpoints written before configs were stored in them
    fall back to ``fallback`` (the run folder's ``config.json``)."""
    for path in (Path(folder) / "config.json", fallback):
        if path is not None and path.is_file():
            return json.loads(path.read_text())
    return None


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """Differences between two configs as ``{dotted.key: (saved, current)}``, split into
    (allowed by :data:`RESUME_MAY_CHANGE`, refused)."""
    a, b = _flatten(saved), _flatten(current)
    diff = {k: (a.get(k, "(absent)"), b.get(k, "(absent)")) for k in sorted(a.keys() | b.keys()) if a.get(k, _MISSING) != b.get(k, _MISSING)}
    allowed = {k: v for k, v in diff.items() if any(k == p or k.startswith(p + ".") for p in RESUME_MAY_CHANGE)}
    return allowed, {k: v for k, v in diff.items() if k not in allowed}


def check_resume_config(saved: dict[str, Any] | None, current: dict[str, Any], folder: Path) -> dict[str, tuple[Any, Any]]:
    """Raise ``ValueError`` naming every refused difference; return the allowed ones."""
    if saved is None:
        return {}
    allowed, refused = config_changes(saved, current)
    if refused:
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(refused.items())[:12])
        more = f" (and {len(refused) - 12} more)" if len(refused) > 12 else ""
        raise ValueError(
            f"--resume: the config differs from the one checkpoint {folder} was trained with: {shown}{more}. "
            f"Resume with the same config, or start a new run in another folder. Only these may change on resume: {', '.join(RESUME_MAY_CHANGE)}"
        )
    return allowed


_MISSING = object()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        items = d.items()
    elif isinstance(d, list):
        items = ((str(i), v) for i, v in enumerate(d))
    else:
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in items:
        if isinstance(v, (dict, list)) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def prepare_resume(
    run_dir: Path, ckpt_dir: Path, config: dict[str, Any], main: bool, barrier: Callable[[], None]
) -> tuple[Path | None, dict[str, tuple[Any, Any]]]:
    """Before ``--resume``: repair what a kill left (main process only; ``barrier`` waits for it),
    then return the checkpoint to load and the allowed config changes. A run killed before its first
    checkpoint was complete has none: its outputs are removed and it starts over in the same folder
    (``None``) -- unless the run had finished (``metrics.json``): that is refused, never overwritten."""
    if main:
        tidy_checkpoints(ckpt_dir)
        remove_leftovers(run_dir)
    barrier()
    if (ckpt_dir / "state.pt").is_file():
        changed = check_resume_config(checkpoint_config(ckpt_dir, run_dir / "config.json"), config, ckpt_dir)
        if main and changed:  # the trainer also logs them in metrics.jsonl
            print("resuming with changed settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        return ckpt_dir, changed
    if (run_dir / "metrics.json").is_file():
        raise FileExistsError(f"--resume: {run_dir} holds a finished run whose checkpoint was removed; choose another folder")
    if main:
        print(f"--resume: no complete checkpoint in {ckpt_dir} (the run stopped before its first one): starting from the beginning")
        for name in ("metrics.jsonl", "model", "tensorboard"):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    barrier()
    return None, {}


def truncate_log(path: Path, size: int | None) -> None:
    """Cut an append-only log back to ``size`` bytes (its length when the checkpoint was written)."""
    if size is not None and path.is_file() and path.stat().st_size > size:
        with open(path, "r+b") as f:
            f.truncate(size)
