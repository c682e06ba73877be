"""The ladder and the search of ``mmagent fit``: one Optuna study whose first trials are the
ladder's affordable rungs (the small backbones', then a larger one's, see :mod:`.plan`), then the
optional ensemble of the best candidates."""

from __future__ import annotations

import copy
import json
import math
import signal
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmagent.finishing.report import UNKNOWN_FIT_ROWS
from mmagent.search.ladder import (
    MIN_SAMPLE_ROWS,
    Preset,
    RungPlan,
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
from mmagent.search.leaderboard import Leaderboard, Progress
from mmagent.search.plan import (
    Reserve,
    check_minimum_budget,
    estimated_probe_seconds,
    larger_backbones,
    promotion_passes,
    promotion_reserve,
    promotion_seconds,
    validation_rows,
)
from mmagent.search.resume import Resumed, record_time

if TYPE_CHECKING:
    from mmagent.search.objective import CandidateResult

MEASURE_ROWS = 20_000  # training rows the model measured for its cost is built from
# validation scores read as proportions (standard error sqrt(p (1 - p) / n))
PROPORTIONS = ("accuracy", "macro_f1", "micro_f1", "subset_accuracy", "auroc")


class FitSearch:
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
        fixed: set[str] = frozenset(),  # type: ignore[assignment]
        storage: str | None = None,
        workers: int = 1,
    ) -> None:
        import torch

        from mmagent.config import config_from_dict
        from mmagent.training.splits import load_splits

        self.raw, self.run_dir, self.plan, self.clock, self.seed = raw, run_dir, plan, clock, seed
        self.ensemble = ensemble
        # the study's storage: the run folder's SQLite file serves this machine's processes
        self.storage, self.workers = storage or f"sqlite:///{run_dir / 'search.db'}", workers
        resumed = resumed or Resumed()
        self.previous, self.used_before = resumed.finished, resumed.used_seconds  # a resumed fit's finished candidates
        config = config_from_dict(copy.deepcopy(raw))  # every key checked before any work
        started = self.clock.elapsed()
        self.splits = splits = load_splits(config)  # every row of every table checked, once: every candidate trains on these
        checked = len(splits.train) + len(splits.validation) + (len(splits.test) if splits.test is not None else 0)
        self.clock.say(f"read and checked {checked} rows in {self.clock.elapsed() - started:.0f} s")
        self.n_train, self.n_val = len(splits.train), len(splits.validation)
        self.validation, self.batch_size = splits.validation, config.train.batch_size
        self.device = "cuda" if torch.cuda.is_available() and not config.train.cpu else "cpu"
        self.cost, self.blocks = self._measure(raw)  # the small backbones'
        self._plan_validation(config)
        # With no pretrained encoder to fine-tune, every rung would be the same model.
        self.strategies = list(plan.strategies) if tunable_inputs(raw) else ["full"]
        self.leaderboard = Leaderboard(metric="", larger_better=raw["targets"][0]["type"] != "regression")
        self.larger = larger_backbones(raw, fixed) if plan.larger_backbones else None
        self.larger_strategies: list[str] = []
        self.small_reserve = self.larger_reserve = self._reserve(self.cost)
        self.reserve_plan, self.reserve = self.small_reserve, self.small_reserve.seconds
        check_minimum_budget(self.cost, clock.budget, clock.elapsed(), self.n_train, self.n_val, self.promotion)

    def _plan_validation(self, config: Any) -> None:
        """Score the search on a sample of the validation rows when a pass over all of them would
        cost more of the budget than ranking candidates needs (:func:`~.plan.validation_rows`); the
        sample size goes into the config, so every candidate and ``mmagent train`` use the same rows."""
        rows = validation_rows(self.cost, self.clock.budget, self.n_val)
        if rows is None:
            return
        self.raw["data"]["validation_rows"] = rows
        config.data.validation_rows = rows
        self.splits = self.splits.sampled(config)
        self.validation = self.splits.validation
        self.clock.say(
            f"scoring candidates on {rows} of the {self.n_val} validation rows (a stratified sample): a pass over all would take too much of the budget"
        )
        self.n_val = rows

    def _measure(self, raw: dict[str, Any]) -> tuple[SampleCost, dict[int, int]]:
        """Build the model ``raw`` describes and measure what a sample costs on it (then drop it)."""
        from mmagent.config import config_from_dict
        from mmagent.inference import make_loader
        from mmagent.training.splits import sample_table
        from mmagent.training.trainer import build_model

        config = config_from_dict(copy.deepcopy(raw))
        # vocabularies and scales fitted on a sample: only the cost is kept (900,000 rows: 51 s)
        model = build_model(config, sample_table(self.splits.train, MEASURE_ROWS, config))
        blocks = encoder_blocks(model, raw)
        bs = self.batch_size
        sample = self.splits.train.subset(list(range(min(len(self.splits.train), 2 * min(bs, 16)))))
        cost = measure_cost(model, make_loader(model, sample, bs), raw, blocks)
        del model
        per_input = ", ".join(f"{k} {1000 * cost.load[k]:.1f} + {1000 * cost.encode[k]:.1f} ms" for k in cost.load)
        self.clock.say(
            f"cost per sample: loading + encoding {per_input}; a training step "
            + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in cost.train.items())
            + f"; {self.n_train} training rows, {self.n_val} validation rows"
        )
        return cost, blocks

    def _reserve(self, cost: SampleCost) -> Reserve:
        """Time kept back for promoting a winner on ``cost``'s backbones: passes for validation,
        test, ablation, calibration, the drift profile (validation and up to 512 training rows)
        and the unknown-input score (up to UNKNOWN_FIT_ROWS training rows; validation without each
        input), plus the report; and an ensemble's members as far as the budget affords them.
        On the small backbones it also sets ``self.promotion``: the least promotion can take."""
        from mmagent.search.ensembling import MAX_MEMBERS

        n_test = len(self.splits.test) if self.splits.test is not None else 0
        passes = promotion_passes(self.n_train, self.n_val, n_test, len(self.raw["inputs"]), UNKNOWN_FIT_ROWS)
        per_sample = sum(cost.load.values()) + cost.forward
        if cost is self.cost:
            self.promotion = promotion_seconds(per_sample, passes, margin=1.0)  # a budget under it is refused
        return promotion_reserve(self.clock.budget, per_sample, passes, self.n_val, self.ensemble, MAX_MEMBERS)

    def _reserve_of(self, params: dict[str, Any]) -> Reserve:
        """The reserve a candidate with these search parameters needs were it to win: the larger
        backbones' when one of its inputs is on them."""
        if self.larger is None or not self.larger_strategies:
            return self.small_reserve
        option, chosen = self.larger
        names = {i: option.raw["inputs"][i]["encoder"].get("name") for i in chosen}
        on_larger = any((params.get(f"inputs.{i}.encoder") or {}).get("name") == name for i, name in names.items())
        return self.larger_reserve if on_larger else self.small_reserve

    def _deadline_for(self, params: dict[str, Any] | None, leader: CandidateResult | None) -> float:
        """The search's moving deadline (``monotonic()``; see ``search_within_budget``): the end of
        the budget less what promoting the leader needs, and less what this candidate would need
        were it to take the lead. Sizing the reserve once, on the largest backbone in play, left
        minutes unused whenever the small one won (Financial PhraseBank, 10 min: the fit ended at
        7.4 min)."""
        reserves = [self._reserve_of(leader.params).seconds] if leader is not None else []
        if params is not None:
            reserves.append(self._reserve_of(params).seconds)
        return self.clock.start + self.clock.budget - max(reserves or [self.reserve])  # the budget's end, less the reserve

    def _ladder(self, seconds: float) -> list[dict[str, Any]]:
        """The rungs the budget affords, as search parameters, in the order they run: the small
        backbones' probe and first fine-tuning rung; then the larger backbones' rungs in what those
        leave; then the small backbones' other rungs in what is left after that (see
        :mod:`mmagent.search.plan`). Rungs that do not fit go on the leaderboard as skipped."""
        planned = plan_rungs(self.cost, self.strategies, self.plan, seconds, self.n_train, self.n_val)
        cut = next((i + 1 for i, r in enumerate(planned) if r.strategy != "probe" and not r.skipped), len(planned))
        head, tail = planned[:cut], planned[cut:]
        rungs = self._small_rungs(head)
        if self.larger is None:
            return self._explicit_rows(rungs + self._small_rungs(tail))
        # The larger backbone goes before the small one's further fine-tuning variants: on Financial
        # PhraseBank one epoch of MPNet's partial fine-tune reached 84.0 % on validation where three
        # epochs of MiniLM's partial, LoRA and full rungs reached 80.6-81.7 %.
        left = seconds - sum(r.seconds for r in head)
        larger, spent = self._larger_rungs(left)
        if tail:
            tail = plan_rungs(self.cost, [r.strategy for r in tail], self.plan, left - spent, self.n_train, self.n_val, must_run=False)
        return self._explicit_rows(rungs + larger + self._small_rungs(tail))

    def _explicit_rows(self, rungs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """When some rungs train on a sample, every rung names its rows (all of them: the table's
        count), and the search chooses among those sizes (``self.sample_rows``)."""
        self.sample_rows: list[int] = []
        if any("train.sample_rows" in r for r in rungs):
            rungs = [{"train.sample_rows": self.n_train, **r} for r in rungs]
            self.sample_rows = sorted({r["train.sample_rows"] for r in rungs})
            sizes = ", ".join(map(str, self.sample_rows))
            self.clock.say(f"{self.n_train} training rows are too many for a full pass in this budget: the candidates train on samples of {sizes} rows")
        return rungs

    def _small_rungs(self, planned: list[RungPlan]) -> list[dict[str, Any]]:
        """The small backbones' planned rungs as search parameters (skipped ones on the leaderboard)."""
        rungs: list[dict[str, Any]] = []
        for rung in planned:
            if rung.skipped:
                self.leaderboard.skipped(rung.strategy, rung.skipped)
                continue
            rungs.append(rung_params(self.raw, rung.strategy, self.blocks, rung.epochs, rows=rung.rows))
            if rung.strategy == "probe" and speech_inputs(self.raw):
                # right after the first rung: the same, with speech on a CNN trained from scratch
                # (small and fast; early stopping ends it, the deadline bounds it)
                rungs.append(rung_params(self.raw, rung.strategy, self.blocks, self.plan.probe_epochs, scratch=True, rows=rung.rows))
        return rungs

    def _larger_rungs(self, seconds: float) -> tuple[list[dict[str, Any]], float]:
        """The larger backbones' affordable rungs in ``seconds`` and the time they are expected to
        take: estimated from the catalog before any model is built, then planned on the measured cost."""
        option, chosen = self.larger  # type: ignore[misc]
        estimate = estimated_probe_seconds(self.cost, self.raw, chosen, min(self.n_train, MIN_SAMPLE_ROWS) + self.n_val)
        if estimate is not None and estimate > seconds:
            why = f"caching its outputs alone would take ~{estimate:.0f} s (catalog cost), ~{max(0.0, seconds):.0f} s left for it"
            self.leaderboard.skipped(f"backbone {option.label}", why)
            self.clock.say(f"not trying {option.label}: {why}")
            return [], 0.0
        self.clock.say(f"measuring the larger backbone {option.label} ({seconds:.0f} s of the budget left for it)")
        option.cost, option.blocks = self._measure(option.raw)
        rungs, spent = [], 0.0
        for rung in plan_rungs(option.cost, self.strategies, self.plan, seconds, self.n_train, self.n_val, must_run=False):
            if rung.skipped:
                self.leaderboard.skipped(f"{rung.strategy} on {option.label}", rung.skipped)
                continue
            self.larger_strategies.append(rung.strategy)
            rungs.append(rung_params(option.raw, rung.strategy, option.blocks, rung.epochs, rows=rung.rows))
            spent += rung.seconds
        if rungs:  # promoting a larger winner costs more: until a candidate leads, keep back what it needs
            self.larger_reserve = self._reserve(option.cost)
            self.reserve = max(self.reserve, self.larger_reserve.seconds)
        return rungs, spent

    def run(self) -> bool:
        """Run until the budget (less the reserve) is spent. True when interrupted (Ctrl-C, SIGTERM)."""
        from mmagent.data.feature_store import FeatureCacheStore
        from mmagent.search.budget import search_within_budget

        seconds = self.clock.left() - self.reserve
        done = {json.dumps(c.params, sort_keys=True, default=str) for c in self.previous.values()}
        rungs = [r for r in self._ladder(seconds) if json.dumps(r, sort_keys=True, default=str) not in done]  # none trained twice
        max_epochs = max(self.plan.probe_epochs, 2 * self.plan.finetune_epochs)
        larger = [(self.larger[0].raw, self.larger[0].blocks or {}, self.larger_strategies)] if self.larger_strategies else []
        space = search_space(self.raw, self.strategies, self.blocks, max_epochs, larger, self.sample_rows)
        n_trials = max(1, max_trials(len(rungs), self.n_val) - len(self.previous)) if self.plan.search else max(1, len(rungs))
        if self.plan.search and n_trials < 10_000:
            self.clock.say(f"at most {n_trials} candidates: {self.n_val} validation rows cannot rank more without picking a lucky one")
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
        try:
            result = search_within_budget(
                self.raw,
                space,
                self.run_dir,
                time_limit=max(self.clock.left() - min(self.small_reserve.seconds, self.larger_reserve.seconds), 1.0),
                deadline_for=self._deadline_for,  # the reserve follows the leader's backbone
                n_trials=n_trials,
                startup_trials=3 if self.plan.search else None,  # random trials before TPE models the space
                pruner={"type": "successive_halving", "min_resource": 1, "reduction_factor": 3},
                store=FeatureCacheStore(),
                seed=self.seed,
                first_params=rungs,
                storage=self.storage,
                study_name=f"fit-{uuid.uuid4().hex[:12]}",  # unique in a storage that many fits share
                workers=self.workers,
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
        self.leaderboard.tolerance = self.plan.serving_tolerance * score_standard_error(result.metric, result.best, self.n_val)
        if why := self.leaderboard.why_chosen():
            self.clock.say(why)
        if (chosen := self.leaderboard.best()) is not None:  # the ensemble and promotion are sized on the winner's backbones
            self.reserve_plan = self._reserve_of(chosen.params)
            self.reserve = self.reserve_plan.seconds
        if result.interrupted:
            self.clock.say("interrupted: the search stopped; keeping the best candidate so far")
        return result.interrupted

    def try_ensemble(self) -> bool:
        """Average the best candidates when that beats the best one on validation. Whatever goes
        wrong there (an error, too little time left) keeps the best single candidate; True when
        interrupted (Ctrl-C, SIGTERM)."""
        from mmagent.search.ensembling import add_ensemble

        if self.reserve_plan.members < 2:
            self.clock.say(f"no ensemble: {self.reserve_plan.why}")
            return False
        if self.clock.left() < 0.8 * self.reserve:  # the search overran its share of the budget
            self.clock.say("no ensemble: too little of the budget left to score one")
            return False
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
        try:
            folder = self.run_dir / "trials" / "ensemble"
            add_ensemble(self.leaderboard, self.validation, self.batch_size, folder, self.clock.say, self.device, self.reserve_plan.members)
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


def score_standard_error(metric: str, best: CandidateResult | None, n_validation: int) -> float:
    """About one standard error of a validation score that is a proportion (accuracy, F1, AUROC:
    sqrt(p (1 - p) / n) at the best score); 0 for the others (regression errors, MCC)."""
    from mmagent.metrics import MetricRef

    if best is None or MetricRef.parse(metric).name not in PROPORTIONS or not 0.0 <= best.score <= 1.0:
        return 0.0
    return math.sqrt(best.score * (1.0 - best.score) / max(n_validation, 1))


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
