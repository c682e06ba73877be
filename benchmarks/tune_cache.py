"""Trial time of `mmagent tune` with and without the cross-trial frozen-encoder cache.

A generated 3-class text table (~300 rows), the zoo MiniLM-L6 text encoder frozen (``freeze: all``),
and a search over the head: learning rate, dropouts, fusion type. The same seeded study runs twice:

- ``tune.cache: off``: every trial computes the frozen encoder's outputs for train and validation
  again (the trainer's own per-run cache);
- ``tune.cache: memory``: the first trial computes them, the later ones reuse them.

Both studies draw the same parameters (same seed), so they must reach the same validation scores;
the printed ratio is mean trial seconds without / with the cache (also over trials 2.. only, where
the cache is warm). Writes ``benchmarks/results/tune_cache.json``.

    python -m benchmarks.tune_cache            # 300 rows, 3 trials per variant
    python -m benchmarks.tune_cache --smoke    # 48 rows, 2 trials, 1 epoch (CI)
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import Timer, base_parser, peak_rss_mb, write_result

TOPICS = {
    "billing": ["invoice", "charged twice", "refund", "payment", "bill", "overcharged"],
    "delivery": ["package", "shipping", "tracking number", "courier", "arrived late", "parcel"],
    "account": ["password", "login", "locked out", "two-factor code", "username", "sign in"],
}
FILLER = ["hello", "please help", "thanks", "I need assistance", "this is urgent", "again", "today", "since Monday"]


def make_table(folder: Path, n: int, seed: int = 0) -> Path:
    """Short support messages; the topic keyword gives the label (one in five messages carries a
    keyword from another topic, so the task is not trivial)."""
    rng = np.random.default_rng(seed)
    labels = list(TOPICS)
    rows = []
    for _ in range(n):
        y = labels[int(rng.integers(len(labels)))]
        words = [str(rng.choice(TOPICS[y]))]
        if rng.random() < 0.2:
            words.append(str(rng.choice(TOPICS[labels[int(rng.integers(len(labels)))]])))
        words += [str(w) for w in rng.choice(FILLER, size=2, replace=False)]
        rng.shuffle(words)
        rows.append({"message": "my " + ", ".join(words), "topic": y})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "messages.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def make_config(table: Path, epochs: int, cache: str) -> dict[str, Any]:
    return {
        "data": {"train": str(table), "validation_fraction": 0.2},
        "inputs": [{"column": "message", "modality": "text", "encoder": {"source": "zoo", "name": "minilm-l6", "freeze": "all", "max_length": 32}}],
        "targets": [{"column": "topic", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 64},
        "train": {"epochs": epochs, "batch_size": 16, "seed": 0},
        "tune": {
            "space": {
                "train.head_lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                "head_dropout": {"type": "float", "low": 0.0, "high": 0.3},
                "fusion.dropout": {"type": "float", "low": 0.0, "high": 0.3},
                "fusion.type": {"type": "categorical", "choices": ["concat", "gated"]},
            },
            "pruner": {"type": "none"},  # every trial runs all epochs: comparable times
            "n_startup_trials": 10,
            "cache": cache,
        },
    }


def run_variant(table: Path, work: Path, trials: int, epochs: int, cache: str) -> dict[str, Any]:
    import optuna

    from mmagent.config import config_from_dict
    from mmagent.search.tune import tune

    out = work / f"cache_{cache}"
    shutil.rmtree(out, ignore_errors=True)
    with Timer() as t:
        result = tune(config_from_dict(make_config(table, epochs, cache)), out, trials=trials)
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{(out / 'study.db').resolve()}")
    done = sorted(study.trials, key=lambda tr: tr.number)
    seconds = [(tr.datetime_complete - tr.datetime_start).total_seconds() for tr in done]
    return {
        "cache": cache,
        "trial_seconds": [round(s, 3) for s in seconds],
        "train_seconds": [tr.user_attrs.get("train_seconds") for tr in done],
        "values": [tr.value for tr in done],
        "params": [tr.params for tr in done],
        "encoder_passes": result.cache.get("builds"),
        "cache_reuses": result.cache.get("hits"),
        "wall_s": round(t.seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="rows in the generated table (default 300; smoke 48)")
    p.add_argument("--trials", type=int, default=None, help="trials per variant (default 3; smoke 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # what mmagent's thread policy defers to
    rows = args.rows or (48 if args.smoke else 300)
    trials = args.trials or (2 if args.smoke else 3)
    epochs = 1 if args.smoke else 3
    work = args.work_dir / "tune_cache"
    table = make_table(work / "data", rows)

    # Warm-up (not timed): imports, the zoo weight file into the page cache, first Accelerator.
    run_variant(make_table(work / "warmup", 24, seed=1), work / "warmup", 1, 1, "off")

    without = run_variant(table, work, trials, epochs, "off")
    with_cache = run_variant(table, work, trials, epochs, "memory")
    mean = statistics.mean
    ratio = mean(without["trial_seconds"]) / mean(with_cache["trial_seconds"])
    warm = mean(without["trial_seconds"][1:]) / mean(with_cache["trial_seconds"][1:]) if trials > 1 else float("nan")
    same = bool(np.allclose(without["values"], with_cache["values"], atol=1e-9))
    rows_out = [
        {
            "benchmark": "tune_cache",
            "variant": f"frozen MiniLM, {rows} rows, cache off",
            "metric": "trial seconds (mean)",
            "value": round(mean(without["trial_seconds"]), 3),
            "wall_s": without["wall_s"],
        },
        {
            "benchmark": "tune_cache",
            "variant": f"frozen MiniLM, {rows} rows, cache on",
            "metric": "trial seconds (mean)",
            "value": round(mean(with_cache["trial_seconds"]), 3),
            "wall_s": with_cache["wall_s"],
        },
        {"benchmark": "tune_cache", "variant": f"{trials} trials each", "metric": "speed-up (off/on)", "value": round(ratio, 3)},
        {"benchmark": "tune_cache", "variant": f"{trials} trials each, trials 2..{trials}", "metric": "speed-up warm (off/on)", "value": round(warm, 3)},
    ]
    write_result(
        "tune_cache",
        rows_out,
        args.smoke,
        model="zoo minilm-l6 (max_length 32), frozen; concat/gated fusion (tuned), 3-way head",
        extra={
            "rows_in_table": rows,
            "trials": trials,
            "epochs": epochs,
            "same_validation_scores": same,
            "without_cache": without,
            "with_cache": with_cache,
            "ratio_mean": ratio,
            "ratio_warm": warm,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "threads": torch.get_num_threads(),
        },
    )
    print(f"trial seconds without cache: {without['trial_seconds']}  with cache: {with_cache['trial_seconds']}")
    print(f"ratio (mean trial time without / with): {ratio:.2f}x; trials 2..: {warm:.2f}x; same validation scores: {same}")
    if not same:
        print("warning: the cached and uncached studies reached different scores", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
