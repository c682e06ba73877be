"""The ``agent`` block of an experiment config: which target the agent acts on, how its
escalation threshold is chosen, speech-to-text, and the policy settings. Torch-free, so the
config can check it before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmagent.agent.policies import load_policy_spec

# Agent-config keys that are not policy settings.
AGENT_KEYS = ("target", "escalation", "speech_to_text")


def split_agent_config(agent: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(agent settings, policy settings)`` of an agent block."""
    return {k: agent[k] for k in AGENT_KEYS if k in agent}, {k: v for k, v in agent.items() if k not in AGENT_KEYS}


def resolve_agent_config(agent: dict[str, Any], base_dir: str | Path) -> dict[str, Any]:
    """Validate the config's ``agent`` block and make it self-contained (a playbook file is read
    and embedded), so the run folder carries everything the agent needs."""
    extras, policy = split_agent_config(agent)
    spec = load_policy_spec(policy or None, base_dir=base_dir)
    return {**spec.model_dump(mode="json"), **extras}
