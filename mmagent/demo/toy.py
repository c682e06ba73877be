"""A tiny generated task — text + PNG image + WAV audio + a number -> label a/b/c — and a config of
tiny random models for it: what the tests, the serving benchmark and smoke runs train in seconds.

The tone always tells the label; the text and the image colour tell it only half the time
(otherwise random), so dropping the audio clearly hurts (the modality-ablation tests rely on it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
TONES = [300.0, 700.0, 1500.0]
WORDS = ["alpha", "bravo", "charlie"]

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 300}


def write_toy_table(folder: Path, n: int, seed: int, name: str = "train.csv") -> Path:
    """Write ``n`` seeded rows (and their media under ``img/`` and ``wav/``) to ``folder/name``."""
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


def tiny_config(train: Path, epochs: int = 1) -> dict[str, Any]:
    """text (tiny BERT) + image (timm test_resnet at 32 px) + audio (small mel-CNN) + one number."""
    return {
        "data": {"train": str(train)},
        "inputs": [
            {"column": "text", "modality": "text", "encoder": {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 32}},
            {"column": "image", "modality": "image", "encoder": {"source": "timm", "name": "test_resnet", "pretrained": False, "image_size": 32}},
            {
                "column": "audio",
                "modality": "audio",
                "encoder": {"source": "builtin", "name": "mel-cnn", "config": {"width": 16, "channels": 4, "n_mels": 16}, "max_seconds": 1.0},
            },
            {"column": "x", "modality": "numeric"},
        ],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 32},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 1e-3, "head_lr": 3e-3, "seed": 0},
    }
