"""Warm-start updates: ``mmagent update RUN --data NEW`` and ``train.init_from``.

A generated task: two numbers place each row in one of three clusters (a, b, c); a text column of
filler words rides along (a tiny BERT, so encoder assets travel from run to run). RUN is trained on
a and b only; the new table holds only c rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import TINY_BERT

CENTRES = {"a": (-3.0, 0.0), "b": (3.0, 0.0), "c": (0.0, 5.0)}
WORDS = ["please", "hello", "order", "thanks", "today", "account"]


def _rows(labels: str, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        x, y = np.array(CENTRES[label]) + rng.normal(0, 0.7, 2)
        out.append({"note": " ".join(rng.choice(WORDS, 3)), "x": round(float(x), 3), "y": round(float(y), 3), "label": label})
    return pd.DataFrame(out)


def _config(train: str, **train_keys: object) -> dict:
    return {
        "data": {"train": train, "validation_fraction": 0.2},
        "inputs": [
            {"column": "note", "modality": "text", "encoder": {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 8}},
            {"column": ["x", "y"], "modality": "numeric"},
        ],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 32},
        "train": {"epochs": 6, "batch_size": 16, "lr": 1e-3, "head_lr": 1e-2, "seed": 0, **train_keys},
    }


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    from mmagent.config import config_from_dict
    from mmagent.workflow import train

    folder = tmp_path_factory.mktemp("update")
    _rows("ab", 120, 0).to_csv(folder / "old.csv", index=False)
    _rows("c", 60, 1).to_csv(folder / "new.csv", index=False)
    _rows("abc", 90, 2).to_csv(folder / "test.csv", index=False)
    train(config_from_dict(_config(str(folder / "old.csv"))), folder / "run", progress=False)
    return folder


def _accuracy_by_group(run, table):
    from mmagent.agent import Agent

    agent = Agent.load(run)
    frame = pd.read_csv(table)
    predicted = [p["label"]["label"] for p in agent.predict(frame.drop(columns=["label"]).to_dict("records"))]
    right = np.array(predicted) == frame["label"].to_numpy()
    new = frame["label"].to_numpy() == "c"
    return float(right[new].mean()), float(right[~new].mean())


@pytest.mark.slow
def test_update_learns_the_new_label_keeps_the_old_ones_and_records_lineage(parent, tmp_path):
    from mmagent.cli import app
    from mmagent.model import MultimodalModel
    from mmagent.runs import sha256_file

    before_new, before_old = _accuracy_by_group(parent / "run", parent / "test.csv")
    assert before_new == 0.0 and before_old > 0.9  # RUN cannot know c
    out = tmp_path / "run2"
    args = ["update", str(parent / "run"), "--data", str(parent / "new.csv"), "--replay", "1.0", "-o", str(out), "--quiet", "--set", "train.epochs=8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["labels_added"] == {"label": ["c"]}

    after_new, after_old = _accuracy_by_group(out, parent / "test.csv")
    assert after_new >= 0.9 and after_old >= 0.9, (after_new, after_old)

    old, new = MultimodalModel.load(parent / "run" / "model"), MultimodalModel.load(out / "model")
    assert new.heads["label"].spec.labels == ["a", "b", "c"]  # the parent's order, c appended
    # the numeric scales are the parent's, although new + replayed rows have another mean
    assert torch.equal(old.encoders["x+y"].mean, new.encoders["x+y"].mean) and torch.equal(old.encoders["x+y"].std, new.encoders["x+y"].std)
    merged = pd.read_parquet(out / "data" / "train.parquet")
    assert abs(merged["y"].astype(float).mean() - old.encoders["x+y"].mean[1].item()) > 1.0
    # the tokenizer came along
    assert new.encoders["note"].preprocessor(["hello today"])["input_ids"].tolist() == old.encoders["note"].preprocessor(["hello today"])["input_ids"].tolist()

    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["parent"] == {"run": str((parent / "run").resolve()), "weights_sha256": sha256_file(parent / "run" / "model" / "model.safetensors")}
    assert lineage["data"]["new"]["sha256"] == sha256_file(parent / "new.csv") and lineage["data"]["new"]["rows"] == 60
    assert lineage["data"]["replay"]["rows"] == 60 and lineage["data"]["replay"]["source"] == str((parent / "old.csv").resolve())
    assert lineage["replay"] == 1.0 and lineage["labels_added"] == {"label": ["c"]}
    assert sorted(merged["label"].value_counts().to_dict().items()) == [("a", 30), ("b", 30), ("c", 60)]  # stratified replay
    assert json.loads((out / "config.json").read_text())["train"]["init_from"] == str((parent / "run").resolve())


@pytest.mark.slow
def test_without_replay_the_old_labels_are_forgotten(parent, tmp_path):
    """The reason for replay, measured: on c rows alone the old classes fade."""
    from mmagent.lifecycle.update import update

    update(parent / "run", parent / "new.csv", tmp_path / "run2", replay=0.0, overrides=["train.epochs=8"], progress=False)
    after_new, after_old = _accuracy_by_group(tmp_path / "run2", parent / "test.csv")
    assert after_new >= 0.9 and after_old < 0.5, (after_new, after_old)
    assert json.loads((tmp_path / "run2" / "lineage.json").read_text())["data"]["replay"] is None


def test_new_head_rows_start_from_the_old_ones():
    from mmagent.training.warm_start import grow_rows

    old = torch.randn(4, 6)
    grown = grow_rows(old, 2, torch.Generator().manual_seed(0))
    assert grown.shape == (6, 6) and torch.equal(grown[:4], old)
    assert torch.allclose(grown[4:], old.mean(0).expand(2, 6), atol=0.1) and not torch.equal(grown[4], grown[5])


def test_replay_is_stratified_seeded_and_keeps_every_class():
    from mmagent.data.tables import Table
    from mmagent.lifecycle.update import sample_replay, stratified_quotas

    assert stratified_quotas({"a": 90, "b": 9, "c": 1}, 10) == {"a": 8, "b": 1, "c": 1}  # c kept though 10 % of 1 rounds to 0
    assert stratified_quotas({"a": 50, "b": 50}, 7) in ({"a": 4, "b": 3}, {"a": 3, "b": 4})
    table = Table(pd.DataFrame({"label": ["a"] * 60 + ["b"] * 30 + ["c"] * 10, "v": range(100)}))
    first, again, other = (sample_replay(table, 20, "label", s) for s in (0, 0, 1))
    assert first.frame["label"].value_counts().to_dict() == {"a": 12, "b": 6, "c": 2}
    assert first.frame["v"].tolist() == again.frame["v"].tolist() != other.frame["v"].tolist()


def test_init_from_a_run_with_other_inputs_fails_up_front_naming_the_input(parent, tmp_path):
    from mmagent.cli import app

    raw = _config(str(parent / "new.csv"), init_from=str(parent / "run"))
    raw["inputs"][1]["column"] = ["x"]  # one number instead of two
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["train", str(cfg), "-o", str(tmp_path / "run2"), "--quiet"])
    assert result.exit_code == 2
    message = result.output.strip()
    assert message.startswith("error:") and "input 'x'" in message and "not an input of the parent run" in message, message
    assert not (tmp_path / "run2").exists()

    raw = _config(str(parent / "new.csv"), init_from=str(parent / "run"))
    raw["inputs"][0]["encoder"]["max_length"] = 16
    cfg.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["train", str(cfg), "-o", str(tmp_path / "run3"), "--quiet"])
    assert result.exit_code == 2 and "input 'note' differs" in result.output and "encoder.max_length" in result.output, result.output

    result = CliRunner().invoke(app, ["train", str(cfg), "-o", str(tmp_path / "run4"), "--set", f"train.init_from={tmp_path}", "--quiet"])
    assert result.exit_code == 2 and "not a finished run" in result.output, result.output
