"""What ``mmagent fit`` shows while it works: budget used and left, and the leaderboard of
candidates (what differs, validation score, time, how each ended), in the terminal and the run."""

from __future__ import annotations

import csv
import functools
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmagent.io import write_text
from mmagent.metrics import MetricRef
from mmagent.runs import LEADERBOARD_CSV, LEADERBOARD_MD


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
    """One leaderboard row: a trained candidate, or a rung skipped / a trial that failed."""

    name: str
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "done"
    score: float = math.nan
    seconds: float = 0.0
    epochs_run: int = 0
    planned_epochs: int = 0
    steps: int = 0
    run_dir: Path | None = None
    loss: float = math.nan  # validation log-loss at the best epoch: breaks ties in score

    @classmethod
    def from_result(cls, number: int, result: Any) -> Candidate:
        """A row from a :class:`~mmagent.search.objective.CandidateResult`."""
        from mmagent.runs import read_metrics_log
        from mmagent.search.ladder import strategy_of

        strategies = sorted({strategy_of(v) for k, v in result.params.items() if k.endswith(".encoder")}) or ["train"]
        status = "pruned" if result.pruned else "cut by budget" if result.cut_short else "done"
        epochs = read_metrics_log(result.run_dir, "epoch")
        return cls(
            f"{number:02d}-{'+'.join(strategies)}",
            "+".join(strategies),
            dict(result.params),
            status,
            float(result.score),
            float(result.seconds),
            result.epochs_run,
            result.planned_epochs,
            int(epochs[-1]["step"]) if epochs else 0,
            Path(result.run_dir),
            _loss_at(epochs, result.best_epoch, MetricRef.parse(result.metric).target),
        )

    def describe(self) -> str:
        """What this candidate changes: strategy and its hyperparameters, briefly."""
        p = self.params
        if self.strategy == "ensemble":
            return f"average of {', '.join(p.get('members', []))} (calibrated probabilities)"
        parts = [self.strategy + "".join(f" on {b}" for b in self.backbones())]
        if "train.lr" in p and self.strategy != "probe":
            parts.append(f"lr {p['train.lr']:.1e}")
        if "train.head_lr" in p:
            parts.append(f"head lr {p['train.head_lr']:.1e}")
        if "fusion.type" in p:
            parts.append(f"{p['fusion.type']} fusion")
        if "fusion.modality_dropout" in p:
            parts.append(f"modality dropout {p['fusion.modality_dropout']:.2f}")
        return ", ".join(parts)

    def serving_ms(self) -> float | None:
        """What one prediction costs this candidate's encoders (the catalog's CPU ms per sample,
        summed; the built-in ones, an MLP or a small CNN, count as nothing beside a pretrained
        backbone); None when one of them has no figure (a user's own encoder, an ensemble)."""
        from mmagent import catalog

        encoders = [v for k, v in self.params.items() if k.endswith(".encoder") and isinstance(v, dict)]
        costs = [0.0 if e.get("source") == "builtin" else getattr(catalog.find(e), "cpu_ms", None) for e in encoders]
        return None if not costs or any(c is None for c in costs) else float(sum(costs))

    def backbones(self) -> list[str]:
        """The larger-than-default backbones this candidate climbed to (catalog keys)."""
        from mmagent import catalog

        out = []
        for key, value in self.params.items():
            entry = catalog.find(value) if key.endswith(".encoder") and isinstance(value, dict) else None
            if entry is not None and entry.encoder["name"] != catalog.default_encoder(entry.modality)["name"]:
                out.append(entry.key)
        return out


def _loss_at(epochs: list[dict[str, Any]], epoch: int, target: str) -> float:
    """The validation log-loss logged at ``epoch`` (NaN when not logged: regression, old runs)."""
    for e in epochs:
        if e.get("epoch") == epoch:
            return float(e.get("validation", {}).get(target, {}).get("log_loss", math.nan))
    return math.nan


