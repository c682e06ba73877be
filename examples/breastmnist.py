"""Medical imaging: BreastMNIST ultrasound (28x28 grey) -> malignant vs normal/benign (zoo EfficientNet-Lite0).

Data: ``<data-root>/breastmnist/BreastMNIST.npz`` with ``{train,val,test}_{images,labels}``
(MedMNIST labels: 0 = malignant, 1 = normal or benign). The official train / val / test splits are
kept. Each image is written as a PNG under ``OUT/images/<split>/`` (git-ignored, like the tables);
the tables refer to them by paths relative to their folder.

Image only: the dataset has no clinical text, so none is invented. The agent reports calibrated
probabilities and refers to a clinician below 0.8 confidence (never a bare label).

    python -m examples.breastmnist                 # 10 epochs, 224 px, best epoch by validation AUC
    python -m examples.breastmnist --smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from examples._common import SEED, balanced_head, base_config, require, run_example, split_limits, with_recipe, write_tables, zoo

NAME = "breastmnist"
DATA_DIR = "breastmnist"
REQUIRED = ("BreastMNIST.npz",)
SMOKE_LIMIT = 64
IMAGE, LABEL = "image", "finding"
LABEL_NAMES = {0: "malignant", 1: "normal_or_benign"}  # MedMNIST BreastMNIST convention
SPLITS = {"train": "train", "validation": "val", "test": "test"}  # our name -> npz prefix


def load_arrays(data_root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images (N,28,28) uint8, labels (N,) int)}`` for train / validation / test."""
    path = require(data_root, DATA_DIR, REQUIRED) / "BreastMNIST.npz"
    with np.load(path) as npz:
        return {ours: (npz[f"{theirs}_images"], npz[f"{theirs}_labels"].reshape(-1).astype(int)) for ours, theirs in SPLITS.items()}


def prepare(data_root: Path, out_dir: Path, limit: int | None = None) -> dict[str, Path]:
    """Write PNGs to ``out_dir/images/<split>/`` and the tables (``image, finding, source_index``)
    to ``out_dir``. ``limit`` caps the training rows (class-balanced); validation and test get a
    quarter each. Returns the table paths and ``images`` (the PNG folder)."""
    from PIL import Image

    out_dir = Path(out_dir)
    caps = split_limits(limit)
    frames = {}
    for split, (images, labels) in load_arrays(Path(data_root)).items():
        frame = pd.DataFrame({"source_index": np.arange(len(labels)), LABEL: [LABEL_NAMES[int(y)] for y in labels]})
        frame = balanced_head(frame, LABEL, caps[split])
        folder = out_dir / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for i in frame["source_index"]:
            rel = f"images/{split}/{split}_{int(i):04d}.png"
            Image.fromarray(np.ascontiguousarray(images[int(i)], dtype=np.uint8)).save(out_dir / rel)
            names.append(rel)
        frames[split] = frame.assign(**{IMAGE: names})[[IMAGE, LABEL, "source_index"]]
    paths: dict[str, Path] = dict(write_tables(frames, out_dir))
    paths["images"] = out_dir / "images"
    return paths


def make_config(paths: dict[str, Path], args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Fine-tune EfficientNet-Lite0 end to end on the upscaled images; choose the epoch by AUC."""
    config = base_config(
        paths,
        inputs=[{"column": IMAGE, "modality": "image", "encoder": zoo("efficientnet-lite0", image_size=getattr(args, "image_size", None) or 224)}],
        targets=[{"column": LABEL, "type": "classification"}],
        fusion={"type": "concat", "modality_dropout": 0.0},
        train={"epochs": 10, "batch_size": 32, "lr": 1e-4, "head_lr": 1e-3, "seed": SEED, "metric": f"{LABEL}/auroc"},
        agent={"type": "medical", "target": LABEL, "refer_below": 0.8},
    )
    return with_recipe(config, "medical_imaging", Path(paths["train"]).parent)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, default=None, help="side the 28 px images are resized to (default 224; smoke 64)")


def _smoke(args: argparse.Namespace) -> None:
    args.image_size = args.image_size or 64
    args.batch_size = args.batch_size or 16


def main(argv: list[str] | None = None) -> int:
    return run_example(sys.modules[__name__], argv, smoke_steps=6, smoke_epochs=2, smoke_options=_smoke)


if __name__ == "__main__":
    raise SystemExit(main())
