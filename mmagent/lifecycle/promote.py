"""Champion / challenger: promote a run to a registry alias only when it is not worse.

The rule (:func:`judge`): the challenger is refused when, on the same evaluation table, it is worse
than the champion by more than ``tolerance``

- on any overall metric of the target (accuracy and macro-F1; multilabel macro- and micro-F1;
  regression MAE and RMSE, where the tolerance is relative: 0.01 = 1 % more error), or
- on the recall (multilabel: F1) of any class with at least ``min_support`` examples in the table:
  a model that is better on average but has stopped recognising one well-represented class does
  not replace one that still does. Classes with less support are shown but do not block. A class's
  recall moves by 1/support per example, so its drop must also exceed what chance explains: the
  tolerance plus ``z`` standard errors of the difference (``z`` = 1.645: one-sided 95 %; 0 turns the
  margin off). On Banking77's test split (40 rows per intent), one more miss is 2.5 points: without
  the margin, any retrained model would be refused for noise.

Calibration and latency are reported, not judged (latency depends on the machine it is measured
on). A challenger whose inputs differ from the champion's is refused: clients send the
champion's schema, and the server would refuse to swap to it. The first promotion (no champion
yet) always succeeds. Every decision, accepted or refused, is written to the registry's
``decisions/`` folder as JSON and Markdown.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmagent.lifecycle.compare import OVERALL, Comparison, compare
from mmagent.lifecycle.registry import ALIAS_PATTERN, Registry, RegistryError, Version
from mmagent.runs import BASELINE_KEY, read_calibration, verify_run


@dataclass
class Decision:
    """The outcome of ``promote``."""

    alias: str
    challenger: str  # version name, e.g. v3
    champion: str | None
    accepted: bool
    reasons: list[str] = field(default_factory=list)  # why refused (empty when accepted)
    summary: str = ""
    tolerance: float = 0.01
    min_support: int = 20
    comparison: dict[str, Any] | None = None
    record: str | None = None  # the decision file in the registry

    def markdown(self) -> str:
        verdict = "PROMOTED" if self.accepted else "REFUSED"
        lines = [
            f"# {verdict}: {self.challenger} for `{self.alias}`",
            "",
            self.summary,
            "",
            f"Rule: not worse than the champion by more than {self.tolerance:g} overall, nor on any class with at least {self.min_support} examples "
            "(there, by more than the tolerance plus what chance explains on that many examples).",
        ]
        lines += [f"- {r}" for r in self.reasons]
        if self.comparison:
            lines += ["", Comparison.from_dict(self.comparison).markdown(f"champion {self.champion}", f"challenger {self.challenger}")]
        return "\n".join(lines).rstrip() + "\n"


NOISE_Z = 1.645


def judge(comparison: Comparison, tolerance: float = 0.01, min_support: int = 20, z: float = NOISE_Z) -> list[str]:
    """Why challenger B may not replace champion A (an empty list: it may). See the module docstring."""
    if tolerance < 0:
        raise ValueError(f"--tolerance {tolerance}: must be >= 0")
    a, b, reasons = comparison.a, comparison.b, []
    for name, higher in OVERALL[comparison.task].items():
        va, vb = a.overall.get(name), b.overall.get(name)
        if va is None or vb is None:
            continue
        worse = (va - vb > tolerance) if higher else (vb - va > tolerance * max(abs(va), 1e-12))
        if worse:
            reasons.append(f"overall {name}: {vb:.4f} vs the champion's {va:.4f} (beyond the tolerance {tolerance:g}{'' if higher else ' relative'})")
    key = "f1" if comparison.task == "multilabel" else "recall"
    for label, ca in sorted(a.per_class.items()):
        support = int(ca.get("support", 0))
        if support < min_support:
            continue
        va, vb = ca.get(key, 0.0), b.per_class.get(label, {}).get(key, 0.0)
        noise = z * math.sqrt((va * (1 - va) + vb * (1 - vb)) / support)
        if va - vb > tolerance + noise:
            reasons.append(
                f"class {label!r} ({support} examples): {key} {vb:.4f} vs the champion's {va:.4f} "
                f"(beyond the tolerance {tolerance:g} + {noise:.3f} for chance on {support} examples)"
            )
    return reasons


def promote(
    run: str | Path,
    data: str | Path,
    registry: str | Path,
    alias: str = "production",
    tolerance: float = 0.01,
    min_support: int = 20,
    device: str = "cpu",
    latency_records: int = 32,
) -> Decision:
    """Register ``run`` and compare it with the version holding ``alias`` on ``data``; point the
    alias at it when :func:`judge` finds nothing against it. The decision is written to the
    registry either way (see the module docstring)."""
    if min_support < 1:
        raise ValueError(f"--min-support {min_support}: must be >= 1")
    verify_run(run)  # an intact run folder, an evaluation table and a valid alias before the registry is touched
    baseline = read_calibration(run).get(BASELINE_KEY) or {}
    if baseline.get("beats") is False:
        raise RegistryError(f"{run}: not promoted: {baseline.get('note')}")
    if not Path(data).is_file():
        raise FileNotFoundError(f"--data {data}: file not found")
    if not ALIAS_PATTERN.fullmatch(alias):
        raise RegistryError(f"alias {alias!r}: use letters, digits, '_', '.', '-' (at most 64 characters)")
    reg = Registry.open(registry, create=True)
    challenger = reg.register(run)
    champion = reg.holder(alias)
    decision = Decision(alias, challenger.name, champion.name if champion else None, True, tolerance=tolerance, min_support=min_support)
    if champion is None:
        decision.summary = f"First promotion: no version held `{alias}`; {challenger.name} ({challenger.run}) takes it."
    elif champion.number == challenger.number:
        decision.summary = f"{challenger.name} already holds `{alias}`; nothing changes."
    else:
        champion_dir = reg.verified_run(champion)
        if champion.inputs != challenger.inputs:
            decision.accepted = False
            decision.reasons.append(f"the inputs differ from the champion's ({_inputs(champion)} -> {_inputs(challenger)}): clients send the champion's schema")
        else:
            comparison = compare(champion_dir, challenger.run, data, latency_records=latency_records, device=device)
            decision.comparison = comparison.to_dict()
            decision.reasons = judge(comparison, tolerance, min_support)
            decision.accepted = not decision.reasons
        decision.summary = (
            f"Challenger {challenger.name} ({challenger.run}) {'replaces' if decision.accepted else 'does not replace'} "
            f"champion {champion.name} ({champion.run}) as `{alias}`."
        )
    record = reg.decision_path(alias)
    decision.record = str(record)
    reg.write_decision(record, asdict(decision), decision.markdown())
    if decision.accepted and (champion is None or champion.number != challenger.number):
        reg.set_alias(alias, challenger, decision=str(record.relative_to(reg.root)))
    return decision


def _inputs(v: Version) -> str:
    return ", ".join(f"{'+'.join(i['columns'])}:{i['modality']}{'!' if i['required'] else ''}" for i in v.inputs)
