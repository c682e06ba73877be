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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._quality import elapsed, fit, main_guard, metric_rows, prepare_example, quality_parser, single_input_config, write_quality_result

NAME = "financial_phrasebank"
DEFAULT_TRAIN_LIMIT = 0  # the whole training part
REF_ACC = "0.86 (FinBERT, 50Agree)"
REF_F1 = "0.84 (FinBERT, 50Agree)"
METRICS = [("test accuracy", "accuracy", REF_ACC), ("test macro-F1", "macro_f1", REF_F1)]
ENCODER = {"source": "zoo", "name": "minilm-l6", "max_length": 64}
TRAIN = {"epochs": 3, "batch_size": 32, "lr": 5e-5, "head_lr": 1e-3, "seed": 42, "metric": "sentiment/macro_f1"}
SMOKE_STEPS = 3


def parser():
    p = quality_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--train-limit", type=int, default=DEFAULT_TRAIN_LIMIT, help="stratified training subset (0: the whole training part)")
    return p


def config(paths: dict[str, Path], smoke: bool) -> dict[str, Any]:
    return single_input_config(paths, "text", "text", ENCODER, "sentiment", TRAIN, SMOKE_STEPS if smoke else None)


def train_subset(ex: Any, train: Any, limit: int) -> Any:
    """A stratified ``limit``-row part of ``train`` (the class mix of the test set kept)."""
    from examples._common import stratified_split

    return stratified_split(train, ex.LABEL, 1.0 - limit / len(train), ex.SEED)[0] if limit and limit < len(train) else train


def run(args: Any) -> int:
    start = time.perf_counter()
    folder, paths = prepare_example(args, NAME, "financial_phrasebank", lambda ex, train: train_subset(ex, train, args.train_limit))
    prep_s = elapsed(start)
    cfg = config(paths, args.smoke)
    o = fit(cfg, Path(paths["train"]).parent, folder / "runs" / "finetune", progress=args.progress, label="fine-tune")
    subset = "smoke subset" if args.smoke else (f"{o.n_train}-row stratified train subset" if args.train_limit else f"full train part ({o.n_train} rows)")
    t = cfg["train"]
    v = f"MiniLM-L6 (zoo) fine-tune, {o.epochs_run} ep, bs {t['batch_size']}, lr {t['lr']:g}, len 64, seeded 80/20 split, {subset}"
    write_quality_result(NAME, metric_rows(NAME, v, o, METRICS), args, start, prep_s)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_guard(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
