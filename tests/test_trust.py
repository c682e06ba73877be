"""Numbers a user can trust (issue 11): held-out calibration, the escalation threshold, the typed
agent block, scikit-learn's metric definitions, run-folder safety and weight checksums."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from mmagent import runs
from mmagent.agent import Agent, PolicyConfigError
from mmagent.agent.calibration import expected_calibration_error
from mmagent.agent.fitting import MEASURED_CROSS_FIT, MEASURED_ON_TEST, SAFE_TEMPERATURE, calibrate
from mmagent.agent.spec import AgentSpec, check_agent_labels
from mmagent.config import ConfigError, config_from_dict
from mmagent.data.dataset import encode_target
from mmagent.data.tables import Table
from mmagent.finishing.figures import reliability, to_png
from mmagent.finishing.report import _calibration_lines
from mmagent.finishing.report_trust import trust_summary
from mmagent.inference import Predictions
from mmagent.metrics import classification_metrics
from mmagent.model import MultimodalModel
from mmagent.specs import UNSEEN_INDEX, TargetSpec
from mmagent.training.trainer import build_model
from mmagent.workflow import train

LABELS = ["a", "b", "c"]


# -- helpers ------------------------------------------------------------------------------------
def _numeric_table(n: int = 60, seed: int = 0, labels: list[str] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = labels or LABELS
    y = rng.integers(len(labels), size=n)
    return pd.DataFrame({"x": y + rng.normal(0, 0.3, n), "z": rng.normal(size=n), "label": [labels[i] for i in y]})


def _raw(folder: Path, table: pd.DataFrame, **agent: object) -> dict:
    path = folder / "train.csv"
    table.to_csv(path, index=False)
    raw = {
        "data": {"train": str(path)},
        "inputs": [{"column": ["x", "z"], "modality": "numeric"}],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"hidden_dim": 16},
        "train": {"epochs": 1, "batch_size": 16, "seed": 0, "cpu": True},
    }
    if agent:
        raw["agent"] = agent
    return raw


def _saved_run(folder: Path, calibration: dict, agent: dict) -> Path:
    """A run folder with an untrained tiny numeric model: enough for the agent to load."""
    raw = _raw(folder, _numeric_table())
    config = config_from_dict(raw)
    run = folder / "run"
    build_model(config, Table(pd.read_csv(folder / "train.csv"))).save(run / runs.MODEL_DIR)
    (run / runs.CALIBRATION_FILE).write_text(json.dumps(calibration))
    (run / runs.CONFIG_FILE).write_text(json.dumps({"agent": agent}))
    return run


def _fake_model(kind: str = "classification") -> SimpleNamespace:
    return SimpleNamespace(heads={"y": SimpleNamespace(spec=TargetSpec(column="y", type=kind, labels=LABELS))})


def _preds(logits: np.ndarray, y: np.ndarray) -> Predictions:
    return Predictions(logits={"y": logits.astype(np.float32)}, outputs={}, targets={"y": y}, gates=None)


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits 2.5x too large, from a model right ~70% of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(3, size=n)
    logits = rng.normal(0, 1, (n, 3))
    right = rng.random(n) < 0.7
    logits[np.arange(n), np.where(right, y, (y + 1) % 3)] += 2.0
    return logits * 2.5, y


# -- calibration --------------------------------------------------------------------------------
def test_ece_after_is_measured_on_the_test_split_when_there_is_one() -> None:
    val, test = _overconfident(300, 0), _overconfident(200, 1)
    c = calibrate(_fake_model(), _preds(*val), _preds(*test))["y"]
    assert c["measured_on"] == MEASURED_ON_TEST and c["n_measured"] == 200
    logits, y = torch.from_numpy(test[0]).double(), torch.from_numpy(test[1])
    assert c["ece_after"] == pytest.approx(expected_calibration_error((logits / c["temperature"]).softmax(-1), y))
    assert c["ece_before"] == pytest.approx(expected_calibration_error(logits.softmax(-1), y))
    assert c["temperature"] > 1.5 and c["ece_after"] < c["ece_before"]


def test_without_a_test_split_ece_after_is_cross_fitted_not_in_sample() -> None:
    logits, y = _overconfident(120, 2)
    c = calibrate(_fake_model(), _preds(logits, y))["y"]
    assert c["measured_on"] == MEASURED_CROSS_FIT and c["n_measured"] == 120
    in_sample = expected_calibration_error((torch.from_numpy(logits).double() / c["temperature"]).softmax(-1), torch.from_numpy(y))
    assert c["ece_after"] != pytest.approx(in_sample, abs=1e-6)
    assert c["reliability"]["after"] and sum(b["count"] for b in c["reliability"]["after"]) == 120


def test_small_or_error_free_validation_keeps_temperature_one() -> None:
    logits, y = _overconfident(20, 3)
    small = calibrate(_fake_model(), _preds(logits, y))["y"]
    assert small["temperature"] == 1.0 and "fewer than 30" in small["note"]
    # separable: every answer right. Fitting would drive T to its lower bound (certainty).
    y = np.arange(90) % 3
    logits = np.eye(3)[y] * 3.0
    perfect = calibrate(_fake_model(), _preds(logits, y))["y"]
    assert perfect["temperature"] == 1.0 and "no error" in perfect["note"]
    assert "no error" in "\n".join(_calibration_lines({"y": perfect}))


def test_a_fitted_temperature_stays_in_the_safe_range() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(3, size=200)
    logits = np.eye(3)[y] * 0.01 + rng.normal(0, 0.001, (200, 3))  # right but far too unsure
    logits[:5] = np.eye(3)[(y[:5] + 1) % 3] * 0.01  # a few errors, so a temperature is fitted
    c = calibrate(_fake_model(), _preds(logits, y))["y"]
    assert SAFE_TEMPERATURE[0] <= c["temperature"] <= SAFE_TEMPERATURE[1]
    assert c["temperature"] == SAFE_TEMPERATURE[0] and "bound" in c["note"]


def test_reliability_diagram_is_drawn() -> None:
    val, test = _overconfident(100, 5), _overconfident(100, 6)
    calibration = calibrate(_fake_model(), _preds(*val), _preds(*test))
    assert to_png(reliability("y", calibration["y"]))[:8] == b"\x89PNG\r\n\x1a\n"


# -- escalation threshold -----------------------------------------------------------------------
UNREACHED = {
    "target": "label",
    "threshold": 0.61,
    "precision": 0.8,
    "coverage": 0.5,
    "accepted": 5,
    "total": 10,
    "target_precision": 0.99,
    "reached": False,
    "note": "no threshold reaches precision 0.99",
}


def test_an_explicit_policy_is_not_overridden_by_the_runs_threshold(tmp_path: Path) -> None:
    run = _saved_run(tmp_path, {runs.ESCALATION_KEY: {**UNREACHED, "reached": True}}, {"type": "default", "threshold": 0.5})
    assert Agent.load(run).policy.spec.threshold == pytest.approx(0.61)  # the run's choice by default
    assert Agent.load(run, policy={"type": "default", "threshold": 0.3}).policy.spec.threshold == pytest.approx(0.3)


def test_an_unreached_precision_target_warns_at_load_and_in_the_report(tmp_path: Path) -> None:
    run = _saved_run(tmp_path, {runs.ESCALATION_KEY: UNREACHED}, {"type": "default", "threshold": 0.5})
    with pytest.warns(UserWarning, match="not reached"):
        Agent.load(run)
    assert "The escalation target was not reached" in "\n".join(trust_summary({runs.ESCALATION_KEY: UNREACHED}, {}).warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Agent.load(run, policy={"type": "default"})  # the caller's own policy: nothing to warn about


def test_empty_requests_are_clear_errors(tmp_path: Path) -> None:
    agent = Agent.load(_saved_run(tmp_path, {}, {"type": "default"}))
    with pytest.raises(ValueError, match="no records"):
        agent.predict([])
    with pytest.raises(ValueError, match="none of the model's inputs"):
        agent.act({})
    assert agent.act({"x": 1.0, "z": 0.0}).label in LABELS


# -- the agent block ----------------------------------------------------------------------------
def test_a_typo_in_the_agent_block_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    raw = _raw(tmp_path, _numeric_table(), type="default", escalation={"target_precison": 0.9})
    with pytest.raises(ConfigError, match=r"agent\.escalation\.target_precison: unknown key"):
        config_from_dict(raw)
    with pytest.raises(ConfigError, match="agent.*unknown key 'treshold'"):
        config_from_dict(_raw(tmp_path, _numeric_table(), type="default", treshold=0.4))
    with pytest.raises(ConfigError, match="agent.target 'nope' is not a target"):
        config_from_dict(_raw(tmp_path, _numeric_table(), type="default", target="nope"))
    ok = config_from_dict(_raw(tmp_path, _numeric_table(), type="default", escalation={"target_precision": 0.9}))
    assert ok.agent.escalation.target_precision == 0.9 and ok.agent.policy["threshold"] == 0.5


def test_an_alert_rule_on_a_label_the_model_lacks_fails_before_training(tmp_path: Path) -> None:
    table = _numeric_table(labels=["down", "up"])
    rule = {"label": "negative", "above": 0.8}
    raw = _raw(tmp_path, table, type="finance", alerts=[{"label": "up", "above": 0.9}, rule])
    run = tmp_path / "run"
    with pytest.raises(PolicyConfigError, match=r"agent.alerts.1: label 'negative' is not a label of target 'label'; its labels: \['down', 'up'\]"):
        train(config_from_dict(raw), run, progress=False)
    assert not run.exists()  # nothing written, nothing to block a re-run
    check_agent_labels(AgentSpec(type="finance", alerts=[{"label": "up", "above": 0.9}]), [TargetSpec(column="label", labels=["down", "up"])])


# -- metrics ------------------------------------------------------------------------------------
def test_metrics_follow_sklearn_over_occurring_labels_and_count_unseen_labels_wrong() -> None:
    labels = ["a", "b", "c", "d"]
    spec = TargetSpec(column="y", labels=labels)
    truth = ["a", "a", "b", "zebra"]  # "zebra" never appeared in training
    y = np.array([int(encode_target(spec, v)) for v in truth])
    assert y[-1] == UNSEEN_INDEX
    pred = np.array([0, 0, 1, 1])
    m = classification_metrics(np.eye(4)[pred], y, labels)
    names = ["a", "a", "b", "b"]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(truth, names)) == 0.75
    assert m["macro_f1"] == pytest.approx(skm.f1_score(truth, names, average="macro"))
    assert m["unseen_labels"] == 1 and m["n"] == 4


# -- run folders --------------------------------------------------------------------------------
def test_a_folder_mmagent_did_not_create_is_never_written_into(tmp_path: Path) -> None:
    raw = _raw(tmp_path, _numeric_table())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("my own file")
    with pytest.raises(runs.RunFolderError, match="not an mmagent run folder"):
        train(config_from_dict(raw), mine, progress=False)
    assert (mine / "config.json").read_text() == "my own file" and len(list(mine.iterdir())) == 1


def test_a_finished_run_is_refused_even_without_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    runs.create_run_dir(run)
    (run / runs.MODEL_DIR).mkdir()
    with pytest.raises(FileExistsError, match="finished run"):
        runs.check_run_dir(run, resume=False)
    fresh = tmp_path / "fresh"
    runs.create_run_dir(fresh)  # a marked folder whose run died before its first checkpoint
    (fresh / runs.METRICS_LOG).write_text('{"step": 1, "loss": 1.0}\n')
    runs.check_run_dir(fresh, resume=False)
    runs.create_run_dir(fresh)
    assert not (fresh / runs.METRICS_LOG).exists()  # a new run's log never mixes with the old


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_weights_are_named_not_loaded(tmp_path: Path, damage: str) -> None:
    run = _saved_run(tmp_path, {}, {"type": "default"})
    folder = run / runs.MODEL_DIR
    weights = folder / "model.safetensors"
    MultimodalModel.load(folder)  # intact: loads
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[-3] ^= 0x01
    else:
        data = data[: len(data) // 2]
    weights.write_bytes(bytes(data))
    with pytest.raises(runs.RunFolderError, match=r"model\.safetensors.*(corrupt|SHA-256)"):
        MultimodalModel.load(folder)
    with pytest.raises(ValueError, match="model.safetensors"):
        Agent.load(run)


def test_mcc_is_zero_for_a_constant_predictor_and_follows_sklearn():
    """MCC does not flatter the majority class: a constant prediction scores 0 however skewed."""
    import numpy as np
    import sklearn.metrics as skm

    from mmagent.metrics import classification_metrics

    y = np.array([0] * 80 + [1] * 20)
    constant = np.tile([0.9, 0.1], (100, 1))
    m = classification_metrics(constant, y, ["up", "down"], detailed=False)
    assert m["accuracy"] == pytest.approx(0.8) and m["mcc"] == 0.0
    probs = np.random.default_rng(0).dirichlet([1, 1], 100)
    assert classification_metrics(probs, y, ["up", "down"])["mcc"] == pytest.approx(skm.matthews_corrcoef(y, probs.argmax(1)))
