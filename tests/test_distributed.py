"""Multi-process training: 2-process DDP on the CPU (gloo) through `accelerate launch`; the processes
see different shards of the data, logs and checkpoints are written once, --resume continues with
the right shards, and the saved model loads and predicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mmagent.training.distributed import launch_command, strip_num_processes

N_TRAIN, BATCH, WORLD = 96, 8, 2


def test_relaunch_command_drops_num_processes_and_uses_gloo_on_cpu() -> None:
    argv = ["train", "c.yaml", "--num-processes", "2", "-o", "run", "--num-processes=2", "--quiet"]
    assert strip_num_processes(argv) == ["train", "c.yaml", "-o", "run", "--quiet"]
    cmd, env = launch_command(2, argv, cpu=True)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("mmagent") - 1 :] == ["-m", "mmagent", "train", "c.yaml", "-o", "run", "--quiet"]
    assert "--num-processes" not in cmd and env["ACCELERATE_USE_CPU"] == "true"
    with pytest.raises(ValueError):
        launch_command(1, argv, cpu=True)


def _expected_shards(epoch: int, seed: int = 0) -> list[list[int]]:
    """EpochShuffleSampler's order for the epoch, cut into batches dealt round-robin to the ranks."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(N_TRAIN, generator=g).tolist()
    batches = [perm[i : i + BATCH] for i in range(0, N_TRAIN, BATCH)]
    return [[i for b in batches[r::WORLD] for i in b] for r in range(WORLD)]


def _shards(run: Path) -> list[dict]:
    return [json.loads((run / f"shards_rank{r}.json").read_text()) for r in range(WORLD)]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 120  # validation_fraction 0.2 -> 96 training rows = 12 batches of 8 = 6 per process
    x = rng.normal(size=(n, 2))
    y = np.where(x[:, 0] + 0.2 * rng.normal(size=n) > 0, "yes", "no")
    pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "label": y}).to_csv(tmp_path / "train.csv", index=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"train": "train.csv", "validation_fraction": 0.2},
                "inputs": [
                    {"column": ["x0", "x1"], "modality": "numeric", "name": "num", "encoder": {"source": "builtin", "name": "mlp", "config": {"width": 16}}}
                ],
                "targets": [{"column": "label", "type": "classification"}],
                "fusion": {"type": "concat", "hidden_dim": 16},
                "train": {"epochs": 2, "batch_size": BATCH, "lr": 3e-2, "head_lr": 3e-2, "seed": 0},
            }
        )
    )
    run = tmp_path / "run"
    env = {**os.environ, "MMAGENT_RECORD_SHARDS": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}

    # 1. `mmagent train --num-processes 2` re-launches itself through `accelerate launch` (1 epoch).
    first = subprocess.run(
        [sys.executable, "-m", "mmagent", "train", str(cfg), "-o", str(run), "--num-processes", "2", "--quiet", "--set", "train.epochs=1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert first.returncode == 0, first.stderr[-4000:]
    shards = _shards(run)
    assert [s["world_size"] for s in shards] == [WORLD, WORLD]
    seen = [s["epochs"]["1"] for s in shards]
    assert not set(seen[0]) & set(seen[1]), "the two processes must see different rows"
    assert sorted(seen[0] + seen[1]) == list(range(N_TRAIN))
    assert seen == _expected_shards(epoch=0)
    log = _log(run)
    steps = [e for e in log if "loss" in e]
    assert [e["step"] for e in steps] == list(range(1, N_TRAIN // BATCH // WORLD + 1)), "metrics written once, by the main process"
    assert sum("validation" in e for e in log) == 1
    # The learning rate at every optimizer step equals a 1-process run's with the same global batch
    # (Accelerate would step a prepared scheduler once per process: the schedule ran twice as fast).
    from mmagent.config import load_config
    from mmagent.training.trainer import train

    one = tmp_path / "one_process"
    train(load_config(cfg, ["train.epochs=1", f"train.batch_size={BATCH * WORLD}"]), one, progress=False)
    lr_one = [e["lr"] for e in _log(one) if "loss" in e]
    assert len(set(lr_one)) == len(steps) and lr_one[-1] == 0.0, "a cosine decay that reaches 0 at the last step"
    assert [e["lr"] for e in steps] == lr_one

    # 2. A hand-written `accelerate launch` (no ACCELERATE_USE_CPU: the trainer picks gloo on its own) resumes for epoch 2.
    env.pop("ACCELERATE_USE_CPU", None)
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--main_process_port",
            "0",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "mmagent",
            "train",
            str(cfg),
            "-o",
            str(run),
            "--resume",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resuming from" in second.stdout and second.stdout.count("resuming from") == 1
    shards = _shards(run)
    assert [s["epochs"]["2"] for s in shards] == _expected_shards(epoch=1), "epoch 2 after --resume gets epoch 2's order"
    log = _log(run)
    assert [e["step"] for e in log if "loss" in e] == list(range(1, 2 * N_TRAIN // BATCH // WORLD + 1))
    assert [e["epoch"] for e in log if "validation" in e] == [1, 2]
    progress = json.loads((run / "checkpoints" / "last" / "progress.json").read_text())
    assert progress["epoch"] == 2 and progress["global_step"] == 12

    # 3. The saved model loads and predicts.
    from mmagent.agent import Agent

    agent = Agent.load(run)
    table = pd.read_csv(tmp_path / "train.csv")
    preds = agent.predict(table[["x0", "x1"]])
    acc = float(np.mean([p["label"]["label"] == t for p, t in zip(preds, table["label"])]))
    assert acc > 0.75, acc
    assert json.loads((run / "metrics.json").read_text())["validation"]["label"]["n"] == n - N_TRAIN
