"""Decision policies: escalation thresholds, playbook replies, medical reports, finance alerts, specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmagent.agent import Decision, PolicyConfigError, available_policies, build_policy
from mmagent.agent.policies import CustomerServicePolicy, load_policy_spec

PLAYBOOK = """
type: customer_service
threshold: 0.6
default_reply: "Could you tell me more?"
handoff_reply: "Connecting you to a human agent."
out_of_scope_labels: [OUT_OF_SCOPE]
intents:
  BILLING:
    reply: "You can find your invoices under Account > Billing."
  REFUND:
    reply: "I've started your refund."
    action: refund
  LEGAL:
    action: handoff
  GREETING:
"""


def _probs(top: str, p: float, labels: tuple[str, ...]) -> dict[str, float]:
    """``top`` gets ``p``, the rest share ``1 - p`` equally."""
    rest = [lab for lab in labels if lab != top]
    return {top: p, **{lab: (1 - p) / len(rest) for lab in rest}}


INTENTS = ("BILLING", "REFUND", "LEGAL", "GREETING", "SHIPPING", "OUT_OF_SCOPE")


@pytest.fixture
def cs() -> CustomerServicePolicy:
    policy = build_policy(yaml.safe_load(PLAYBOOK))
    assert isinstance(policy, CustomerServicePolicy)
    return policy


def test_all_policies_registered() -> None:
    assert {"default", "customer_service", "medical", "finance"} <= set(available_policies())


# -- default ---------------------------------------------------------------------------------------
def test_default_escalates_below_threshold_only() -> None:
    policy = build_policy({"type": "default", "threshold": 0.7})
    low = policy.decide("y", {"a": 0.65, "b": 0.35})
    high = policy.decide("y", {"a": 0.75, "b": 0.25})
    assert (low.action, low.escalated, low.label) == ("escalate", True, "a")
    assert low.reason == "low confidence 0.65 < 0.7"
    assert (high.action, high.escalated, high.reason) == ("predict", False, None)
    assert high.confidence == pytest.approx(0.75) and [t.label for t in high.top_k] == ["a", "b"]


def test_default_multilabel_and_regression() -> None:
    policy = build_policy(None)
    multi = policy.decide("tags", {"x": 0.9, "y": 0.6, "z": 0.1}, "multilabel")
    assert multi.labels == ["x", "y"] and multi.label == "x" and not multi.escalated
    reg = policy.decide("price", {"value": 12.5}, "regression", contributions={"text": 0.7, "image": 0.3})
    assert (reg.label, reg.confidence, reg.value, reg.action) == (None, None, 12.5, "predict")
    assert reg.contributions == {"text": 0.7, "image": 0.3}
    assert isinstance(Decision.model_validate(reg.model_dump()), Decision)  # JSON round trip


def test_invalid_predictions_are_rejected() -> None:
    policy = build_policy("default")
    with pytest.raises(ValueError, match="sum to"):
        policy.decide("y", {"a": 0.9, "b": 0.9})
    with pytest.raises(ValueError, match="regression"):
        policy.decide("y", {"a": 0.5}, "regression")
    with pytest.raises(ValueError, match="outside"):
        policy.decide("y", {"a": 1.5}, "multilabel")


# -- customer service ------------------------------------------------------------------------------
def test_customer_service_replies_from_playbook(cs: CustomerServicePolicy) -> None:
    billing = cs.decide("intent", _probs("BILLING", 0.9, INTENTS))
    assert (billing.action, billing.escalated) == ("reply", False)
    assert billing.reply == "You can find your invoices under Account > Billing."
    refund = cs.decide("intent", _probs("REFUND", 0.8, INTENTS))
    assert (refund.action, refund.reply) == ("refund", "I've started your refund.")
    # Listed without a reply, and not listed at all: the default reply.
    assert cs.decide("intent", _probs("GREETING", 0.8, INTENTS)).reply == "Could you tell me more?"
    unknown = cs.decide("intent", _probs("SHIPPING", 0.8, INTENTS))
    assert (unknown.action, unknown.reply, unknown.escalated) == ("reply", "Could you tell me more?", False)


def test_customer_service_hands_off_below_threshold_only(cs: CustomerServicePolicy) -> None:
    low = cs.decide("intent", _probs("BILLING", 0.55, INTENTS))
    assert (low.action, low.escalated, low.reply) == ("handoff", True, "Connecting you to a human agent.")
    assert low.reason == "low confidence 0.55 < 0.6"
    high = cs.decide("intent", _probs("BILLING", 0.65, INTENTS))
    assert (high.action, high.escalated) == ("reply", False)


def test_customer_service_out_of_scope_and_playbook_handoff(cs: CustomerServicePolicy) -> None:
    oos = cs.decide("intent", _probs("OUT_OF_SCOPE", 0.99, INTENTS))
    assert (oos.action, oos.escalated, oos.reply) == ("handoff", True, "Connecting you to a human agent.")
    assert "out of scope" in (oos.reason or "")
    legal = cs.decide("intent", _probs("LEGAL", 0.95, INTENTS))
    assert (legal.action, legal.escalated, legal.reply) == ("handoff", True, "Connecting you to a human agent.")


def test_customer_service_entropy_and_margin_rules() -> None:
    spec = yaml.safe_load(PLAYBOOK) | {"threshold": 0.3, "max_entropy": 0.8}
    policy = build_policy(spec)
    flat = {"BILLING": 0.35, "REFUND": 0.33, "LEGAL": 0.32}  # passes the threshold, but near uniform
    decision = policy.decide("intent", flat)
    assert decision.escalated and "normalized entropy" in (decision.reason or "")
    assert not policy.decide("intent", {"BILLING": 0.9, "REFUND": 0.05, "LEGAL": 0.05}).escalated
    margin = build_policy(spec | {"max_entropy": None, "min_margin": 0.1})
    assert "margin" in (margin.decide("intent", {"BILLING": 0.5, "REFUND": 0.45, "LEGAL": 0.05}).reason or "")
    assert not margin.decide("intent", {"BILLING": 0.6, "REFUND": 0.35, "LEGAL": 0.05}).escalated


def test_customer_service_loads_from_yaml_files(tmp_path: Path) -> None:
    book = tmp_path / "playbook.yaml"
    book.write_text(PLAYBOOK)
    for policy in (build_policy(book), build_policy(str(book)), CustomerServicePolicy.from_yaml(book)):
        assert policy.decide("intent", _probs("BILLING", 0.9, INTENTS)).reply.startswith("You can find")  # type: ignore[union-attr]
    # A spec that points at the playbook file and overrides some of it.
    (tmp_path / "agent.yaml").write_text("type: customer_service\nplaybook: playbook.yaml\nthreshold: 0.9\n")
    spec = load_policy_spec(tmp_path / "agent.yaml")
    assert spec.threshold == 0.9 and "BILLING" in spec.intents  # type: ignore[attr-defined]
    assert "playbook" not in spec.model_dump()  # self-contained once loaded


# -- medical ---------------------------------------------------------------------------------------
def test_medical_never_returns_a_bare_label() -> None:
    policy = build_policy({"type": "medical"})
    decision = policy.decide("diagnosis", {"malignant": 0.83, "benign": 0.17})
    assert "malignant: 0.83 probability" in (decision.reply or "")
    assert "benign: 0.17 probability" in (decision.reply or "")
    assert decision.probabilities == {"malignant": 0.83, "benign": 0.17}
    assert (decision.action, decision.escalated) == ("report", False)


def test_medical_refers_below_threshold_only() -> None:
    policy = build_policy({"type": "medical", "refer_below": 0.8})
    low = policy.decide("diagnosis", {"malignant": 0.75, "benign": 0.25})
    assert (low.action, low.escalated) == ("refer_to_clinician", True)
    assert "malignant: 0.75 probability" in (low.reply or "") and low.reason == "low confidence 0.75 < 0.8"
    assert policy.decide("diagnosis", {"malignant": 0.85, "benign": 0.15}).action == "report"


def test_medical_multilabel_reports_every_finding_and_refers_in_uncertain_band() -> None:
    policy = build_policy({"type": "medical", "uncertain_band": [0.3, 0.7]})
    sure = policy.decide("findings", {"effusion": 0.92, "nodule": 0.1, "fracture": 0.02}, "multilabel")
    assert sure.action == "report" and sure.labels == ["effusion"]
    for text in ("effusion: 0.92 probability", "nodule: 0.10 probability", "fracture: 0.02 probability"):
        assert text in (sure.reply or "")
    unsure = policy.decide("findings", {"effusion": 0.92, "nodule": 0.45, "fracture": 0.02}, "multilabel")
    assert (unsure.action, unsure.escalated) == ("refer_to_clinician", True) and "nodule" in (unsure.reason or "")
    with pytest.raises(PolicyConfigError, match="uncertain_band"):
        build_policy({"type": "medical", "uncertain_band": [0.8, 0.2]})


# -- finance ---------------------------------------------------------------------------------------
FINANCE = {
    "type": "finance",
    "threshold": 0.5,
    "alerts": [
        {"label": "negative", "above": 0.8, "action": "alert", "message": "Strongly negative sentiment."},
        {"target": "return", "below": -0.05, "message": "Expected drop over 5%."},
    ],
}


def test_finance_alert_fires_above_threshold_only() -> None:
    policy = build_policy(FINANCE)
    fired = policy.decide("sentiment", {"negative": 0.85, "neutral": 0.1, "positive": 0.05})
    assert (fired.action, fired.reply, fired.escalated) == ("alert", "Strongly negative sentiment.", False)
    quiet = policy.decide("sentiment", {"negative": 0.75, "neutral": 0.2, "positive": 0.05})
    assert (quiet.action, quiet.reply, quiet.escalated) == ("none", None, False)


def test_finance_regression_rules_and_abstain() -> None:
    policy = build_policy(FINANCE)
    assert policy.decide("return", {"value": -0.08}, "regression").action == "alert"
    assert policy.decide("return", {"value": 0.02}, "regression").action == "none"
    assert policy.decide("volume", {"value": -0.08}, "regression").action == "none"  # rule is for "return"
    unsure = policy.decide("sentiment", {"negative": 0.3, "neutral": 0.35, "positive": 0.35})
    assert (unsure.action, unsure.escalated) == ("abstain", True) and "low confidence" in (unsure.reason or "")
    sure = policy.decide("sentiment", {"negative": 0.1, "neutral": 0.3, "positive": 0.6})
    assert (sure.action, sure.escalated) == ("none", False)


# -- specs -----------------------------------------------------------------------------------------
def test_bad_policy_specs_name_the_key() -> None:
    with pytest.raises(PolicyConfigError, match="unknown key 'threshhold'"):
        build_policy({"type": "default", "threshhold": 0.5})
    with pytest.raises(PolicyConfigError, match=r"unknown key 'intents\.BILLING\.replly'"):
        build_policy({"type": "customer_service", "intents": {"BILLING": {"replly": "hi"}}})
    with pytest.raises(PolicyConfigError, match=r"alerts\.0.*above"):
        build_policy({"type": "finance", "alerts": [{"label": "x", "message": "no bound"}]})
    with pytest.raises(PolicyConfigError, match="unknown policy type 'legal'"):
        build_policy({"type": "legal"})
    with pytest.raises(PolicyConfigError, match="needs a 'type'"):
        build_policy({"threshold": 0.5})
    with pytest.raises(PolicyConfigError, match="threshold"):
        build_policy({"type": "default", "threshold": 1.5})
