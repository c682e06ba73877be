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
from pathlib import Path
from typing import Any, Sequence

from benchmarks._quality import run_info, elapsed, ensure_examples_importable, fit, main_guard, quality_parser, require_data, row, work_dir
from benchmarks.common import write_result

NAME = "banking77"
DEFAULT_TRAIN_LIMIT = 2500
REF_ACC = "0.9162 (Ludwig 0.17, same MiniLM, full train); 0.9366 (BERT-large, published)"
REF_SPEED = "28.7 (Ludwig 0.17)"


def parser():
    p = quality_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--train-limit", type=int, default=DEFAULT_TRAIN_LIMIT, help="class-balanced training subset (0: all 9,002 rows)")
    return p


def prepare(data_root: Path, out_dir: Path, smoke: bool, train_limit: int | None) -> dict[str, Path]:
    ensure_examples_importable()
    from examples import banking77 as ex
    from examples._common import balanced_head, write_tables

    require_data(data_root, ex.DATA_DIR)
    if smoke:
        return ex.prepare(data_root, out_dir, limit=ex.SMOKE_LIMIT)
    frames = ex.load(data_root)
    frames["train"] = balanced_head(frames["train"], ex.LABEL, train_limit or None)
    return write_tables(frames, out_dir)


def config(paths: dict[str, Path], freeze: bool, smoke: bool) -> dict[str, Any]:
    encoder: dict[str, Any] = {"source": "zoo", "name": "minilm-l6", "max_length": 64}
    if freeze:
        encoder["freeze"] = "all"
        train: dict[str, Any] = {"epochs": 30, "batch_size": 32, "lr": 5e-5, "head_lr": 1e-3, "early_stopping_patience": 5}
    else:
        train = {"epochs": 3, "batch_size": 32, "lr": 5e-5, "head_lr": 1e-3}
    train.update(seed=42, metric="intent/accuracy", cache_frozen_encoders=True)
    if smoke:
        train.update(epochs=1, max_steps=4, batch_size=16)
    return {
        "data": {s: Path(paths[s]).name for s in ("train", "validation", "test")},
        "inputs": [{"column": "text", "modality": "text", "encoder": encoder}],
        "targets": [{"column": "intent", "type": "classification"}],
        "fusion": {"type": "concat"},
        "train": train,
    }


def run(args: Any) -> int:
    start = time.perf_counter()
    folder = work_dir(args, NAME)
    paths = prepare(Path(args.data_root), folder / "data", args.smoke, args.train_limit)
    prep_s = elapsed(start)
    base = Path(paths["train"]).parent
    rows: list[dict[str, Any]] = []

    ft_cfg = config(paths, freeze=False, smoke=args.smoke)
    ft = fit(ft_cfg, base, folder / "runs" / "finetune", progress=args.progress, label="fine-tune")
    subset = "smoke subset" if args.smoke else (f"{ft.n_train}-row train subset" if args.train_limit else f"full train ({ft.n_train} rows)")
    t = ft_cfg["train"]
    v = f"MiniLM-L6 (zoo) fine-tune, {ft.epochs_run} ep, bs {t['batch_size']}, lr {t['lr']:g}, len 64, {subset}"
    rows += [
        row(NAME, v, "test accuracy", ft.metric("accuracy"), ft.wall_s, REF_ACC, n_test=ft.n_test),
        row(NAME, v, "test macro-F1", ft.metric("macro_f1"), ft.wall_s, n_test=ft.n_test),
        row(NAME, v, "train samples/s", ft.train_samples_per_s, ft.wall_s, REF_SPEED, threads=args.thread_info["threads"], loop_seconds=round(ft.loop_seconds, 1)),
    ]

    pr = fit(config(paths, freeze=True, smoke=args.smoke), base, folder / "runs" / "probe", progress=args.progress, label="frozen probe")
    v = f"MiniLM-L6 (zoo) frozen probe: cached features, fusion+head train ({pr.epochs_run} ep), {subset}"
    rows += [
        row(NAME, v, "test accuracy", pr.metric("accuracy"), pr.wall_s, REF_ACC, n_test=pr.n_test),
        row(NAME, v, "test macro-F1", pr.metric("macro_f1"), pr.wall_s, n_test=pr.n_test),
    ]
    write_result(NAME, rows, args.smoke, extra={"prepare_s": prep_s, "total_wall_s": elapsed(start), **run_info(args)})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_guard(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
