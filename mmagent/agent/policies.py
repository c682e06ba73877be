"""Decision policies: turn one target's (calibrated) prediction into a :class:`Decision`.

A policy sees probabilities, never a model: ``decide(target, probs, task_type)`` with ``probs``
mapping each label to its probability (classification: a distribution; multilabel: independent
per-label probabilities) or, for a regression target, ``{"value": v}``. Policies are built by
``type`` from a dict / YAML file with :func:`build_policy`:

* ``default`` - predict the top label; escalate when confidence < ``threshold``.
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

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmagent.specs import TaskType

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

_SUM_TOLERANCE = 1e-3  # float32 softmax sums are off by ~1e-6; anything larger is a caller bug


class PolicyConfigError(ValueError):
    """A policy spec is invalid (unknown key, bad value, unknown type)."""


# -- decision -------------------------------------------------------------------------------------
class LabelProbability(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    probability: float


class Decision(BaseModel):
    """What the agent does for one target of one sample."""

    model_config = ConfigDict(extra="forbid")
    target: str
    task_type: TaskType
    policy: str = Field(description="type of the policy that decided")
    label: str | None = Field(None, description="top label; None for regression")
    labels: list[str] = Field(default_factory=list, description="multilabel: labels with probability >= positive_threshold")
    value: float | None = Field(None, description="regression: the predicted value")
    confidence: float | None = Field(None, description="probability of `label`; None for regression")
    top_k: list[LabelProbability] = Field(default_factory=list)
    probabilities: dict[str, float] = Field(default_factory=dict)
    action: str
    reply: str | None = Field(None, description="text for the user: playbook reply, report, alert message")
    escalated: bool = False
    reason: str | None = Field(None, description="why the action was taken (always set when escalated)")
    contributions: dict[str, float] = Field(default_factory=dict, description="per-input contribution, from the explainer")
    transcript: str | None = Field(None, description="speech-to-text of a spoken request that came without text")


class _Prediction:
    """A validated view of one target's prediction, shared by all policies."""

    def __init__(self, target: str, probs: Mapping[str, float], task_type: str) -> None:
        if task_type not in ("classification", "multilabel", "regression"):
            raise ValueError(f"target {target!r}: unknown task_type {task_type!r}")
        self.target, self.task_type = target, task_type
        self.value: float | None = None
        self.probs: dict[str, float] = {}
        if task_type == "regression":
            if set(probs) != {"value"}:
                raise ValueError(f"target {target!r}: a regression prediction is {{'value': v}}, got keys {sorted(probs)}")
            self.value = _finite(probs["value"], target, "value")
            self.ranked: list[tuple[str, float]] = []
            return
        if not probs:
            raise ValueError(f"target {target!r}: no label probabilities")
        for label, p in probs.items():
            p = _finite(p, target, label)
            if not -1e-6 <= p <= 1 + 1e-6:
                raise ValueError(f"target {target!r}: probability of {label!r} is {p}, outside [0, 1]")
            self.probs[str(label)] = min(max(p, 0.0), 1.0)
        total = sum(self.probs.values())
        if task_type == "classification" and abs(total - 1.0) > _SUM_TOLERANCE:
            raise ValueError(f"target {target!r}: classification probabilities sum to {total:.4f}, not 1 (pass the full softmax)")
        self.ranked = sorted(self.probs.items(), key=lambda kv: -kv[1])

    @property
    def label(self) -> str | None:
        return self.ranked[0][0] if self.ranked else None

    @property
    def confidence(self) -> float | None:
        return self.ranked[0][1] if self.ranked else None

    @property
    def margin(self) -> float:
        """Top-1 minus top-2 probability (1.0 with a single label)."""
        return self.ranked[0][1] - (self.ranked[1][1] if len(self.ranked) > 1 else 0.0)

    @property
    def normalized_entropy(self) -> float:
        """Entropy / log(C) in [0, 1]: 0 = one-hot, 1 = uniform (classification only)."""
        if len(self.probs) < 2:
            return 0.0
        h = -sum(p * math.log(p) for p in self.probs.values() if p > 0)
        return min(1.0, h / math.log(len(self.probs)))


def _finite(p: Any, target: str, key: str) -> float:
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"target {target!r}: {key!r} is not a number: {p!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"target {target!r}: {key!r} is {value}")
    return value


def _fmt(x: float) -> str:
    return f"{x:.3g}"


# -- specs and base class -------------------------------------------------------------------------
class PolicySpec(BaseModel):
    """Settings shared by every policy."""

    model_config = ConfigDict(extra="forbid")
    type: str
    top_k: int = Field(5, ge=1, description="how many labels to list in Decision.top_k")
    positive_threshold: float = Field(0.5, ge=0.0, le=1.0, description="multilabel: probability at which a label is positive")


