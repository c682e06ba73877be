"""Experiment tracking through Accelerate's trackers: ``train.log_with: tensorboard | mlflow``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

EPOCHS = 3


def _config(tmp_path, **train_keys: object):
    from mmagent.config import config_from_dict

    rng = np.random.default_rng(0)
    x = rng.normal(size=80)
    pd.DataFrame({"x": x.round(3), "label": np.where(x > 0, "up", "down")}).to_csv(tmp_path / "train.csv", index=False)
    raw = {
        "data": {"train": str(tmp_path / "train.csv"), "validation_fraction": 0.25},
        "inputs": [{"column": "x", "modality": "numeric"}],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 8},
        "train": {"epochs": EPOCHS, "batch_size": 16, "lr": 1e-2, "head_lr": 1e-2, "seed": 0, **train_keys},
    }
    return config_from_dict(raw)


def test_tensorboard_gets_the_loss_and_the_per_epoch_validation_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mmagent.workflow import train

    train(_config(tmp_path, log_with="tensorboard"), tmp_path / "runs" / "tb", progress=False)
    events = EventAccumulator(str(tmp_path / "runs" / "tb" / "tensorboard")).Reload()
    tags = events.Tags()["scalars"]
    assert "loss" in tags and "lr" in tags
    assert len(events.Scalars("validation/label/accuracy")) == EPOCHS


def test_mlflow_sqlite_store_has_the_run_params_metrics_and_report(tmp_path):
    from mlflow import MlflowClient

    from mmagent.workflow import train

    train(_config(tmp_path, log_with="mlflow", experiment="updates"), tmp_path / "runs" / "ml", progress=False)
    db = tmp_path / "runs" / "mlflow.db"  # the embedded default: beside the run folder
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("updates")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "ml"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["inputs.0.column"] == "x" and run.data.params["train.epochs"] == str(EPOCHS)
    history = client.get_metric_history(run.info.run_id, "validation/label/accuracy")
    assert len(history) == EPOCHS
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "config.json", "plots"} <= artifacts
    assert any(a.path.endswith("curves.png") for a in client.list_artifacts(run.info.run_id, "plots"))
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # artifacts beside the store, not in the working folder


def test_tracking_settings_are_checked_up_front(tmp_path):
    from mmagent.config import ConfigError

    with pytest.raises(ConfigError, match="train.tracking_uri is only used with train.log_with: mlflow"):
        _config(tmp_path, tracking_uri="sqlite:///x.db")
    with pytest.raises(ConfigError, match="train.log_with: Input should be 'none', 'tensorboard' or 'mlflow'"):
        _config(tmp_path, log_with="wandb")
