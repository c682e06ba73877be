"""Framework overhead: one mmagent training step vs. the bare PyTorch step of the same model.

    python -m benchmarks.overhead [--smoke] [--threads 1]

Model: zoo MiniLM-L6 text encoder (length 64) + the built-in numeric MLP (4 columns), concat
fusion, a 77-way classification head; batch 32. Rows: Banking77 queries joined until they fill
the 64 tokens (so every batch is 32 x 64), with four numeric columns computed from the text
(Banking77 absent: the benchmark fails, it does not measure something else).

- **mmagent**: ``mmagent.training.trainer.train`` itself (MultimodalDataset + Collator in a
  DataLoader, Accelerate, AdamW, warmup/cosine schedule, gradient clipping, JSONL log); its loop
  is timed from outside (``benchmarks/_harness.py``), the trainer is not modified.
- **bare**: the same ``MultimodalModel`` (``build_model``), the same batches in the same order
  (the trainer's sampler; every row fills the 64 tokens, so both sides pad alike), collated
  beforehand, then only ``forward -> loss -> backward -> AdamW.step -> zero_grad`` (the same
  parameter groups and AdamW kernel as the trainer's, the same thread count). Neither side's
  timed steps include validation (the trainer validates after its timed loop).

The two run in separate processes that alternate step by step (lockstep), ``--repeats`` times
with the starting side swapped; ms/step are medians over the measured steps (the first
``--warmup`` of each run dropped). The headline ratio is the median over lockstep pairs of
mmagent step / bare step (each pair ran back to back, under the same load); each run's
median(mmagent) / median(bare) is reported too.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

from benchmarks import _harness as H
from benchmarks.common import Timer, base_parser, write_result

NAME = "overhead"
NUMERIC = ["n_words", "n_chars", "n_digits", "n_upper"]
TARGET_RATIO = 1.10


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="measured steps per variant per repeat (default 10; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="steps dropped at the start of each run (default 2; smoke 1)")
    p.add_argument("--repeats", type=int, default=None, help="lockstep runs, starting side swapped each time (default 2; smoke 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (smoke 4)")
    p.add_argument("--max-length", type=int, default=None, help="text tokens (default 64; smoke 16)")
    return H.parse(p, argv, ("mmagent", "bare"), 480, (("steps", 10, 3), ("warmup", 2, 1), ("repeats", 2, 1), ("batch_size", 32, 4), ("max_length", 64, 16)))


# -- data -------------------------------------------------------------------------------------
def make_tables(args: argparse.Namespace, out_dir: Path) -> str:
    """train.csv (batch x (warmup + steps) rows) and validation.csv (one batch); returns the text source."""
    import pandas as pd

    from benchmarks import _banking77 as B

    n_train = args.batch_size * (args.warmup + args.steps)
    rng = random.Random(0)
    B.require(args.data_root)  # no data: fail, never measure something else silently
    from examples import banking77

    frame = banking77.load(args.data_root)["train"]
    texts, labels, source = frame[B.TEXT].tolist(), frame[B.LABEL].tolist(), "Banking77 queries"
    rows = []
    for _ in range(n_train + args.batch_size):
        picks = [rng.randrange(len(texts)) for _ in range(max(4, args.max_length // 8))]
        text = " ".join(texts[i] for i in picks)  # long enough to fill max_length tokens
        rows.append(
            {
                "text": text,
                "n_words": len(text.split()),
                "n_chars": len(text),
                "n_digits": sum(c.isdigit() for c in text),
                "n_upper": sum(c.isupper() for c in text),
                "intent": labels[picks[0]],
            }
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows[:n_train]).to_csv(out_dir / "train.csv", index=False)
    pd.DataFrame(rows[n_train:]).to_csv(out_dir / "validation.csv", index=False)
    return source


def experiment(args: argparse.Namespace, table_dir: Path) -> Any:
    from mmagent.config import config_from_dict

    raw = {
        "data": {"train": "train.csv", "validation": "validation.csv"},
        "inputs": [
            {"column": "text", "modality": "text", "encoder": {"source": "zoo", "name": "minilm-l6", "max_length": args.max_length}},
            {"column": NUMERIC, "modality": "numeric"},
        ],
        "targets": [{"column": "intent", "type": "classification"}],
        "fusion": {"type": "concat"},
        "train": {"epochs": 1, "max_steps": args.warmup + args.steps, "batch_size": args.batch_size, "seed": 42},
    }
    return config_from_dict(raw, base_dir=table_dir)


# -- workers ----------------------------------------------------------------------------------
def worker_mmagent(args: argparse.Namespace) -> dict[str, Any]:
    from mmagent.training.trainer import train

    config = experiment(args, args.table_dir)
    with H.timed_tqdm(H.CLOCK, last_phase="epoch 1/1"):
        train(config, args.run_dir, progress=False)
    return H.CLOCK.summary(variant="mmagent")


def worker_bare(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mmagent.data.dataset import Collator, MultimodalDataset
    from mmagent.training.sampling import train_sampler
    from mmagent.training.speedups import make_optimizer, use_fused
    from mmagent.training.splits import load_splits
    from mmagent.training.trainer import build_model, param_groups

    config = experiment(args, args.table_dir)
    torch.manual_seed(config.train.seed)
    splits = load_splits(config)
    model = build_model(config, splits.train)
    # the same batches in the same order as the trainer's first epoch (its sampler), collated by
    # mmagent beforehand, and the same optimizer (AdamW with the kernel the trainer picks)
    ds = MultimodalDataset(splits.train, model, training=True)
    b = config.train.batch_size
    order = list(train_sampler(ds, b, config.train.seed, config.train.group_by_length))
    collate = Collator(model)
    batches = [collate([ds[i] for i in order[k : k + b]]) for k in range(0, len(order), b)]
    shapes = sorted({tuple(x["inputs"]["text"]["input_ids"].shape) for x in batches})
    optimizer = make_optimizer(param_groups(model, config), use_fused(config.train.fused_optimizer, torch.device("cpu")))
    model.train()
    for batch in H.CLOCK.iterate(batches, "epoch 1/1"):
        out = model(batch["inputs"], batch["present"])
        loss = model.loss(out, batch["targets"])[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    H.CLOCK.baton.finish()
    return H.CLOCK.summary(variant="bare", batch_shapes=[list(s) for s in shapes])


# -- driver -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        return H.worker_main(args, worker_mmagent if args.worker == "mmagent" else worker_bare)

    thread_info, work = H.driver_setup(args, NAME)
    table_dir = work / "tables"
    source = make_tables(args, table_dir)
    common = H.worker_args(args, table_dir, "steps", "warmup", "batch_size", "max_length")
    per: dict[str, list[float]] = {"mmagent": [], "bare": []}
    fetch: list[float] = []
    rss: dict[str, float] = {"mmagent": 0.0, "bare": 0.0}
    pair_ratios: list[float] = []
    repeat_ratios: list[float] = []
    threads = None
    with Timer() as total:
        for rep in range(args.repeats):
            run_dir = H.fresh_dir(work / f"run{rep}")
            cmds = {
                "mmagent": H.worker_cmd("benchmarks.overhead", "--worker", "mmagent", "--run-dir", str(run_dir), *common),
                "bare": H.worker_cmd("benchmarks.overhead", "--worker", "bare", *common),
            }
            order = ["mmagent", "bare"] if rep % 2 == 0 else ["bare", "mmagent"]
            results = dict(zip(order, H.run_lockstep([cmds[o] for o in order], args.timeout)))
            mm = H.step_seconds(results["mmagent"], "epoch", args.warmup)
            bare = H.step_seconds(results["bare"], "epoch", args.warmup)
            per["mmagent"] += mm
            per["bare"] += bare
            fetch += [s["fetch_s"] for s in results["mmagent"]["steps"] if s["phase"].startswith("epoch")][args.warmup :]
            pair_ratios += [m / b for m, b in zip(mm, bare)]
            repeat_ratios.append(H.median(mm) / H.median(bare))
            threads = results["mmagent"]["torch_threads"]
            for v in rss:
                rss[v] = max(rss[v], results[v]["peak_rss_mb"])
            print(
                f"repeat {rep + 1}/{args.repeats} ({order[0]} first): mmagent {H.median(mm) * 1e3:.1f} ms/step, bare {H.median(bare) * 1e3:.1f} ms/step, ratio {repeat_ratios[-1]:.3f}",
                flush=True,
            )
    wall = round(total.seconds, 1)

    mm_ms, bare_ms = H.median(per["mmagent"]) * 1e3, H.median(per["bare"]) * 1e3
    ratio = H.median(pair_ratios)  # steps next to each other in time saw the same load
    setting = f"MiniLM-L6 + numeric MLP, b{args.batch_size} L{args.max_length}, {threads} thread(s)"
    n = len(per["mmagent"])
    rows = [
        {"benchmark": NAME, "variant": f"mmagent train step ({setting})", "metric": "ms/step (median)", "value": round(mm_ms, 1), "wall_s": wall},
        {
            "benchmark": NAME,
            "variant": f"bare PyTorch step, pre-collated ({setting})",
            "metric": "ms/step (median)",
            "value": round(bare_ms, 1),
            "wall_s": wall,
        },
        {
            "benchmark": NAME,
            "variant": f"mmagent / bare, median of per-step ratios ({n} lockstep pairs, {args.repeats} runs)",
            "metric": "ratio",
            "value": round(H.median(pair_ratios), 3),
            "reference": f"<= {TARGET_RATIO:.2f}",
            "wall_s": wall,
        },
        {
            "benchmark": NAME,
            "variant": "mmagent / bare, median over runs of each run's median ratio",
            "metric": "ratio",
            "value": round(H.median(repeat_ratios), 3),
            "reference": f"<= {TARGET_RATIO:.2f}",
            "wall_s": wall,
        },
        {
            "benchmark": NAME,
            "variant": "mmagent: data part of the step (Dataset + Collator + loader)",
            "metric": "ms/step (median)",
            "value": round(H.median(fetch) * 1e3, 2),
            "wall_s": wall,
        },
        {"benchmark": NAME, "variant": "mmagent worker process", "metric": "peak RSS MB", "value": rss["mmagent"], "wall_s": wall},
        {"benchmark": NAME, "variant": "bare worker process", "metric": "peak RSS MB", "value": rss["bare"], "wall_s": wall},
    ]
    extra = {"text_source": source, "steps_s": per, "pair_ratios": pair_ratios, "repeat_ratios": repeat_ratios, **thread_info, "threads": threads}
    write_result(NAME, rows, args.smoke, extra, model="zoo minilm-l6 (len 64) + builtin numeric MLP, concat, 77-way head")
    print(
        f"overhead: mmagent {mm_ms:.1f} ms/step vs bare {bare_ms:.1f} ms/step; median per-step ratio {ratio:.3f}x (target <= {TARGET_RATIO:.2f}x); per-run ratios {[round(r, 3) for r in repeat_ratios]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