class Policy:
    """Base class. Subclasses set ``spec_class`` and implement :meth:`_decide`."""

    name: ClassVar[str] = ""
    spec_class: ClassVar[type[PolicySpec]] = PolicySpec

    def __init__(self, spec: PolicySpec | Mapping[str, Any] | None = None) -> None:
        if spec is None or isinstance(spec, Mapping):
            spec = _validate(self.spec_class, {"type": self.name, **(spec or {})})
        if not isinstance(spec, self.spec_class):
            raise TypeError(f"{type(self).__name__} needs a {self.spec_class.__name__}, got {type(spec).__name__}")
        self.spec = spec

    def decide(
        self,
        target: str,
        probs: Mapping[str, float],
        task_type: TaskType = "classification",
        contributions: Mapping[str, float] | None = None,
    ) -> Decision:
        """Decide for one target. ``probs``: label -> probability, or ``{"value": v}`` for
        regression. ``contributions`` (per-input attribution) is copied into the decision."""
        pred = _Prediction(target, probs, task_type)
        decision = self._decide(pred, self._base(pred))
        if contributions:
            decision.contributions = {str(k): float(v) for k, v in contributions.items()}
        return decision

    def _base(self, pred: _Prediction) -> Decision:
        """The policy-independent part of a decision; action "predict" until a policy says otherwise."""
        positives = [lab for lab, p in pred.ranked if p >= self.spec.positive_threshold] if pred.task_type == "multilabel" else []
        return Decision(
            target=pred.target,
            task_type=pred.task_type,
            policy=self.name,
            label=pred.label,
            labels=positives,  # type: ignore[arg-type]
            value=pred.value,
            confidence=pred.confidence,
            probabilities=dict(pred.probs),
            action="predict",
            top_k=[LabelProbability(label=lab, probability=p) for lab, p in pred.ranked[: self.spec.top_k]],
        )

    def _decide(self, pred: _Prediction, decision: Decision) -> Decision:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.model_dump()})"


_POLICIES: dict[str, type[Policy]] = {}


def register_policy(name: str) -> Callable[[type[Policy]], type[Policy]]:
    """Class decorator: make a :class:`Policy` subclass buildable as ``{"type": name, ...}``."""

    def deco(cls: type[Policy]) -> type[Policy]:
        if name in _POLICIES:
            raise ValueError(f"policy {name!r} is already registered")
        cls.name = name
        _POLICIES[name] = cls
        return cls

    return deco


def available_policies() -> list[str]:
    return sorted(_POLICIES)


def load_policy_spec(spec: PolicySpec | Mapping[str, Any] | str | Path | None, base_dir: str | Path | None = None) -> PolicySpec:
    """Validate a policy spec given as a spec object, a dict, a YAML file path or a policy name.

    A ``customer_service`` spec may name its playbook in another YAML file (``playbook: path``,
    relative to the spec file, else to ``base_dir`` / the working directory); its keys are merged
    in, keys given inline win. The result is self-contained (no ``playbook`` path left)."""
    if spec is None:
        spec = {"type": "default"}
    if isinstance(spec, PolicySpec):
        return spec
    if isinstance(spec, (str, Path)):
        if isinstance(spec, str) and spec in _POLICIES:
            spec = {"type": spec}
        else:
            path = Path(spec)
            data = _read_yaml(path)
            if "type" not in data and "intents" in data:
                data = {"type": "customer_service", **data}  # a bare playbook file
            return load_policy_spec(data, base_dir=path.parent)
    if not isinstance(spec, Mapping):
        raise PolicyConfigError(f"a policy spec is a mapping, a YAML path or a policy name, got {type(spec).__name__}")
    data = dict(spec)
    kind = data.get("type")
    if kind is None:
        raise PolicyConfigError(f"policy spec needs a 'type' (one of {available_policies()})")
    if kind not in _POLICIES:
        raise PolicyConfigError(f"unknown policy type {kind!r}; available: {available_policies()}")
    if kind == "customer_service" and data.get("playbook") is not None:
        path = Path(data.pop("playbook"))
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        book = _read_yaml(path)
        book.pop("type", None)
        intents = {**(book.get("intents") or {}), **(data.get("intents") or {})}
        data = {**book, **data, "intents": intents}
    elif "playbook" in data and data["playbook"] is None:
        data.pop("playbook")
    return _validate(_POLICIES[kind].spec_class, data)