def _known(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass
class Leaderboard:
    """Candidates in the order they ran; ``best`` is the top validation score among those that
    finished (done, or cut by the budget after at least one validated epoch)."""

    metric: str
    larger_better: bool = True
    rows: list[Candidate] = field(default_factory=list)
    # A cheaper-to-serve candidate within this much of the top validation score is chosen over
    # it (0: the top score wins, whatever it costs); fit sets it from the preset and the
    # validation score's standard error.
    tolerance: float = 0.0

    def skipped(self, strategy: str, reason: str) -> None:
        self.rows.append(Candidate(f"--{strategy}", strategy, status=f"skipped: {reason}"))

    def fill(self, result: Any) -> None:
        """Rows for every trial of a :class:`~mmagent.search.budget.SearchResult`."""
        for number in sorted(set(result.candidates) | set(result.errors)):
            if number in result.candidates:
                self.rows.append(Candidate.from_result(number, result.candidates[number]))
            else:
                self.rows.append(Candidate(f"{number:02d}", "?", status=f"failed: {result.errors[number].splitlines()[0][:120]}"))

    def best(self) -> Candidate | None:
        """The chosen candidate: a kept ensemble (kept only when it beat the best single one on
        validation, see :mod:`mmagent.search.ensembling`), else the top of :meth:`ranked`."""
        kept = [r for r in self.rows if r.strategy == "ensemble" and r.status == "done" and r.run_dir is not None]
        if kept:
            return kept[-1]
        ranked = self.ranked()
        if not ranked or ranked[0].serving_ms() is None:
            return ranked[0] if ranked else None
        close = [r for r in ranked if abs(r.score - ranked[0].score) <= self.tolerance and r.serving_ms() is not None]
        return min(close, key=lambda r: r.serving_ms())  # type: ignore[arg-type,return-value]  # the first of equals: ranked order

    def why_chosen(self) -> str | None:
        """Why the chosen candidate is not the top validation score, if it is not."""
        chosen, ranked = self.best(), self.ranked()
        if chosen is None or not ranked or chosen is ranked[0] or chosen.strategy == "ensemble":
            return None
        top = ranked[0]
        ratio = top.serving_ms() / max(chosen.serving_ms() or 1e-9, 1e-9)  # type: ignore[operator]
        return (
            f"chose {chosen.name} over {top.name} ({top.score:.4f} on validation, {top.score - chosen.score:+.4f}): within "
            f"{self.tolerance:.4f} of it, about one standard error of the validation score, and {ratio:.1f}x cheaper to serve"
        )

    def ranked(self, statuses: tuple[str, ...] = ("done", "cut by budget")) -> list[Candidate]:
        """Rows with a validation score and a model, best first (the trainer's rule: ties go to
        the lower log-loss; equal rows keep their order). ``statuses``: which rows count."""
        from mmagent.metrics import is_better

        def order(a: Candidate, b: Candidate) -> int:
            if is_better(a.score, _known(a.loss), b.score, _known(b.loss), self.larger_better):
                return -1
            return 1 if is_better(b.score, _known(b.loss), a.score, _known(a.loss), self.larger_better) else 0

        usable = [r for r in self.rows if r.status in statuses and not math.isnan(r.score) and r.run_dir is not None]
        return sorted(usable, key=functools.cmp_to_key(order))

    def _records(self) -> list[dict[str, Any]]:
        best = self.best()
        return [
            {
                "": "*" if r is best else "",
                "candidate": r.name,
                "what differs": r.describe(),
                f"validation {self.metric or 'score'}": "" if math.isnan(r.score) else f"{r.score:.4f}",
                "log loss": "" if math.isnan(r.loss) else f"{r.loss:.4f}",
                "epochs": f"{r.epochs_run}/{r.planned_epochs}" if r.planned_epochs else "",
                "seconds": f"{r.seconds:.0f}" if r.seconds else "",
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
        write_text(run_dir / LEADERBOARD_CSV, buffer.getvalue())
        write_text(
            run_dir / LEADERBOARD_MD,
            f"# Fit leaderboard\n\nSelected on validation {self.metric}; * marks the chosen candidate"
            + (f" ({why})" if (why := self.why_chosen()) else "")
            + f".\n\n```\n{self.table()}\n```\n",
        )
