"""``mmagent fit``: from a bare table and the column to predict to a trained agent, within a budget.

Read top to bottom, one fit is:

1. infer the schema (``columns.py``): each column's kind with its reason; the label's task;
2. build the base config from it (encoders from the recipe, or the offline zoo) and check every
   row of every table before any training;
3. measure what one training sample costs on the real model (``ladder.py``);
4. climb the ladder in one Optuna study: a frozen probe on cached features, then partial, LoRA
   and full fine-tuning as the budget allows; then, with time left, a search (TPE sampler,
   successive-halving pruning) over strategy, learning rates, fusion, modality dropout and epochs.
   Every candidate shares the frozen-feature cache and stops at the deadline;
5. average the best candidates when that beats the best one on validation (``ensembling.py``);
6. the winner becomes the run: evaluated on test, calibrated, reported, with its leaderboard and
   a ``config.yaml`` that ``mmagent train`` reproduces it from. Ctrl-C (or SIGTERM) during the
   search stops it and still promotes the best finished candidate.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from mmagent import runs
from mmagent.data.tables import read_table
from mmagent.io import write_text
from mmagent.runs import check_new_run_dir, create_run_dir, read_metrics
from mmagent.search.columns import Schema, ignore_split_keys, infer_schema, parse_column_types
from mmagent.search.fit_config import (  # noqa: F401 - parse_duration is part of this module's API
    MIN_BUDGET_SECONDS,
    absolute_path,
    base_config,
    fit_audio_windows,
    fit_recipe_alerts,
    materialize_table,
    parse_duration,
    selection_metric,
)
from mmagent.search.fit_search import FitSearch
from mmagent.search.ladder import PRESETS
from mmagent.search.leaderboard import Candidate, Leaderboard, Progress
from mmagent.search.resume import Resumed, hold_fit_lock, load_for_resume, save_settings, unfinished


class FitError(ValueError):
    """The budget or the data left ``fit`` nothing to choose from."""


@dataclass
class FitResult:
    """The run folder (load it with ``Agent.load``), the schema, the leaderboard and timings."""

    run_dir: Path
    schema: Schema
    leaderboard: Leaderboard
    best: str
    seconds: float
    budget_seconds: float
    interrupted: bool = False
    baseline: dict[str, Any] | None = None  # the chosen model against the majority-class / mean baseline

    @property
    def beats_baseline(self) -> bool:
        """False when the chosen model does not beat the obvious baseline on validation (the agent
        then escalates every input; ``mmagent fit`` exits with status 3)."""
        return self.baseline is None or bool(self.baseline["beats"])


def fit(
    train: str | Path | Any,
    label: str | None,
    output: str | Path,
    *,
    validation: str | Path | None = None,
    test: str | Path | None = None,
    time_budget: str | float | None = None,
    preset: str = "balanced",
    recipe: str | None = None,
    column_types: list[str] | dict[str, str] | None = None,
    agent: dict[str, Any] | None = None,
    encoders: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    metric: str | None = None,
    ensemble: bool | None = None,
    progress: bool = True,
    resume: bool = False,
    storage: str | None = None,
    workers: int = 1,
) -> FitResult:
    """Fit an agent to ``train`` (a CSV / JSONL / Parquet file or a DataFrame) that predicts
    ``label``, within ``time_budget`` (default: the preset's). ``agent``: the agent block (policy,
    playbook, escalation; relative paths from the training table's folder), else the recipe's.
    ``encoders``: modality -> encoder spec, to use instead of the recipe's / the zoo's. See the
    module docstring. ``metric``: the validation metric candidates are ranked on (and early
    stopping watches), e.g. ``auroc`` or ``mcc``; default: accuracy / macro-F1 / RMSE by task.
    ``ensemble``: average the best candidates' calibrated probabilities when that beats the best
    one on validation (default: the preset's; each prediction then runs every member).
    ``resume``: continue the unfinished fit in ``output`` (killed, or failed before promoting a
    model): its table and settings from ``fit.json``, its finished candidates kept, the budget
    left (or ``time_budget``) spent on new ones; ``train`` and ``label`` are then ignored
    (see :mod:`mmagent.search.resume`). ``storage``: the SQLAlchemy URL of the search's Optuna
    study (default: SQLite in the run folder); ``workers``: processes on this machine that run
    candidates side by side; more join with ``mmagent fit-worker`` (see
    :mod:`mmagent.search.workers`)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"--workers {workers!r}: give a whole number of processes, 1 or more")
    if storage is not None:
        from mmagent.search.workers import check_storage

        check_storage(storage)
    run_dir = Path(output)
    given = FitSettings(train, label, validation, test, time_budget, preset, recipe, column_types, agent, encoders, seed, metric, ensemble)
    settings, previous = _settings(given, run_dir, resume)
    plan = PRESETS[settings.preset]
    budget = float(settings.time_budget) if settings.time_budget is not None else plan.budget_seconds
    clock = Progress(budget, enabled=progress)
    if not resume:
        check_new_run_dir(run_dir, "fit")  # fit never mixes runs or overwrites files it did not write
        create_run_dir(run_dir)
    lock = hold_fit_lock(run_dir)  # one fit (or resume) at a time in a folder
    try:
        try:  # nothing is left behind when the table or the settings are refused
            schema, raw = _base_config(settings, run_dir, resume, clock, len(previous))
            ensemble = plan.ensemble if settings.ensemble is None else settings.ensemble
            resumed = Resumed(previous, settings.used_seconds)
            fixed = set(settings.encoders or {})
            search = FitSearch(raw, run_dir, plan, clock, settings.seed, ensemble, resumed, fixed, storage=storage, workers=workers)
        except BaseException:
            if not resume:  # a resumed folder keeps its finished candidates whatever happens
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        interrupted = search.run()
        if search.ensemble and not interrupted:
            interrupted = search.try_ensemble()
        return _hand_over(search, run_dir, schema, clock, interrupted)
    finally:
        lock.unlink(missing_ok=True)


@dataclass
class FitSettings:
    """What one ``fit`` call asked for (written to ``fit.json``; ``--resume`` reads it back)."""

    train: Any
    label: str | None
    validation: str | Path | None = None
    test: str | Path | None = None
    time_budget: str | float | None = None  # seconds once checked
    preset: str = "balanced"
    recipe: str | None = None
    column_types: list[str] | dict[str, str] | None = None
    agent: dict[str, Any] | None = None
    encoders: dict[str, dict[str, Any]] | None = None
    seed: int = 0
    metric: str | None = None
    ensemble: bool | None = None
    used_seconds: float = 0.0  # budget a resumed fit's first attempt used

    def saved(self, data: dict[str, str | None], budget: float) -> dict[str, Any]:
        """The ``fit.json`` fields: the tables as materialized (absolute paths), the budget in seconds."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("train", "validation", "test", "time_budget", "used_seconds")}
        return {**data, **fields, "budget": budget}


def _settings(given: FitSettings, run_dir: Path, resume: bool) -> tuple[FitSettings, dict[int, Any]]:
    """The settings to fit with, checked: the call's, or (``resume``) the unfinished fit's from
    ``fit.json`` with its finished candidates; the budget parsed to seconds."""
    previous: dict[int, Any] = {}
    settings = given
    if resume:
        saved, previous = load_for_resume(run_dir)
        used = float(saved.get("used_seconds") or 0.0)
        # what the first attempt had left, never less than a fit needs, unless a budget is given
        budget = given.time_budget if given.time_budget is not None else max(MIN_BUDGET_SECONDS, float(saved["budget"]) - used)
        names = ("train", "label", "validation", "test", "preset", "recipe", "column_types", "agent", "encoders", "seed", "metric", "ensemble")
        settings = FitSettings(**{k: saved[k] for k in names}, time_budget=budget, used_seconds=used)
    elif unfinished(run_dir):
        raise FileExistsError(
            f"{run_dir} holds an unfinished fit: `mmagent fit --resume -o {run_dir}` continues it (its finished candidates are kept), or choose another -o"
        )
    if settings.label is None or settings.train is None:
        raise ValueError("fit needs the training table and --label (or --resume with the folder of an unfinished fit)")
    if settings.preset not in PRESETS:
        raise ValueError(f"--preset {settings.preset!r}: use one of {', '.join(PRESETS)}")
    settings.time_budget = parse_duration(settings.time_budget)
    return settings, previous


def _base_config(settings: FitSettings, run_dir: Path, resume: bool, clock: Progress, kept: int) -> tuple[Schema, dict[str, Any]]:
    """Steps 1-2: the table materialized in the run folder, its schema inferred, and the base config
    it implies (encoders, audio windows, metric, agent block); ``fit.json`` written."""
    s = settings
    data = {"train": materialize_table(s.train, run_dir), "validation": absolute_path(s.validation), "test": absolute_path(s.test)}
    if resume:
        clock.say(f"resuming the fit in {run_dir}: {kept} finished candidate(s) kept, {clock.budget:.0f} s of budget for the rest")
    else:
        save_settings(run_dir, s.saved(data, clock.budget))
    table = read_table(data["train"])
    schema = infer_schema(table, s.label, parse_column_types(s.column_types))
    schema = ignore_split_keys(schema, table, [read_table(p) for p in (data["validation"], data["test"]) if p])
    clock.say(f"schema of {table.source} ({len(table)} rows):\n{schema.table()}")
    raw = base_config(schema, data, s.recipe, s.encoders, s.seed)
    if not (s.encoders and "audio" in s.encoders):  # the user's own audio encoder keeps its window
        fit_audio_windows(raw, table, clock)
    if s.metric is not None:
        raw["train"]["metric"] = selection_metric(schema, s.metric)
    if s.agent:
        raw["agent"] = copy.deepcopy(s.agent)
    elif s.recipe:
        fit_recipe_alerts(raw, s.recipe, table, str(s.label), clock)
    return schema, raw


def _hand_over(search: FitSearch, run_dir: Path, schema: Schema, clock: Progress, interrupted: bool) -> FitResult:
    """Step 6: the winner promoted into the run folder, the leaderboard (with the baseline) and the
    schema written beside it, the other candidates' weights dropped, and the summary said."""
    board = search.leaderboard
    best = board.best()
    if best is None:
        raise FitError(f"no candidate finished within the budget ({clock.budget:.0f} s): give a larger --time-budget\n{board.table()}")
    members = [r for name in best.params.get("members", []) for r in board.rows if r.name == name] if best.strategy == "ensemble" else [best]
    _promote(best.run_dir, run_dir, [search.final_raw(r) for r in members], clock, search.splits)
    baseline = runs.read_calibration(run_dir).get(runs.BASELINE_KEY)
    if baseline:  # on the leaderboard, never chosen: what any candidate had to beat
        board.rows.append(Candidate("baseline", baseline["kind"], status=f"{baseline['kind']} baseline", score=baseline["baseline"]))
    board.write(run_dir)
    write_text(run_dir / "schema.md", f"# Inferred schema\n\n```\n{schema.table()}\n```\n")
    from mmagent.finishing.report_html import write_html_report

    write_html_report(run_dir)  # again, now with the leaderboard (the promoted run's was written before it)
    for other in board.rows:  # keep every candidate's metrics, drop the weights nobody will load
        if other is not best and other.run_dir is not None:
            shutil.rmtree(other.run_dir / "model", ignore_errors=True)
    clock.say(f"leaderboard (validation {board.metric}):\n{board.table()}")
    again = " (its first model; config.member-*.yaml the others)" if best.strategy == "ensemble" else ""
    clock.say(f"chosen: {best.name} ({best.describe()}); run folder: {run_dir}; reproduce: mmagent train {run_dir / 'config.yaml'} -o NEW_RUN{again}")
    for split, metrics in read_metrics(run_dir).items():
        if split in ("validation", "test"):
            for target, m in metrics.items():
                shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("accuracy", "macro_f1", "mcc", "auroc", "rmse", "r2") if isinstance(m.get(k), float))
                clock.say(f"{split} {target}: {shown} (n={m.get('n')}); report: {run_dir / 'report.md'} and {run_dir / 'report.html'}")
    if baseline and not baseline["beats"]:
        clock.say(f"WARNING: {baseline['note']}")
    return FitResult(run_dir, schema, board, best.name, clock.elapsed(), clock.budget, interrupted, baseline)


def _promote(candidate: Path, run_dir: Path, configs: list[dict[str, Any]], clock: Progress, splits: Any) -> None:
    """Make the winner the run: copy it in, evaluate on validation + test, calibrate, report, and
    write the configs that reproduce it (an ensemble's first model, then config.member-<i>.yaml)."""
    from mmagent.search.objective import finalize_candidate

    clock.say("evaluating the chosen model on validation and test, calibrating, writing the report ...")
    staged = run_dir / ".promoted"
    finalize_candidate(candidate, staged, splits=splits)
    for item in staged.iterdir():
        target = run_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)
    staged.rmdir()
    for i, raw in enumerate(configs):
        write_text(run_dir / (f"config.member-{i}.yaml" if i else "config.yaml"), yaml.safe_dump(raw, sort_keys=False))
