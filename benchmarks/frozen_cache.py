"""Frozen-encoder feature cache on vs. off: epoch time of the mmagent trainer on Banking77.

    python -m benchmarks.frozen_cache [--smoke] [--limit N] [--epochs E] [--threads 1]

Model: zoo MiniLM-L6 with ``freeze: all`` (a linear probe: only fusion + head train), concat
fusion, batch 32, ``--epochs`` epochs on a class-balanced ``--limit``-row subset prepared by
``examples.banking77.prepare``. Both runs are ``mmagent.training.trainer.train`` itself, with
``train.cache_frozen_encoders`` true / false; nothing else differs.

- epoch time: the training loop of one epoch (batches fetched + steps; validation excluded);
- cache build: the one pass of the frozen encoder over train + validation (cache on only);
- time to E epochs: cache build + E epoch times (on) vs E epoch times (off).

The two runs are separate processes taking turns step by step (``_harness``); peak RSS per process.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks import _banking77 as B
from benchmarks import _harness as H
from benchmarks.common import Timer, base_parser, write_result

NAME = "frozen_cache"
CACHE_PHASE = "caching frozen encoders"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="training rows, class-balanced (default 1540 = 20 per intent; smoke 77)")
    p.add_argument("--epochs", type=int, default=None, help="default 3 (smoke 2)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (smoke 8)")
    return H.parse(p, argv, ("on", "off"), 900, (("limit", 1540, 77), ("epochs", 3, 2), ("batch_size", 32, 8)))


def experiment(args: argparse.Namespace, cache: bool) -> Any:
    from mmagent.config import config_from_dict

    raw = {
        "data": {"train": "train.csv", "validation": "validation.csv"},
        "inputs": [{"column": B.TEXT, "modality": "text", "encoder": {"source": "zoo", "name": "minilm-l6", "freeze": "all"}}],
        "targets": [{"column": B.LABEL, "type": "classification"}],
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": 42, "cache_frozen_encoders": cache},
    }
    return config_from_dict(raw, base_dir=args.table_dir)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from mmagent.training.trainer import train

    config = experiment(args, args.worker == "on")
    with H.timed_tqdm(H.CLOCK, phases=("epoch ", CACHE_PHASE), last_phase=f"epoch {args.epochs}/{args.epochs}"):
        result = train(config, args.run_dir, progress=False)
    return H.CLOCK.summary(variant=args.worker, best_validation=result.best_score)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        return H.worker_main(args, worker)

    B.require(args.data_root)
    thread_info, work = H.driver_setup(args, NAME)
    table_dir = work / "tables"
    paths = B.prepare(args.data_root, table_dir, args.limit or None)
    n_train, n_val = len(B.read(paths["train"])), len(B.read(paths["validation"]))
    common = H.worker_args(args, table_dir, "epochs", "batch_size")
    cmds = [H.worker_cmd("benchmarks.frozen_cache", "--worker", v, "--run-dir", str(H.fresh_dir(work / f"run-{v}")), *common) for v in ("on", "off")]
    with Timer() as total:
        on, off = H.run_lockstep(cmds, args.timeout)
    wall = round(total.seconds, 1)

    def epochs(res: dict[str, Any]) -> list[float]:
        return [sum(v) for _, v in sorted(H.phase_times(res["steps"], "epoch ").items())]

    on_epochs, off_epochs = epochs(on), epochs(off)
    build = sum(s["fetch_s"] + s["body_s"] for s in on["steps"] if s["phase"] == CACHE_PHASE)
    on_ep, off_ep = H.median(on_epochs), H.median(off_epochs)
    setting = f"frozen MiniLM-L6, Banking77 {n_train} train + {n_val} validation rows, b{args.batch_size}, {on['torch_threads']} thread(s)"
    rows = [
        {"benchmark": NAME, "variant": f"cache on ({setting})", "metric": "epoch s (median)", "value": round(on_ep, 3), "wall_s": wall},
        {"benchmark": NAME, "variant": f"cache off ({setting})", "metric": "epoch s (median)", "value": round(off_ep, 3), "wall_s": wall},
        {"benchmark": NAME, "variant": "cache off / cache on, epoch time", "metric": "ratio", "value": round(off_ep / on_ep, 1), "wall_s": wall},
        {
            "benchmark": NAME,
            "variant": "cache on: building the cache (train + validation, once)",
            "metric": "seconds",
            "value": round(build, 2),
            "wall_s": wall,
        },
        {
            "benchmark": NAME,
            "variant": f"cache on: build + {args.epochs} epochs",
            "metric": "seconds",
            "value": round(build + sum(on_epochs), 2),
            "wall_s": wall,
        },
        {"benchmark": NAME, "variant": f"cache off: {args.epochs} epochs", "metric": "seconds", "value": round(sum(off_epochs), 2), "wall_s": wall},
        {"benchmark": NAME, "variant": "cache on worker process", "metric": "peak RSS MB", "value": on["peak_rss_mb"], "wall_s": wall},
        {"benchmark": NAME, "variant": "cache off worker process", "metric": "peak RSS MB", "value": off["peak_rss_mb"], "wall_s": wall},
    ]
    extra = {
        "epoch_s": {"on": on_epochs, "off": off_epochs},
        "best_validation_accuracy": {"on": on["best_validation"], "off": off["best_validation"]},
        **thread_info,
        "threads": on["torch_threads"],
    }
    write_result(NAME, rows, args.smoke, extra, model="zoo minilm-l6 (max_length 128), frozen; concat, 77-way head")
    print(
        f"frozen_cache: epoch {on_ep:.3f} s (on) vs {off_ep:.3f} s (off) -> {off_ep / on_ep:.1f}x; cache build {build:.2f} s; "
        f"validation accuracy on {on['best_validation']:.4f} / off {off['best_validation']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
