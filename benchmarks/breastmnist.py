"""BreastMNIST ultrasound (28x28 grey, malignant vs normal/benign): EfficientNet-Lite0 fine-tune vs. frozen probe.

    python -m benchmarks.breastmnist [--data-root DIR] [--smoke] [--image-size 128]

Tables and PNGs come from ``examples/breastmnist.py`` (the official train 546 / validation 78 /
test 156 split). Variants, both selecting the epoch by validation AUC:

* fine-tune: zoo ``efficientnet-lite0`` trained end to end (lr 1e-4, head lr 1e-3, batch 32,
  light augmentation: random resized crop 0.8-1 and horizontal flip), 8 epochs;
* probe: the same encoder frozen, features cached, only fusion + head trained (40 epochs, early
  stopping).

The 28 px images are upscaled to ``--image-size`` (default 128: at 224 px one fine-tuning epoch
takes about 3 minutes on this 2-core machine, so 128 px keeps the run within budget).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks._quality import run_info, elapsed, ensure_examples_importable, fit, main_guard, quality_parser, require_data, row, work_dir
from benchmarks.common import write_result

NAME = "breastmnist"
REF_AUC = "0.901 (ResNet-18 (28), MedMNIST v2)"
REF_ACC = "0.863 (ResNet-18 (28), MedMNIST v2)"


def parser():
    p = quality_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--image-size", type=int, default=None, help="side the images are resized to (default 128; smoke 32)")
    return p


def config(paths: dict[str, Path], image_size: int, freeze: bool, smoke: bool) -> dict[str, Any]:
    encoder: dict[str, Any] = {"source": "zoo", "name": "efficientnet-lite0", "image_size": image_size}
    if freeze:
        encoder["freeze"] = "all"
        train: dict[str, Any] = {"epochs": 40, "lr": 1e-4, "head_lr": 1e-3, "early_stopping_patience": 10}
    else:
        train = {"epochs": 8, "lr": 1e-4, "head_lr": 1e-3}
    train.update(batch_size=32, seed=42, metric="finding/auroc", cache_frozen_encoders=True)
    if smoke:
        train.update(epochs=1, max_steps=2, batch_size=16)
    return {
        "data": {s: Path(paths[s]).name for s in ("train", "validation", "test")},
        "inputs": [{"column": "image", "modality": "image", "encoder": encoder}],
        "targets": [{"column": "finding", "type": "classification"}],
        "fusion": {"type": "concat"},
        "train": train,
    }


def run(args: Any) -> int:
    ensure_examples_importable()
    from examples import breastmnist as ex

    start = time.perf_counter()
    require_data(Path(args.data_root), ex.DATA_DIR)
    folder = work_dir(args, NAME)
    paths = ex.prepare(Path(args.data_root), folder / "data", limit=ex.SMOKE_LIMIT if args.smoke else None)
    prep_s = elapsed(start)
    size = args.image_size or (32 if args.smoke else 128)
    base = Path(paths["train"]).parent
    subset = "smoke subset" if args.smoke else "official split (546 train)"
    rows: list[dict[str, Any]] = []
    for freeze in (False, True):
        o = fit(config(paths, size, freeze, args.smoke), base, folder / "runs" / ("probe" if freeze else "finetune"), progress=args.progress, label="frozen probe" if freeze else "fine-tune")
        what = f"frozen probe: cached features, fusion+head train ({o.epochs_run} ep)" if freeze else f"fine-tune, {o.epochs_run} ep, lr 1e-4"
        v = f"EfficientNet-Lite0 (zoo, ImageNet) {what}, {size} px, {subset}"
        rows += [
            row(NAME, v, "test AUC", o.metric("auroc"), o.wall_s, REF_AUC, n_test=o.n_test),
            row(NAME, v, "test accuracy", o.metric("accuracy"), o.wall_s, REF_ACC, n_test=o.n_test),
        ]
    write_result(NAME, rows, args.smoke, extra={"prepare_s": prep_s, "total_wall_s": elapsed(start), **run_info(args)})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_guard(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
