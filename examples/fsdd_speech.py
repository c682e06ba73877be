"""Spoken digits: Free Spoken Digit Dataset recordings -> digit 0-9 (audio, zoo Whisper tiny.en).

Data: ``<data-root>/fsdd/recordings/{digit}_{speaker}_{index}.wav`` (8 kHz mono). Official split:
file index 0-4 = test, 5-49 = train; here index 5-9 of the training part is the validation set
(so validation, like test, holds every speaker and digit). The tables point at the recordings in
place (absolute paths); nothing is copied.

Default encoder: the Whisper tiny.en encoder, frozen, its outputs computed once and cached, with a
small trained head. ``--encoder mel-cnn`` trains the builtin log-mel CNN from scratch instead.

    python -m examples.fsdd_speech                    # whisper-tiny.en, frozen + cached
    python -m examples.fsdd_speech --encoder mel-cnn  # builtin mel-cnn, trained end to end
    python -m examples.fsdd_speech --smoke
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from examples._common import SEED, balanced_head, base_config, require, run_example, split_limits, write_tables, zoo

NAME = "fsdd_speech"
DATA_DIR = "fsdd"
REQUIRED = ("recordings",)
SMOKE_LIMIT = 120
AUDIO, LABEL = "audio", "digit"
TEST_INDICES = range(0, 5)  # the official test split
VALIDATION_INDICES = range(5, 10)
FILE_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
ENCODERS = ("whisper-tiny.en", "mel-cnn")


def recordings(data_root: Path) -> pd.DataFrame:
    """One row per recording: ``audio`` (absolute path), ``digit``, ``speaker``, ``index``."""
    folder = require(data_root, DATA_DIR, REQUIRED) / "recordings"
    rows = []
    for path in sorted(folder.glob("*.wav")):
        m = FILE_NAME.match(path.name)
        if m is None:
            continue
        rows.append({AUDIO: str(path.resolve()), LABEL: m.group(1), "speaker": m.group(2), "index": int(m.group(3))})
    if not rows:
        raise ValueError(f"{folder}: no recordings named DIGIT_SPEAKER_INDEX.wav")
    return pd.DataFrame(rows)


def split_of(index: int) -> str:
    if index in TEST_INDICES:
        return "test"
    return "validation" if index in VALIDATION_INDICES else "train"


def load(data_root: Path) -> dict[str, pd.DataFrame]:
    """Full train / validation / test frames (columns ``audio, digit, speaker, index``)."""
    frame = recordings(Path(data_root))
    split = frame["index"].map(split_of)
    return {s: frame[split == s].reset_index(drop=True) for s in ("train", "validation", "test")}


def prepare(data_root: Path, out_dir: Path, limit: int | None = None) -> dict[str, Path]:
    """Write the three tables to ``out_dir`` (audio paths point into the data folder). ``limit``
    caps the training rows (balanced over digits); validation and test get a quarter each."""
    caps = split_limits(limit)
    frames = {s: balanced_head(f, LABEL, caps[s]) for s, f in load(Path(data_root)).items()}
    return write_tables(frames, Path(out_dir))


def encoder_spec(name: str) -> dict[str, Any]:
    if name == "mel-cnn":
        return {"source": "builtin", "name": "mel-cnn", "max_seconds": 2.5}
    return zoo("whisper-tiny.en", freeze="all", max_seconds=2.5)


def make_config(paths: dict[str, Path], args: argparse.Namespace | None = None) -> dict[str, Any]:
    name = getattr(args, "encoder", None) or ENCODERS[0]
    frozen = name != "mel-cnn"
    train = {
        "epochs": 30 if frozen else 15,
        "batch_size": 32,
        "lr": 1e-3,
        "head_lr": 3e-3 if frozen else 1e-3,
        "seed": SEED,
        "cache_frozen_encoders": True,
        "metric": f"{LABEL}/accuracy",
        "early_stopping_patience": 5,
    }
    return base_config(
        paths,
        inputs=[{"column": AUDIO, "modality": "audio", "encoder": encoder_spec(name)}],
        targets=[{"column": LABEL, "type": "classification"}],
        fusion={"type": "concat"},
        train=train,
        agent={"type": "default", "target": LABEL, "threshold": 0.5},
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", choices=ENCODERS, default=ENCODERS[0], help="whisper-tiny.en (zoo, frozen + cached; default) or mel-cnn (builtin, trained)")


def main(argv: list[str] | None = None) -> int:
    return run_example(sys.modules[__name__], argv, smoke_steps=12, smoke_epochs=3)


if __name__ == "__main__":
    raise SystemExit(main())
