"""A small Optuna search within a time limit: the search step of ``mmagent fit``.

Every trial trains one candidate (:func:`~mmagent.search.objective.run_candidate`) into
``OUT/trials/<n>``; the search's deadline is also each candidate's, so the last one is cut short
(keeping its best epoch) instead of running past the budget. Successive halving or Hyperband prune
candidates that fall behind after a few epochs, and frozen encoders' outputs are computed once for
all candidates (a shared :class:`~mmagent.data.feature_store.FeatureCacheStore`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic, time
from typing import Any

import optuna

from mmagent.config import config_from_dict
from mmagent.data.feature_store import FeatureCacheStore
from mmagent.search.objective import CandidatePruned, CandidateResult, run_candidate, suggest_params, trial_config
from mmagent.search.space import CategoricalParam, IntParam, PrunerSpec, TuneSpec, choice_label, objective_metric, parse_space, search_base
from mmagent.search.study import best_trial, make_pruner, rdb_storage, trial_errors
from mmagent.search.workers import SEED_STRIDE, SearchSpec, read_spec, shareable_url, start_local_workers, wait_for_workers, worker_threads, write_spec
from mmagent.training.splits import Splits

# (a candidate's parameters, or None for "any new candidate"; the leader so far) -> monotonic deadline
DeadlineFor = Callable[[dict[str, Any] | None, CandidateResult | None], float]


@dataclass
class SearchResult:
    """Every candidate trained (complete, cut short or pruned; by trial number) and the best one."""

    study: optuna.Study
    metric: str  # TARGET/METRIC on validation
    direction: str
    candidates: dict[int, CandidateResult]
    best: CandidateResult | None
    seconds: float
    errors: dict[int, str] = field(default_factory=dict)  # failed trials: why
    interrupted: bool = False  # Ctrl-C / SIGTERM stopped the search; the candidates so far stand

    def ranked(self) -> list[CandidateResult]:
        """Candidates best first (pruned ones after the others, by their best score so far)."""
        sign = -1.0 if self.direction == "maximize" else 1.0
        return sorted(self.candidates.values(), key=lambda c: (c.pruned, sign * c.score))


def search_within_budget(
    base_config: dict[str, Any],
    space: dict[str, Any],
    out_dir: str | Path,
    *,
    time_limit: float,
    n_trials: int | None = None,
    pruner: PrunerSpec | dict[str, Any] | None = None,
    store: FeatureCacheStore | None = None,
    metric: str | None = None,
    seed: int = 0,
    first_params: list[dict[str, Any]] | None = None,
    splits: Splits | None = None,
    base_dir: str | Path = ".",
    storage: str | None = None,
    progress: bool = False,
    on_trial: Callable[[str], None] | None = None,
    prune_queued: bool = True,
    startup_trials: int | None = None,
    previous: dict[int, CandidateResult] | None = None,
    study_name: str | None = None,
    workers: int = 1,
    join: bool = False,
    offset: int | None = None,
    queued: int | None = None,
    deadline_for: DeadlineFor | None = None,
) -> SearchResult:
    """Search ``space`` (the ``tune.space`` mapping: dotted config path -> ``{type: float|int|
    categorical, ...}``) around ``base_config`` (a raw config dict) for at most ``time_limit``
    seconds and ``n_trials`` trials.

    - ``pruner``: default Hyperband (min 1 epoch, factor 3, up to the largest ``train.epochs`` in
      the space); ``{"type": "successive_halving"}`` or any :class:`PrunerSpec`.
    - ``store``: shared frozen-encoder outputs (default: a fresh in-memory store).
    - ``first_params``: parameter sets (config values) tried first, e.g. a recipe's defaults.
    - ``splits``: the checked tables every candidate trains on (the space must not change them,
      see :func:`~mmagent.training.splits.shares_splits`); default: each candidate reads its own.
    - ``storage``: an Optuna storage URL (default: in memory).
    - ``on_trial``: called with a one-line summary after each trial (``progress`` prints it).
    - ``startup_trials``: random trials before the TPE sampler models the space (default: a
      quarter of ``n_trials``, 2 to 10).
    - ``prune_queued``: False lets the ``first_params`` candidates run to the end (they still
      report their scores to the pruner).
    - ``previous``: candidates an interrupted search finished (``trials/<n>``, see
      :mod:`mmagent.search.resume`): kept in the result; new ones are numbered after them.
    - ``storage`` + ``study_name``: other processes may join (``search.json`` in ``out_dir`` says
      how, :mod:`mmagent.search.workers`); ``workers``: processes on this machine, this one
      included; ``join``: this process is such a worker (``offset``, ``queued``: the starting
      search's). Every worker's candidates end up in the result.
    - ``deadline_for``: a deadline that moves with the search (``fit`` keeps back the time that
      promoting the *leading* candidate needs, which depends on its backbone): called with a
      candidate's parameters and the leader so far, it gives that candidate's deadline; with
      ``None`` for the parameters, the time after which no new candidate starts. Both are capped
      at ``time_limit``; workers that join keep the first search deadline (no leader yet).
    A KeyboardInterrupt (Ctrl-C) ends the search; the result then holds the candidates so far.
    Each candidate's folder holds its best model (``Agent.load`` works; ``finalize_candidate``
    makes the full report). A failing candidate is recorded in ``errors``; after three failures in
    a row with nothing completed the search stops."""
    start = monotonic()
    deadline = start + time_limit
    config = config_from_dict(dict(base_config), base_dir=base_dir)
    base = search_base(config)
    params_space = parse_space(space, base)
    metric, direction = objective_metric(config, TuneSpec(metric=metric))
    out_dir = Path(out_dir)
    trials_dir = out_dir / "trials"
    if not join and trials_dir.exists() and any(p.name not in {str(n) for n in previous or {}} for p in trials_dir.iterdir()):
        raise FileExistsError(f"{trials_dir} already holds candidates: give a new output folder")
    if offset is None:
        offset = max(previous, default=-1) + 1 if previous else 0  # a resumed search numbers on
    spec = _pruner_spec(pruner, params_space, config.train.epochs)
    store = store if store is not None else FeatureCacheStore()

    reporting = (on_trial or print) if progress or on_trial is not None else None
    queued = len(first_params or []) if queued is None else queued
    trials = _Trials(base, params_space, metric, trials_dir, offset, store, deadline, splits, queued, prune_queued)
    trials.candidates, trials.reporting, trials.start = dict(previous or {}), reporting, start
    trials.deadline_for, trials.larger_better = deadline_for, direction == "maximize"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress lines come from watch()
    procs: list[Any] = []
    try:
        # a resumed search must not replay the first attempt's draws: offset the seed by what it finished
        sampler = optuna.samplers.TPESampler(seed=seed + offset, n_startup_trials=startup_trials or max(2, min(10, (n_trials or 12) // 4)))
        study = open_search_study(storage, study_name, direction, sampler, make_pruner(spec), join)
        if not join:
            for params in first_params or []:
                study.enqueue_trial({k: choice_label(v) if isinstance(params_space.get(k), CategoricalParam) else v for k, v in params.items()})
            if storage is not None and study_name is not None:  # others may join: say how
                joinable = SearchSpec(
                    storage=shareable_url(storage), study=study_name, base=dict(base_config), space=space, pruner=spec.model_dump(),
                    metric=metric, seed=seed, deadline=time() + trials.search_ends() - monotonic(), offset=offset, queued=queued, prune_queued=prune_queued,
                    startup_trials=startup_trials,
                )  # fmt: skip
                write_spec(out_dir, joinable)
                procs = start_local_workers(out_dir, workers - 1, storage, worker_threads(workers)) if workers > 1 else []
        interrupted = _optimize(study, trials, None if join else n_trials)
        if not join:  # every worker's candidates, once their trials end
            # one deadline: a worker's trial still running a few seconds past it is lost, not waited for
            wait_for_workers(procs, study, time() + max(0.0, deadline - monotonic()), grace=max(5.0, 0.05 * time_limit))
    finally:
        optuna.logging.set_verbosity(verbosity)
        for proc in procs:  # Ctrl-C here stops the local workers too
            if proc.poll() is None:
                proc.terminate()
    best = best_trial(study)
    errors = {offset + k: v for k, v in trial_errors(study).items()}
    candidates = trials.candidates if join else {**read_candidates(study, trials_dir, offset), **trials.candidates}
    return SearchResult(
        study, metric, direction, candidates, candidates.get(offset + best.number) if best is not None else None, monotonic() - start, errors, interrupted
    )


@dataclass
class _Trials:
    """One search's trials: the objective Optuna calls (a candidate trained into ``trials/<n>``)
    and the callback after each trial (progress line; stop after three failures in a row)."""

    base: Any  # the config every candidate starts from
    space: dict[str, Any]
    metric: str
    folder: Path  # OUT/trials
    offset: int  # a resumed search numbers on from its finished candidates
    store: Any
    deadline: float
    splits: Any
    queued: int  # the first trials are the queued ladder rungs
    prune_queued: bool
    candidates: dict[int, CandidateResult] = field(default_factory=dict)
    failures: int = 0
    reporting: Callable[[str], None] | None = None
    start: float = field(default_factory=monotonic)
    deadline_for: DeadlineFor | None = None
    larger_better: bool = True
    stopped: bool = False  # watch() stopped the search: start no more trials

    def leader(self) -> CandidateResult | None:
        """The best candidate so far that ran to its end or was cut by the deadline (not pruned)."""
        scored = [c for c in self.candidates.values() if not c.pruned and math.isfinite(c.score)]
        sign = 1.0 if self.larger_better else -1.0
        return max(scored, key=lambda c: sign * c.score, default=None)

    def candidate_ends(self, params: dict[str, Any] | None) -> float:
        """This candidate's deadline (a ``monotonic()`` value); ``params`` None: when the search
        starts no new candidate."""
        if self.deadline_for is None:
            return self.deadline
        return min(self.deadline, self.deadline_for(params, self.leader()))

    def search_ends(self) -> float:
        """When the search starts no new candidate (a ``monotonic()`` value)."""
        return self.candidate_ends(None)

    def objective(self, trial: optuna.Trial) -> float:
        params = suggest_params(trial, self.space)
        cfg = trial_config(self.base, params, self.metric)
        number = self.offset + trial.number
        try:
            # With prune_queued=False the queued candidates (fit's ladder) run in full: their scores
            # teach the pruner, but a fine-tuning run that starts behind a probe after one warm-up
            # epoch must not be cut.
            queued = trial.number < self.queued
            prune = self.prune_queued or not queued
            deadline = self.candidate_ends(params)
            result = run_candidate(cfg, self.folder / str(number), store=self.store, trial=trial, deadline=deadline, splits=self.splits, prune=prune)
        except CandidatePruned as pruned:
            _keep(self.candidates, number, pruned.result, params)
            raise
        _keep(self.candidates, number, result, params)
        return result.score

    def watch(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.failures = self.failures + 1 if trial.state == optuna.trial.TrialState.FAIL else 0
        if self.failures >= 3 and best_trial(study) is None:
            self.stopped = True  # the same error every time (bad data, missing files): no point going on
        if self.reporting is None:
            return
        used = monotonic() - self.start
        done = self.candidates.get(self.offset + trial.number)
        value = (
            ""
            if done is None
            else f" {self.metric} {done.score:.4f} after {done.epochs_run} epoch(s) in {done.seconds:.0f}s"
            + (" (cut by the deadline)" if done.cut_short else "")
        )
        self.reporting(
            f"candidate {self.offset + trial.number}: {trial.state.name.lower()}{value}; search time used {used:.0f}s of {self.search_ends() - self.start:.0f}s"
        )


def join_search(run_dir: Path, storage: str | None = None, index: int | None = None, progress: bool = True) -> int:
    """Run trials of the search in ``run_dir`` until its deadline (``mmagent fit-worker``).
    Returns how many trials this worker ran."""
    from mmagent.training.splits import load_splits

    spec = read_spec(run_dir)
    url = storage or os.environ.get("MMAGENT_FIT_STORAGE") or spec.storage
    if url is None:
        raise ValueError(f"the search in {run_dir} keeps its study in a storage with a password: give it with --storage URL")
    left = spec.deadline - time()
    if left <= 0:
        print(f"the search in {run_dir} has ended (its deadline passed): nothing to do", flush=True)
        return 0
    index = index if index is not None else os.getpid()
    say = print if progress else None
    if say:
        say(f"worker {index} on {run_dir}: checking the table's rows, then trials until the deadline ({left:.0f} s from now)")
    splits = load_splits(config_from_dict(dict(spec.base))).sampled(config_from_dict(dict(spec.base)))
    result = search_within_budget(
        spec.base,
        spec.space,
        run_dir,
        time_limit=spec.deadline - time(),
        pruner=spec.pruner,
        metric=spec.metric,
        seed=spec.seed + SEED_STRIDE * index,
        splits=splits,
        storage=url,
        study_name=spec.study,
        join=True,
        on_trial=say,
        prune_queued=spec.prune_queued,
        startup_trials=spec.startup_trials,
        offset=spec.offset,
        queued=spec.queued,
    )
    return len(result.candidates)


def _pruner_spec(pruner: PrunerSpec | dict[str, Any] | None, params_space: dict[str, Any], epochs: int) -> PrunerSpec:
    """The pruner asked for (default Hyperband), its maximum resource the largest epoch count searched."""
    spec = pruner if isinstance(pruner, PrunerSpec) else PrunerSpec.model_validate(pruner or {"type": "hyperband"})
    if spec.type == "hyperband" and spec.max_resource is None:
        searched = params_space.get("train.epochs")
        spec = spec.model_copy(update={"max_resource": searched.high if isinstance(searched, IntParam) else epochs})
    return spec


def _optimize(study: optuna.Study, trials: _Trials, n_trials: int | None) -> bool:
    """Run trials, one at a time, until ``n_trials``, the search's deadline (re-read before each:
    it moves with the leader, see ``deadline_for``) or a stop; True when Ctrl-C stopped them."""
    started = 0
    try:
        # The first candidate always starts (the deadline cuts it short if need be): a search
        # whose setup ate the time would otherwise end with nothing at all.
        while (n_trials is None or started < n_trials) and not trials.stopped and (started == 0 or monotonic() < trials.search_ends()):
            study.optimize(trials.objective, n_trials=1, catch=(Exception,), callbacks=[trials.watch], gc_after_trial=True)
            started += 1
    except KeyboardInterrupt:
        return True
    return False


def open_search_study(storage: str | None, name: str | None, direction: str, sampler: Any, pruner: Any, join: bool) -> optuna.Study:
    """The search's study: new (in memory, or named in ``storage`` with heartbeats, so a dead
    worker's trial is failed and queued once more), or (``join``) the running one."""
    if storage is None:
        return optuna.create_study(direction=direction, sampler=sampler, pruner=pruner)
    rdb = rdb_storage(storage)
    if join:
        return optuna.load_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner)
    return optuna.create_study(storage=rdb, study_name=name, direction=direction, sampler=sampler, pruner=pruner)


def read_candidates(study: optuna.Study, trials_dir: Path, offset: int) -> dict[int, CandidateResult]:
    """The candidates every worker finished in this study, read back from their folders."""
    from mmagent.search.resume import read_candidate

    found = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)):
        result = read_candidate(trials_dir / str(offset + t.number))
        if result is not None:
            found[offset + t.number] = result
    return found


def _keep(candidates: dict[int, CandidateResult], number: int, result: CandidateResult, params: dict[str, Any]) -> None:
    """Record a finished candidate, in memory and beside its model (a resumed fit reads it back)."""
    from mmagent.search.resume import save_candidate

    result.params, result.trial_number = params, number
    candidates[number] = result
    save_candidate(result.run_dir, result)
