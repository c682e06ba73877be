"""Financial PhraseBank 50Agree (finance news sentiment, 3 classes): MiniLM-L6 fine-tuning.

    python -m benchmarks.financial_phrasebank [--data-root DIR] [--smoke] [--train-limit N]

Tables come from ``examples/financial_phrasebank.py``: the 4,838 distinct sentences of 50Agree,
a fixed seeded (42) stratified 80/20 train/test split (test: 968 sentences, always in full), and
10 % of the training part held out as validation. The zoo ``minilm-l6`` encoder is fine-tuned end
to end (3 epochs, batch 32, lr 5e-5, head lr 1e-3, 64 tokens), the epoch chosen by validation
macro-F1, on the whole 3,483-row training part (about 9.5 minutes with one thread on this 2-core
machine when it is not otherwise busy; ``--train-limit N`` trains on a stratified subset instead
when the machine is loaded, and the variant text says so). The licence of the data is CC BY-NC-SA 3.0 (non-commercial).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks._quality import run_info, elapsed, ensure_examples_importable, fit, main_guard, quality_parser, require_data, row, work_dir
from benchmarks.common import write_result

NAME = "financial_phrasebank"
DEFAULT_TRAIN_LIMIT = 0  # the whole training part
REF_ACC = "0.86 (FinBERT, 50Agree)"
REF_F1 = "0.84 (FinBERT, 50Agree)"


def parser():
    p = quality_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--train-limit", type=int, default=DEFAULT_TRAIN_LIMIT, help="stratified training subset (0: the whole training part)")
    return p


def prepare(data_root: Path, out_dir: Path, smoke: bool, train_limit: int | None) -> dict[str, Path]:
    ensure_examples_importable()
    from examples import financial_phrasebank as ex
    from examples._common import stratified_split, write_tables

    require_data(data_root, ex.DATA_DIR)
    if smoke:
        return ex.prepare(data_root, out_dir, limit=ex.SMOKE_LIMIT)
    frames = ex.load(data_root)
    if train_limit and train_limit < len(frames["train"]):  # keep the class mix of the test set
        frames["train"], _ = stratified_split(frames["train"], ex.LABEL, 1.0 - train_limit / len(frames["train"]), ex.SEED)
    return write_tables(frames, out_dir)


def config(paths: dict[str, Path], smoke: bool) -> dict[str, Any]:
    train: dict[str, Any] = {"epochs": 3, "batch_size": 32, "lr": 5e-5, "head_lr": 1e-3, "seed": 42, "metric": "sentiment/macro_f1"}
    if smoke:
        train.update(epochs=1, max_steps=3, batch_size=16)
    return {
        "data": {s: Path(paths[s]).name for s in ("train", "validation", "test")},
        "inputs": [{"column": "text", "modality": "text", "encoder": {"source": "zoo", "name": "minilm-l6", "max_length": 64}}],
        "targets": [{"column": "sentiment", "type": "classification"}],
        "fusion": {"type": "concat"},
        "train": train,
    }


def run(args: Any) -> int:
    start = time.perf_counter()
    folder = work_dir(args, NAME)
    paths = prepare(Path(args.data_root), folder / "data", args.smoke, args.train_limit)
    prep_s = elapsed(start)
    cfg = config(paths, args.smoke)
    o = fit(cfg, Path(paths["train"]).parent, folder / "runs" / "finetune", progress=args.progress, label="fine-tune")
    subset = "smoke subset" if args.smoke else (f"{o.n_train}-row stratified train subset" if args.train_limit else f"full train part ({o.n_train} rows)")
    t = cfg["train"]
    v = f"MiniLM-L6 (zoo) fine-tune, {o.epochs_run} ep, bs {t['batch_size']}, lr {t['lr']:g}, len 64, seeded 80/20 split, {subset}"
    rows = [
        row(NAME, v, "test accuracy", o.metric("accuracy"), o.wall_s, REF_ACC, n_test=o.n_test),
        row(NAME, v, "test macro-F1", o.metric("macro_f1"), o.wall_s, REF_F1, n_test=o.n_test),
    ]
    write_result(NAME, rows, args.smoke, extra={"prepare_s": prep_s, "total_wall_s": elapsed(start), **run_info(args)})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_guard(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
