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
import json
import shutil
import signal
from dataclasses import dataclass
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
from mmagent.search.ladder import (
    PRESETS,
    Preset,
    SampleCost,
    encoder_blocks,
    max_trials,
    measure_cost,
    plan_rungs,
    rung_params,
    search_space,
    speech_inputs,
    tunable_inputs,
)
from mmagent.search.leaderboard import Candidate, Leaderboard, Progress
from mmagent.search.resume import Resumed, hold_fit_lock, load_for_resume, record_time, save_settings, unfinished
from mmagent.training.report import UNKNOWN_FIT_ROWS


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
    (see :mod:`mmagent.search.resume`)."""
    run_dir = Path(output)
    previous: dict[int, Any] = {}
    used_before = 0.0
    if resume:
        settings, previous = load_for_resume(run_dir)
        train, label, validation, test = settings["train"], settings["label"], settings["validation"], settings["test"]
        preset, recipe, column_types, agent = settings["preset"], settings["recipe"], settings["column_types"], settings["agent"]
        encoders, seed, metric, ensemble = settings["encoders"], settings["seed"], settings["metric"], settings["ensemble"]
        used_before = float(settings.get("used_seconds") or 0.0)
        if time_budget is None:  # what the first attempt had left, never less than a fit needs
            time_budget = max(MIN_BUDGET_SECONDS, float(settings["budget"]) - used_before)
    elif unfinished(run_dir):
        raise FileExistsError(
            f"{run_dir} holds an unfinished fit: `mmagent fit --resume -o {run_dir}` continues it (its finished candidates are kept), or choose another -o"
        )
    if label is None or train is None:
        raise ValueError("fit needs the training table and --label (or --resume with the folder of an unfinished fit)")
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: use one of {', '.join(PRESETS)}")
    plan = PRESETS[preset]
    given = parse_duration(time_budget)
    budget = plan.budget_seconds if given is None else given
    clock = Progress(budget, enabled=progress)
    if not resume:
        check_new_run_dir(run_dir, "fit")  # fit never mixes runs or overwrites files it did not write
        create_run_dir(run_dir)
    lock = hold_fit_lock(run_dir)  # one fit (or resume) at a time in a folder
    try:
        try:  # nothing is left behind when the table or the settings are refused
            data = {"train": materialize_table(train, run_dir), "validation": absolute_path(validation), "test": absolute_path(test)}
            if resume:
                clock.say(f"resuming the fit in {run_dir}: {len(previous)} finished candidate(s) kept, {budget:.0f} s of budget for the rest")
            else:
                save_settings(
                    run_dir,
                    {**data, "label": label, "budget": budget, "preset": preset, "recipe": recipe, "column_types": column_types, "agent": agent}
                    | {"encoders": encoders, "seed": seed, "metric": metric, "ensemble": ensemble},
                )
            table = read_table(data["train"])
            schema = infer_schema(table, label, parse_column_types(column_types))
            schema = ignore_split_keys(schema, table, [read_table(p) for p in (data["validation"], data["test"]) if p])
            clock.say(f"schema of {table.source} ({len(table)} rows):\n{schema.table()}")
            raw = base_config(schema, data, recipe, encoders, seed)
            if not (encoders and "audio" in encoders):  # the user's own audio encoder keeps its window
                fit_audio_windows(raw, table, clock)
            if metric is not None:
                raw["train"]["metric"] = selection_metric(schema, metric)
            if agent:
                raw["agent"] = copy.deepcopy(agent)
            elif recipe:
                fit_recipe_alerts(raw, recipe, table, label, clock)
            search = _Search(raw, run_dir, plan, clock, seed, plan.ensemble if ensemble is None else ensemble, Resumed(previous, used_before))
        except BaseException:
            if not resume:  # a resumed folder keeps its finished candidates whatever happens
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        interrupted = search.run()
        if search.ensemble and not interrupted:
            interrupted = search.try_ensemble()
        board = search.leaderboard
        best = board.best()
        if best is None:
            raise FitError(f"no candidate finished within the budget ({budget:.0f} s): give a larger --time-budget\n{board.table()}")
        members = [r for name in best.params.get("members", []) for r in board.rows if r.name == name] if best.strategy == "ensemble" else [best]
        _promote(best.run_dir, run_dir, [search.final_raw(r) for r in members], clock, search.splits)
        baseline = runs.read_calibration(run_dir).get(runs.BASELINE_KEY)
        if baseline:  # on the leaderboard, never chosen: what any candidate had to beat
            board.rows.append(Candidate("baseline", baseline["kind"], status=f"{baseline['kind']} baseline", score=baseline["baseline"]))
        board.write(run_dir)
        write_text(run_dir / "schema.md", f"# Inferred schema\n\n```\n{schema.table()}\n```\n")
        from mmagent.training.report_html import write_html_report

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
        return FitResult(run_dir, schema, board, best.name, clock.elapsed(), budget, interrupted, baseline)
    finally:
        lock.unlink(missing_ok=True)


class _Search:
    """The ladder and the search: one study whose first trials are the ladder's affordable rungs."""

    def __init__(
        self,
        raw: dict[str, Any],
        run_dir: Path,
        plan: Preset,
        clock: Progress,
        seed: int,
        ensemble: bool = False,
        resumed: Resumed | None = None,
    ) -> None:
        import torch

        from mmagent.config import config_from_dict
        from mmagent.inference import make_loader
        from mmagent.search.ensembling import MAX_MEMBERS
        from mmagent.training.splits import load_splits
        from mmagent.training.trainer import build_model

        self.raw, self.run_dir, self.plan, self.clock, self.seed = raw, run_dir, plan, clock, seed
        self.ensemble = ensemble
        resumed = resumed or Resumed()
        self.previous, self.used_before = resumed.finished, resumed.used_seconds  # a resumed fit's finished candidates
        config = config_from_dict(copy.deepcopy(raw))  # every key checked before any work
        self.splits = splits = load_splits(config)  # every row of every table checked, once: every candidate trains on these
        self.n_train, self.n_val = len(splits.train), len(splits.validation)
        self.validation, self.batch_size = splits.validation, config.train.batch_size
        self.device = "cuda" if torch.cuda.is_available() and not config.train.cpu else "cpu"
        model = build_model(config, splits.train)
        self.blocks = encoder_blocks(model, raw)
        bs = self.batch_size
        sample = splits.train.subset(list(range(min(len(splits.train), 2 * min(bs, 16)))))
        self.cost: SampleCost = measure_cost(model, make_loader(model, sample, bs), raw, self.blocks)
        del model
        c = self.cost
        per_input = ", ".join(f"{k} {1000 * c.load[k]:.1f} + {1000 * c.encode[k]:.1f} ms" for k in c.load)
        clock.say(
            f"cost per sample: loading + encoding {per_input}; a training step "
            + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in c.train.items())
            + f"; {self.n_train} training rows, {self.n_val} validation rows"
        )
        # With no pretrained encoder to fine-tune, every rung would be the same model.
        self.strategies = list(plan.strategies) if tunable_inputs(raw) else ["full"]
        self.leaderboard = Leaderboard(metric="", larger_better=raw["targets"][0]["type"] != "regression")
        # Time kept back for promoting the winner: passes for validation, test, ablation, calibration
        # the drift profile (validation and up to 512 training rows) and the unknown-input score's
        # Gaussians (up to UNKNOWN_FIT_ROWS training rows), plus a fixed allowance for
        # the report's plots and files; capped, so a slow measurement cannot leave no time to train.
        n_test = len(splits.test) if splits.test is not None else 0
        per_sample = sum(c.load.values()) + c.forward
        passes = self.n_val + n_test * (len(raw["inputs"]) + 2) + self.n_val + min(self.n_train, 512) + min(self.n_train, UNKNOWN_FIT_ROWS)
        passes += self.n_val * len(raw["inputs"]) if len(raw["inputs"]) > 1 else 0  # the unknown score's validation without each input
        if ensemble:  # choosing one scores each possible member on validation; then every pass runs each member
            passes = MAX_MEMBERS * (passes + self.n_val)
        self.reserve = min(0.3 * clock.budget, 15.0 + 1.5 * per_sample * passes)

    def _ladder(self, seconds: float) -> list[dict[str, Any]]:
        """The rungs :func:`plan_rungs` can afford, as search parameters, cheapest first; the
        others go on the leaderboard as skipped, with the reason."""
        rungs: list[dict[str, Any]] = []
        for rung in plan_rungs(self.cost, self.strategies, self.plan, seconds, self.n_train, self.n_val):
            if rung.skipped:
                self.leaderboard.skipped(rung.strategy, rung.skipped)
                continue
            rungs.append(rung_params(self.raw, rung.strategy, self.blocks, rung.epochs))
            if len(rungs) == 1 and speech_inputs(self.raw):
                # right after the first rung: the same, with speech on a CNN trained from scratch
                # (small and fast; early stopping ends it, the deadline bounds it)
                rungs.append(rung_params(self.raw, rung.strategy, self.blocks, self.plan.probe_epochs, scratch=True))
        return rungs

    def run(self) -> bool:
        """Run until the budget (less the reserve) is spent. True when interrupted (Ctrl-C, SIGTERM)."""
        from mmagent.data.feature_store import FeatureCacheStore
        from mmagent.search.budget import search_within_budget

        seconds = self.clock.left() - self.reserve
        done = {json.dumps(c.params, sort_keys=True, default=str) for c in self.previous.values()}
        rungs = [r for r in self._ladder(seconds) if json.dumps(r, sort_keys=True, default=str) not in done]  # none trained twice
        max_epochs = max(self.plan.probe_epochs, 2 * self.plan.finetune_epochs)
        space = search_space(self.raw, self.strategies, self.blocks, max_epochs)
        n_trials = max(1, max_trials(len(rungs), self.n_val) - len(self.previous)) if self.plan.search else max(1, len(rungs))
        if self.plan.search and n_trials < 10_000:
            self.clock.say(f"at most {n_trials} candidates: {self.n_val} validation rows cannot rank more without picking a lucky one")
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
        try:
            result = search_within_budget(
                self.raw,
                space,
                self.run_dir,
                time_limit=max(seconds, 1.0),
                n_trials=n_trials,
                startup_trials=3 if self.plan.search else None,  # random trials before TPE models the space
                pruner={"type": "successive_halving", "min_resource": 1, "reduction_factor": 3},
                store=FeatureCacheStore(),
                seed=self.seed,
                first_params=rungs,
                storage=f"sqlite:///{self.run_dir / 'search.db'}",
                on_trial=self._report,
                prune_queued=False,
                previous=self.previous,
                splits=self.splits,
            )
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        from mmagent.metrics import MetricRef

        self.leaderboard.metric = result.metric
        self.leaderboard.larger_better = MetricRef.parse(result.metric).larger_better  # r2 is a regression metric to maximise
        self.leaderboard.fill(result)
        if result.interrupted:
            self.clock.say("interrupted: the search stopped; keeping the best candidate so far")
        return result.interrupted

    def try_ensemble(self) -> bool:
        """Average the best candidates when that beats the best one on validation. Whatever goes
        wrong there (an error, too little time left) keeps the best single candidate; True when
        interrupted (Ctrl-C, SIGTERM)."""
        from mmagent.search.ensembling import add_ensemble

        if self.clock.left() < 0.8 * self.reserve:  # the search overran its share of the budget
            self.clock.say("no ensemble: too little of the budget left to score one")
            return False
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
        try:
            add_ensemble(self.leaderboard, self.validation, self.batch_size, self.run_dir / "trials" / "ensemble", self.clock.say, self.device)
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - an ensemble is optional: never lose the search for it
            self.leaderboard.rows = [r for r in self.leaderboard.rows if r.strategy != "ensemble"]
            stopped = isinstance(e, KeyboardInterrupt)
            self.clock.say(f"no ensemble ({'interrupted' if stopped else f'{type(e).__name__}: {e}'}): keeping the best single candidate")
            return stopped
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return False

    def _report(self, line: str) -> None:
        self.clock.say(line)
        record_time(self.run_dir, self.used_before + self.clock.elapsed())  # what a resumed fit has left

    def final_raw(self, best: Any) -> dict[str, Any]:
        """The winner's complete config (as trained, with the test table); when the budget cut it
        short, the optimizer steps it ran, so ``mmagent train`` retraces it exactly."""
        raw = json.loads((best.run_dir / "config.json").read_text())
        raw.pop("base_dir", None)
        raw["data"] = {k: v for k, v in raw["data"].items() if v is not None}
        if best.status == "cut by budget":
            raw["train"]["max_steps"] = best.steps
        return raw


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


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
