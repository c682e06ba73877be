"""One candidate of a search: a config built from a trial's parameters, trained into its own run
folder, its per-epoch validation scores reported to Optuna's pruner, stopped cleanly at a deadline.

:func:`run_candidate` is the building block shared by ``mmagent tune`` (:class:`TuneObjective`) and
the budgeted search behind ``mmagent fit``.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any

import optuna

from mmagent.config import ExperimentConfig, config_from_dict
from mmagent.runs import read_metrics_log
from mmagent.search.space import CategoricalParam, FloatParam, IntParam, TuneSpec, objective_metric, suggest
from mmagent.search.study import trial_dir

if TYPE_CHECKING:
    from mmagent.data.feature_store import FeatureCacheStore
    from mmagent.training.splits import Splits


def trial_config(base: ExperimentConfig, params: dict[str, Any], metric: str | None = None) -> ExperimentConfig:
    """The base config with the trial's parameters (see :meth:`ExperimentConfig.with_params`) and,
    when given, ``metric`` as train.metric."""
    return base.with_params({**params, **({"train.metric": metric} if metric is not None else {})})


@dataclass
class CandidateResult:
    """What training one candidate gave. ``score`` is the best validation value of ``metric``
    (TARGET/METRIC), reached at ``best_epoch``; the best model is in ``run_dir/model``."""

    run_dir: Path
    metric: str
    score: float
    best_epoch: int
    epochs_run: int  # validated epochs, a partial last one included
    planned_epochs: int
    seconds: float
    cut_short: bool  # stopped by the deadline before its planned epochs
    pruned: bool = False  # stopped by the trial's pruner
    params: dict[str, Any] = field(default_factory=dict)  # the trial's parameters, when from a search
    trial_number: int | None = None


class CandidatePruned(optuna.TrialPruned):
    """Raised by :func:`run_candidate` when the trial's pruner stopped it (Optuna records the trial
    as pruned); ``.result`` is the candidate's result, a valid run folder with its best model so far."""

    def __init__(self, message: str, result: CandidateResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Deadline:
    """Whether a candidate must stop training now to be scored by ``at``: the partial epoch is still
    validated after the cut (5,000 validation rows on MPNet: ~100 s on two cores, which took fits
    past their budget), so the cut comes that much earlier. The validation pass is estimated from
    the training steps timed so far: a forward pass costs about a third of a training step per row
    (no backward, no optimizer; MPNet here: 19 ms against 58-72 ms)."""

    at: float  # a time.monotonic() value
    validation_rows: int
    rows_per_step: int
    clock: Callable[[], float] | None = None  # default: time.monotonic
    first: float | None = None
    steps: int = 0
    passed: bool = False

    def __call__(self) -> bool:
        """Called after every optimizer step; True from the first step past the cut on."""
        now = (self.clock or monotonic)()
        if self.first is None:
            self.first = now
        else:
            self.steps += 1
        per_row = (now - self.first) / (self.steps * self.rows_per_step) if self.steps else 0.0
        self.passed = self.passed or now + self.validation_rows * per_row / 3 >= self.at
        return self.passed


def run_candidate(
    raw_config: dict[str, Any] | ExperimentConfig,
    run_dir: str | Path,
    *,
    store: FeatureCacheStore | None = None,
    trial: optuna.Trial | None = None,
    deadline: float | None = None,
    splits: Splits | None = None,
    progress: bool = False,
    base_dir: str | Path = ".",
    finalize: bool = False,
    prune: bool = True,
) -> CandidateResult:
    """Train one config into ``run_dir`` (new or empty) and return its validation result.

    - ``raw_config``: a dict as accepted by :func:`~mmagent.config.config_from_dict` (relative
      paths taken from ``base_dir``) or a validated config.
    - ``trial``: each epoch's validation score is reported to it; when its pruner says so (before
      the last epoch, and unless ``prune`` is False) training stops and :class:`CandidatePruned` (an ``optuna.TrialPruned``) is
      raised. The trial also gets ``run_dir``, ``train_seconds``, ``epochs_run``, ``best_epoch``,
      ``cut_short`` and, on failure, ``error`` as user attributes.
    - ``deadline``: a ``time.monotonic()`` value; training stops after the optimizer step that
      leaves just the time to validate that partial epoch by then (:class:`Deadline`), and keeps
      the best model so far, so the run folder stays loadable (``Agent.load``). ``cut_short``
      says it happened.
    - ``store``: frozen encoders' outputs shared across candidates.
    - ``splits``: the checked tables, loaded once by the search (default: read and checked here).
    - ``finalize``: also evaluate, calibrate and write the report (else the folder holds the model,
      config and metrics log only; :func:`finalize_candidate` can do it later).
    """
    from mmagent.training.trainer import train

    if finalize:
        from mmagent.workflow import train  # training, then finishing
    start = monotonic()
    config = raw_config if isinstance(raw_config, ExperimentConfig) else config_from_dict(copy.deepcopy(raw_config), base_dir=base_dir)
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise FileExistsError(f"{run_dir} already exists and is not empty: a candidate trains into a new folder")
    metric, _ = objective_metric(config, TuneSpec())
    planned = config.train.epochs
    flags = {"pruned_at": 0}
    n_val = len(splits.validation) if splits is not None else 0
    stop = (
        Deadline(deadline, min(n_val, config.data.validation_rows or n_val), config.train.batch_size * config.train.grad_accum)
        if deadline is not None
        else None
    )

    def past_deadline() -> bool:
        return stop is not None and stop()

    def on_epoch_end(epoch: int, score: float) -> bool:
        if trial is not None:
            if math.isfinite(score):
                trial.report(score, epoch)
            if prune and epoch < planned and trial.should_prune():  # after the last epoch there is nothing left to save
                flags["pruned_at"] = epoch
                return True
        return epoch < planned and past_deadline()

    if trial is not None:
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr("run_dir", str(run_dir))
    try:
        result = train(
            config,
            run_dir,
            progress=progress,
            on_epoch_end=on_epoch_end,
            splits=splits,
            feature_cache_store=store,
            stop_requested=past_deadline if deadline is not None else None,
        )
    except Exception as e:
        if trial is not None:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
        raise
    finally:
        epochs_run = len(read_metrics_log(run_dir, "epoch")) if run_dir.exists() else 0
        seconds = monotonic() - start
        if trial is not None:
            trial.set_user_attr("train_seconds", round(seconds, 3))
            trial.set_user_attr("epochs_run", epochs_run)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # candidates are never resumed
    cut = stop is not None and stop.passed and not flags["pruned_at"]  # only set when the check stopped training
    out = CandidateResult(
        run_dir,
        metric,
        result.best_score,
        result.best_epoch,
        epochs_run,
        planned,
        seconds,
        cut,
        bool(flags["pruned_at"]),
        trial_number=trial.number if trial is not None else None,
    )
    if trial is not None:
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("cut_short", cut)
        if out.pruned:
            trial.set_user_attr("best_value_before_pruning", result.best_score)
            raise CandidatePruned(f"pruned after epoch {flags['pruned_at']}", out)
    return out


def finalize_candidate(
    run_dir: str | Path, dest: str | Path, *, splits: Splits | None = None, progress: bool = False, extra_json: dict[str, Any] | None = None
) -> Path:
    """Copy a candidate's run folder to ``dest`` and finalize it there: evaluation on validation
    (and test), calibration, report. ``splits``: as given to :func:`run_candidate`;
    ``extra_json``: file name -> content, written with it. ``dest`` appears complete or not at all."""
    import torch

    from mmagent.finishing import finish_run
    from mmagent.io import atomic_dir, write_json
    from mmagent.training.splits import load_splits

    src, dest = Path(run_dir), Path(dest)
    cfg = ExperimentConfig.model_validate_json((src / "config.json").read_text())
    with atomic_dir(dest) as tmp:
        for item in src.iterdir():
            if item.name == "checkpoints" or item.name.startswith("shards_rank"):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        device = "cuda" if torch.cuda.is_available() and not cfg.train.cpu else "cpu"
        finish_run(tmp, cfg, splits if splits is not None else load_splits(cfg), device, progress=progress)
        for name, content in (extra_json or {}).items():
            write_json(tmp / name, content)
    return dest


class TuneObjective:
    """The ``mmagent tune`` objective: suggest the space's parameters, train the trial's config
    into ``TUNE_DIR/trials/<n>`` (no final report), return its best validation score."""

    def __init__(
        self,
        base: ExperimentConfig,
        spec: TuneSpec,
        metric: str,
        tune_dir: Path,
        study_name: str,
        store: FeatureCacheStore | None,
        splits: Splits | None = None,
    ) -> None:
        self.base, self.spec, self.metric, self.tune_dir, self.study_name, self.store = base, spec, metric, tune_dir, study_name, store
        self.splits = splits  # checked once for every trial, when no trial can change them

    def __call__(self, trial: optuna.Trial) -> float:
        run_dir = trial_dir(self.tune_dir, self.study_name, trial.number)
        try:
            params = suggest_params(trial, self.spec.space or {})
            cfg = trial_config(self.base, params, self.metric)
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            raise
        if run_dir.exists():  # left by an earlier study of the same name whose storage is gone
            shutil.rmtree(run_dir)
        return run_candidate(cfg, run_dir, store=self.store, trial=trial, splits=self.splits).score


def suggest_params(trial: optuna.Trial, space: dict[str, FloatParam | IntParam | CategoricalParam]) -> dict[str, Any]:
    """Draw every parameter of ``space`` for ``trial``: dotted path -> value for the config."""
    return {key: suggest(trial, key, param)[0] for key, param in space.items()}
