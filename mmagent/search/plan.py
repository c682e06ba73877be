"""What a fit can afford, decided from measured costs: the backbones it climbs to, the ladder's
rungs on each, and the time kept back for promoting the winner (and for an ensemble's members).

The ladder starts on the small backbone of each tunable input (the catalog's smallest offline
entry, :mod:`mmagent.encoders.catalog`). What its rungs leave of the budget goes to the next larger
available backbone: first an estimate from the catalog's relative cost (no model is built when even
its frozen probe could not finish), then the real model's measured cost decides which of its rungs
run. The search after the ladder chooses among the backbones and strategies that were affordable.
On a GPU the small ladder costs minutes and the larger backbone gets most of the budget; on a
2-core CPU it gets what is left, often only its probe.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from mmagent import catalog
from mmagent.search.ladder import SampleCost, tunable_inputs

ENSEMBLE_SHARE = 0.1  # the most of the budget kept back for scoring and running an ensemble's extra members
# One pass over the validation rows may cost at most this share of the budget: every epoch of every
# candidate pays it. A million-row table's 100,000 validation rows cost MiniLM 160 s a pass on two
# cores; a few thousand rank candidates to within a point.
VALIDATION_SHARE = 0.03
MIN_VALIDATION_ROWS = 2000
# Calibrating, fitting the unknown-input score and writing the report (plots, HTML) beyond the
# forward passes: 2-3 s measured on a 2-core CPU; 15 s reserved before made a 20 s fit refuse to start.
REPORT_SECONDS = 5.0


class BudgetTooSmall(ValueError):
    """The budget cannot pay for even the smallest fit of this table on this machine (measured)."""


def validation_rows(cost: SampleCost, budget: float, n_validation: int) -> int | None:
    """How many validation rows the search scores (a seeded sample; None: all of them): as many
    as :data:`VALIDATION_SHARE` of the budget pays for one pass over, at least
    :data:`MIN_VALIDATION_ROWS`."""
    per_row = sum(cost.load.values()) + cost.forward
    rows = max(MIN_VALIDATION_ROWS, int(VALIDATION_SHARE * budget / max(per_row, 1e-9)))
    return rows if rows < n_validation else None


def check_minimum_budget(cost: SampleCost, budget: float, spent: float, n_train: int, n_validation: int, promotion: float) -> None:
    """Refuse a budget that cannot pay for what was ``spent`` already (reading, checking, measuring),
    a one-epoch probe on the smallest sample the ladder uses and ``promotion`` (evaluating,
    calibrating and reporting the winner), saying the measured minimum."""
    from mmagent.search.ladder import MIN_SAMPLE_ROWS

    rows = min(n_train, MIN_SAMPLE_ROWS)
    probe = cost.setup_seconds("probe", rows, n_validation) + cost.epoch_seconds("probe", rows, n_validation)
    need = spent + probe + promotion
    if need > budget:
        suggest = 10 * -(-int(1.25 * need) // 10)  # a margin, in round tens of seconds
        raise BudgetTooSmall(
            f"time budget {budget:.0f}s is less than this table needs on this machine: ~{need:.0f} s (measured: reading, checking and "
            f"measuring {spent:.0f} s, a probe on {rows} rows ~{probe:.0f} s, evaluating and calibrating the winner ~{promotion:.0f} s); "
            f"give --time-budget {suggest}s or more"
        )


@dataclass
class Backbones:
    """One set of backbones for the tunable inputs: the base config carrying them, what they are
    called on the leaderboard, and (once measured) their cost and block counts."""

    raw: dict[str, Any]
    label: str
    cost: SampleCost | None = None
    blocks: dict[int, int] | None = None


def larger_backbones(raw: dict[str, Any], fixed: set[str]) -> tuple[Backbones, dict[int, catalog.Backbone]] | None:
    """``raw`` with each tunable input climbed to the next larger available catalog entry of its
    modality (inputs of a modality in ``fixed``, the user's own choice, stay); None when no input
    can climb. Also returns the entries climbed to, by input index."""
    raw = copy.deepcopy(raw)
    chosen: dict[int, catalog.Backbone] = {}
    for i in tunable_inputs(raw):
        inp = raw["inputs"][i]
        if inp["modality"] in fixed:
            continue
        bigger = catalog.larger(inp["encoder"])
        if bigger:
            kept = {k: v for k, v in inp["encoder"].items() if k in ("max_seconds", "freeze")}  # the window read off the files stays
            inp["encoder"] = {**bigger[0].encoder, **kept}
            chosen[i] = bigger[0]
    if not chosen:
        return None
    return Backbones(raw, " + ".join(b.key for b in chosen.values())), chosen


def estimated_probe_seconds(small: SampleCost, raw: dict[str, Any], chosen: dict[int, catalog.Backbone], n_rows: int) -> float | None:
    """What caching the larger backbones' outputs over ``n_rows`` rows (the fewest a probe on them
    would use) would cost, scaled from the
    small ones' measured encoding (``raw``: the small backbones' config) by the catalog's relative
    cost; None when the catalog has no figure for one of them (then only measuring it tells)."""
    total = 0.0
    keys = list(small.encode)
    for i, bigger in chosen.items():
        start = catalog.find(raw["inputs"][i]["encoder"])
        if bigger.cpu_ms is None or start is None or start.cpu_ms is None:
            return None
        total += small.encode[keys[i]] * bigger.cpu_ms / start.cpu_ms
    return total * n_rows


@dataclass
class Reserve:
    """Seconds kept back from training: promoting one model, plus the extra members of an ensemble
    when the budget affords them (``members`` 1: no ensemble)."""

    seconds: float
    members: int
    why: str = ""


def promotion_passes(n_train: int, n_validation: int, n_test: int, n_inputs: int, unknown_rows: int) -> int:
    """Rows the promotion runs the winner over (see :func:`mmagent.finishing.report.finalize_run`):
    validation and test; the test rows again without each input (ablation, several inputs only);
    the unknown-input score's training sample and validation, without each input too; the drift
    profile's validation rows and up to 512 training rows."""
    dropped = n_inputs if n_inputs > 1 else 0
    evaluation = n_validation + n_test * (1 + dropped)
    unknown = min(n_train, unknown_rows) + n_validation * dropped
    drift = n_validation + min(n_train, 512)
    return evaluation + unknown + drift


