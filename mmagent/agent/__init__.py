"""Agents: a trained model plus a policy that predicts, explains and acts.

``Agent`` wraps a trained run; the model-independent parts are calibration (temperature scaling, ECE,
confidence thresholds) and decision policies (``default``, ``customer_service``, ``medical``,
``finance``).
"""

from mmagent.agent.policies import (
    CustomerServicePolicy,
    Decision,
    DefaultPolicy,
    FinancePolicy,
    LabelProbability,
    MedicalPolicy,
    Policy,
    PolicyConfigError,
    PolicySpec,
    available_policies,
    build_policy,
    load_policy_spec,
    register_policy,
)
from mmagent.agent.spec import resolve_agent_config

__all__ = [
    "Agent",
    "CustomerServicePolicy",
    "Decision",
    "DefaultPolicy",
    "FinancePolicy",
    "LabelProbability",
    "MedicalPolicy",
    "Policy",
    "PolicyConfigError",
    "PolicySpec",
    "ThresholdChoice",
    "apply_temperature",
    "available_policies",
    "build_policy",
    "choose_threshold",
    "expected_calibration_error",
    "expected_calibration_error_binary",
    "fit_temperature",
    "fit_temperature_binary",
    "load_policy_spec",
    "register_policy",
    "resolve_agent_config",
]


_CALIBRATION = ("ThresholdChoice", "apply_temperature", "choose_threshold", "expected_calibration_error", "expected_calibration_error_binary")
_CALIBRATION += ("fit_temperature", "fit_temperature_binary")


def __getattr__(name: str) -> object:
    # ``Agent`` and calibration pull in torch and the model stack; loading them lazily keeps the
    # torch-free parts (policies, the agent config block) cheap to import: config validation
    # imports no torch (tests/test_architecture.py).
    if name == "Agent":
        from mmagent.agent.agent import Agent

        return Agent
    if name in _CALIBRATION:
        from mmagent.agent import calibration

        return getattr(calibration, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
