"""What ``mmagent fit`` shows while it works: budget used and left, and the leaderboard of
candidates (what differs, validation score, time, how each ended), in the terminal and the run."""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmagent.io import write_text


class Progress:
    """Budget clock; ``say`` prints a line stamped with time used / budget."""

    def __init__(self, budget_seconds: float, enabled: bool = True) -> None:
        self.budget = float(budget_seconds)
        self.start = time.monotonic()
        self.enabled = enabled

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def say(self, message: str) -> None:
        if self.enabled:
            print(f"[fit {_clock(self.elapsed())} used / {_clock(self.budget)}, {_clock(max(0.0, self.left()))} left] {message}", flush=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


@dataclass
class Candidate:
    """One leaderboard row."""

    name: str
    strategy: str
    params: dict[str, Any]
    wanted_epochs: int
    status: str = "running"
    score: float = math.nan
    seconds: float = 0.0
    epochs_run: int = 0
    best_epoch: int = 0
    steps: int = 0
    run_dir: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """What this candidate changes: strategy and its hyperparameters, briefly."""
        p = self.params
        parts = [self.strategy]
        if "lr" in p:
            parts.append(f"lr {p['lr']:.1e}")
        parts.append(f"head lr {p.get('head_lr', float('nan')):.1e}")
        if "fusion" in p:
            parts.append(f"{p['fusion']} fusion")
        if "modality_dropout" in p:
            parts.append(f"modality dropout {p['modality_dropout']:.2f}")
        return ", ".join(parts)

    def finish(self, result: Any, status: str) -> None:
        from mmagent.runs import read_metrics_log

        self.status, self.score, self.seconds = status, float(result.score), float(result.seconds)
        self.epochs_run, self.best_epoch, self.run_dir = result.epochs_run, result.best_epoch, Path(result.run_dir)
        epochs = read_metrics_log(self.run_dir, "epoch")
        self.steps = int(epochs[-1]["step"]) if epochs else 0

    def skip(self, reason: str) -> None:
        self.status = f"skipped: {reason}"

    def fail(self, error: BaseException) -> None:
        self.status = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"

    def status_text(self) -> str:
        return self.status if math.isnan(self.score) else f"{self.status}, best {self.score:.4f}"


@dataclass
class Leaderboard:
    """Candidates in the order they ran; ``best`` is the top validation score among those that
    finished (done, or cut by the budget after at least one validated epoch)."""

    metric: str
    larger_better: bool = True
    rows: list[Candidate] = field(default_factory=list)

    def add(self, name: str, strategy: str, params: dict[str, Any], wanted_epochs: int) -> Candidate:
        row = Candidate(name, strategy, dict(params), wanted_epochs)
        self.rows.append(row)
        return row

    def best(self) -> Candidate | None:
        usable = [r for r in self.rows if r.status in ("done", "cut by budget") and not math.isnan(r.score) and r.run_dir is not None]
        if not usable:
            return None
        return max(usable, key=lambda r: r.score if self.larger_better else -r.score)

    def _records(self) -> list[dict[str, Any]]:
        best = self.best()
        return [
            {
                "rank": "*" if r is best else "",
                "candidate": r.name,
                "what differs": r.describe(),
                f"validation {self.metric or 'score'}": "" if math.isnan(r.score) else f"{r.score:.4f}",
                "epochs": f"{r.epochs_run}/{r.wanted_epochs}",
                "seconds": f"{r.seconds:.0f}",
                "status": r.status,
            }
            for r in self.rows
        ]

    def table(self) -> str:
        """An aligned text table (the chosen candidate marked with *)."""
        records = self._records()
        if not records:
            return "(no candidates)"
        keys = list(records[0])
        width = {k: max(len(k), *(len(str(r[k])) for r in records)) for k in keys}
        lines = ["  ".join(f"{k:<{width[k]}}" for k in keys), "  ".join("-" * width[k] for k in keys)]
        lines += ["  ".join(f"{str(r[k]):<{width[k]}}" for k in keys) for r in records]
        return "\n".join(lines)

    def write(self, run_dir: Path) -> None:
        """``leaderboard.md`` and ``leaderboard.csv`` in the run folder."""
        records = self._records()
        buffer = io.StringIO()
        if records:
            writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
        write_text(run_dir / "leaderboard.csv", buffer.getvalue())
        write_text(run_dir / "leaderboard.md", f"# Fit leaderboard\n\nSelected on validation {self.metric}; * marks the chosen candidate.\n\n```\n{self.table()}\n```\n")
