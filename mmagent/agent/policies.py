"""Decision policies: turn one target's (calibrated) prediction into a :class:`Decision`.

A policy sees probabilities, never a model: ``decide(target, probs, task_type)`` with ``probs``
mapping each label to its probability (classification: a distribution; multilabel: independent
per-label probabilities) or, for a regression target, ``{"value": v}``. Policies are built by
``type`` from a dict / YAML file with :func:`build_policy`:

* ``default`` - predict the top label; escalate when confidence < ``threshold``.

Every policy also hands over an input the run's unknown-input score flags, and (when the run
promises an error level) one whose conformal prediction set is not a single label, with its own
action (:class:`~mmagent.agent.policy_base.Assessment`; ``escalate``, ``handoff``,
``refer_to_clinician``, finance's ``flag`` for an unknown input and ``abstain`` otherwise).
* ``customer_service`` - reply from a playbook per intent; hand off to a human when unsure or out
  of scope.
* ``medical`` - always report every finding with its probability; refer to a clinician when
  unsure.
* ``finance`` - fire alerts when a label's probability (or a regressed value) crosses a bound;
  abstain when unsure.

Probabilities should already be calibrated (see :mod:`mmagent.agent.calibration`): thresholds
below are read as probabilities, which only holds for a calibrated model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmagent.agent.policy_base import (
    Decision,
    LabelProbability,
    Policy,
    PolicyConfigError,
    PolicySpec,
    PredictionView,
    available_policies,
    build_policy,
    compared,
    fmt_prob,
    load_policy_spec,
    read_yaml,
    register_policy,
)

__all__ = [
    "CustomerServicePolicy",
    "CustomerServiceSpec",
    "Decision",
    "DefaultPolicy",
    "DefaultSpec",
    "FinancePolicy",
    "FinanceSpec",
    "LabelProbability",
    "MedicalPolicy",
    "MedicalSpec",
    "Policy",
    "PolicyConfigError",
    "PolicySpec",
    "available_policies",
    "build_policy",
    "load_policy_spec",
    "register_policy",
]


# -- default --------------------------------------------------------------------------------------
class DefaultSpec(PolicySpec):
    type: Literal["default"] = "default"
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="escalate when confidence is below this")


@register_policy("default")
class DefaultPolicy(Policy):
    """Predict the top label; escalate (action ``escalate``) when its probability < ``threshold``."""

    spec_class = DefaultSpec
    spec: DefaultSpec

    def _decide(self, pred: PredictionView, decision: Decision) -> Decision:
        if pred.confidence is not None and pred.confidence < self.spec.threshold:
            decision.action, decision.escalated = "escalate", True
            decision.reason = f"low confidence {compared(pred.confidence, '<', self.spec.threshold)}"
        return decision


# -- customer service -----------------------------------------------------------------------------
class IntentPlay(BaseModel):
    """What to do for one intent. ``action: handoff`` always hands the conversation to a human."""

    model_config = ConfigDict(extra="forbid")
    reply: str | None = Field(None, description="defaults to the playbook's default_reply (handoff_reply for a handoff)")
    action: str = "reply"


class CustomerServiceSpec(PolicySpec):
    type: Literal["customer_service"] = "customer_service"
    intents: dict[str, IntentPlay] = Field(default_factory=dict)
    default_reply: str = "Thanks for your message. Could you tell me a bit more about what you need?"
    handoff_reply: str = "Let me connect you with a member of our team who can help."
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="hand off when confidence is below this")
    out_of_scope_labels: list[str] = Field(default_factory=list, description="intents always handed off")
    max_entropy: float | None = Field(None, ge=0.0, le=1.0, description="hand off when normalized entropy exceeds this (None: off)")
    min_margin: float | None = Field(None, ge=0.0, le=1.0, description="hand off when top-1 minus top-2 probability is below this (None: off)")

    @model_validator(mode="before")
    @classmethod
    def _null_intents(cls, data: Any) -> Any:
        # YAML `BILLING:` with nothing under it parses as None: treat it as "use the defaults".
        if isinstance(data, dict) and isinstance(data.get("intents"), dict):
            data = {**data, "intents": {k: ({} if v is None else v) for k, v in data["intents"].items()}}
        return data


@register_policy("customer_service")
class CustomerServicePolicy(Policy):
    """Reply from a playbook for the predicted intent; hand off to a human (action ``handoff``,
    ``handoff_reply``) when confidence < ``threshold``, the intent is out of scope, the
    distribution is too flat (``max_entropy``) or too close between the top two (``min_margin``),
    or the playbook says so. Intents missing from the playbook get ``default_reply``."""

    spec_class = CustomerServiceSpec
    spec: CustomerServiceSpec
    escalate_action = unknown_action = "handoff"  # a request it cannot answer goes to a person

    def _hand_over(self, decision: Decision, reason: str, unknown: bool) -> None:
        super()._hand_over(decision, reason, unknown)
        decision.reply = self.spec.handoff_reply

    @classmethod
    def from_yaml(cls, path: str | Path) -> CustomerServicePolicy:
        """Load a playbook file (with or without ``type: customer_service``)."""
        data = read_yaml(Path(path))
        data.setdefault("type", "customer_service")
        policy = build_policy(data, base_dir=Path(path).parent)
        if not isinstance(policy, cls):
            raise PolicyConfigError(f"{path}: a customer-service playbook has type customer_service, not {policy.name!r}")
        return policy

    def _decide(self, pred: PredictionView, decision: Decision) -> Decision:
        s = self.spec
        if pred.task_type == "regression":
            raise ValueError(f"target {pred.target!r}: the customer_service policy needs intent labels, not a regression value")
        intent, confidence = pred.label, pred.confidence
        assert intent is not None and confidence is not None
        reasons = []
        if intent in s.out_of_scope_labels:
            reasons.append(f"out of scope: intent {intent!r}")
        if confidence < s.threshold:
            reasons.append(f"low confidence {compared(confidence, '<', s.threshold)}")
        if s.max_entropy is not None and pred.task_type == "classification" and pred.normalized_entropy > s.max_entropy:
            reasons.append(f"out of scope: normalized entropy {compared(pred.normalized_entropy, '>', s.max_entropy)}")
        if s.min_margin is not None and pred.margin < s.min_margin:
            reasons.append(f"out of scope: margin {compared(pred.margin, '<', s.min_margin)}")
        if reasons:
            decision.action, decision.escalated, decision.reply = "handoff", True, s.handoff_reply
            decision.reason = "; ".join(reasons)
            return decision
        play = s.intents.get(intent)
        if play is None:
            decision.action, decision.reply = "reply", s.default_reply
            decision.reason = f"intent {intent!r} not in the playbook: default reply"
        elif play.action == "handoff":
            decision.action, decision.escalated = "handoff", True
            decision.reply = play.reply or s.handoff_reply
            decision.reason = f"playbook hands intent {intent!r} to a human"
        else:
            decision.action, decision.reply = play.action, play.reply or s.default_reply
        return decision


# -- medical --------------------------------------------------------------------------------------
class MedicalSpec(PolicySpec):
    type: Literal["medical"] = "medical"
    refer_below: float = Field(0.8, ge=0.0, le=1.0, description="classification: refer when the top probability is below this")
    uncertain_band: tuple[float, float] = Field((0.2, 0.8), description="multilabel: refer when a finding's probability is in [low, high]")
    decimals: int = Field(2, ge=0, le=6, description="digits of probabilities in the report text")

    @model_validator(mode="after")
    def _band(self) -> MedicalSpec:
        low, high = self.uncertain_band
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"uncertain_band must satisfy 0 <= low <= high <= 1, got [{low}, {high}]")
        return self


@register_policy("medical")
class MedicalPolicy(Policy):
    """Never a bare label: the reply reports every finding as ``"malignant: 0.83 probability"``.

    Classification refers to a clinician (action ``refer_to_clinician``, escalated) when the top
    probability < ``refer_below``; multilabel refers when any finding lies in ``uncertain_band``
    (a confident "absent" is as reportable as a confident "present"). Otherwise action ``report``."""

    spec_class = MedicalSpec
    spec: MedicalSpec
    escalate_action = unknown_action = "refer_to_clinician"

    def _hand_over(self, decision: Decision, reason: str, unknown: bool) -> None:
        referred = decision.escalated
        super()._hand_over(decision, reason, unknown)
        if unknown:  # not the kind of input it grades: no finding is reported at all
            decision.reply = f"{decision.target}: not graded: {reason}. Referred to a clinician."
        elif not referred:
            decision.reply = f"{decision.reply}. Referred to a clinician: {reason}."

    def _p(self, p: float) -> str:
        return f"{p:.{self.spec.decimals}f} probability"

    def _decide(self, pred: PredictionView, decision: Decision) -> Decision:
        s = self.spec
        decision.action = "report"
        if pred.task_type == "regression":
            assert pred.value is not None
            decision.reply = f"{pred.target}: estimated {pred.value:.4g}"
            return decision
        if pred.task_type == "classification":
            assert pred.label is not None and pred.confidence is not None
            others = "; ".join(f"{lab}: {self._p(p)}" for lab, p in pred.ranked[1:])
            text = f"{pred.target}: {pred.label}: {self._p(pred.confidence)}" + (f" (others: {others})" if others else "")
            if pred.confidence < s.refer_below:
                decision.reason = f"low confidence {compared(pred.confidence, '<', s.refer_below)}"
        else:
            low, high = s.uncertain_band
            status = {lab: "uncertain" if low <= p <= high else "present" if p >= s.positive_threshold else "absent" for lab, p in pred.ranked}
            text = f"{pred.target} findings: " + "; ".join(f"{lab}: {self._p(p)} ({status[lab]})" for lab, p in pred.ranked)
            uncertain = [f"{lab} {fmt_prob(p)}" for lab, p in pred.ranked if status[lab] == "uncertain"]
            if uncertain:
                decision.reason = f"uncertain finding(s) in [{fmt_prob(low)}, {fmt_prob(high)}]: {', '.join(uncertain)}"
        if decision.reason:
            decision.action, decision.escalated = "refer_to_clinician", True
            text += f". Referred to a clinician: {decision.reason}."
        decision.reply = text
        return decision


# -- finance --------------------------------------------------------------------------------------
class AlertRule(BaseModel):
    """Fires when ``probs[label]`` (or, without ``label``, a regression value) is > ``above`` or
    < ``below``. ``target`` restricts the rule to one target."""

    model_config = ConfigDict(extra="forbid")
    label: str | None = None
    target: str | None = None
    above: float | None = None
    below: float | None = None
    action: str = "alert"
    message: str = ""

    @model_validator(mode="after")
    def _bound(self) -> AlertRule:
        if self.above is None and self.below is None:
            raise ValueError("an alert rule needs `above` and/or `below`")
        return self

    def fires(self, x: float) -> bool:
        return (self.above is not None and x > self.above) or (self.below is not None and x < self.below)

    def describe(self, what: str, x: float) -> str:
        bounds = []
        if self.above is not None and x > self.above:
            bounds.append(f"> {fmt_prob(self.above)}")
        if self.below is not None and x < self.below:
            bounds.append(f"< {fmt_prob(self.below)}")
        return f"{what} {fmt_prob(x)} {' and '.join(bounds)}"


class FinanceSpec(PolicySpec):
    type: Literal["finance"] = "finance"
    alerts: list[AlertRule] = Field(default_factory=list)
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="abstain when confidence is below this (classification / multilabel)")


@register_policy("finance")
class FinancePolicy(Policy):
    """Alert rules on label probabilities or regressed values; action ``alert`` (or the rule's own
    action) with the rule's message when one fires, else ``none``; ``abstain`` (escalated) when
    confidence < ``threshold``.

    An alert wins over abstaining - a risk signal is not dropped because the model is unsure of
    its top label - but the decision is still marked escalated with both reasons."""

    spec_class = FinanceSpec
    spec: FinanceSpec
    escalate_action, unknown_action = "abstain", "flag"  # an input unlike the training data is flagged for review

    def _decide(self, pred: PredictionView, decision: Decision) -> Decision:
        fired: list[tuple[AlertRule, str]] = []
        for rule in self.spec.alerts:
            if rule.target is not None and rule.target != pred.target:
                continue
            if pred.task_type == "regression":
                if rule.label is None and rule.fires(pred.value):  # type: ignore[arg-type]
                    fired.append((rule, rule.describe("value", pred.value)))  # type: ignore[arg-type]
            elif rule.label is not None:
                if rule.label not in pred.probs:
                    if rule.target is not None:  # explicitly aimed at this target: a typo, not a mismatch
                        raise ValueError(f"alert rule for target {pred.target!r}: unknown label {rule.label!r}; labels: {sorted(pred.probs)}")
                    continue
                if rule.fires(pred.probs[rule.label]):
                    fired.append((rule, rule.describe(f"P({rule.label})", pred.probs[rule.label])))
        reasons = [why for _, why in fired]
        low = pred.confidence is not None and pred.confidence < self.spec.threshold
        if low:
            reasons.append(f"low confidence {compared(pred.confidence, '<', self.spec.threshold)}")  # type: ignore[arg-type]
        if fired:
            decision.action = fired[0][0].action
            decision.reply = " ".join(r.message for r, _ in fired if r.message) or None
        else:
            decision.action = "abstain" if low else "none"
        decision.escalated = low
        decision.reason = "; ".join(reasons) or None
        return decision
