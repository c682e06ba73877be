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
AGENT_KEYS = ("target", "escalation", "speech_to_text")


class EscalationSpec(BaseModel):
    """Choose the policy's confidence threshold on held-out predictions: the lowest one whose
    answered share reaches ``target_precision``, or the one answering ``target_coverage``."""

    model_config = ConfigDict(extra="forbid")
    target_precision: float | None = Field(None, gt=0.0, le=1.0)
    target_coverage: float | None = Field(None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _one(self) -> EscalationSpec:
        if (self.target_precision is None) == (self.target_coverage is None):
            raise ValueError("give exactly one of target_precision or target_coverage")
        return self


class SpeechColumns(BaseModel):
    """Transcribe ``audio`` into ``text`` for records that come without text."""

    model_config = ConfigDict(extra="forbid")
    audio: str
    text: str


class AgentSpec(BaseModel):
    """The agent block. Keys other than ``target``, ``escalation`` and ``speech_to_text`` are the
    policy's settings; they are validated by the policy's own spec and, once validated, are
    self-contained (a playbook file named by a customer-service policy is read and embedded)."""

    model_config = ConfigDict(extra="allow")
    target: str | None = Field(None, description="the target the agent acts on (default: the first)")
    escalation: EscalationSpec | None = None
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
