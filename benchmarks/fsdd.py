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
from pathlib import Path
from typing import Any, Sequence

from benchmarks._quality import run_info, SharedStore, elapsed, ensure_examples_importable, fit, main_guard, quality_parser, require_data, row, work_dir
from benchmarks.common import write_result

NAME = "fsdd"
REFERENCE = "0.9233 (Ludwig default audio encoder)"
WHISPER = {"source": "zoo", "name": "whisper-tiny.en", "freeze": "all", "max_seconds": 1.0}
MEL_CNN = {"source": "builtin", "name": "mel-cnn", "sample_rate": 8000, "max_seconds": 1.0, "config": {"n_mels": 40, "channels": 16, "width": 128}}


def parser():
    return quality_parser(__doc__.strip().splitlines()[0])


def config(paths: dict[str, Path], encoder: dict[str, Any], smoke: bool) -> dict[str, Any]:
    frozen = encoder.get("freeze") == "all"
    train: dict[str, Any] = {"epochs": 30 if frozen else 15, "batch_size": 32, "lr": 1e-3, "head_lr": 3e-3 if frozen else 1e-3, "seed": 42,
                             "metric": "digit/accuracy", "early_stopping_patience": 5, "cache_frozen_encoders": True}
    if smoke:
        train.update(epochs=1, max_steps=3, batch_size=16)
    return {
        "data": {s: Path(paths[s]).name for s in ("train", "validation", "test")},
        "inputs": [{"column": "audio", "modality": "audio", "encoder": encoder}],
        "targets": [{"column": "digit", "type": "classification"}],
        "fusion": {"type": "concat"},
        "train": train,
    }


def run(args: Any) -> int:
    ensure_examples_importable()
    from examples import fsdd_speech as ex

    start = time.perf_counter()
    require_data(Path(args.data_root), ex.DATA_DIR)
    folder = work_dir(args, NAME)
    paths = ex.prepare(Path(args.data_root), folder / "data", limit=ex.SMOKE_LIMIT if args.smoke else None)
    prep_s = elapsed(start)
    base = Path(paths["train"]).parent
    subset = "smoke subset" if args.smoke else "official split, all 2,400 train clips"
    rows: list[dict[str, Any]] = []

    w = fit(config(paths, WHISPER, args.smoke), base, folder / "runs" / "whisper", SharedStore(), progress=args.progress, label="whisper-tiny.en frozen")
    v = f"whisper-tiny.en (zoo) frozen + cached, 1 s window, fusion+head {w.epochs_run} ep, {subset}"
    rows += [row(NAME, v, "test accuracy", w.metric("accuracy"), w.wall_s, REFERENCE, n_test=w.n_test), row(NAME, v, "test macro-F1", w.metric("macro_f1"), w.wall_s, n_test=w.n_test)]

    m = fit(config(paths, MEL_CNN, args.smoke), base, folder / "runs" / "mel_cnn", progress=args.progress, label="mel-cnn")
    v = f"mel-cnn (builtin, 8 kHz, 40 mels, 16-64 ch) trained from scratch, {m.epochs_run} ep, {subset}"
    rows += [row(NAME, v, "test accuracy", m.metric("accuracy"), m.wall_s, REFERENCE, n_test=m.n_test), row(NAME, v, "test macro-F1", m.metric("macro_f1"), m.wall_s, n_test=m.n_test)]
    write_result(NAME, rows, args.smoke, extra={"prepare_s": prep_s, "total_wall_s": elapsed(start), **run_info(args)})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_guard(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
