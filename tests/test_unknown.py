"""Knowing the unknown: the conformal pieces (checked against MAPIE), the unknown-input detector,
the policies' hand-over, and a trained run end to end (agent, report, evaluate, server, ONNX)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from mmagent.agent.conformal import (
    conformal_quantile,
    hoeffding_bentkus_p_value,
    holm_rejections,
    prediction_set_quantile,
    prediction_sets,
    selective_threshold,
)
from mmagent.agent.policies import build_policy
from mmagent.agent.policy_base import Assessment
from mmagent.agent.spec import AgentSpec, EscalationSpec
from mmagent.agent.unknown import GaussianFeatures, UnknownDetector
from mmagent.agent.unknown_fit import Features, fit_unknown_detector


# -- conformal pieces -------------------------------------------------------------------------------
def test_p_values_and_holm_rejections_match_mapie() -> None:
    from mapie.risk_control._base_controller import ltt_procedure
    from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

    rng = np.random.default_rng(0)
    n = rng.integers(0, 400, 60)
    risk = np.sort(rng.uniform(0, 0.2, 60))  # easiest first, as fixed-sequence testing walks
    risk[n == 0] = 0.0
    for alpha in (0.02, 0.05, 0.1):
        ours = hoeffding_bentkus_p_value(risk, n, alpha)
        theirs = compute_hoeffding_bentkus_p_value(risk, np.maximum(n, 1), alpha, binary=True).ravel()
        np.testing.assert_allclose(ours[n > 0], theirs[n > 0], rtol=1e-9)
        assert (ours[n == 0] == 1.0).all()  # nothing observed: nothing rejected
        seen = np.maximum(n, 1)
        valid, _ = ltt_procedure(risk[None, :], np.array([[alpha]]), 0.1, seen[None, :], binary=True, fwer_method="bonferroni_holm")
        same_n = hoeffding_bentkus_p_value(risk, seen, alpha)
        assert list(holm_rejections(same_n, 0.1)) == sorted(valid[0])


def test_conformal_quantile_covers_new_exchangeable_scores() -> None:
    rng = np.random.default_rng(1)
    alpha, misses = 0.1, []
    for _ in range(400):
        scores = rng.exponential(size=51)
        misses.append(scores[-1] > conformal_quantile(scores[:-1], alpha))
    assert np.mean(misses) <= alpha + 0.03  # <= alpha in expectation; 400 draws leave ~0.015 of noise
    assert conformal_quantile(np.arange(5.0), 0.05) == float("inf")  # 5 rows cannot promise 5 %


def test_prediction_sets_reach_their_coverage_on_fresh_data() -> None:
    rng = np.random.default_rng(2)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        logits = rng.normal(size=(n, 5)) * 2
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return probs, np.array([rng.choice(5, p=p) for p in probs])  # labels drawn from the probabilities: calibrated

    cal, cal_y = draw(500)
    q = prediction_set_quantile(cal, cal_y, 0.1)
    test, test_y = draw(4000)
    sets = prediction_sets(test, q)
    assert sets[np.arange(len(test_y)), test_y].mean() >= 0.88
    assert 1.0 < sets.sum(1).mean() < 5.0  # uncertain rows get several labels, not all of them


def test_the_error_promise_holds_on_fresh_data() -> None:
    rng = np.random.default_rng(3)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        confidence = rng.beta(8, 1, n)  # a good model: most answers confident
        return confidence, rng.uniform(size=n) < confidence  # right with probability = confidence

    broken = 0
    for _ in range(40):
        choice = selective_threshold(*draw(3000), max_error=0.05, delta=0.1)
        assert choice.reached and 0.5 <= choice.threshold < 1.0
        conf, correct = draw(20000)
        broken += (1 - correct[conf >= choice.threshold].mean()) > 0.05
    assert broken <= 8  # the promise may fail with probability <= 0.1: 4 of 40 expected at most
    few = selective_threshold(np.full(20, 0.99), np.ones(20, bool), max_error=0.01)
    assert not few.reached and few.coverage == 0.0 and "every input is escalated" in few.guarantee


# -- the detector -----------------------------------------------------------------------------------
def _clusters(n: int, classes: list[int], rng: np.random.Generator, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    centres = np.random.default_rng(42).normal(scale=4.0, size=(10, dim))
    y = rng.choice(classes, n)
    return centres[y] + rng.normal(size=(n, dim)), y


def test_mahalanobis_distance_is_the_textbook_one_and_grows_away_from_the_data() -> None:
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(4)
    x, y = _clusters(600, [0, 1, 2], rng)
    g = GaussianFeatures.fit(x, y)
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    cov = LedoitWolf(assume_centered=True).fit(x - means[y]).covariance_
    inv = np.linalg.inv(cov)
    expected = min(float((x[0] - m) @ inv @ (x[0] - m)) for m in means)
    assert g.distance(x[:1])[0] == pytest.approx(expected, rel=1e-3)
    assert g.distance(x[:1] + 30.0)[0] > 10 * g.distance(x[:1])[0]


def test_the_detector_flags_an_unseen_class_without_ever_seeing_one() -> None:
    rng = np.random.default_rng(5)
    known = [0, 1, 2, 3, 4, 5]
    train_x, train_y = _clusters(1200, known, rng)
    val_x, val_y = _clusters(400, known, rng)
    logits = np.zeros((len(val_y), 6))  # uninformative probabilities: the feature-space score must win
    det = fit_unknown_detector("y", Features(train_x, train_y), Features(val_x, val_y, logits), false_alarm=0.05)
    assert det.kind == "mahalanobis" and det.info["folds"] == 4 and det.info["fold_auroc"]["mahalanobis"] > 0.95
    new_known, _ = _clusters(2000, known, rng)
    unseen, _ = _clusters(2000, [7, 8], rng)
    assert det.is_unknown(det.score(new_known, None)).mean() <= 0.08  # false alarms near the 5 % asked
    assert det.is_unknown(det.score(unseen, None)).mean() >= 0.95


def test_the_detector_round_trips_through_the_run_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    x, y = _clusters(300, [0, 1, 2], rng)
    det = fit_unknown_detector("y", Features(x, y), Features(x[:100], y[:100], rng.normal(size=(100, 3))))
    det.save(tmp_path)
    back = UnknownDetector.load(tmp_path)
    assert back is not None and back.kind == det.kind and back.threshold == pytest.approx(det.threshold)
    logits = rng.normal(size=(5, 3))
    np.testing.assert_allclose(back.score(x[:5], logits), det.score(x[:5], logits), rtol=1e-6)  # whichever score was chosen
    (tmp_path / "unknown.json").write_text(json.dumps({"kind": "magic", "target": "y", "threshold": 1}))
    with pytest.raises(ValueError, match="kind must be one of"):
        UnknownDetector.load(tmp_path)


# -- policies and the agent block -------------------------------------------------------------------
PROBS = {"billing": 0.55, "card": 0.4, "other": 0.05}


@pytest.mark.parametrize(
    ("policy", "action", "reply_part"),
    [
        ({"type": "default"}, "escalate", None),
        ({"type": "customer_service", "handoff_reply": "A person will help."}, "handoff", "A person will help."),
        ({"type": "medical", "refer_below": 0.1}, "refer_to_clinician", "not graded"),
        ({"type": "finance", "threshold": 0.1}, "flag", None),
    ],
)
def test_every_policy_hands_over_an_unknown_input_in_its_own_way(policy: dict, action: str, reply_part: str | None) -> None:
    known = build_policy(policy).decide("y", PROBS, assessment=Assessment(unknown_score=1.0, unknown_threshold=2.0, prediction_set=["billing"]))
    assert not known.escalated and known.prediction_set == ["billing"] and known.unknown_score == 1.0
    d = build_policy(policy).decide("y", PROBS, assessment=Assessment(unknown_score=9.0, unknown_threshold=2.0, unknown=True))
    assert d.unknown and d.escalated and d.action == action and d.reason.startswith("outside what I was trained on")
    if reply_part:
        assert reply_part in d.reply


def test_a_prediction_set_of_two_labels_is_escalated_only_under_an_error_promise() -> None:
    policy = build_policy({"type": "customer_service"})
    two = Assessment(prediction_set=["billing", "card"], set_level=0.05, set_escalates=True)
    d = policy.decide("y", PROBS, assessment=two)
    assert d.escalated and d.action == "handoff" and d.reason.startswith("could be billing or card (prediction set at 95%)")
    shown_only = Assessment(prediction_set=["billing", "card"], set_level=0.1, set_escalates=False)
    assert not policy.decide("y", PROBS, assessment=shown_only).escalated
    # An empty set (a loose level above the model's error rate) says nothing against the top label:
    # handing it over would make a looser promise escalate more.
    assert not policy.decide("y", PROBS, assessment=Assessment(prediction_set=[], set_level=0.5, set_escalates=True)).escalated


def test_the_escalation_block_takes_one_promise_and_validates_it() -> None:
    assert EscalationSpec(target_precision=0.95).error_level == pytest.approx(0.05)
    assert EscalationSpec(max_error=0.02).error_level == 0.02 and EscalationSpec(target_coverage=0.8).error_level is None
    with pytest.raises(ValueError, match="exactly one"):
        EscalationSpec(max_error=0.02, target_coverage=0.8)
    with pytest.raises(ValueError, match="false_alarm"):
        AgentSpec.model_validate({"type": "default", "unknown": {"false_alarm": 0.9}})


# -- a trained run, end to end ------------------------------------------------------------------------
COLUMNS = ["a", "b", "c"]


def cluster_table(path: Path, n: int, seed: int) -> Path:
    """Three classes, each a Gaussian cluster in three numeric columns (some overlap)."""
    import pandas as pd

    x, y = _clusters(n, [0, 1, 2], np.random.default_rng(seed), dim=3)
    frame = pd.DataFrame(x / 2.0, columns=COLUMNS)
    frame["label"] = np.array(["billing", "card", "other"])[y]
    frame.to_csv(path, index=False)
    return path


def far(value: float) -> dict[str, float]:
    return {"a": value, "b": -value, "c": value}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmagent.config import config_from_dict
    from mmagent.workflow import train

    folder = tmp_path_factory.mktemp("unknown-run")
    cfg = {
        "data": {"train": str(cluster_table(folder / "train.csv", 1500, 0)), "test": str(cluster_table(folder / "test.csv", 400, 1))},
        "inputs": [{"column": COLUMNS, "modality": "numeric"}],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 16},
        "train": {"epochs": 6, "batch_size": 32, "lr": 1e-2, "head_lr": 1e-2, "seed": 0},
        "agent": {"type": "customer_service", "escalation": {"max_error": 0.1}},
    }
    train(config_from_dict(cfg), folder / "run", progress=False)
    return folder / "run"


def test_a_run_keeps_its_promise_on_test_and_its_report_says_so(trained_run: Path) -> None:
    esc = json.loads((trained_run / "calibration.json").read_text())["_escalation_threshold"]
    assert esc["reached"] and esc["max_error"] == 0.1 and "error among answered inputs is <= 0.1" in esc["guarantee"]
    held = esc["held_out"]
    assert held["split"] == "test" and held["coverage"] > 0.5
    assert held["error_among_answered"] <= 0.1 + 0.03  # the promise, within the sampling slack of ~300 rows
    report = (trained_run / "report.md").read_text()
    assert "## Unknown inputs and escalation" in report and "Unknown-input score: **" in report
    assert "upper bound for requests of a kind it never saw" in report  # the folds' AUROC is not sold as the new-intent one
    assert (trained_run / "plots" / "risk_coverage.png").is_file() and (trained_run / "plots" / "unknown_scores.png").is_file()
    assert 'id="unknown"' in (trained_run / "report.html").read_text()


def test_the_agent_escalates_inputs_far_outside_the_training_data(trained_run: Path) -> None:
    from mmagent.agent import Agent

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a reached promise loads without a warning
        agent = Agent.load(trained_run)
    outside = agent.act_many([far(40.0), far(-60.0)], explain=False)
    assert all(d.unknown and d.escalated and d.action == "handoff" and "outside what I was trained on" in d.reason for d in outside)
    rows, _ = _clusters(200, [0, 1, 2], np.random.default_rng(7), dim=3)
    typical = agent.act_many([dict(zip(COLUMNS, r / 2.0)) for r in rows], explain=False)
    assert np.mean([d.unknown for d in typical]) <= 0.15  # false alarms near the 5 % asked for
    assert all(d.prediction_set is not None and d.unknown_score is not None for d in typical)
    answered = [d for d in typical if not d.escalated]
    assert answered and all(d.prediction_set in ([], [d.label]) for d in answered)  # a set of two or more labels is never answered
    pred = agent.predict(far(40.0))[0]["label"]
    assert pred["unknown"] is True and pred["unknown_score"] > agent.unknown.threshold


def test_evaluate_reports_the_agents_rules_on_a_new_table(trained_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mmagent.cli import app

    table = cluster_table(tmp_path / "new.csv", 300, 9)
    result = CliRunner().invoke(app, ["evaluate", str(trained_run), str(table), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    esc = json.loads(result.output)["escalation"]
    assert esc["rows"] == 300 and 0 < esc["coverage"] <= 1 and esc["set_coverage"] > 0.8


def test_the_server_shows_and_counts_unknown_inputs(trained_run: Path) -> None:
    from fastapi.testclient import TestClient

    from mmagent.serving.app import create_app

    with TestClient(create_app(trained_run)) as client:
        for _ in range(600):  # the model loads in the background
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        act = client.post("/v1/act", json={"records": [far(0.1), far(90.0)]})
        assert act.status_code == 200, act.text
        near, outside = act.json()["decisions"]
        assert outside["unknown"] is True and outside["escalated"] is True and near["unknown_score"] < outside["unknown_score"]
        pred = client.post("/v1/predict", json={"records": [far(90.0)]}).json()["predictions"][0]["label"]
        assert pred["unknown"] is True and isinstance(pred["prediction_set"], list)
        metrics = client.get("/metrics").text
        assert 'mmagent_outcomes_total{kind="act",outcome="unknown"} 1.0' in metrics
        assert 'mmagent_outcomes_total{kind="predict",outcome="unknown"} 1.0' in metrics


def test_the_onnx_backend_gives_the_same_unknown_scores(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    from mmagent.agent import Agent

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    records = [far(v) for v in (-3.0, 0.0, 0.7, 50.0)]
    torch_scores = [d.unknown_score for d in Agent.load(run).act_many(records, explain=False)]
    onnx_scores = [d.unknown_score for d in Agent.load(run, backend="onnx").act_many(records, explain=False)]
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-3, atol=1e-3)


def test_a_rising_share_of_unknown_inputs_calls_for_retraining(trained_run: Path) -> None:
    from mmagent.agent import Agent
    from mmagent.lifecycle import drift
    from mmagent.lifecycle.profile import read_profile

    profile = read_profile(trained_run)
    assert profile["predictions"]["unknown_share"] <= 0.15  # validation: about the 5 % false alarms asked for
    agent = Agent.load(trained_run)
    rows, _ = _clusters(60, [0, 1, 2], np.random.default_rng(8), dim=3)
    same = [d.model_dump() for d in agent.act_many([dict(zip(COLUMNS, r / 2.0)) for r in rows], explain=False)]
    shifted = same[:30] + [d.model_dump() for d in agent.act_many([far(30.0 + i) for i in range(30)], explain=False)]
    calm = drift.score(profile, drift.observe.summarize_results(same, agent.target))
    assert not any("unlike the training data" in r for r in calm["reasons"])
    alarm = drift.score(profile, drift.observe.summarize_results(shifted, agent.target))
    assert alarm["retrain"] and any("of inputs unlike the training data" in r for r in alarm["reasons"]), alarm["reasons"]


def test_an_ensemble_is_scored_on_its_first_members_fused_vector_and_never_by_energy() -> None:
    import torch

    from mmagent.ensemble import EnsembleModel
    from mmagent.inference import TorchRunner
    from tests.test_ensemble import _batch, _model

    members = [_model(0), _model(1)]
    inputs, present = _batch(members[0])
    with torch.no_grad():
        out = TorchRunner(EnsembleModel(members).eval())({"inputs": inputs}, present)
        first = members[0](inputs, present)
    torch.testing.assert_close(out.fused, first.fused)
    # Its logits are log-probabilities: their logsumexp is 0 for every input, so energy says nothing.
    np.testing.assert_allclose(torch.logsumexp(out.logits["y"], -1).numpy(), 0.0, atol=1e-4)
    rng = np.random.default_rng(9)
    x, y = _clusters(600, [0, 1, 2, 3, 4, 5], rng)
    det = fit_unknown_detector("y", Features(x, y), Features(x[:200], y[:200], rng.normal(size=(200, 6))), allow_energy=False)
    assert set(det.info["fold_auroc"]) == {"mahalanobis", "msp"}


def test_a_disabled_unknown_score_still_reports_its_verdict_but_hands_nothing_over() -> None:
    shown = Assessment(unknown_score=9.0, unknown_threshold=2.0, unknown=True, unknown_escalates=False, prediction_set=["billing"])
    d = build_policy({"type": "customer_service"}).decide("y", PROBS, assessment=shown)
    assert d.unknown and not d.escalated and d.action == "reply"


def test_agent_unknown_enabled_false_shows_the_score_and_hands_nothing_over(tmp_path: Path) -> None:
    from mmagent.agent import Agent
    from mmagent.config import config_from_dict
    from mmagent.workflow import train

    cfg = {
        "data": {"train": str(cluster_table(tmp_path / "train.csv", 600, 0))},
        "inputs": [{"column": COLUMNS, "modality": "numeric"}],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 16},
        "train": {"epochs": 3, "batch_size": 32, "lr": 1e-2, "head_lr": 1e-2, "seed": 0},
        "agent": {"type": "default", "unknown": {"enabled": False}},
    }
    train(config_from_dict(cfg), tmp_path / "run", progress=False)
    d = Agent.load(tmp_path / "run").act(far(60.0), explain=False)
    assert d.unknown and d.unknown_score is not None and not d.escalated


def test_a_request_without_one_of_its_inputs_is_not_unknown(tmp_path: Path) -> None:
    # The model is trained with modality dropout: a request with one input missing is one it answers,
    # and the score is fitted and calibrated on such rows too (not only on complete ones).
    from mmagent.agent import Agent
    from mmagent.config import config_from_dict
    from mmagent.workflow import train

    cfg = {
        "data": {"train": str(cluster_table(tmp_path / "train.csv", 900, 0))},
        "inputs": [{"column": ["a", "b"], "modality": "numeric"}, {"column": "c", "modality": "numeric"}],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 16, "modality_dropout": 0.3},
        "train": {"epochs": 6, "batch_size": 32, "lr": 1e-2, "head_lr": 1e-2, "seed": 0},
        "agent": {"type": "default"},
    }
    train(config_from_dict(cfg), tmp_path / "run", progress=False)
    agent = Agent.load(tmp_path / "run")
    rows, _ = _clusters(300, [0, 1, 2], np.random.default_rng(11), dim=3)
    partial = agent.act_many([{"a": r[0] / 2.0, "b": r[1] / 2.0} for r in rows], explain=False)
    assert np.mean([d.unknown for d in partial]) <= 0.15  # like complete requests: near the 5 % asked
    assert agent.act({"a": 60.0, "b": -60.0, "c": 60.0}, explain=False).unknown  # a complete request far away still is


def test_a_given_escalation_block_replaces_the_recipes_whole() -> None:
    from mmagent.tasks.recipes import apply_recipe

    raw = apply_recipe({"recipe": "finance", "agent": {"escalation": {"target_coverage": 0.8}}, "inputs": [], "targets": []})
    assert raw["agent"]["escalation"] == {"target_coverage": 0.8} and raw["agent"]["type"] == "finance"
    assert AgentSpec.model_validate(raw["agent"]).escalation.target_coverage == 0.8
