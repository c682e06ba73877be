"""The report's "knowing the unknown" section, in words and one table, shared by report.md and
report.html: the unknown-input score and how it was chosen, the error promise and its guarantee,
and the same rules measured on held-out data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmagent import runs

# What the held-out-class AUROCs cannot tell: the model was trained on every class, held-out ones
# included, so it already separates them; a request of a kind it never saw is harder. Measured on
# Banking77-OOS (26 intents never trained on): 0.989 in the folds, 0.890 on the new intents.
FOLD_CAVEAT = (
    "the model was trained on the held-out classes too, so these AUROCs are an upper bound for requests of a kind it never saw "
    "(Banking77 with 26 intents left out: 0.989 in the folds, 0.890 on the left-out intents); far inputs (noise, another modality) score near the folds"
)

HEADER = ["measured on", "rows", "answered", "error among answered", "answered correctly", "set coverage", "mean set size", "flagged unknown"]


@dataclass
class TrustSummary:
    sentences: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)  # under HEADER

    def __bool__(self) -> bool:
        return bool(self.sentences or self.warnings or self.rows)


def trust_summary(calibration: dict[str, Any], unknown: dict[str, Any]) -> TrustSummary:
    """What the report says about unknown inputs and escalation (empty for a run without either)."""
    out = TrustSummary()
    if unknown:
        threshold = unknown.get("threshold")
        aurocs = ", ".join(f"{k} {v:.3f}" for k, v in (unknown.get("fold_auroc") or {}).items())
        out.sentences.append(
            f"Unknown-input score: **{unknown.get('kind')}** on target `{unknown.get('target')}`, chosen by {unknown.get('chosen_by')}"
            + (f" (AUROC: {aurocs}; {FOLD_CAVEAT})" if aurocs else "")
            + f"; threshold {_num(threshold)}: {unknown.get('guarantee')}."
        )
    baseline = calibration.get(runs.BASELINE_KEY) or {}
    if baseline and not baseline.get("beats", True):
        out.warnings.append(str(baseline.get("note")).capitalize() + ".")
    elif baseline:
        out.sentences.append(
            f"Against the {baseline['kind']} baseline on validation: {baseline['metric']} {baseline['model']:.4g} vs {baseline['baseline']:.4g}."
        )
    esc = calibration.get(runs.ESCALATION_KEY) or {}
    if "max_error" in esc:
        line = f"Escalation promise: {esc.get('guarantee')}." + (
            f" Answer when the calibrated confidence is >= {_num(esc.get('threshold'))}" if esc.get("reached") else ""
        )
        if esc.get("set_escalates"):
            line += (
                f"{' and' if esc.get('reached') else ' Also'} escalate when the conformal prediction set at {1 - esc['set_alpha']:.0%} is not a single label"
            )
        out.sentences.append(line + ".")
        if not esc.get("reached"):
            out.warnings.append("The error promise could not be certified on validation: the agent escalates every input until a better run is promoted.")
    elif "threshold" in esc:
        out.sentences.append(
            f"Escalation threshold chosen on validation: {_num(esc['threshold'])} (precision {_num(esc.get('precision'))}, coverage {_num(esc.get('coverage'))})."
        )
        if not esc.get("reached", True):
            out.warnings.append(f"The escalation target was not reached. {esc.get('note') or ''} The agent uses the threshold with the best precision.")
    held = esc.get("held_out")
    if held:
        out.rows.append(
            [
                str(held.get("split")),
                str(held.get("rows")),
                _pct(held.get("coverage")),
                _pct(held.get("error_among_answered")),
                _pct(held.get("answered_correctly")),
                _pct(held.get("set_coverage")),
                _num(held.get("mean_set_size")),
                _pct(held.get("flagged_unknown")),
            ]
        )
        promised = esc.get("max_error")
        measured = held.get("error_among_answered")
        if promised is not None and measured is not None and str(held.get("split")) == "test":
            verdict = "within" if measured <= promised else "above"
            out.sentences.append(f"On test, the error among answered inputs is {measured:.1%}, {verdict} the promised {promised:.1%}.")
    return out


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "none"


def _pct(v: Any) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) else "n/a"
