"""`mmagent tune`: a small Optuna study on a generated numeric task (each trial ~1 s): best-trial
selection, resume of an interrupted study, pruning, recovery of a killed worker's trial, the
cross-trial frozen-encoder cache, and clear errors for a bad `tune:` block."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from mmagent.config import ConfigError, config_from_dict
from mmagent.data.feature_store import FeatureCacheStore
from mmagent.search.space import default_space, parse_tune_spec
from mmagent.search.study import trial_errors
from mmagent.search.tune import tune
from tests.conftest import TINY_BERT

SPACE = {
    "train.head_lr": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True},
    "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    "fusion.type": {"type": "categorical", "choices": ["concat", "gated"]},
}
WORDS = ["red", "green"]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x0 tells the label (with noise); x1 is noise; the text repeats x0's sign half the time."""
    rng = np.random.default_rng(0)
    n = 240
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] + 0.6 * rng.normal(size=n) > 0).astype(int)
    text = [f"a {WORDS[yi] if rng.random() < 0.5 else WORDS[int(rng.integers(2))]} item" for yi in y]
    path = tmp_path_factory.mktemp("tune_data") / "train.csv"
    pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "text": text, "label": np.array(["a", "b"])[y]}).to_csv(path, index=False)
    return path


def _raw(table: Path, tune_block: dict | None = None, epochs: int = 4, text: bool = False) -> dict:
    inputs = [{"column": ["x0", "x1"], "modality": "numeric", "name": "num", "encoder": {"source": "builtin", "name": "mlp", "config": {"width": 16}}}]
    if text:  # a frozen (random, tiny) BERT: its outputs are what the cache shares
        inputs.insert(
            0,
            {
                "column": "text",
                "modality": "text",
                "encoder": {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 8, "freeze": "all"},
            },
        )
    return {
        "data": {"train": str(table), "validation_fraction": 0.25},
        "inputs": inputs,
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 16},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 3e-3, "head_lr": 1e-2, "seed": 0},
        "tune": tune_block if tune_block is not None else {"space": SPACE, "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1}},
    }


def _study(tune_dir: Path, name: str = "mmagent") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tune_dir / 'study.db'}")


@pytest.mark.filterwarnings("ignore:Fixed parameter")  # the forced trial's learning rates are out of range on purpose
def test_study_resumes_prunes_and_finalizes_the_best_trial(table: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(_raw(table))
    out = tmp_path / "tune"

    first = tune(cfg, out, trials=2)  # "interrupted" after two trials
    assert [t.number for t in _study(out).trials] == [0, 1]
    assert first.best_number in (0, 1)

    # Force a hopeless trial next: learning rates far below the space, so it is still at chance
    # after epoch 1 while the two finished trials were well above it -> the median pruner stops it.
    _study(out).enqueue_trial({"train.head_lr": 1e-6, "train.lr": 1e-6, "fusion.type": "concat"})

    result = tune(cfg, out, trials=4)  # resume: 2 more trials, numbered after the first two
    trials = _study(out).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0", "1", "2", "3"]

    bad = trials[2]
    assert bad.params["train.head_lr"] == 1e-6
    assert bad.state == TrialState.PRUNED
    assert bad.user_attrs["epochs_run"] < 4 and max(bad.intermediate_values) < 4

    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert result.best_value == max(t.value for t in completed)
    assert result.best_number in [t.number for t in completed]
    assert result.best_dir == out / "best"
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert metrics["validation"]["label"]["accuracy"] == pytest.approx(result.best_value)
    assert json.loads((out / "best" / "tune_trial.json").read_text())["trial"] == result.best_number
    best_cfg = json.loads((out / "best" / "config.json").read_text())
    assert best_cfg["train"]["head_lr"] == pytest.approx(result.best_params["train.head_lr"])

    from mmagent.agent import Agent

    pred = Agent.load(out / "best").predict({"x0": 2.0, "x1": 0.0})[0]["label"]
    assert pred["label"] in ("a", "b") and abs(sum(pred["probabilities"].values()) - 1) < 1e-5

    report = (out / "tune_report.md").read_text()
    assert "## Trials" in report and "| 2 | pruned |" in report and "## Parameter importances" in report
    assert "## Best parameters" in report and (out / "tune_plot.png").stat().st_size > 1000
    assert not (out / "trials" / "2" / "model").exists(), "models of non-best trials are not kept"

    again = tune(cfg, out, trials=4)  # nothing left to do: no new trial
    assert len(_study(out).trials) == 4 and again.best_number == result.best_number


def test_trial_left_running_by_a_killed_worker_is_retried(table: Path, tmp_path: Path) -> None:
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(_raw(table, epochs=1)))
    out = tmp_path / "tune"
    from mmagent.cli import app

    run = CliRunner().invoke(app, ["tune", str(cfg_path), "-o", str(out), "--trials", "1", "--quiet"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output[run.output.index("{") :])["trials"] == {"complete": 1}

    # A worker process died in the middle of trial 1: the storage still says RUNNING.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = _study(out)
    trial = study.ask()
    trial.suggest_float("train.head_lr", 3e-3, 3e-2, log=True)
    trial.suggest_float("train.lr", 1e-3, 1e-2, log=True)
    trial.suggest_categorical("fusion.type", ["concat", "gated"])
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead.pid})

    tune(config_from_dict(_raw(table, epochs=1)), out, trials=2)
    trials = _study(out).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "ended while the trial ran" in trial_errors(_study(out))[1]
    assert trials[2].params == trials[1].params  # re-queued with the same parameters
    assert trials[2].system_attrs.get("failed_trial") == 1

    # The best trial ran on another machine (its folder is not here): its parameters are trained
    # again for TUNE_DIR/best, to the same score (same seed).
    import shutil

    best = _study(out).best_trial
    shutil.rmtree(out / "best")
    shutil.rmtree(out / "trials" / str(best.number))
    result = tune(config_from_dict(_raw(table, epochs=1)), out, trials=2)
    assert result.best_number == best.number and len(_study(out).trials) == 3
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert metrics["validation"]["label"]["accuracy"] == pytest.approx(best.value)


