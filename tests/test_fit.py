"""``mmagent fit`` end to end on the tiny generated task: budget, leaderboard, a loadable agent, a
config that ``mmagent train`` reproduces, and an interrupted search that keeps its best candidate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmagent.demo.toy import tiny_config

pytestmark = pytest.mark.slow
BUDGET = 80  # seconds: enough for the ladder's first rungs on a busy 2-core machine


def _tiny_encoders(train: Path) -> dict[str, dict]:
    """modality -> the toy config's tiny random encoders (no zoo weights in tests)."""
    return {i["modality"]: i["encoder"] for i in tiny_config(train)["inputs"] if "encoder" in i}


@pytest.fixture(scope="module")
def fitted(mm_tables, tmp_path_factory):
    from mmagent.search.fit import fit

    out = tmp_path_factory.mktemp("fit") / "run"
    start = time.monotonic()
    result = fit(
        mm_tables["train"],
        "label",
        out,
        test=mm_tables["test"],
        time_budget=BUDGET,
        preset="balanced",
        encoders=_tiny_encoders(mm_tables["train"]),
        metric="macro_f1",  # not the default: candidates must be ranked on it
        ensemble=False,  # one model: its logged scores and its config are compared below
        progress=False,
    )
    return result, time.monotonic() - start


@pytest.fixture(scope="module")
def fitted_ensemble(mm_tables, tmp_path_factory):
    """A fit whose ensemble is kept whatever its validation score (the choice itself is tested in
    test_ensemble.py): what promotion makes of an ensemble."""
    from mmagent.search.ensembling import EnsembleChoice
    from mmagent.search.fit import fit

    out = tmp_path_factory.mktemp("fit-ensemble") / "run"
    start = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EnsembleChoice, "wins", property(lambda self: True))
        result = fit(mm_tables["train"], "label", out, test=mm_tables["test"], time_budget=BUDGET, encoders=_tiny_encoders(mm_tables["train"]), progress=False)
    return result, time.monotonic() - start


def test_a_kept_ensemble_becomes_the_run(fitted_ensemble):
    import pandas as pd

    from mmagent import Agent
    from mmagent.ensemble import EnsembleModel

    result, wall = fitted_ensemble
    assert wall <= 1.1 * BUDGET, f"fit took {wall:.0f} s for a {BUDGET} s budget"
    best = result.leaderboard.best()
    assert result.best == best.name == "ensemble" and best.strategy == "ensemble"
    members = best.params["members"]
    assert 2 <= len(members) <= 3 and members[0] == next(r.name for r in result.leaderboard.ranked() if r is not best)  # the best single candidate first
    agent = Agent.load(result.run_dir)
    assert isinstance(agent.model, EnsembleModel) and len(agent.model.members) == len(members)
    # the run's test metrics are the ensemble's: the agent's answers on the test table agree
    test = pd.read_csv(mm_tables_test(result))
    probs = agent.probabilities(test.drop(columns=["label"]).to_dict("records"), base_dir=mm_tables_test(result).parent)["label"]
    labels = agent.model.heads["label"].spec.labels
    accuracy = float((np.array(labels)[probs.argmax(1)] == test["label"].astype(str).to_numpy()).mean())
    assert json.loads((result.run_dir / "metrics.json").read_text())["test"]["label"]["accuracy"] == pytest.approx(accuracy)
    # config.yaml reproduces the first member, config.member-K.yaml the others
    first = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert first["train"]["epochs"] >= 1 and first["inputs"]
    assert sorted(p.name for p in result.run_dir.glob("config.member-*.yaml")) == [f"config.member-{i}.yaml" for i in range(1, len(members))]
    assert "average of" in (result.run_dir / "leaderboard.md").read_text()
    assert "an ensemble of 2 models" in (result.run_dir / "report.md").read_text() or "an ensemble of 3 models" in (result.run_dir / "report.md").read_text()


def mm_tables_test(result) -> Path:
    return Path(yaml.safe_load((result.run_dir / "config.yaml").read_text())["data"]["test"])


