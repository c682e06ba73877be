"""A run that does not beat the obvious baseline is never handed over as if it did (issue 21)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mmagent.cli import app
from mmagent.data.tables import Table
from mmagent.finishing.baseline import baseline_outputs, compare_with_baseline
from mmagent.specs import TargetSpec


def test_the_baseline_predicts_the_training_shares_or_mean() -> None:
    train = Table(pd.DataFrame({"y": ["a", "a", "a", "b"], "v": ["1", "2", "3", "6"]}))
    cls = TargetSpec(column="y", labels=["a", "b"])
    np.testing.assert_allclose(baseline_outputs(cls, train, 2), [[0.75, 0.25], [0.75, 0.25]])
    reg = TargetSpec(column="v", type="regression", mean=3.0, std=1.0)
    np.testing.assert_allclose(baseline_outputs(reg, train, 3), [3.0, 3.0, 3.0])
    y = np.array([0, 0, 1, 0])  # majority accuracy 0.75 on these rows
    assert compare_with_baseline(cls, "accuracy", 0.75, train, y)["beats"] is False  # a tie is not a win
    assert compare_with_baseline(cls, "accuracy", 0.8, train, y)["beats"] is True
    assert compare_with_baseline(reg, "rmse", 1.0, train, np.array([1.0, 5.0]))["beats"] is True  # lower is better: baseline rmse 2


def test_a_fit_that_learns_nothing_says_so_everywhere(tmp_path: Path) -> None:
    from mmagent.agent import Agent

    rng = np.random.default_rng(0)
    table = tmp_path / "noise.csv"
    pd.DataFrame({"x": rng.normal(size=300), "label": np.where(rng.uniform(size=300) < 0.85, "common", "rare")}).to_csv(table, index=False)
    result = CliRunner().invoke(app, ["fit", str(table), "--label", "label", "-o", str(tmp_path / "run"), "--time-budget", "20s", "--preset", "fast"])
    run = tmp_path / "run"
    check = json.loads((run / "calibration.json").read_text())["_baseline"]
    assert check["kind"] == "majority-class" and check["model"] <= check["baseline"] and check["beats"] is False
    assert result.exit_code == 3 and "does not beat the majority-class baseline" in result.output  # the exit status says it
    assert "majority-class baseline" in (run / "leaderboard.csv").read_text()
    assert "does not beat the majority-class baseline" in (run / "report.md").read_text()
    with pytest.warns(UserWarning, match="does not beat the majority-class baseline"):
        agent = Agent.load(run)
    decisions = agent.act_many([{"x": float(v)} for v in rng.normal(size=20)], explain=False)
    assert all(d.escalated and "does not beat the majority-class baseline" in d.reason for d in decisions)
    report = (run / "report.md").read_text()
    assert report.index("does not beat the majority-class baseline") < report.index("## Validation metrics")  # at the top
    evaluated = CliRunner().invoke(app, ["evaluate", str(run), str(table), "--device", "cpu"])
    assert evaluated.exit_code == 0 and json.loads(evaluated.output)["escalation"]["answered"] == 0  # the figures follow the verdict
    refused = CliRunner().invoke(app, ["promote", str(run), "--data", str(table), "--registry", str(tmp_path / "registry")])
    assert refused.exit_code != 0 and "not promoted" in refused.output and not (tmp_path / "registry").exists()


def test_a_run_that_learnt_something_is_not_flagged(tmp_path: Path) -> None:
    from mmagent.agent import Agent
    from mmagent.config import config_from_dict
    from mmagent.workflow import train
    from tests.conftest import numeric_table

    cfg = {
        "data": {"train": str(numeric_table(tmp_path / "t.csv", 600, 0))},
        "inputs": [{"column": "x", "modality": "numeric"}],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 16},
        "train": {"epochs": 4, "batch_size": 16, "lr": 1e-2, "head_lr": 1e-2, "seed": 0},
    }
    train(config_from_dict(cfg), tmp_path / "run", progress=False)
    check = json.loads((tmp_path / "run" / "calibration.json").read_text())["_baseline"]
    assert check["beats"] is True and check["model"] > check["baseline"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Agent.load(tmp_path / "run").blocked is None
