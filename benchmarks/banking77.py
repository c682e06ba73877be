"""Banking77 intents (text, 77 classes): MiniLM-L6 fine-tuning vs. a frozen-encoder probe.

    python -m benchmarks.banking77 [--data-root DIR] [--smoke] [--train-limit N]

Tables come from ``examples/banking77.py`` (10 % of train held out as validation, seeded and
stratified; the official 3,080-row test set, always in full). Variants:

* fine-tune: zoo ``minilm-l6`` trained end to end in the Ludwig reference setting (3 epochs,
  batch 32, lr 5e-5, 64 tokens; head lr 1e-3); reports test accuracy, macro-F1 and training
  samples/s (training loop only: each epoch's time minus its validation pass);
* probe: the same encoder frozen (``freeze: all``), its features computed once and cached, only
  fusion + head trained (30 epochs, early stopping on validation accuracy).

On this 2-core shared machine a full fine-tuning pass over all 9,002 training rows does not fit the
~10 minute budget, so the default trains both variants on a class-balanced subset
(``--train-limit``, default 2,500 rows, about 32 per intent); the variant text says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._quality import (
    elapsed,
    finetune_and_probe,
    main_guard,
    metric_rows,
    prepare_example,
    quality_parser,
    row,
    single_input_config,
    write_quality_result,
)

NAME = "banking77"
DEFAULT_TRAIN_LIMIT = 2500
REF_ACC = "0.9162 (Ludwig 0.17, same MiniLM, full train); 0.9366 (BERT-large, published)"
REF_SPEED = "28.7 (Ludwig 0.17)"
METRICS = [("test accuracy", "accuracy", REF_ACC), ("test macro-F1", "macro_f1", None)]
ENCODER = {"source": "zoo", "name": "minilm-l6", "max_length": 64}
TRAIN = {"batch_size": 32, "lr": 5e-5, "head_lr": 1e-3, "seed": 42, "metric": "intent/accuracy", "cache_frozen_encoders": True}
FINETUNE = {"epochs": 3}
PROBE = {"epochs": 30, "early_stopping_patience": 5}
SMOKE_STEPS = 4


def parser():
    p = quality_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--train-limit", type=int, default=DEFAULT_TRAIN_LIMIT, help="class-balanced training subset (0: all 9,002 rows)")
    return p


def config(paths: dict[str, Path], freeze: bool, smoke: bool) -> dict[str, Any]:
    train = {**TRAIN, **(PROBE if freeze else FINETUNE)}
    return single_input_config(paths, "text", "text", ENCODER, "intent", train, SMOKE_STEPS if smoke else None, freeze)


def run(args: Any) -> int:
    from examples._common import balanced_head

    start = time.perf_counter()
    folder, paths = prepare_example(args, NAME, "banking77", lambda ex, train: balanced_head(train, ex.LABEL, args.train_limit or None))
    prep_s = elapsed(start)
    rows: list[dict[str, Any]] = []
    for frozen, cfg, o in finetune_and_probe(lambda freeze: config(paths, freeze, args.smoke), Path(paths["train"]).parent, folder, args.progress):
        subset = "smoke subset" if args.smoke else (f"{o.n_train}-row train subset" if args.train_limit else f"full train ({o.n_train} rows)")
        if frozen:
            rows += metric_rows(NAME, f"MiniLM-L6 (zoo) frozen probe: cached features, fusion+head train ({o.epochs_run} ep), {subset}", o, METRICS)
            continue
        t = cfg["train"]
        v = f"MiniLM-L6 (zoo) fine-tune, {o.epochs_run} ep, bs {t['batch_size']}, lr {t['lr']:g}, len 64, {subset}"
        rows += metric_rows(NAME, v, o, METRICS)
        rows.append(
            row(
                NAME,
                v,
                "train samples/s",
                o.train_samples_per_s,
                o.wall_s,
                REF_SPEED,
                model=o.model,
                threads=args.thread_info["threads"],
                loop_seconds=round(o.loop_seconds, 1),
            )
        )
    write_quality_result(NAME, rows, args, start, prep_s)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_guard(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