def test_fit_honours_the_budget_and_ranks_candidates(fitted):
    result, wall = fitted
    assert wall <= 1.1 * BUDGET, f"fit took {wall:.0f} s for a {BUDGET} s budget"
    rows = [r for r in result.leaderboard.rows if not r.status.startswith("skipped")]
    assert rows[0].strategy == "probe"  # the ladder climbs from the cheapest rung
    from mmagent.search.fit_config import PATIENCE

    # every candidate stops once PATIENCE epochs pass without a better validation score
    assert all(json.loads((r.run_dir / "config.json").read_text())["train"]["early_stopping_patience"] == PATIENCE for r in rows if r.run_dir)
    trained = [r.strategy for r in rows]
    if "partial" in trained[:2]:
        assert trained[:2] == ["probe", "partial"]  # the next rung up, before any searched candidate
    done = [r for r in rows if r.status in ("done", "cut by budget")]
    assert done
    best = result.leaderboard.best()
    assert best is not None and best.name == result.best
    assert best.score == max(r.score for r in done)
    assert result.leaderboard.metric == "label/macro_f1"
    logged = [json.loads(s) for s in (best.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert best.score == max(e["validation"]["label"]["macro_f1"] for e in logged if "validation" in e)
    board = (result.run_dir / "leaderboard.md").read_text()
    assert best.name in board and "*" in board and "what differs" in board


def test_fit_writes_a_loadable_agent_with_test_metrics(fitted):
    from mmagent import Agent

    result, _ = fitted
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert "test" in metrics and metrics["test"]["label"]["accuracy"] > 0.5  # the tone always tells the label
    agent = Agent.load(result.run_dir)
    decision = agent.act({"text": "the bravo case", "x": 0.1})
    assert decision.label in {"a", "b", "c"}
    assert "label: classification" in (result.run_dir / "schema.md").read_text()


def test_fit_report_html_lists_the_leaderboard(fitted):
    from tests.test_report_html import Page

    result, _ = fitted
    page = Page((result.run_dir / "report.html").read_text(encoding="utf-8"))
    board = page.table("leaderboard")
    assert [c for c, _ in page.column(board, "candidate")] == [r.name for r in result.leaderboard.rows]
    assert [c for c, _ in page.column(board, "status")] == [r.status for r in result.leaderboard.rows]
    chosen = [name for (name, _), (mark, _) in zip(page.column(board, "candidate"), page.column(board, "chosen")) if mark == "*"]
    assert chosen == [result.best]
    supports = [int(a["data-value"]) for _, a in page.column(page.table("per-class", "label"), "support")]
    assert sum(supports) == json.loads((result.run_dir / "metrics.json").read_text())["test"]["label"]["n"]


def test_config_yaml_reproduces_the_chosen_model(fitted, tmp_path):
    from mmagent.config import load_config
    from mmagent.workflow import train

    result, _ = fitted
    raw = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert [(t["column"], t["type"]) for t in raw["targets"]] == [("label", "classification")]
    assert raw["train"]["metric"] == "label/macro_f1"
    again = train(load_config(result.run_dir / "config.yaml"), tmp_path / "again", progress=False)
    chosen = json.loads((result.run_dir / "metrics.json").read_text())
    assert again.metrics["validation"]["label"]["accuracy"] == pytest.approx(chosen["validation"]["label"]["accuracy"], abs=1e-9)
    assert again.metrics["test"]["label"]["accuracy"] == pytest.approx(chosen["test"]["label"]["accuracy"], abs=1e-9)


def test_interrupted_fit_keeps_its_best_candidate(mm_tables, tmp_path, monkeypatch):
    from mmagent import Agent
    from mmagent.search import budget
    from mmagent.search.fit import fit

    real = budget.run_candidate
    calls = {"n": 0}

    def interrupt_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second candidate trains
        return real(*args, **kwargs)

    monkeypatch.setattr(budget, "run_candidate", interrupt_second)
    result = fit(mm_tables["train"], "label", tmp_path / "run", time_budget=BUDGET, preset="fast", encoders=_tiny_encoders(mm_tables["train"]), progress=False)
    assert result.interrupted and result.best.endswith("probe")
    assert Agent.load(result.run_dir).predict({"text": "the alpha case"})[0]["label"]["label"] in {"a", "b", "c"}


def test_fit_refuses_a_folder_it_did_not_create(mm_tables, tmp_path):
    from mmagent.search.fit import fit

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises((FileExistsError, ValueError), match="not an mmagent run folder|already holds"):
        fit(mm_tables["train"], "label", tmp_path / "mine", time_budget=30, encoders=_tiny_encoders(mm_tables["train"]), progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("20m", 1200), ("1h30m", 5400), ("45", 45)])
def test_time_budget_forms(text, seconds):
    from mmagent.search.fit import parse_duration

    assert parse_duration(text) == seconds


def test_bad_time_budget_is_named():
    from mmagent.search.fit import parse_duration

    with pytest.raises(ValueError, match="time budget '20 minutes'"):
        parse_duration("20 minutes")
