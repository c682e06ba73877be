"""Checkpoints and --resume under faults: exact mid-epoch resume, kills during a checkpoint write,
config changes between a checkpoint and its resume, fp16 GradScaler state, and a clean stop on request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import mmagent.training.checkpoint as ckpt
from mmagent.config import ExperimentConfig, config_from_dict
from mmagent.demo.toy import write_toy_table
from mmagent.training.splits import load_splits
from mmagent.training.trainer import build_model, train


class Killed(Exception):
    """Stands for a SIGKILL at that point (nothing after it runs)."""


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_table(tmp_path_factory.mktemp("toy"), 40, 0)


def _config(table: Path, image: bool = False, **train_opts: Any) -> ExperimentConfig:
    """36 training rows, batch 8: 5 optimizer steps per epoch. The image input has random crops/flips
    and the gated fusion random modality dropout: both must replay exactly after a resume. The thread
    count is pinned: left to the thread policy it follows the machine's load, and a sum over another
    count of threads differs in its last bits (these tests compare weights bit for bit)."""
    inputs: list[dict[str, Any]] = [{"column": "x", "modality": "numeric"}]
    if image:
        inputs.insert(0, {"column": "image", "modality": "image", "encoder": {"source": "timm", "name": "test_resnet", "pretrained": False, "image_size": 32}})
    return config_from_dict(
        {
            "data": {"train": str(table), "num_workers": 0},
            "inputs": inputs,
            "targets": [{"column": "label"}],
            "fusion": {"type": "gated", "hidden_dim": 16},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 1, "threads": 1, **train_opts},
        }
    )


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _assert_identical(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"


def _step_lines(run: Path) -> list[dict]:
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: e[k] for k in ("step", "epoch", "loss", "lr")} for e in lines if "loss" in e]


def _stop_at(step: int, exc: type[BaseException] | None = None):
    """A ``stop_requested`` hook: True (or raise ``exc``) after optimizer step ``step``."""
    calls = {"n": 0}

    def hook() -> bool:
        calls["n"] += 1
        if calls["n"] == step and exc is not None:
            raise exc
        return calls["n"] >= step

    return hook


def test_mid_epoch_checkpoint_resumes_bit_identical(toy: Path, tmp_path: Path) -> None:
    cfg = _config(toy, image=True, checkpoint_every_steps=3)
    train(cfg, tmp_path / "ref", progress=False)

    run = tmp_path / "run"
    # Checkpoint after step 6 (epoch 2, one batch in); killed after step 7 was logged.
    with pytest.raises(Killed):
        train(cfg, run, progress=False, stop_requested=_stop_at(7, Killed))
    progress = json.loads((run / "checkpoints" / "last" / "progress.json").read_text())
    assert (progress["epoch"], progress["batches_done"], progress["global_step"]) == (1, 1, 6)
    assert max(e["step"] for e in _step_lines(run)) == 7

    train(cfg, run, resume=True, progress=False)
    _assert_identical(tmp_path / "ref" / "checkpoints" / "last", run / "checkpoints" / "last")
    _assert_identical(tmp_path / "ref" / "model", run / "model")
    # Same losses and learning rates, each step logged once (lines after the checkpoint are dropped).
    assert _step_lines(run) == _step_lines(tmp_path / "ref")


def test_same_results_with_loader_workers(toy: Path, tmp_path: Path) -> None:
    """Augmentation is seeded per (seed, epoch, row): decoding in worker processes changes nothing."""
    train(_config(toy, image=True, epochs=1), tmp_path / "w0", progress=False)
    cfg = _config(toy, image=True, epochs=1)
    train(cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_workers": 2})}), tmp_path / "w2", progress=False)
    _assert_identical(tmp_path / "w0" / "model", tmp_path / "w2" / "model")


def test_kill_while_writing_first_checkpoint_resumes_from_scratch(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(toy)
    train(cfg, tmp_path / "ref", progress=False)

    run = tmp_path / "run"
    real_write = ckpt.write_json

    def killed_midway(path: Path, obj: Any) -> None:  # weights and state written, model.json not yet
        raise Killed

    monkeypatch.setattr(ckpt, "write_json", killed_midway)
    with pytest.raises(Killed):
        train(cfg, run, progress=False)
    monkeypatch.setattr(ckpt, "write_json", real_write)
    assert not (run / "checkpoints" / "last").exists() and (run / "checkpoints" / ".last.tmp").is_dir()
    assert (run / "model").is_dir() and (run / "metrics.jsonl").is_file(), "epoch 1's outputs were written before the kill"

    with pytest.raises(FileExistsError, match="--resume"):  # a fresh run points the way ...
        train(cfg, run, progress=False)
    train(cfg, run, resume=True, progress=False)  # ... and --resume takes the folder
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last"], "the half-written folder is cleaned up"
    _assert_identical(tmp_path / "ref" / "model", run / "model")
    assert _step_lines(run) == _step_lines(tmp_path / "ref"), "the killed run's log lines are not mixed in"


def test_kill_between_the_two_renames_recovers_previous_checkpoint(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(toy)
    model = build_model(cfg, load_splits(cfg).train)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    folder = tmp_path / "checkpoints" / "last"
    ckpt.save_checkpoint(folder, model, opt, sched, {"global_step": 1})

    real_replace = ckpt.os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(src).name == ".last.tmp":  # last -> .last.old is done; .last.tmp -> last never happens
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(Killed):
        ckpt.save_checkpoint(folder, model, opt, sched, {"global_step": 2})
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert not folder.exists()
    assert ckpt.tidy_checkpoints(folder), "the previous checkpoint is put back"
    assert json.loads((folder / "progress.json").read_text()) == {"global_step": 1}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["last"]

    ckpt.save_checkpoint(folder, model, opt, sched, {"global_step": 3})  # a normal swap leaves only last
    assert sorted(p.name for p in folder.parent.iterdir()) == ["last"]
    assert json.loads((folder / "progress.json").read_text()) == {"global_step": 3}


def test_gradscaler_state_survives_a_checkpoint(toy: Path, tmp_path: Path) -> None:
    cfg = _config(toy)
    model = build_model(cfg, load_splits(cfg).train)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=7)
    ckpt.save_checkpoint(tmp_path / "last", model, opt, sched, {"global_step": 1}, scaler)
    fresh = torch.amp.GradScaler("cpu")
    ckpt.load_checkpoint(tmp_path / "last", model, opt, sched, fresh)
    assert fresh.get_scale() == 256.0 and fresh.get_growth_interval() == 7


def test_resume_refuses_a_different_config_and_names_the_keys(toy: Path, tmp_path: Path) -> None:
    cfg = _config(toy, epochs=1)
    run = tmp_path / "run"
    train(cfg, run, progress=False)

    changed = _config(toy, epochs=1, lr=5e-3, head_lr=1e-2)
    changed = changed.model_copy(update={"fusion": changed.fusion.model_copy(update={"hidden_dim": 8})})
    with pytest.raises(ValueError) as err:
        train(changed, run, resume=True, progress=False)
    msg = str(err.value)
    for key in ("train.lr", "train.head_lr", "fusion.hidden_dim"):
        assert key in msg, msg
    assert "train.epochs" not in msg.split("Only these")[0]

    # More epochs is allowed: the run continues from the checkpoint, and the change is logged.
    result = train(_config(toy, epochs=2), run, resume=True, progress=False)
    assert result.global_step == 10
    events = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in s]
    events = [e for e in events if e["event"] != "speed"]  # each (re)start logs its speed settings
    assert events == [{"event": "resume", "step": 5, "changed": {"train.epochs": [1, 2]}}]


def test_stop_requested_ends_the_run_cleanly_and_resume_finishes_it(toy: Path, tmp_path: Path) -> None:
    cfg = _config(toy, epochs=3)
    run = tmp_path / "run"
    from mmagent.workflow import train as train_and_finish

    result = train_and_finish(cfg, run, progress=False, stop_requested=_stop_at(7))  # epoch 2, two batches in
    assert result.stopped_by_request and not result.stopped_early and result.global_step == 7
    assert (run / "model" / "model.safetensors").is_file() and (run / "metrics.json").is_file() and (run / "report.md").is_file()
    epochs = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if '"validation"' in s]
    assert [(e["epoch"], e["step"], e.get("partial", False)) for e in epochs] == [(1, 5, False), (2, 7, True)]
    assert result.best_epoch in (1, 2)
    progress = json.loads((run / "checkpoints" / "last" / "progress.json").read_text())
    assert (progress["epoch"], progress["batches_done"]) == (1, 2), "the checkpoint keeps the place in the epoch"

    # --resume finishes the interrupted epoch and the rest, with the uninterrupted run's weights.
    train(cfg, tmp_path / "ref", progress=False)
    assert train(cfg, run, resume=True, progress=False).global_step == 15
    _assert_identical(tmp_path / "ref" / "checkpoints" / "last", run / "checkpoints" / "last")
