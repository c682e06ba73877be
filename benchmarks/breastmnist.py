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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._quality import elapsed, finetune_and_probe, main_guard, metric_rows, prepare_example, quality_parser, single_input_config, write_quality_result

NAME = "breastmnist"
REF_AUC = "0.901 (ResNet-18 (28), MedMNIST v2)"
REF_ACC = "0.863 (ResNet-18 (28), MedMNIST v2)"
METRICS = [("test AUC", "auroc", REF_AUC), ("test accuracy", "accuracy", REF_ACC)]
TRAIN = {"lr": 1e-4, "head_lr": 1e-3, "batch_size": 32, "seed": 42, "metric": "finding/auroc", "cache_frozen_encoders": True}
FINETUNE = {"epochs": 8}
PROBE = {"epochs": 40, "early_stopping_patience": 10}
SMOKE_STEPS = 2


def parser():
    p = quality_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--image-size", type=int, default=None, help="side the images are resized to (default 128; smoke 32)")
    return p


def config(paths: dict[str, Path], image_size: int, freeze: bool, smoke: bool) -> dict[str, Any]:
    encoder = {"source": "zoo", "name": "efficientnet-lite0", "image_size": image_size}
    train = {**TRAIN, **(PROBE if freeze else FINETUNE)}
    return single_input_config(paths, "image", "image", encoder, "finding", train, SMOKE_STEPS if smoke else None, freeze)


def run(args: Any) -> int:
    start = time.perf_counter()
    folder, paths = prepare_example(args, NAME, "breastmnist")
    prep_s = elapsed(start)
    size = args.image_size or (32 if args.smoke else 128)
    subset = "smoke subset" if args.smoke else "official split (546 train)"
    rows: list[dict[str, Any]] = []
    for frozen, _, o in finetune_and_probe(lambda freeze: config(paths, size, freeze, args.smoke), Path(paths["train"]).parent, folder, args.progress):
        what = f"frozen probe: cached features, fusion+head train ({o.epochs_run} ep)" if frozen else f"fine-tune, {o.epochs_run} ep, lr 1e-4"
        rows += metric_rows(NAME, f"EfficientNet-Lite0 (zoo, ImageNet) {what}, {size} px, {subset}", o, METRICS)
    write_quality_result(NAME, rows, args, start, prep_s)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_guard(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
