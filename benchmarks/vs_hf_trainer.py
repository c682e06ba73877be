"""mmagent `train` vs the Hugging Face `Trainer`, side by side: Banking77, the same MiniLM weights.

    python -m benchmarks.vs_hf_trainer               # full train split (9,002 rows), 3 epochs, batch 32, lr 5e-5
    python -m benchmarks.vs_hf_trainer --smoke       # 154 rows, 3 steps (CI; in `benchmarks.run_all --smoke`)

Three variants, each in its own worker process, taking turns one optimizer step at a time
(``benchmarks/_harness.py``), so all three see the same machine load:

- **mmagent**: ``mmagent train`` (the CLI command, in-process) on a config that sets only the
  encoder (zoo ``minilm-l6``, ``max_length``), epochs, batch size, lr, seed and the selection
  metric; everything else is mmagent's default (AdamW, fused where torch has the kernel, head lr
  1e-3, 10 % warmup + cosine, weight decay 0.01, padding to the longest row of the batch,
  length-grouped batches, text tokenized once, mean pooling + linear head, bf16 on a GPU that has
  it, torch threads from its thread policy). ``--set KEY=VALUE`` changes its config (e.g.
  ``--set train.group_by_length=false`` to see one feature's share).
- **hf**: ``transformers.Trainer`` with ``AutoModelForSequenceClassification`` built from the
  zoo package's own model folder (the same ``model.safetensors``, sha256-checked like mmagent's),
  the same epochs / batch size / lr / seed / ``max_length``, and the Trainer's defaults for the
  rest (its default optimizer, linear decay without warmup, no weight decay,
  ``DataCollatorWithPadding``, random batches). Text is tokenized once before training, as
  Hugging Face's tutorials do (``tokenize_s``, not part of the step times).
- **hf_grouped**: the same with length-grouped batches (``group_by_length`` /
  ``train_sampling_strategy="group_by_length"``).

The same on all sides: ``max_length``, epochs, batch size, lr, seed; one loader process (no
DataLoader workers: mmagent's default for text, the Trainer's ``dataloader_num_workers=0``); the
same epoch selection: validation accuracy after each epoch, the best epoch's weights evaluated
once on the test table (the Trainer: ``eval_strategy="epoch"``, ``load_best_model_at_end``),
validation and saving outside the timed steps. Precision: ``--hf-precision match`` (default)
gives the Trainer the precision mmagent runs in (fp32 on CPU unless ``--set
train.mixed_precision=bf16``, bf16 on a GPU that has it); ``default`` leaves its fp32.

Threads: ``--threads N`` gives every side N. Without it mmagent chooses by its thread policy
(``mmagent/training/threads.py``) and the Trainer runs with torch's default (what its users get;
``OMP_NUM_THREADS`` holds for both), or with mmagent's choice under ``--hf-threads match``. Each
side's thread count and the machine load are in the result.

samples/s = training rows seen / summed step time (batch fetching included, validation and
checkpoint saving excluded). The goal (issue 14): mmagent >= 1.5x the default Trainer's samples/s
at >= its test accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks import _banking77 as B
from benchmarks import _harness as H
from benchmarks.common import Timer, base_parser, write_result

NAME = "vs_hf_trainer"
SEED = 42
VARIANTS = ("mmagent", "hf", "hf_grouped")
MODEL = "zoo minilm-l6 (all-MiniLM-L6-v2), 77-way classifier"
TARGET_SPEEDUP = 1.5
SMOKE_LIMIT = 154  # examples.banking77.SMOKE_LIMIT: 2 rows per intent


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help=f"training rows, class-balanced (default 0 = the full train split; smoke {SMOKE_LIMIT})")
    p.add_argument("--epochs", type=int, default=None, help="default 3 (smoke 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (smoke 8)")
    p.add_argument("--max-steps", type=int, default=None, help="stop every variant after this many optimizer steps (smoke 3)")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate (mmagent: of the encoder; its head keeps its default 1e-3)")
    p.add_argument("--max-length", type=int, default=128, help="tokens (Banking77's longest query has 98)")
    p.add_argument(
        "--hf-precision", choices=("match", "default"), default="match", help="match: the Trainer gets mmagent's precision; default: the Trainer's fp32"
    )
    p.add_argument(
        "--hf-threads", choices=("default", "match"), default="default", help="without --threads: torch's default for the Trainer, or mmagent's choice"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key of mmagent's config (repeatable)")
    return H.parse(p, argv, VARIANTS, 6 * 3600, (("limit", 0, SMOKE_LIMIT), ("epochs", 3, 1), ("batch_size", 32, 8), ("max_steps", None, 3)))


def use_bf16(args: argparse.Namespace) -> bool:
    """The precision mmagent trains in: its config's ``train.mixed_precision`` (``auto``: bf16 on a
    GPU that has it)."""
    import torch

    choice = mmagent_config(args)["train"].get("mixed_precision", "auto")
    return choice == "bf16" or (choice == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())


# -- mmagent ----------------------------------------------------------------------------------
def mmagent_config(args: argparse.Namespace) -> dict[str, Any]:
    train: dict[str, Any] = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": SEED, "metric": f"{B.LABEL}/accuracy"}
    if args.max_steps:
        train["max_steps"] = args.max_steps
    from mmagent.config import apply_overrides

    raw = {
        "data": {"train": "train.csv", "validation": "validation.csv", "test": "test.csv"},
        "inputs": [{"column": B.TEXT, "modality": "text", "encoder": {"source": "zoo", "name": "minilm-l6", "max_length": args.max_length}}],
        "targets": [{"column": B.LABEL, "type": "classification"}],
        "train": train,
    }
    return apply_overrides(raw, list(args.overrides))


def speed_settings(run_dir: Path) -> dict[str, Any]:
    """What the trainer logged about its speed settings (threads and why, batches, AdamW kernel...)."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") == "speed":
            return {k: v for k, v in entry.items() if k != "event"}
    return {}


