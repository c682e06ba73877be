"""The Optuna study behind a search: opening (or resuming) it, its pruner, recovering trials left
RUNNING by dead workers, and the per-trial callback. Public Optuna API only.

Storage defaults to ``sqlite:///TUNE_DIR/study.db``: a second run resumes the study. Any SQLAlchemy
URL works, so several machines can work on one study; trials left RUNNING by a killed process are
failed and re-queued with the same parameters (at once when the process ran on this host and is
gone, otherwise once its heartbeat is stale).
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from mmagent.config import ConfigError
from mmagent.search.space import PrunerSpec

if TYPE_CHECKING:
    import optuna

DEFAULT_STUDY = "mmagent"
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 180
# A trial's error recorded after it ended (by whoever found its worker dead) lives in the study's
# user attributes under this prefix + the trial number: a finished trial's own attributes are frozen.
ERROR_ATTR = "error:trial "


def open_study(url: str, name: str, direction: str, metric: str) -> optuna.Study:
    """Create or load study ``name`` in ``url`` (heartbeats on, stale trials retried once); refuse
    a study that optimizes another metric or direction."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study = optuna.create_study(storage=rdb_storage(url), study_name=name, direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} in this storage {study.direction.name.lower()}s; this config {direction}s {metric}: use another --study name")
    existing = study.user_attrs.get("metric")
    if existing is None:
        study.set_user_attr("metric", metric)
    elif existing != metric:
        raise ConfigError(f"study {name!r} in this storage optimizes {existing}, not {metric}: use another --study name or storage")
    return study


def rdb_storage(url: str, grace: float = GRACE_SECONDS) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeats: a trial whose process stops beating for ``grace``
    seconds is failed and queued once more with the same parameters."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_local_trials(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a process of this host that no longer exists (killed, crashed): fail
    them (``study.tell``), record why, and queue a retry with the same parameters. Trials of other
    hosts are handled by the storage heartbeat (failed and re-queued once stale). Returns the
    numbers of the recovered trials."""
    import optuna
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    host, recovered = socket.gethostname(), []
    for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != host or not isinstance(worker.get("pid"), int) or pid_alive(worker["pid"]) or worker["pid"] == os.getpid():
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        study.set_user_attr(f"{ERROR_ATTR}{t.number}", f"worker process {worker['pid']} on {host} ended while the trial ran")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, t)
        recovered.append(t.number)
    return recovered


def trial_errors(study: optuna.Study) -> dict[int, str]:
    """Trial number -> why it failed, from the trial itself or as recorded after it ended."""
    from optuna.trial import TrialState

    errors = {int(k[len(ERROR_ATTR) :]): v for k, v in study.user_attrs.items() if k.startswith(ERROR_ATTR)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("error"):
            errors.setdefault(t.number, t.user_attrs["error"])
    return errors


def make_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner a :class:`PrunerSpec` describes (steps are epochs)."""
    import optuna

    if spec.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.type == "percentile":
        return optuna.pruners.PercentilePruner(spec.percentile, n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.type == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.lower, upper=spec.upper, n_warmup_steps=spec.n_warmup_steps)
    if spec.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_resource, reduction_factor=spec.reduction_factor)
    if spec.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource, max_resource=spec.max_resource or "auto", reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


def trial_dir(tune_dir: Path, study_name: str, number: int) -> Path:
    """Where trial ``number`` trains: ``TUNE_DIR/trials/<n>`` (prefixed by a non-default study name)."""
    name = str(number) if study_name == DEFAULT_STUDY else f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in study_name)}-{number}"
    return tune_dir / "trials" / name


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best completed trial, or None before the first one."""
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def trial_seconds(t: optuna.trial.FrozenTrial) -> float:
    """Wall time of a finished trial (its recorded training time while it runs)."""
    if t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return float(t.user_attrs.get("train_seconds", float("nan")))


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state (``{"complete": 3, "pruned": 1}``)."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def mask_url(url: str) -> str:
    """The storage URL with any password hidden (for reports and logs)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class TrialWatcher:
    """Per-trial study callback: a progress line, model cleanup, and stop after repeated failures."""

    def __init__(self, keep_models: str, tune_dir: Path, progress: bool) -> None:
        self.keep_models, self.tune_dir, self.progress = keep_models, tune_dir, progress
        self.failures = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from optuna.trial import TrialState

        if self.progress:
            value = "" if trial.value is None else f" value {trial.value:.4f}"
            extra = f" ({trial.user_attrs['error']})" if trial.state == TrialState.FAIL and "error" in trial.user_attrs else ""
            print(f"trial {trial.number}: {trial.state.name.lower()}{value} in {trial_seconds(trial):.1f}s{extra}", flush=True)
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        if self.failures >= 3 and best_trial(study) is None:
            study.stop()  # the same error every time (bad data, missing files): no point going on
        self.cleanup(study)

    def cleanup(self, study: optuna.Study) -> None:
        """With keep_models: best, drop the model folders of finished trials other than the best."""
        from optuna.trial import TrialState

        if self.keep_models != "best":
            return
        best = best_trial(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            run_dir = t.user_attrs.get("run_dir")
            if run_dir and (best is None or t.number != best.number) and Path(run_dir).resolve().parent == (self.tune_dir / "trials").resolve():
                shutil.rmtree(Path(run_dir) / "model", ignore_errors=True)
                shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
