"""The ``agent`` block of an experiment config: which target the agent acts on, how its
escalation threshold is chosen, speech-to-text, and the policy's own settings (``type`` and its
keys, checked by that policy's spec in :mod:`mmagent.agent.policies`). Torch-free, so the config
validates it with everything else, before any work."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from mmagent.agent.policies import FinanceSpec, PolicyConfigError, load_policy_spec
from mmagent.specs import TargetSpec

# Agent-config keys that are not policy settings.
AGENT_KEYS = ("target", "escalation", "unknown", "speech_to_text")
DEFAULT_SET_LEVEL = 0.1  # prediction sets' miscoverage when the user states no error level


class EscalationSpec(BaseModel):
    """What the user accepts, kept on held-out predictions (see :mod:`mmagent.agent.conformal`):

    * ``max_error``: the error among answered requests, with probability >= ``confidence`` over the
      validation draw (Learn then Test). Decisions carry conformal prediction sets at this level and
      escalate when the set is not a single label.
    * ``target_precision``: the same promise spelled as precision (``max_error = 1 - precision``).
    * ``target_coverage``: answer that share of requests, the most confident first (no error promise).
    """

    model_config = ConfigDict(extra="forbid")
    max_error: float | None = Field(None, gt=0.0, lt=1.0, description="error accepted among answered requests")
    target_precision: float | None = Field(None, gt=0.0, lt=1.0, description="precision of answered requests (1 - max_error)")
    target_coverage: float | None = Field(None, gt=0.0, le=1.0, description="share of requests answered")
    confidence: float = Field(0.9, ge=0.5, lt=1.0, description="probability that the max_error promise holds (1 - delta)")

    @model_validator(mode="after")
    def _one(self) -> EscalationSpec:
        if sum(x is not None for x in (self.max_error, self.target_precision, self.target_coverage)) != 1:
            raise ValueError("give exactly one of max_error, target_precision or target_coverage")
        return self

    @property
    def error_level(self) -> float | None:
        """The error accepted among answered requests (None for a coverage target)."""
        if self.max_error is not None:
            return self.max_error
        return None if self.target_precision is None else round(1.0 - self.target_precision, 10)


class UnknownSpec(BaseModel):
    """The unknown-input score (see :mod:`mmagent.agent.unknown`): fitted with every run; an input
    scoring above its threshold is escalated as "outside what I was trained on"."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="escalate inputs the score flags as unknown")
    false_alarm: float = Field(0.05, gt=0.0, lt=0.5, description="share of inputs like the training data that may be flagged unknown")
    score: Literal["auto", "mahalanobis", "msp", "energy"] = Field("auto", description="auto: chosen per run with held-out classes")


class SpeechColumns(BaseModel):
    """Transcribe ``audio`` into ``text`` for records that come without text."""

    model_config = ConfigDict(extra="forbid")
    audio: str
    text: str


class AgentSpec(BaseModel):
    """The agent block. Keys other than ``target``, ``escalation``, ``unknown`` and ``speech_to_text`` are the
    policy's settings; they are validated by the policy's own spec and, once validated, are
    self-contained (a playbook file named by a customer-service policy is read and embedded)."""

    model_config = ConfigDict(extra="allow")
    target: str | None = Field(None, description="the target the agent acts on (default: the first)")
    escalation: EscalationSpec | None = None
    unknown: UnknownSpec = Field(default_factory=UnknownSpec)
    speech_to_text: Literal["auto"] | SpeechColumns | None = None

    @property
    def policy(self) -> dict[str, Any]:
        """The policy's settings (``type`` and its keys)."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _policy(self, info: ValidationInfo) -> AgentSpec:
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is None and isinstance(self.policy.get("playbook"), str):
            return self  # a playbook file relative to an unknown folder: resolve_agent_config reads it
        try:
            spec = load_policy_spec(self.policy or None, base_dir=base_dir)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        # The resolved policy replaces what was given: defaults filled in, playbook embedded.
        self.__pydantic_extra__ = spec.model_dump(mode="json")
        return self


def split_agent_config(agent: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(agent settings, policy settings)`` of an agent block read from a run folder."""
    return {k: agent[k] for k in AGENT_KEYS if k in agent}, {k: v for k, v in agent.items() if k not in AGENT_KEYS}


def resolve_agent_config(agent: AgentSpec | Mapping[str, Any], base_dir: str | Path) -> AgentSpec:
    """The agent block, validated and self-contained (see :class:`AgentSpec`)."""
    raw = agent.model_dump(mode="json", exclude_none=True) if isinstance(agent, AgentSpec) else dict(agent)
    return AgentSpec.model_validate(raw, context={"base_dir": str(base_dir)})


def check_agent_labels(agent: AgentSpec, targets: list[TargetSpec]) -> None:
    """Checks that need the fitted targets (labels read from the training table): the agent's
    target exists, and every alert rule names a target and a label the model has."""
    by_name = {t.column: t for t in targets}
    if agent.target is not None and agent.target not in by_name:
        raise PolicyConfigError(f"agent.target {agent.target!r} is not a target; targets: {list(by_name)}")
    policy = load_policy_spec(agent.policy or None)
    if not isinstance(policy, FinanceSpec):
        return
    default = agent.target or targets[0].column
    for i, rule in enumerate(policy.alerts):
        where = f"agent.alerts.{i}"
        target = rule.target or default
        if target not in by_name:
            raise PolicyConfigError(f"{where}: target {target!r} is not a target; targets: {list(by_name)}")
        spec = by_name[target]
        if rule.label is not None and rule.label not in spec.labels:
            raise PolicyConfigError(f"{where}: label {rule.label!r} is not a label of target {target!r}; its labels: {spec.labels}")
        if rule.label is None and spec.type != "regression":
            raise PolicyConfigError(
                f"{where}: a rule without `label` watches a regressed value, but target {target!r} is {spec.type}; name one of its labels: {spec.labels}"
            )