def worker_mmagent(args: argparse.Namespace) -> dict[str, Any]:
    import click

    from mmagent.cli import app
    from mmagent.runs import read_metrics_log

    cfg = args.table_dir / "mmagent.yaml"
    with H.timed_tqdm(H.CLOCK, last_phase=f"epoch {args.epochs}/{args.epochs}"):
        try:
            app(["train", str(cfg), "-o", str(args.run_dir), "--quiet"], standalone_mode=False)
        except click.exceptions.Exit as e:
            if e.exit_code:
                raise
    test = json.loads((args.run_dir / "metrics.json").read_text())["test"][B.LABEL]
    scores = [h["validation"][B.LABEL]["accuracy"] for h in read_metrics_log(args.run_dir, "epoch")]
    best = 1 + max(range(len(scores)), key=lambda i: (scores[i], -i))
    speed = speed_settings(args.run_dir)
    precision = "bf16" if speed.get("mixed_precision") == "bf16" else "fp32"
    return H.CLOCK.summary(
        variant="mmagent",
        accuracy=test["accuracy"],
        macro_f1=test["macro_f1"],
        n_test=test["n"],
        best_epoch=best,
        precision=precision,
        optimizer="AdamW (fused)" if speed.get("fused_optimizer") else "AdamW (foreach)",
        sampler="length-grouped" if speed.get("batches") == "LengthGroupedSampler" else "random",
        speed=speed,
    )


# -- Hugging Face Trainer ---------------------------------------------------------------------
def training_arguments(args: argparse.Namespace, output_dir: Path, grouped: bool) -> Any:
    """The Trainer's defaults, except what both sides share (epochs, batch, lr, seed, steps), the
    shared epoch selection, and length grouping for ``grouped``."""
    import dataclasses

    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    kw: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": args.epochs,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": args.batch_size,
        "learning_rate": args.lr,
        "seed": SEED,
        "max_steps": args.max_steps or -1,
        "save_strategy": "epoch",
        "save_total_limit": 1,  # the best and the last checkpoint only: disk space, untimed
        "load_best_model_at_end": True,
        "metric_for_best_model": "accuracy",
        "report_to": "none",
        "dataloader_num_workers": 0,  # mmagent's default for text (data.num_workers: auto)
        ("eval_strategy" if "eval_strategy" in fields else "evaluation_strategy"): "epoch",
    }
    if args.hf_precision == "match" and use_bf16(args):
        kw["bf16"] = True
    if grouped:  # transformers >= 5 names it train_sampling_strategy
        kw.update({"group_by_length": True} if "group_by_length" in fields else {"train_sampling_strategy": "group_by_length"})
    return TrainingArguments(**kw)


