"""A saturated validation score (100 % of a small validation set) is tied between epochs and
between candidates: the lower validation log-loss decides, in training and in fit's leaderboard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from mmagent.config import config_from_dict
from mmagent.metrics import classification_metrics, is_better
from mmagent.search.leaderboard import Candidate, Leaderboard
from mmagent.training.trainer import train


def test_is_better_breaks_ties_on_log_loss():
    assert is_better(0.9, 0.5, None, None, True)
    assert is_better(0.95, 9.0, 0.9, 0.1, True)  # a higher score wins whatever its loss
    assert is_better(1.0, 0.2, 1.0, 0.3, True) and not is_better(1.0, 0.3, 1.0, 0.2, True)
    assert not is_better(1.0, None, 1.0, 0.3, True)  # no loss to compare: the first stays
    assert is_better(0.5, 0.1, 0.5, 0.2, False) and is_better(0.4, 0.9, 0.5, 0.2, False)


def test_log_loss_is_reported_and_rewards_confidence():
    y = np.array([0, 1, 1, 0])
    sure = classification_metrics(np.array([[0.99, 0.01], [0.02, 0.98], [0.01, 0.99], [0.97, 0.03]]), y, ["a", "b"])
    unsure = classification_metrics(np.array([[0.6, 0.4], [0.4, 0.6], [0.45, 0.55], [0.55, 0.45]]), y, ["a", "b"])
    assert sure["accuracy"] == unsure["accuracy"] == 1.0
    assert sure["log_loss"] < 0.05 < unsure["log_loss"]


def test_leaderboard_picks_the_lower_loss_among_tied_scores(tmp_path):
    rows = [
        Candidate(f"0{i}-probe", "probe", score=s, loss=loss, run_dir=tmp_path)
        for i, (s, loss) in enumerate([(0.99, 0.01), (1.0, 0.2), (1.0, 0.05), (1.0, math.nan)])
    ]
    board = Leaderboard(metric="digit/accuracy", rows=rows)
    assert board.best() is rows[2]
    assert "0.0500" in board.table() and "log loss" in board.table()


def test_training_keeps_the_most_confident_of_the_epochs_tied_at_100_percent(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(1, 3, 120), rng.uniform(-3, -1, 120)])
    frame = pd.DataFrame({"x": x, "label": np.where(x > 0, "up", "down")}).sample(frac=1.0, random_state=0)
    frame[:200].to_csv(tmp_path / "train.csv", index=False)
    frame[200:].to_csv(tmp_path / "validation.csv", index=False)
    config = config_from_dict(
        {
            "data": {"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "validation.csv")},
            "inputs": [{"column": "x", "modality": "numeric"}],
            "targets": [{"column": "label"}],
            "fusion": {"type": "concat", "hidden_dim": 8},
            "train": {"epochs": 8, "batch_size": 16, "lr": 1e-3, "seed": 0, "threads": 1, "early_stopping_patience": 8},
        }
    )
    result = train(config, tmp_path / "run", progress=False)
    epochs = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = {e["epoch"]: e["validation"]["label"] for e in epochs if "validation" in e}
    tied = [k for k, m in val.items() if m["accuracy"] == 1.0]
    assert len(tied) >= 2, "the task should saturate validation accuracy early"
    assert result.best_epoch == min(tied, key=lambda k: val[k]["log_loss"])
    assert result.best_epoch != tied[0], "the loss kept falling after the first perfect epoch"