def promotion_seconds(per_sample: float, passes: int, margin: float = 1.5) -> float:
    """Promoting one model: ``passes`` forward passes at ``per_sample`` seconds times ``margin``,
    and :data:`REPORT_SECONDS` for calibrating and writing the report. ``margin`` 1: the least it
    can take (what a budget is refused by)."""
    return REPORT_SECONDS + margin * per_sample * passes


def promotion_reserve(budget: float, per_sample: float, passes: int, n_validation: int, ensemble: bool, max_members: int) -> Reserve:
    """The reserve for promoting the winner: ``passes`` forward passes over rows at ``per_sample``
    seconds each (validation, test, ablations, calibration, drift profile, unknown score), with a
    1.5x margin and 15 s for the report, capped at 30 % of the budget. An ensemble multiplies those
    passes by its members (and scores each candidate on validation once more): only as many
    members as :data:`ENSEMBLE_SHARE` of the budget pays for are reserved, never ``max_members``
    by default. Reserving three Whisper members on AV-digits took 30 % of a 20-minute budget and
    cost the fit its goal (94.7 % -> 91.7 %)."""
    single = min(0.3 * budget, promotion_seconds(per_sample, passes))
    extra = 1.5 * per_sample * (passes + n_validation)  # one more member: every pass again, plus scoring it
    if not ensemble:
        return Reserve(single, 1)
    room = min(ENSEMBLE_SHARE * budget, 0.3 * budget - single)  # the whole reserve stays under 30 %
    members = min(max_members, 1 + int(max(room, 0.0) // max(extra, 1e-9)))
    if members < 2:
        return Reserve(single, 1, f"a second member would need ~{extra:.0f} s more promotion time; the budget affords ~{max(room, 0.0):.0f} s for it")
    return Reserve(single + (members - 1) * extra, members)