def build_policy(spec: PolicySpec | Mapping[str, Any] | str | Path | None = None, base_dir: str | Path | None = None) -> Policy:
    """Build a policy from its spec (see :func:`load_policy_spec` for the accepted forms)."""
    spec = load_policy_spec(spec, base_dir)
    cls = _POLICIES.get(spec.type)
    if cls is None:
        raise PolicyConfigError(f"unknown policy type {spec.type!r}; available: {available_policies()}")
    return cls(spec)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"policy file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PolicyConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PolicyConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _validate(cls: type[PolicySpec], data: Mapping[str, Any]) -> PolicySpec:
    """``cls.model_validate`` with errors that name the offending key (``intents.BILLING.replly``)."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as e:
        kind = data.get("type", "?")
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "spec"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key {where!r}")
            else:
                problems.append(f"{where}: {err['msg']}")
        allowed = ", ".join(cls.model_fields)
        raise PolicyConfigError(f"invalid {kind!r} policy spec: {'; '.join(problems)} (top-level keys allowed: {allowed})") from None


# -- default --------------------------------------------------------------------------------------
class DefaultSpec(PolicySpec):
    type: Literal["default"] = "default"
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="escalate when confidence is below this")


@register_policy("default")
class DefaultPolicy(Policy):
    """Predict the top label; escalate (action ``escalate``) when its probability < ``threshold``."""

    spec_class = DefaultSpec
    spec: DefaultSpec

    def _decide(self, pred: _Prediction, decision: Decision) -> Decision:
        if pred.confidence is not None and pred.confidence < self.spec.threshold:
            decision.action, decision.escalated = "escalate", True
            decision.reason = f"low confidence {_fmt(pred.confidence)} < {_fmt(self.spec.threshold)}"
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

    @classmethod
    def from_yaml(cls, path: str | Path) -> CustomerServicePolicy:
        """Load a playbook file (with or without ``type: customer_service``)."""
        data = _read_yaml(Path(path))
        data.setdefault("type", "customer_service")
        policy = build_policy(data, base_dir=Path(path).parent)
        if not isinstance(policy, cls):
            raise PolicyConfigError(f"{path}: a customer-service playbook has type customer_service, not {policy.name!r}")
        return policy

    def _decide(self, pred: _Prediction, decision: Decision) -> Decision:
        s = self.spec
        if pred.task_type == "regression":
            raise ValueError(f"target {pred.target!r}: the customer_service policy needs intent labels, not a regression value")
        intent, confidence = pred.label, pred.confidence
        assert intent is not None and confidence is not None
        reasons = []
        if intent in s.out_of_scope_labels:
            reasons.append(f"out of scope: intent {intent!r}")
        if confidence < s.threshold:
            reasons.append(f"low confidence {_fmt(confidence)} < {_fmt(s.threshold)}")
        if s.max_entropy is not None and pred.task_type == "classification" and pred.normalized_entropy > s.max_entropy:
            reasons.append(f"out of scope: normalized entropy {_fmt(pred.normalized_entropy)} > {_fmt(s.max_entropy)}")
        if s.min_margin is not None and pred.margin < s.min_margin:
            reasons.append(f"out of scope: margin {_fmt(pred.margin)} < {_fmt(s.min_margin)}")
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

    def _p(self, p: float) -> str:
        return f"{p:.{self.spec.decimals}f} probability"

    def _decide(self, pred: _Prediction, decision: Decision) -> Decision:
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
                decision.reason = f"low confidence {_fmt(pred.confidence)} < {_fmt(s.refer_below)}"
        else:
            low, high = s.uncertain_band
            status = {lab: "uncertain" if low <= p <= high else "present" if p >= s.positive_threshold else "absent" for lab, p in pred.ranked}
            text = f"{pred.target} findings: " + "; ".join(f"{lab}: {self._p(p)} ({status[lab]})" for lab, p in pred.ranked)
            uncertain = [f"{lab} {_fmt(p)}" for lab, p in pred.ranked if status[lab] == "uncertain"]
            if uncertain:
                decision.reason = f"uncertain finding(s) in [{_fmt(low)}, {_fmt(high)}]: {', '.join(uncertain)}"
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
            bounds.append(f"> {_fmt(self.above)}")
        if self.below is not None and x < self.below:
            bounds.append(f"< {_fmt(self.below)}")
        return f"{what} {_fmt(x)} {' and '.join(bounds)}"


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

    def _decide(self, pred: _Prediction, decision: Decision) -> Decision:
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
            reasons.append(f"low confidence {_fmt(pred.confidence)} < {_fmt(self.spec.threshold)}")  # type: ignore[arg-type]
        if fired:
            decision.action = fired[0][0].action
            decision.reply = " ".join(r.message for r, _ in fired if r.message) or None
        else:
            decision.action = "abstain" if low else "none"
        decision.escalated = low
        decision.reason = "; ".join(reasons) or None
        return decision
