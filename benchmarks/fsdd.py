"""Free Spoken Digit Dataset (audio, 10 digits) on the official split: Whisper features vs. a CNN.

    python -m benchmarks.fsdd [--data-root DIR] [--smoke]

Tables come from ``examples/fsdd_speech.py``: file index 0-4 = test (300 clips, the official
split), 5-9 = validation (300), 10-49 = train (2,400); the tables point at the recordings in place.
Variants:

* zoo ``whisper-tiny.en`` encoder, frozen, its outputs computed once and cached; fusion + head
  trained (30 epochs, early stopping). The encoder window is 1 s (50 positions): 99.3 % of the
  clips are shorter (mean 0.44 s), the rest are cropped.
* builtin ``mel-cnn`` trained from scratch at the recordings' own 8 kHz (40 mel bands, 16/32/64
  channels, 1 s), 15 epochs with early stopping.

Whisper with its top layers trainable is not run: without caching, every epoch would run the whole
encoder forward and backward over 2,400 clips (about 1.5 min per epoch here), which does not fit
the budget next to the other variants.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._quality import SharedStore, elapsed, fit, main_guard, metric_rows, prepare_example, quality_parser, single_input_config, write_quality_result

NAME = "fsdd"
REFERENCE = "0.9233 (Ludwig default audio encoder)"
METRICS = [("test accuracy", "accuracy", REFERENCE), ("test macro-F1", "macro_f1", None)]
WHISPER = {"source": "zoo", "name": "whisper-tiny.en", "freeze": "all", "max_seconds": 1.0}
MEL_CNN = {"source": "builtin", "name": "mel-cnn", "sample_rate": 8000, "max_seconds": 1.0, "config": {"n_mels": 40, "channels": 16, "width": 128}}
TRAIN = {"batch_size": 32, "lr": 1e-3, "seed": 42, "metric": "digit/accuracy", "early_stopping_patience": 5, "cache_frozen_encoders": True}
SMOKE_STEPS = 3


def parser():
    return quality_parser(__doc__.strip().splitlines()[0])


def config(paths: dict[str, Path], encoder: dict[str, Any], smoke: bool) -> dict[str, Any]:
    frozen = encoder.get("freeze") == "all"
    train = {**TRAIN, "epochs": 30 if frozen else 15, "head_lr": 3e-3 if frozen else 1e-3}
    return single_input_config(paths, "audio", "audio", encoder, "digit", train, SMOKE_STEPS if smoke else None)


def run(args: Any) -> int:
    start = time.perf_counter()
    folder, paths = prepare_example(args, NAME, "fsdd_speech")
    prep_s = elapsed(start)
    base = Path(paths["train"]).parent
    subset = "smoke subset" if args.smoke else "official split, all 2,400 train clips"

    w = fit(config(paths, WHISPER, args.smoke), base, folder / "runs" / "whisper", SharedStore(), progress=args.progress, label="whisper-tiny.en frozen")
    rows = metric_rows(NAME, f"whisper-tiny.en (zoo) frozen + cached, 1 s window, fusion+head {w.epochs_run} ep, {subset}", w, METRICS)
    m = fit(config(paths, MEL_CNN, args.smoke), base, folder / "runs" / "mel_cnn", progress=args.progress, label="mel-cnn")
    rows += metric_rows(NAME, f"mel-cnn (builtin, 8 kHz, 40 mels, 16-64 ch) trained from scratch, {m.epochs_run} ep, {subset}", m, METRICS)
    write_quality_result(NAME, rows, args, start, prep_s)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_guard(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
