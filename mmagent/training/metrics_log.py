"""The training log: ``metrics.jsonl`` (one JSON object per step and per epoch) and, when
tensorboard is installed, the same scalars for TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmagent.io import write_json


class MetricsLog:
    """JSON lines (always) and TensorBoard scalars (when tensorboard is installed)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled, self.tb = path, enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except Exception:  # tensorboard not installed: JSONL only
                self.tb = None

    def size(self) -> int:
        """Bytes written so far (a checkpoint records it; a resume cuts the log back to it)."""
        return self.path.stat().st_size if self.path.is_file() else 0

    def write(self, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:  # append-only log: a torn last line is harmless
            f.write(json.dumps(entry) + "\n")
        if self.tb is not None:
            for k, v in flatten(entry).items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(k, v, entry.get("step", 0))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def compact_metrics(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {k: {m: v for m, v in d.items() if isinstance(v, (int, float))} for k, d in metrics.items()}


def record_shard(run_dir: Path, rank: int, world: int, epoch: int, rows: list[int]) -> None:
    """Test hook (``MMAGENT_RECORD_SHARDS=1``): the training rows this process saw, per epoch."""
    path = run_dir / f"shards_rank{rank}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"rank": rank, "world_size": world, "epochs": {}}
    data["epochs"][str(epoch)] = rows
    write_json(path, data)
