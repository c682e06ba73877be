"""StockNet subset (10 stocks, 2014-2015): next-day up/down from past prices, tweets, or both.

    python -m benchmarks.stocknet [--data-root DIR] [--smoke]

Rows come from ``examples/stocknet.py``: one per (stock, trading day) with the StockNet labels
(up > 0.55 %, down < -0.5 %, days in between dropped), numeric features from prices strictly
before the day, and the stock's tweets of the 5 calendar days before it; chronological split
(train before 2015-08-01, validation Aug-Sep 2015, test Oct-Dec 2015). Variants:

* prices only: the builtin numeric MLP;
* text only: zoo ``minilm-l6`` (128 tokens), frozen, features cached;
* fused: both, gated fusion (hidden 128, modality dropout 0.1, as in the example);
* majority class of the training set, for scale.

Reported: test accuracy and Matthews correlation (MCC). The StockNet paper's figures (about 58 %,
MCC about 0.08) are on all 88 stocks with its own model; this 10-stock subset does not reproduce
them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._quality import (
    SPLITS,
    SharedStore,
    elapsed,
    ensure_examples_importable,
    experiment_config,
    fit,
    main_guard,
    mcc,
    prepare_example,
    quality_parser,
    row,
    write_quality_result,
)

NAME = "stocknet"
REF_ACC = "~0.58 (StockNet paper, 88 stocks, not verified)"
REF_MCC = "~0.08 (StockNet paper, 88 stocks, not verified)"
SMOKE_STEPS = 3


def parser():
    return quality_parser(__doc__.strip().splitlines()[0])


def config(paths: dict[str, Path], which: str, smoke: bool) -> dict[str, Any]:
    ensure_examples_importable()
    from examples import stocknet as ex

    inputs = []
    if which in ("both", "text"):
        inputs.append({"column": ex.TEXT, "modality": "text", "encoder": {"source": "zoo", "name": "minilm-l6", "max_length": 128, "freeze": "all"}})
    if which in ("both", "prices"):
        inputs.append({"column": list(ex.PRICE_FEATURES), "modality": "numeric", "name": "prices", "encoder": {"source": "builtin", "name": "mlp"}})
    fused = len(inputs) > 1
    train = {
        "epochs": 30,
        "batch_size": 32,
        "lr": 1e-3,
        "head_lr": 1e-3,
        "seed": 42,
        "metric": f"{ex.LABEL}/accuracy",
        "early_stopping_patience": 8,
        "cache_frozen_encoders": True,
    }
    fusion = {"type": "gated" if fused else "concat", "hidden_dim": 128, "modality_dropout": 0.1 if fused else 0.0}
    return experiment_config(paths, inputs, ex.LABEL, train, fusion, SMOKE_STEPS if smoke else None)


def majority_rows(paths: dict[str, Path], label: str, subset: str) -> list[dict[str, Any]]:
    import pandas as pd

    train = pd.read_csv(paths["train"], dtype=str, keep_default_na=False)
    test = pd.read_csv(paths["test"], dtype=str, keep_default_na=False)
    majority = train[label].value_counts().idxmax()
    acc = float((test[label] == majority).mean())
    v = f"majority class of train ('{majority}'), {subset}"
    baseline = "no model: the majority class of train"
    return [
        row(NAME, v, "test accuracy", acc, 0.0, REF_ACC, n_test=len(test), model=baseline),
        row(NAME, v, "test MCC", 0.0, 0.0, REF_MCC, n_test=len(test), model=baseline),
    ]


NO_TWEETS = "(no tweets)"


def text_only_tables(paths: dict[str, Path], out_dir: Path, column: str) -> tuple[dict[str, Path], dict[str, int]]:
    """The same rows with an empty tweet window written as ``(no tweets)``: a text-only model
    needs some input in every row, and all variants must be scored on the same test rows."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    new, empty = {}, {}
    for split in SPLITS:
        frame = pd.read_csv(paths[split], dtype=str, keep_default_na=False)
        blank = frame[column].str.strip() == ""
        empty[split] = int(blank.sum())
        frame.loc[blank, column] = NO_TWEETS
        new[split] = out_dir / f"{split}.csv"
        frame.to_csv(new[split], index=False)
    return new, empty


def run(args: Any) -> int:
    from examples import stocknet as ex

    start = time.perf_counter()
    folder, paths = prepare_example(args, NAME, "stocknet")
    text_paths, empty = text_only_tables(paths, folder / "data_text_only", ex.TEXT)
    prep_s = elapsed(start)
    store = SharedStore()
    rows: list[dict[str, Any]] = []
    subset = "smoke subset" if args.smoke else "10 stocks, chronological split"
    labels = {
        "prices": "prices only (builtin MLP on 9 price features)",
        "text": f"tweets only (MiniLM-L6 zoo, frozen + cached, 128 tokens; '{NO_TWEETS}' where none)",
        "both": "tweets + prices, gated fusion (MiniLM frozen + MLP, modality dropout 0.1; no tweets = text missing)",
    }
    for which in ("prices", "text", "both"):
        tables = text_paths if which == "text" else paths
        o = fit(config(tables, which, args.smoke), Path(tables["train"]).parent, folder / "runs" / which, store, progress=args.progress, label=which)
        v = f"{labels[which]}, {o.epochs_run} ep, {subset}"
        rows += [
            row(NAME, v, "test accuracy", o.metric("accuracy"), o.wall_s, REF_ACC, n_test=o.n_test, n_train=o.n_train, model=o.model),
            row(NAME, v, "test MCC", mcc(o), o.wall_s, REF_MCC, n_test=o.n_test, model=o.model),
        ]
    rows += majority_rows(paths, ex.LABEL, subset)
    write_quality_result(NAME, rows, args, start, prep_s, rows_without_tweets=empty)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_guard(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