def test_frozen_encoder_outputs_are_computed_once_across_trials(table: Path, tmp_path: Path) -> None:
    space = {"train.head_lr": SPACE["train.head_lr"], "fusion.type": SPACE["fusion.type"]}
    cfg = config_from_dict(_raw(table, {"space": space, "pruner": {"type": "none"}}, epochs=1, text=True))
    out = tmp_path / "tune"
    result = tune(cfg, out, trials=2)
    # one encoder pass over train and one over validation; the second trial reuses both
    assert result.cache == {"builds": 2, "hits": 2}
    assert len(list((out / "cache").glob("*.safetensors"))) == 2
    assert "2 encoder pass(es)" in (out / "tune_report.md").read_text()

    again = tune(cfg, out, trials=3)  # a new process finds them on disk
    assert again.cache == {"builds": 0, "hits": 2}


def test_cache_keys_follow_encoder_weights_and_rows(table: Path) -> None:
    from mmagent.training.splits import load_splits
    from mmagent.training.trainer import build_model

    cfg = config_from_dict(_raw(table, text=True))
    splits = load_splits(cfg)
    torch.manual_seed(0)
    a = build_model(cfg, splits.train)
    torch.manual_seed(0)
    b = build_model(cfg, splits.train)
    torch.manual_seed(1)
    c = build_model(cfg, splits.train)
    store = FeatureCacheStore()
    key = store.key(a, "text", splits.train, keep_tokens=False)
    assert key == store.key(b, "text", splits.train, keep_tokens=False)
    assert key != store.key(c, "text", splits.train, keep_tokens=False), "other random weights: not the same outputs"
    assert key != store.key(a, "text", splits.validation, keep_tokens=False)
    assert key != store.key(a, "text", splits.train, keep_tokens=True)

    cached = store.get(a, splits.validation, ["text"], False, 16, torch.device("cpu"))
    again = store.get(b, splits.validation, ["text"], False, 16, torch.device("cpu"))
    assert (store.builds, store.hits) == (1, 1)
    from mmagent.data.dataset import FeatureCache

    direct = FeatureCache()
    direct.build(a, splits.validation, ["text"], False, 7, torch.device("cpu"))
    torch.testing.assert_close(cached.pooled["text"], direct.pooled["text"], rtol=1e-4, atol=1e-5)
    assert again.pooled["text"] is cached.pooled["text"]


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ({"space": {"train.lr": {"type": "floaty", "low": 1e-5, "high": 1e-3}}}, "tune.space.train.lr: unknown type 'floaty'"),
        ({"space": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "logg": True}}}, "tune.space.train.lr.logg: unknown key"),
        ({"space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-5}}}, "tune.space.train.lr"),
        ({"space": {"train.lrr": {"type": "float", "low": 1e-5, "high": 1e-3}}}, "tune.space.train.lrr"),
        ({"space": {"fusion.type": {"type": "categorical", "choices": ["concat", "nope"]}}}, "tune.space.fusion.type = 'nope'"),
        ({"space": {"inputs.3.encoder.freeze": {"type": "categorical", "choices": ["all"]}}}, "tune.space.inputs.3.encoder.freeze"),
        ({"metric": "label/rmse"}, "tune.metric"),
        ({"sapce": {}}, "tune.sapce: unknown key"),
    ],
)
def test_bad_tune_block_names_the_key(table: Path, block: dict, needle: str) -> None:
    cfg = config_from_dict(_raw(table, block))
    with pytest.raises(ConfigError) as err:
        parse_tune_spec(cfg)
    assert needle in str(err.value), str(err.value)


def test_default_space_and_encoder_choices(table: Path) -> None:
    cfg = config_from_dict(_raw(table, {}, text=True))
    spec = parse_tune_spec(cfg)  # no space: the default one, validated like a declared one
    assert spec.space is not None and set(default_space(cfg)) == set(spec.space)
    assert {"train.head_lr", "train.weight_decay", "train.epochs", "fusion.type", "fusion.modality_dropout"} <= set(spec.space)
    assert "inputs.0.encoder.freeze" not in spec.space, "a randomly initialised encoder is not a freezing candidate"
    choices = [
        {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 8, "freeze": "all"},
        {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 8},
    ]
    spec = parse_tune_spec(
        config_from_dict(
            _raw(
                table,
                {"space": {"inputs.0.encoder": {"type": "categorical", "choices": choices}, "inputs.0.encoder.lora.r": {"type": "int", "low": 2, "high": 4}}},
                text=True,
            )
        )
    )
    assert set(spec.space or {}) == {"inputs.0.encoder", "inputs.0.encoder.lora.r"}
