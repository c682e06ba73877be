"""Building blocks of ``mmagent fit`` on the tiny toy task: one candidate stopped by a deadline
keeps a loadable best model; a budgeted search prunes a hopeless candidate, shares frozen-encoder
outputs across candidates and ends within its time limit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mmagent.data.feature_store import FeatureCacheStore
from mmagent.demo.toy import tiny_config, write_toy_table
from mmagent.search import objective
from mmagent.search.budget import search_within_budget
from mmagent.search.objective import run_candidate


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_table(tmp_path_factory.mktemp("toy"), 90, 0)


def _raw(train: Path, epochs: int) -> dict:
    """The toy config without the image input, its text and audio encoders frozen: their outputs
    are cached once, so epochs take milliseconds (the tone still tells the label)."""
    raw = tiny_config(train, epochs)
    raw["inputs"] = [i for i in raw["inputs"] if i["column"] != "image"]
    for inp in raw["inputs"][:2]:
        inp["encoder"]["freeze"] = "all"
    return raw


def _epoch_lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return [x for x in lines if "validation" in x]


def test_deadline_stops_a_candidate_mid_epoch_and_keeps_a_loadable_model(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "cand"

    # The clock jumps past the deadline once epoch 1 was validated and one step of epoch 2 was
    # logged: the stop must then come between steps, not only at an epoch's end.
    def clock() -> float:
        path = run_dir / "metrics.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
        epochs_seen = [i for i, x in enumerate(lines) if "validation" in x]
        return 1e9 if epochs_seen and len(lines) > epochs_seen[0] + 1 else 0.0

    monkeypatch.setattr(objective, "monotonic", clock)
    result = run_candidate(_raw(toy, epochs=6), run_dir, deadline=100.0)

    assert result.cut_short and not result.pruned
    assert result.planned_epochs == 6 and result.epochs_run == 2, "epoch 1, then the partial epoch 2 validated"
    epochs = _epoch_lines(run_dir)
    steps_epoch1, steps_epoch2 = epochs[0]["step"], epochs[1]["step"] - epochs[0]["step"]
    assert 1 <= steps_epoch2 < steps_epoch1, "stopped between steps of epoch 2"
    assert result.best_epoch in (1, 2) and 0.0 <= result.score <= 1.0
    assert not (run_dir / "checkpoints").exists()
    with pytest.raises(FileExistsError, match="not empty"):  # a candidate never trains over another's folder
        run_candidate(_raw(toy, epochs=1), run_dir)

    from mmagent.agent import Agent

    agent = Agent.load(run_dir)
    pred = agent.predict({"text": "the alpha case", "audio": str(toy.parent / "wav" / "0_0.wav"), "x": 0.1})[0]["label"]
    assert abs(sum(pred["probabilities"].values()) - 1) < 1e-5


SPACE = {
    "train.head_lr": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True},
    "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    "fusion.type": {"type": "categorical", "choices": ["concat", "gated"]},
    "fusion.modality_dropout": {"type": "float", "low": 0.0, "high": 0.2},
    "inputs.1.encoder.freeze": {"type": "categorical", "choices": ["all"]},
    "train.epochs": {"type": "int", "low": 4, "high": 4},
}

GOOD = {  # a candidate that learns the toy task in 4 epochs
    "train.head_lr": 3e-2,
    "train.lr": 1e-2,
    "fusion.type": "concat",
    "fusion.modality_dropout": 0.0,
    "inputs.1.encoder.freeze": "all",
    "train.epochs": 4,
}


@pytest.mark.filterwarnings("ignore:Fixed parameter")  # the hopeless candidate's learning rates are out of range on purpose
def test_budgeted_search_prunes_a_hopeless_candidate_and_shares_frozen_features(toy: Path, tmp_path: Path) -> None:
    good = GOOD
    hopeless = {**good, "train.head_lr": 1e-7, "train.lr": 1e-7}
    store = FeatureCacheStore()
    result = search_within_budget(
        _raw(toy, epochs=4),
        SPACE,
        tmp_path / "search",
        time_limit=600,
        n_trials=2,
        pruner={"type": "successive_halving", "min_resource": 1, "reduction_factor": 3},
        store=store,
        first_params=[good, hopeless],
    )

    states = [t.state.name for t in result.study.trials]
    assert states == ["COMPLETE", "PRUNED"], [(t.state.name, t.intermediate_values) for t in result.study.trials]
    bad = result.candidates[1]
    assert bad.pruned and bad.epochs_run < 4 and bad.params["train.head_lr"] == 1e-7
    assert result.best is result.candidates[0] and result.best.score > bad.score
    assert not result.best.cut_short and result.best.epochs_run == 4, "a far deadline does not cut a candidate"
    assert [c.trial_number for c in result.ranked()] == [0, 1]
    # one pass of the frozen encoders over train and one over validation; candidate 1 reused all four outputs
    assert (store.builds, store.hits) == (2, 4)


def test_budgeted_search_ends_within_its_time_limit(toy: Path, tmp_path: Path) -> None:
    space = {"train.head_lr": SPACE["train.head_lr"]}
    start = time.monotonic()
    result = search_within_budget(_raw(toy, epochs=500), space, tmp_path / "search", time_limit=8)
    elapsed = time.monotonic() - start
    assert elapsed < 8 + 15, f"took {elapsed:.1f}s for an 8s budget"  # slack: one step + validation of the cut candidate
    assert result.best is not None and result.best.cut_short and result.best.epochs_run < 500

    from mmagent.agent import Agent

    Agent.load(result.best.run_dir)


@pytest.mark.filterwarnings("ignore:Fixed parameter")
def test_a_moving_deadline_is_read_for_each_candidate_and_before_each_start(toy: Path, tmp_path: Path) -> None:
    """``deadline_for`` (fit's reserve that follows the leader) gives each candidate its deadline
    from the leader so far, and is re-read before each new candidate starts."""
    good = GOOD
    leaders: list[int | None] = []  # the leader each candidate was given its deadline under

    def deadline_for(params, leader) -> float:
        if params is None:  # new candidates may start until three have
            return time.monotonic() + (600 if len(leaders) < 3 else -1)
        leaders.append(None if leader is None else leader.trial_number)
        return time.monotonic() + (600 if leader is None else -1)  # with a leader, this candidate's deadline has passed

    result = search_within_budget(
        _raw(toy, epochs=4), SPACE, tmp_path / "search", time_limit=600, n_trials=5, first_params=[good] * 5, deadline_for=deadline_for, prune_queued=False
    )

    assert leaders == [None, 0, 0], "the first candidate had no leader, the later ones candidate 0"
    first, second = result.candidates[0], result.candidates[1]
    assert not first.cut_short and first.epochs_run == 4
    assert second.cut_short and second.epochs_run == 1, "its deadline had passed: cut after its first step"
    assert sorted(result.candidates) == [0, 1, 2], "no candidate starts once the search's deadline has passed"
