"""Training pipeline end to end: CLI train/evaluate/predict, resume after SIGKILL, reproducibility."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import TINY_BERT, mm_config

CLI = [sys.executable, "-m", "mmagent"]


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained_run(mm_tables: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("e2e")
    cfg = folder / "config.yaml"
    cfg.write_text(yaml.safe_dump(mm_config(mm_tables)))
    start = time.perf_counter()
    _run(["train", str(cfg), "-o", str(folder / "run"), "--quiet"])
    print(f"text+image+audio training took {time.perf_counter() - start:.1f} s")
    return folder / "run"


@pytest.mark.slow
def test_trains_and_clearly_beats_chance(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics) >= {"validation", "test", "ablation", "calibration"}
    test = metrics["test"]["label"]
    assert test["accuracy"] >= 0.7, test  # chance is 1/3
    assert set(test) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix", "auroc"}
    for name in (
        "report.md",
        "plots/curves.png",
        "plots/confusion_label.png",
        "model/model.safetensors",
        "model/model.json",
        "calibration.json",
        "metrics.jsonl",
    ):
        assert (trained_run / name).is_file(), name
    report = (trained_run / "report.md").read_text()
    assert "Modality ablation" in report and "without audio" in report


@pytest.mark.slow
def test_evaluate_drop_input_shows_needed_modality(trained_run: Path, mm_tables: dict[str, Path]) -> None:
    full = json.loads(_run(["evaluate", str(trained_run), str(mm_tables["test"])]).stdout)
    no_audio = json.loads(_run(["evaluate", str(trained_run), str(mm_tables["test"]), "--drop-input", "audio"]).stdout)
    no_text = json.loads(_run(["evaluate", str(trained_run), str(mm_tables["test"]), "--drop-input", "text"]).stdout)
    acc = full["label"]["accuracy"]
    assert no_audio["label"]["accuracy"] < acc - 0.2, "the tone decides the label: dropping audio must hurt"
    assert no_text["label"]["accuracy"] > no_audio["label"]["accuracy"]


@pytest.mark.slow
def test_predict_cli_table_and_record(trained_run: Path, mm_tables: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    _run(["predict", str(trained_run), str(mm_tables["test"]), "-o", str(out)])
    pred = pd.read_csv(out)
    truth = pd.read_csv(mm_tables["test"])
    assert len(pred) == len(truth)
    assert (pred["label:label"] == truth["label"]).mean() >= 0.7
    probs = pred[[c for c in pred.columns if c.startswith("label:p(")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    folder = mm_tables["folder"]
    record = json.dumps({"text": "the alpha case", "audio": str(folder / "wav" / "1_0.wav")})  # no image: missing modality
    single = json.loads(_run(["predict", str(trained_run), "--record", record]).stdout)
    assert single["label"]["label"] == truth.loc[0, "label"]


def _small_config(folder: Path, n: int = 240, **train: object) -> Path:
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue"]
    rows = []
    for i in range(n):
        y = int(rng.integers(3))
        rows.append({"text": f"{words[y]} item {i}", "x1": float(rng.normal() + y), "x2": float(rng.normal()), "label": words[y]})
    pd.DataFrame(rows).to_csv(folder / "train.csv", index=False)
    cfg = {
        "data": {"train": "train.csv"},
        "inputs": [
            {"column": "text", "modality": "text", "encoder": {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 16}},
            {"column": ["x1", "x2"], "modality": "numeric"},
        ],
        "targets": [{"column": "label"}],
        "fusion": {"type": "gated", "hidden_dim": 32},
        "train": {"epochs": 3, "batch_size": 8, "lr": 1e-3, "seed": 3, **train},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _progress(run: Path) -> dict | None:
    try:
        return json.loads((run / "checkpoints" / "last" / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path: Path) -> None:
    cfg = _small_config(tmp_path)
    ref = tmp_path / "uninterrupted"
    _run(["train", str(cfg), "-o", str(ref), "--quiet", "--set", "train.checkpoint_every_steps=5"])
    ref_progress = _progress(ref)
    assert ref_progress is not None

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        CLI + ["train", str(cfg), "-o", str(run), "--quiet", "--set", "train.checkpoint_every_steps=5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        p = _progress(run)
        if p and p["global_step"] >= 15 and p["batches_done"] > 0:  # mid-epoch checkpoint (epoch 1 of 3)
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _progress(run)
    assert killed_at is not None and killed_at["batches_done"] > 0, "the kill happened mid-epoch"
    assert not (run / "metrics.json").exists(), "training was really interrupted"

    _run(["train", str(cfg), "-o", str(run), "--quiet", "--resume", "--set", "train.checkpoint_every_steps=5"])
    final = _progress(run)
    assert final["global_step"] == ref_progress["global_step"], "same total number of optimizer steps"
    assert final["epoch"] == 3
    # Deterministic data order and restored RNG/optimizer state: same weights as the uninterrupted run.
    a, b = load_file(ref / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-5
    from mmagent.agent import Agent

    preds = Agent.load(run).predict({"text": "blue item", "x1": 2.0, "x2": 0.0})
    assert preds[0]["label"]["label"] in {"red", "green", "blue"}


def test_resume_refuses_without_checkpoint_and_refuses_to_overwrite(tmp_path: Path) -> None:
    cfg = _small_config(tmp_path, n=30, epochs=1)
    proc = subprocess.run(CLI + ["train", str(cfg), "-o", str(tmp_path / "none"), "--resume"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr
    _run(["train", str(cfg), "-o", str(tmp_path / "r"), "--quiet"])
    proc = subprocess.run(CLI + ["train", str(cfg), "-o", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already holds a training run" in proc.stderr


def test_same_seed_same_model(tmp_path: Path) -> None:
    from mmagent.config import load_config
    from mmagent.training.trainer import train

    cfg = load_config(_small_config(tmp_path, n=60, epochs=1))
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    a, b = load_file(tmp_path / "a" / "model" / "model.safetensors"), load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_frozen_encoder_cache_gives_same_result_as_no_cache(tmp_path: Path) -> None:
    from mmagent.config import load_config
    from mmagent.training.trainer import train

    path = _small_config(tmp_path, n=60, epochs=2)
    cached = load_config(path, ["inputs.0.encoder.freeze=all", "train.cache_frozen_encoders=true"])
    plain = load_config(path, ["inputs.0.encoder.freeze=all", "train.cache_frozen_encoders=false"])
    r1 = train(cached, tmp_path / "cached", progress=False)
    r2 = train(plain, tmp_path / "plain", progress=False)
    assert r1.best_score == pytest.approx(r2.best_score)
    a, b = load_file(tmp_path / "cached" / "model" / "model.safetensors"), load_file(tmp_path / "plain" / "model" / "model.safetensors")
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-4


def test_gradient_accumulation_bf16_and_separate_learning_rates(tmp_path: Path) -> None:
    from mmagent.config import load_config
    from mmagent.training.splits import load_splits
    from mmagent.training.trainer import build_model, param_groups, train

    cfg = load_config(_small_config(tmp_path, n=80, epochs=1), ["train.grad_accum=3", "train.mixed_precision=bf16", "train.lr=1e-5", "train.head_lr=1e-2"])
    result = train(cfg, tmp_path / "run", progress=False)
    micro = -(-72 // 8)  # 72 training rows after the 10 % validation split, batch 8
    assert result.global_step == -(-micro // 3), "one optimizer step per 3 micro-batches"
    model = build_model(cfg, load_splits(cfg).train)
    groups = param_groups(model, cfg)
    enc_ids = {id(p) for p in model.encoders.parameters()}
    for g in groups:
        is_enc = all(id(p) in enc_ids for p in g["params"])
        assert g["lr"] == (1e-5 if is_enc else 1e-2)
        assert g["weight_decay"] == 0.0 or all(p.ndim >= 2 for p in g["params"])


def test_worker_processes_decode_media_and_unseen_labels_are_reported(mm_tables: dict[str, Path], tmp_path: Path) -> None:
    from mmagent.config import config_from_dict
    from mmagent.data import read_table
    from mmagent.inference import make_loader
    from mmagent.inference.evaluate import evaluate
    from mmagent.model import MultimodalModel
    from mmagent.training.trainer import train

    raw = mm_config(mm_tables, epochs=1, max_steps=2)
    raw["data"]["num_workers"] = 2  # image/audio decoding in worker processes (preprocessors pickle)
    raw["inputs"] = raw["inputs"][1:]
    cfg = config_from_dict(raw)
    assert cfg.loader_workers == 2
    train(cfg, tmp_path / "run", progress=False)
    model = MultimodalModel.load(tmp_path / "run" / "model")
    frame = read_table(mm_tables["test"]).frame.head(10).copy()
    frame.loc[0, "label"] = "zebra"  # a label the training set never had
    from mmagent.data import Table

    table = Table(frame, "test.csv", mm_tables["folder"])
    metrics, _ = evaluate(model, make_loader(model, table, 4, num_workers=2))
    # the unseen label is reported and, since the model cannot predict it, counted as a wrong answer
    assert metrics["label"]["unseen_labels"] == 1 and metrics["label"]["n"] == 10


def test_a_last_batch_of_one_row_does_not_break_batchnorm(tmp_path):
    """17 training rows in batches of 16 leave a 1-row batch, which BatchNorm cannot train on."""
    from mmagent.config import config_from_dict
    from mmagent.demo.toy import tiny_config, write_toy_table
    from mmagent.training.trainer import train

    table = write_toy_table(tmp_path, 21, 0)
    raw = tiny_config(table)
    raw["inputs"] = [raw["inputs"][1]]  # the timm CNN alone: its last feature map is 1x1 at 32 px
    raw["data"]["validation_fraction"] = 0.19  # 4 rows held out, 17 train
    result = train(config_from_dict(raw), tmp_path / "run", progress=False)
    assert result.global_step == 1  # one full batch; the 1-row remainder was dropped, not trained on


def test_a_fit_checks_every_row_once_for_all_its_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Checking decodes every image and audio clip: a search of many candidates must not repeat it.
    from mmagent.data import validation
    from mmagent.search.fit import fit
    from mmagent.training import splits

    table = tmp_path / "t.csv"
    x = np.random.default_rng(0).normal(size=200)
    pd.DataFrame({"x": x, "label": np.where(x > 0, "up", "down")}).to_csv(table, index=False)
    calls: list[str] = []
    real = validation.validate_table
    monkeypatch.setattr(splits, "validate_table", lambda t, *a, **k: calls.append(t.source) or real(t, *a, **k))
    result = fit(table, "label", tmp_path / "run", time_budget=30, progress=False, ensemble=False)
    trained = [r for r in result.leaderboard.rows if r.run_dir is not None]
    assert len(trained) >= 2, "the test needs a search of several candidates"
    assert calls == [str(table)]  # the training table, checked once (the validation split is cut from it)
