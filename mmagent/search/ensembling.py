"""Whether averaging ``fit``'s best candidates beats the best one on validation, and which to average.

The candidates are taken best-first (the leaderboard's order), skipping any whose inputs are
preprocessed differently from the best one's (an ensemble feeds one batch to all its members).
Each gets a temperature fitted on validation; the ensemble of the top *k* (k = 2 .. MAX_MEMBERS)
averages their calibrated probabilities. The best *k* wins only if it beats the best single
candidate on the validation metric, or ties it with a log-loss at least ``TIE_MARGIN`` lower:
averaging probabilities almost never raises the log-loss, so on a saturated validation split
(FSDD: 300 of 300) a bare tie-break would keep an ensemble that changes nothing and costs one
forward pass per member on every prediction.

Only *k* is chosen on validation, not which candidates: a greedy pick among dozens of candidates
on a few hundred validation rows would fit the validation split's noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmagent.metrics import MetricRef
from mmagent.search.leaderboard import Candidate, Leaderboard

MAX_MEMBERS = 3  # each member adds one model's cost to every prediction
TIE_MARGIN = 0.05  # on a tied metric, the ensemble's log-loss must be this much lower (relative)


@dataclass
class EnsembleChoice:
    """The members (best first, as loaded models and as leaderboard rows), their temperatures, and
    the validation score and log-loss of the ensemble and of the best single candidate."""

    rows: list[Candidate]
    models: list[Any]
    temperatures: list[dict[str, float]]
    score: float
    loss: float
    single_score: float
    single_loss: float
    larger_better: bool = True
    tried: dict[int, tuple[float, float]] = field(default_factory=dict)  # k -> (score, log-loss)

    @property
    def wins(self) -> bool:
        """Better than the best single candidate on validation (see the module docstring)."""
        if self.score != self.single_score:
            return self.score > self.single_score if self.larger_better else self.score < self.single_score
        return not math.isnan(self.loss) and not math.isnan(self.single_loss) and self.loss <= (1 - TIE_MARGIN) * self.single_loss

    def row(self, status: str, seconds: float, run_dir: Any = None) -> Candidate:
        """This ensemble as a leaderboard row (its ``describe`` names the members)."""
        return Candidate("ensemble", "ensemble", {"members": [r.name for r in self.rows]}, status, self.score, seconds, run_dir=run_dir, loss=self.loss)


def choose_ensemble(board: Leaderboard, validation: Any, batch_size: int, device: Any = "cpu", max_members: int = MAX_MEMBERS) -> EnsembleChoice | None:
    """Score the average of the top 2 .. ``max_members`` candidates on ``validation`` (a Table).
    ``None`` when fewer than two candidates can be averaged; else the best size (see ``wins``)."""
    from mmagent.ensemble import incompatibility
    from mmagent.model import MultimodalModel
    from mmagent.specs import ModelSpec

    ref = MetricRef.parse(board.metric)
    target, metric = ref.target, ref.name
    rows, specs = [], []
    for row in board.ranked():
        if len(rows) == max_members:
            break
        saved = row.run_dir / "model" / "model.json" if row.run_dir is not None else None
        if saved is None or not saved.is_file():
            continue
        spec = ModelSpec.model_validate_json(saved.read_text())  # compared before any weights load
        if specs and incompatibility(specs[0], spec):
            continue
        rows.append(row)
        specs.append(spec)
    if len(rows) < 2:
        return None
    models = [MultimodalModel.load(r.run_dir / "model").to(device) for r in rows]  # type: ignore[operator]
    outputs, temperatures, truth = zip(*(_calibrated(m, validation, batch_size, device) for m in models))
    spec = models[0].heads[target].spec
    y = truth[0][target]
    scored = {k: _score(spec, np.mean([o[target] for o in outputs[:k]], axis=0), y, metric) for k in range(1, len(models) + 1)}
    from mmagent.metrics import LOWER_IS_BETTER, is_better

    larger = metric not in LOWER_IS_BETTER
    chosen = 2
    for k in range(3, len(models) + 1):
        if is_better(*scored[k], *scored[chosen], larger):  # type: ignore[misc]
            chosen = k
    return EnsembleChoice(
        rows[:chosen],
        models[:chosen],
        list(temperatures[:chosen]),
        scored[chosen][0],
        _nan(scored[chosen][1]),
        scored[1][0],
        _nan(scored[1][1]),
        larger,
        {k: (v[0], _nan(v[1])) for k, v in scored.items()},
    )


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _calibrated(model: Any, validation: Any, batch_size: int, device: Any) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, np.ndarray]]:
    """One candidate on validation: per target, its calibrated probabilities (regression: values),
    the temperatures (fitted on validation, as the run's own calibration would be) and the targets."""
    import torch

    from mmagent.agent.fitting import calibrate
    from mmagent.inference import make_loader, run_model

    preds = run_model(model, make_loader(model, validation, batch_size, by_length=True), device)
    temperatures = {name: float(entry["temperature"]) for name, entry in calibrate(model, preds).items()}
    outputs = {}
    for name, head in model.heads.items():
        if head.spec.type == "regression":
            outputs[name] = preds.outputs[name]
        else:
            outputs[name] = head.predict(torch.from_numpy(preds.logits[name]) / temperatures.get(name, 1.0)).numpy()
    return outputs, temperatures, preds.targets


def _score(spec: Any, outputs: np.ndarray, y: np.ndarray, metric: str) -> tuple[float, float | None]:
    """``metric`` and the log-loss (None where there is none) of ``outputs`` against ``y``."""
    from mmagent.metrics import target_metrics

    m = target_metrics(spec, outputs, y, detailed=False)
    loss = m.get("log_loss")
    return float(m.get(metric, math.nan)), (float(loss) if isinstance(loss, float) and math.isfinite(loss) else None)


def add_ensemble(
    board: Leaderboard, validation: Any, batch_size: int, folder: Any, say: Any = print, device: Any = "cpu", max_members: int = MAX_MEMBERS
) -> list[Candidate]:
    """Choose an ensemble of at most ``max_members`` (:func:`choose_ensemble`) and put it on
    ``board``: a promotable candidate in ``folder`` when it beats the best single one on
    validation, else a row saying it did not. Returns the members (best first) when kept, else ``[]``."""
    import time

    start = time.monotonic()
    choice = choose_ensemble(board, validation, batch_size, device, max_members)
    if choice is None:
        say("no ensemble: fewer than two finished candidates share the best one's preprocessing")
        return []
    tried = ", ".join(f"top {k}: {score:.4f}" for k, (score, _) in sorted(choice.tried.items()))
    if not choice.wins:
        board.rows.append(choice.row("not better than the best single", time.monotonic() - start))
        say(f"ensemble not kept: averaging did not beat the best candidate on validation ({tried})")
        return []
    board.rows.append(save_candidate(choice, folder, time.monotonic() - start))
    row = board.rows[-1]
    say(f"ensemble kept: {row.describe()} (validation {tried}); each prediction runs {len(choice.rows)} models (--no-ensemble keeps one)")
    return choice.rows


def save_candidate(choice: EnsembleChoice, folder: Any, seconds: float) -> Candidate:
    """The ensemble as a candidate folder (the primary's config and training log, the ensemble as
    ``model/``), ready to be promoted like any other; and its leaderboard row."""
    import shutil
    from pathlib import Path

    from mmagent.ensemble import EnsembleModel

    folder, primary = Path(folder), choice.rows[0].run_dir
    assert primary is not None
    folder.mkdir(parents=True)
    for item in primary.iterdir():
        if item.name != "model" and item.is_file():
            shutil.copy2(item, folder / item.name)
    EnsembleModel([m.cpu() for m in choice.models], choice.temperatures).save(folder / "model")
    return choice.row("done", seconds, folder)
