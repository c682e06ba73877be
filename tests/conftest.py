"""Shared fixtures: a generated multimodal table (PNG images + WAV files + text + numbers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("MMAGENT_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
# The generated task lives in the package so benchmarks and smoke runs share it.
from mmagent.demo.toy import TINY_BERT  # noqa: E402,F401
from mmagent.demo.toy import write_toy_table as write_multimodal_table  # noqa: E402,F401


@pytest.fixture(scope="module")
def isolated_zoo_cache(tmp_path_factory: pytest.TempPathFactory):
    """Converted zoo weights go to a fresh cache folder, so a test sees a cold cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MMAGENT_CACHE", str(tmp_path_factory.mktemp("mmagent-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def mm_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mm")
    return {
        "train": write_multimodal_table(folder, 150, 0, "train.csv"),
        "test": write_multimodal_table(folder, 60, 1, "test.csv"),
        "folder": folder,
    }


def mm_config(tables: dict[str, Path], **train: object) -> dict:
    return {
        "data": {"train": str(tables["train"]), "test": str(tables["test"])},
        "inputs": [
            {"column": "text", "modality": "text", "encoder": {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 32}},
            {"column": "image", "modality": "image", "encoder": {"source": "timm", "name": "resnet18", "pretrained": False, "image_size": 32}},
            {
                "column": "audio",
                "modality": "audio",
                "encoder": {"source": "builtin", "name": "mel-cnn", "config": {"width": 32, "channels": 8, "n_mels": 32}, "max_seconds": 1.0},
            },
        ],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 64},
        "train": {"epochs": 4, "batch_size": 16, "lr": 1e-3, "head_lr": 3e-3, "seed": 0, **train},
    }


def numeric_table(path: Path, n: int, seed: int, column: str = "x") -> Path:
    """A three-class table a tiny numeric model learns in a few epochs: lo / mid / hi by ``column``."""
    import numpy as np
    import pandas as pd

    x = np.random.default_rng(seed).normal(size=n)
    pd.DataFrame({column: x, "label": np.where(x < -0.5, "lo", np.where(x > 0.5, "hi", "mid"))}).to_csv(path, index=False)
    return path


def train_numeric(table: Path, out: Path, epochs: int = 3, column: str = "x", seed: int = 0) -> Path:
    """A tiny numeric-only classifier run (seconds on a CPU), for lifecycle and live-swap tests."""
    from mmagent.config import config_from_dict
    from mmagent.training.trainer import train

    cfg = {
        "data": {"train": str(table)},
        "inputs": [{"column": column, "modality": "numeric"}],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 16},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 1e-2, "head_lr": 1e-2, "seed": seed},
    }
    train(config_from_dict(cfg), out, progress=False)
    return out
