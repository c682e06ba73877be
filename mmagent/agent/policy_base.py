"""What every decision policy shares: the :class:`Decision` it returns, the validated view of a
prediction, the :class:`Policy` base class and its spec, the registry, and loading a policy from a
dict or YAML file. The policies themselves are in :mod:`mmagent.agent.policies`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmagent.specs import TaskType

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
    model_version: str | None = Field(None, description="the model version that decided (set when the agent was loaded as a registered version)")
    unknown: bool = Field(False, description="the input is unlike what the model was trained on (its unknown score is above the run's threshold)")
    unknown_score: float | None = Field(None, description="the unknown-input score (higher: less like the training data); None when the run has none")
    prediction_set: list[str] | None = Field(None, description="the labels the conformal prediction set keeps at the run's error level")


@dataclass
class Assessment:
    """What the agent knows about one prediction beyond its probabilities: the unknown-input score
    and verdict, the conformal prediction set, and whether the run's escalation rules turn a
    set that is not a single label (or a promise no threshold could keep) into an escalation."""

    unknown_score: float | None = None
    unknown_threshold: float | None = None
    unknown: bool = False  # the score is above the run's threshold
    unknown_escalates: bool = True  # agent.unknown.enabled: an unknown input is handed over
    prediction_set: list[str] | None = None
    set_level: float | None = None  # the set's miscoverage: it holds the true label with probability >= 1 - this
    set_escalates: bool = False
    uncertified: str | None = None  # why nothing may be answered (no threshold kept the error promise)

    def escalation_reason(self) -> str | None:
        """Why these rules escalate the input, in words for the person it goes to (None: they don't)."""
        if self.unknown and self.unknown_escalates:
            return f"outside what I was trained on (unknown score {compared(self.unknown_score or 0.0, '>', self.unknown_threshold or 0.0)})"
        # An empty set is how conformal sets at a loose level (above the model's error rate) reach
        # their coverage exactly: it says nothing against the top label, so only a set of two or
        # more labels hands over, and a looser promise never escalates more.
        if self.set_escalates and self.prediction_set is not None and len(self.prediction_set) > 1:
            level = f"{1 - (self.set_level or 0.0):.0%}"
            names = self.prediction_set
            return f"could be {names[0]} or {names[1]}" + (f" (or {len(names) - 2} more)" if len(names) > 2 else "") + f" (prediction set at {level})"
        return self.uncertified


class PredictionView:
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


def fmt_prob(x: float) -> str:
    return f"{x:.3g}"


def compared(x: float, sign: str, bound: float) -> str:
    """``"0.9971 < 0.998"``: each side with the digits it takes to tell them apart (3 at least)."""
    for digits in range(3, 10):
        a, b = f"{x:.{digits}g}", f"{bound:.{digits}g}"
        if a != b:
            break
    return f"{a} {sign} {b}"


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
    escalate_action: ClassVar[str] = "escalate"  # the action of an input the policy hands over
    unknown_action: ClassVar[str] = "escalate"  # the action of an input unlike the training data

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
        assessment: Assessment | None = None,
    ) -> Decision:
        """Decide for one target. ``probs``: label -> probability, or ``{"value": v}`` for
        regression. ``contributions`` (per-input attribution) is copied into the decision.
        ``assessment``: the unknown-input verdict and prediction set; an unknown input, or a set
        that is not a single label when the run promises an error level, is escalated whatever
        the probabilities say."""
        pred = PredictionView(target, probs, task_type)
        decision = self._decide(pred, self._base(pred))
        if contributions:
            decision.contributions = {str(k): float(v) for k, v in contributions.items()}
        if assessment is not None:
            decision.unknown, decision.unknown_score = assessment.unknown, assessment.unknown_score
            decision.prediction_set = assessment.prediction_set
            reason = assessment.escalation_reason()
            if reason:
                self._hand_over(decision, reason, assessment.unknown and assessment.unknown_escalates)
        return decision

    def _hand_over(self, decision: Decision, reason: str, unknown: bool) -> None:
        """Escalate ``decision`` for ``reason`` (first among its reasons); subclasses add their reply."""
        earlier = decision.reason if decision.escalated else None  # a reply's note ("not in the playbook") no longer applies
        decision.action = self.unknown_action if unknown else (decision.action if decision.escalated else self.escalate_action)
        decision.escalated = True
        decision.reason = "; ".join(r for r in (reason, earlier) if r)

    def _base(self, pred: PredictionView) -> Decision:
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

    def _decide(self, pred: PredictionView, decision: Decision) -> Decision:  # pragma: no cover
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
            data = read_yaml(path)
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
        book = read_yaml(path)
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


def read_yaml(path: Path) -> dict[str, Any]:
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
