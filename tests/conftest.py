"""Shared fixtures: a generated multimodal table (PNG images + WAV files + text + numbers)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("MMAGENT_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
TONES = [300.0, 700.0, 1500.0]
WORDS = ["alpha", "bravo", "charlie"]

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 300}


def write_multimodal_table(folder: Path, n: int, seed: int, name: str = "train.csv") -> Path:
    """Label y in {a, b, c}. The tone always tells y; the text and the image colour tell it only
    half the time (otherwise random), so dropping the audio clearly hurts."""
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        y = int(rng.integers(3))
        color = y if rng.random() < 0.5 else int(rng.integers(3))
        img = np.clip(rng.normal(128, 40, (32, 32, 3)), 0, 255)
        x0, y0 = rng.integers(0, 16, 2)
        img[y0 : y0 + 14, x0 : x0 + 14] = COLORS[color]
        img_path = f"img/{seed}_{i}.png"
        Image.fromarray(img.astype(np.uint8)).save(folder / img_path)
        tone_class = y
        sr = int(rng.choice([8000, 16000]))
        t = np.arange(int(sr * rng.uniform(0.3, 0.6))) / sr
        wave = 0.5 * np.sin(2 * np.pi * TONES[tone_class] * t) + 0.05 * rng.normal(size=t.size)
        wav_path = f"wav/{seed}_{i}.wav"
        sf.write(folder / wav_path, wave.astype(np.float32), sr)
        word = WORDS[y] if rng.random() < 0.5 else WORDS[int(rng.integers(3))]
        rows.append({"text": f"the {word} case number {i}", "image": img_path, "audio": wav_path, "x": float(rng.normal()), "label": "abc"[y]})
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


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
            {"column": "audio", "modality": "audio", "encoder": {"source": "builtin", "name": "mel-cnn", "config": {"width": 32, "channels": 8, "n_mels": 32}, "max_seconds": 1.0}},
        ],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 64},
        "train": {"epochs": 4, "batch_size": 16, "lr": 1e-3, "head_lr": 3e-3, "seed": 0, **train},
    }