def worker_hf(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from sklearn.metrics import f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback, set_seed

    from mmagent.encoders.zoo import package_dir, verified_weight_path

    grouped = args.worker == "hf_grouped"
    verified_weight_path("minilm-l6")  # the very file mmagent fine-tunes
    folder = str(package_dir("minilm-l6") / "model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    frames = {s: B.read(args.table_dir / f"{s}.csv") for s in ("train", "validation", "test")}
    labels = sorted(set(frames["train"][B.LABEL]))
    index = {lab: i for i, lab in enumerate(labels)}

    with Timer() as tok_time:
        data = {}
        for split, frame in frames.items():
            enc = tokenizer(frame[B.TEXT].tolist(), truncation=True, max_length=args.max_length)
            ys = [index.get(v, -100) for v in frame[B.LABEL]]  # a label unseen in training can only be wrong
            data[split] = [{**{k: v[i] for k, v in enc.items()}, "labels": ys[i]} for i in range(len(frame))]

    def compute_metrics(pred: Any) -> dict[str, float]:
        y, p = np.asarray(pred.label_ids), np.asarray(pred.predictions).argmax(-1)
        return {"accuracy": float((p == y).mean())}

    epochs_total = args.epochs

    class StepTimes(TrainerCallback):
        """Times each optimizer step for the lockstep (from the previous step's end, so fetching
        the batch is included; validation and saving between epochs are not)."""

        phase = ""

        def on_epoch_begin(self, targs: Any, state: Any, control: Any, **kw: Any) -> None:
            self.phase = f"epoch {int(round(state.epoch or 0)) + 1}/{epochs_total}"
            H.CLOCK.start()

        def on_step_end(self, targs: Any, state: Any, control: Any, **kw: Any) -> None:
            H.CLOCK.record(self.phase, last=state.global_step >= state.max_steps)

    set_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index)
    targs = training_arguments(args, args.run_dir, grouped)
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[StepTimes()],
    )
    trainer.train()
    best_step = trainer.state.best_model_checkpoint
    evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
    best = 1 + max(range(len(evals)), key=lambda i: (evals[i]["eval_accuracy"], -i)) if evals else -1
    out = trainer.predict(data["test"])
    y, p = np.asarray(out.label_ids), np.asarray(out.predictions).argmax(-1)
    acc = float((p == y).mean())
    f1 = float(f1_score(y, p, average="macro", zero_division=0))  # over the labels that occur
    precision = "bf16" if targs.bf16 else "fp32"
    H.fresh_dir(args.run_dir)  # checkpoints: hundreds of MB, not needed any more
    return H.CLOCK.summary(
        variant=args.worker,
        accuracy=acc,
        macro_f1=f1,
        n_test=len(y),
        best_epoch=best,
        best_checkpoint=best_step,
        precision=precision,
        optimizer=str(getattr(targs.optim, "value", targs.optim)),
        sampler="length-grouped" if grouped else "random",
        tokenize_s=round(tok_time.seconds, 2),
    )


# -- driver -----------------------------------------------------------------------------------
def choose_threads(args: argparse.Namespace) -> tuple[dict[str, Any], Path, int | None]:
    """``--threads N``: every side gets N (``H.driver_setup``). Otherwise mmagent's worker decides by
    its own policy; the Trainer's get torch's default, or under ``--hf-threads match`` the count
    that policy picks here (returned third)."""
    import os

    from benchmarks.common import load_avg

    if args.threads is not None:
        info, work = H.driver_setup(args, NAME)
        return info, work, None
    from mmagent.training.threads import choose_threads as policy
    from mmagent.training.threads import cpu_facts

    choice = policy(cpu_facts())
    info = {
        "threads_reason": f"mmagent: its thread policy ({choice.reason}); Trainer: "
        + (f"the same count, {choice.threads}" if args.hf_threads == "match" else "torch's default"),
        "load_avg_1min_at_start": load_avg(),
        "cpu_cores": os.cpu_count(),
    }
    print(f"[bench] threads: {info['threads_reason']}", flush=True)
    work = args.work_dir / (f"{NAME}-smoke" if args.smoke else NAME)
    return info, work, choice.threads if args.hf_threads == "match" else None


def label(res: dict[str, Any], subset: str) -> str:
    v, prec = res["variant"], res["precision"]
    if v == "mmagent":
        sampler = "length-grouped batches" if res.get("sampler") == "length-grouped" else "random batches"
        return f"mmagent train (defaults: {res['optimizer']}, head lr 1e-3, warmup + cosine, dynamic padding, {sampler}; {prec}; {subset})"
    sampler = "length-grouped batches" if v == "hf_grouped" else "random batches"
    return f"HF Trainer + AutoModelForSequenceClassification (defaults: {res['optimizer']}, linear decay, DataCollatorWithPadding, {sampler}; {prec}; {subset})"


