"""``mmagent tune``: an Optuna search over the experiment config.

The config's ``tune:`` block declares the search space (:mod:`mmagent.search.space`); without
``space`` one is derived from the config. Each trial applies its parameters to the config and trains
into ``TUNE_DIR/trials/<n>`` without the final report (fast); per-epoch validation scores feed
Optuna's pruner. TPE (seeded) picks the parameters. The study lives in ``TUNE_DIR/study.db`` unless
another storage is given, so a second run resumes it (:mod:`mmagent.search.study`).

At the end the best trial's run folder is finalized (evaluation, calibration, report) into
``TUNE_DIR/best``, the artifact to serve; ``TUNE_DIR/tune_report.md`` lists every trial, the best
parameters and parameter importances, with a plot. Frozen encoders' outputs are shared across trials
(:class:`~mmagent.data.feature_store.FeatureCacheStore`, in ``TUNE_DIR/cache``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmagent.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from mmagent.data.feature_store import FeatureCacheStore
from mmagent.io import atomic_dir, write_json
from mmagent.search.objective import TuneObjective, finalize_candidate, trial_config
from mmagent.search.report import write_tune_report
from mmagent.search.space import TuneSpec, objective_metric, params_from_recorded, parse_tune_spec, search_base
from mmagent.search.study import (
    DEFAULT_STUDY,
    TrialWatcher,
    best_trial,
    make_pruner,
    mask_url,
    open_study,
    recover_dead_local_trials,
    state_counts,
    trial_dir,
    trial_errors,
)
from mmagent.training.splits import load_splits, shares_splits

if TYPE_CHECKING:
    import optuna


class TuneError(ValueError):
    """The search could not produce a result (e.g. every trial failed); the message says why."""


@dataclass
class TuneResult:
    """The outcome of :func:`tune`: the best trial and where its finalized run folder is."""

    tune_dir: Path
    study_name: str
    storage: str  # password masked
    metric: str
    direction: str
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_dir: Path | None
    counts: dict[str, int] = field(default_factory=dict)  # trials per state
    cache: dict[str, int] = field(default_factory=dict)  # this process: builds / hits
    report: Path | None = None


def tune(
    config: ExperimentConfig | str | Path | dict[str, Any],
    tune_dir: str | Path,
    trials: int,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    progress: bool = False,
) -> TuneResult:
    """Run (or resume) the search until ``trials`` trials have finished (complete or pruned) or
    ``timeout`` seconds have passed in this call; finalize the best trial into ``TUNE_DIR/best``
    and write ``TUNE_DIR/tune_report.md``."""
    import optuna

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    tune_dir = Path(tune_dir)
    base = search_base(config)
    spec = parse_tune_spec(config, base)
    metric, direction = objective_metric(config, spec)
    tune_dir.mkdir(parents=True, exist_ok=True)
    study_name = study_name or DEFAULT_STUDY
    if storage and "://" not in storage:  # a plain file path: an SQLite database there
        storage = f"sqlite:///{Path(storage).expanduser().resolve()}"
    url = storage or f"sqlite:///{(tune_dir / 'study.db').resolve()}"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress lines come from TrialWatcher
    try:
        return _tune(config, spec, base, metric, direction, tune_dir, trials, timeout, url, study_name, progress)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _tune(
    config: ExperimentConfig,
    spec: TuneSpec,
    base: ExperimentConfig,
    metric: str,
    direction: str,
    tune_dir: Path,
    trials: int,
    timeout: float | None,
    url: str,
    study_name: str,
    progress: bool,
) -> TuneResult:
    import optuna
    from optuna.trial import TrialState

    study = open_study(url, study_name, direction, metric)
    recover_dead_local_trials(study)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    seed = spec.seed if spec.seed is not None else config.train.seed
    n_startup = spec.n_startup_trials if spec.n_startup_trials is not None else min(10, max(2, trials // 4))
    # A resumed search must not replay the first call's random draws: offset the seed by the trials so far.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), n_startup_trials=n_startup)
    study.pruner = make_pruner(spec.pruner)

    store = None if spec.cache == "off" else FeatureCacheStore(tune_dir / "cache" if spec.cache == "disk" else None)
    splits = load_splits(base) if shares_splits(spec.space or {}) else None  # rows checked once, not per trial
    objective = TuneObjective(base, spec, metric, tune_dir, study_name, store, splits)
    watcher = TrialWatcher(spec.keep_models, tune_dir, progress)
    interrupted = False
    try:
        if done < trials:
            if progress:
                print(f"study {study_name!r}: {done} trial(s) finished, running up to {trials - done} more" + (f" (timeout {timeout:g}s)" if timeout else ""))
            study.optimize(objective, n_trials=trials - done, timeout=timeout, catch=(Exception,), callbacks=[watcher], gc_after_trial=True)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        best = best_trial(study)
        best_dir = None
        if best is not None and not interrupted:
            best_dir = finalize_best(study, best, base, spec, tune_dir, metric, store, progress)
        watcher.cleanup(study)
        report = write_tune_report(study, tune_dir, metric, direction, mask_url(url), best_dir, store)
    counts = state_counts(study)
    if best is None:
        errors = trial_errors(study)
        raise TuneError(f"no trial completed ({counts}); " + (f"last error: {errors[max(errors)]}" if errors else f"see {report}"))
    return TuneResult(
        tune_dir,
        study_name,
        mask_url(url),
        metric,
        direction,
        best.number,
        best.value,
        dict(best.params),
        best_dir,
        counts,
        {"builds": store.builds, "hits": store.hits} if store else {},
        report,
    )


def finalize_best(
    study: optuna.Study,
    best: optuna.trial.FrozenTrial,
    base: ExperimentConfig,
    spec: TuneSpec,
    tune_dir: Path,
    metric: str,
    store: FeatureCacheStore | None = None,
    progress: bool = False,
) -> Path:
    """Make ``TUNE_DIR/best`` the best trial's finalized run folder (model, metrics.json,
    calibration, report.md). The trial's folder is copied when it is on this machine; otherwise (a
    trial run by another worker) the best parameters are trained again here."""
    from mmagent.workflow import train

    best_dir = tune_dir / "best"
    marker = {"study": study.study_name, "trial": best.number, "value": best.value, "params": best.params}
    marker_path = best_dir / "tune_trial.json"
    if marker_path.is_file() and json.loads(marker_path.read_text()) == json.loads(json.dumps(marker)) and (best_dir / "model").is_dir():
        return best_dir
    src = Path(best.user_attrs.get("run_dir", trial_dir(tune_dir, study.study_name, best.number)))
    if (src / "model" / "model.json").is_file() and (src / "config.json").is_file():
        finalize_candidate(src, best_dir, extra_json={"tune_trial.json": marker})
    else:
        cfg = trial_config(base, params_from_recorded(best.params, spec.space or {}), metric)
        with atomic_dir(best_dir) as tmp:
            train(cfg, tmp, progress=False, feature_cache_store=store)
            shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
            write_json(tmp / "tune_trial.json", marker)
    if progress:
        print(f"best trial {best.number} ({metric} = {best.value:.4f}) finalized in {best_dir}")
    return best_dir
