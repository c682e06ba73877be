"""The training log: ``metrics.jsonl`` (one JSON object per step and per epoch), and the same
scalars for the experiment tracker (``train.log_with``, see ``training/tracking.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmagent.io import write_json


class MetricsLog:
    """JSON lines (always); each line's numbers also go to ``track(values, step=...)`` when given
    (``accelerator.log``: the configured trackers, a no-op without one)."""

    def __init__(self, path: Path, enabled: bool, track: Callable[..., Any] | None = None) -> None:
        self.path, self.enabled, self.track = path, enabled, track

    def size(self) -> int:
        """Bytes written so far (a checkpoint records it; a resume cuts the log back to it)."""
        return self.path.stat().st_size if self.path.is_file() else 0

    def write(self, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:  # append-only log: a torn last line is harmless
            f.write(json.dumps(entry) + "\n")
        if self.track is not None:
            values = {k: v for k, v in flatten(entry).items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")}
            if values:
                self.track(values, step=entry.get("step", 0))


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