def summarize(results: dict[str, dict[str, Any]], seen: int, subset: str, wall: float) -> list[dict[str, Any]]:
    """The result rows: per variant speed, accuracy, best epoch and memory; then mmagent's ratios
    to each Trainer variant. ``seen``: training rows each variant processed."""
    rows: list[dict[str, Any]] = []
    speed: dict[str, float] = {}

    def add(variant: str, metric: str, value: Any, reference: Any = None) -> None:
        rows.append(
            {
                "benchmark": NAME,
                "variant": variant,
                "metric": metric,
                "value": value,
                "wall_s": wall,
                **({"reference": reference} if reference is not None else {}),
            }
        )

    for v in VARIANTS:
        res = results[v]
        steps = H.step_seconds(res, "epoch")
        speed[v] = seen / sum(steps)
        text = label(res, subset)
        add(text, "train samples/s", round(speed[v], 2))
        add(text, "ms/step (median)", round(H.median(steps) * 1e3, 1))
        add(text, "test accuracy", round(res["accuracy"], 4))
        add(text, "test macro-F1", round(res["macro_f1"], 4))
        add(text, "best epoch (validation accuracy)", res["best_epoch"])
        add(text, "peak RSS MB", res["peak_rss_mb"])
        add(text, "torch threads", res["torch_threads"])
    threads = results["mmagent"]["torch_threads"]
    for v, what in (("hf", "HF Trainer defaults"), ("hf_grouped", "HF Trainer group_by_length")):
        add(
            f"mmagent / {what} ({threads} vs {results[v]['torch_threads']} thread(s))",
            "samples/s ratio",
            round(speed["mmagent"] / speed[v], 3),
            f">= {TARGET_SPEEDUP} (vs defaults)" if v == "hf" else None,
        )
        add(f"mmagent - {what}", "test accuracy difference", round(results["mmagent"]["accuracy"] - results[v]["accuracy"], 4), ">= 0" if v == "hf" else None)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        return H.worker_main(args, worker_mmagent if args.worker == "mmagent" else worker_hf)

    import yaml

    B.require(args.data_root)
    thread_info, work, hf_threads = choose_threads(args)
    table_dir = work / "tables"
    paths = B.prepare(args.data_root, table_dir, args.limit or None)
    (table_dir / "mmagent.yaml").write_text(yaml.safe_dump(mmagent_config(args), sort_keys=False))
    n_train = len(B.read(paths["train"]))
    common = H.worker_args(args, table_dir, "epochs", "batch_size", "lr", "max_length", "hf_precision", "hf_threads") + (
        ["--max-steps", str(args.max_steps)] if args.max_steps else []
    )
    common += [f"--set={o}" for o in args.overrides]
    cmds = [
        H.worker_cmd(
            "benchmarks.vs_hf_trainer",
            "--worker",
            v,
            "--run-dir",
            str(H.fresh_dir(work / f"{v}-run")),
            *common,
            *(["--threads", str(hf_threads)] if hf_threads and v != "mmagent" else []),
        )
        for v in VARIANTS
    ]
    with Timer() as total:
        results = dict(zip(VARIANTS, H.run_lockstep(cmds, args.timeout)))
    steps = {v: len(H.step_seconds(r, "epoch")) for v, r in results.items()}
    if len(set(steps.values())) != 1:
        raise RuntimeError(f"the variants ran different numbers of steps {steps}: their samples/s would not compare the same work")

    seen = min(n_train * args.epochs, (args.max_steps or 10**12) * args.batch_size)
    budget = f"{args.max_steps} steps x {args.batch_size}" if args.max_steps else f"{n_train} train rows x {args.epochs} epochs, batch {args.batch_size}"
    subset = f"{budget}, lr {args.lr:g}, len {args.max_length}, {results['mmagent']['n_test']} test rows" + (
        ", class-balanced subset" if args.limit else ", full train split"
    )
    rows = summarize(results, seen, subset, round(total.seconds, 1))
    extra = {
        "n_train": n_train,
        "epochs": args.epochs,
        "steps": steps,
        **thread_info,
        "threads": {v: r["torch_threads"] for v, r in results.items()},
        "mmagent_speed_settings": results["mmagent"]["speed"],
        "mmagent_overrides": args.overrides,
        "hf_tokenize_s": {v: results[v]["tokenize_s"] for v in ("hf", "hf_grouped")},
        "steps_s": {v: H.step_seconds(r, "epoch") for v, r in results.items()},
    }
    write_result(NAME, rows, args.smoke, extra, model=MODEL)
    ratio = {r["variant"].split(" (")[0]: r["value"] for r in rows if r["metric"] == "samples/s ratio"}
    print("; ".join(f"{k}: {x:.2f}x" for k, x in ratio.items()) + "; test accuracy " + ", ".join(f"{v} {results[v]['accuracy']:.4f}" for v in VARIANTS))
    return 0 if all(math.isfinite(r["value"]) for r in rows if isinstance(r["value"], float)) else 1


if __name__ == "__main__":
    sys.exit(main())
