"""Customer service: Banking77 typed queries -> one of 77 intents (text, zoo MiniLM-L6).

Data: ``<data-root>/banking77/{train,test}.csv`` (header ``text,category``) and ``categories.json``.
Banking77 has no validation split, so 10 % of train is held out (seeded, stratified by intent).

    python -m examples.banking77                      # full run: 3 epochs, batch 32, lr 5e-5
    python -m examples.banking77 --smoke              # a tiny subset and a few steps
    python -m examples.banking77 --data-root /data --epochs 1 --set train.lr=1e-4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from examples._common import SEED, balanced_head, base_config, require, run_example, split_limits, stratified_split, with_recipe, write_tables, zoo

NAME = "banking77"
DATA_DIR = "banking77"
REQUIRED = ("train.csv", "test.csv", "categories.json")
SMOKE_LIMIT = 154  # 2 rows per intent
VALIDATION_FRACTION = 0.1
TEXT, LABEL = "text", "intent"


#: A few intents with their replies / actions; the others get the policy's default reply.
PLAYBOOK: dict[str, dict[str, str]] = {
    "card_arrival": {"reply": "New cards usually arrive within 5 working days. You can track yours under Cards > Delivery."},
    "lost_or_stolen_card": {"action": "block_card", "reply": "I have frozen your card. A replacement is on its way."},
    "compromised_card": {"action": "handoff"},
    "request_refund": {"action": "open_refund_case", "reply": "I have opened a refund request; we will update you within 2 days."},
    "exchange_rate": {"reply": "We use the interbank rate at the time of the transaction; see Payments > Rates."},
}


def categories(data_root: Path) -> list[str]:
    """The 77 intent names, in the dataset's order."""
    return json.loads((require(data_root, DATA_DIR, REQUIRED) / "categories.json").read_text())


def load(data_root: Path) -> dict[str, pd.DataFrame]:
    """Full train / validation / test frames with columns ``text, intent`` (no subset)."""
    folder = require(data_root, DATA_DIR, REQUIRED)
    read = lambda name: pd.read_csv(folder / name, dtype=str, keep_default_na=False).rename(columns={"category": LABEL})[[TEXT, LABEL]]
    train, test = read("train.csv"), read("test.csv")
    train, validation = stratified_split(train, LABEL, VALIDATION_FRACTION, SEED)
    return {"train": train, "validation": validation, "test": test}


def prepare(data_root: Path, out_dir: Path, limit: int | None = None) -> dict[str, Path]:
    """Write ``train.csv`` / ``validation.csv`` / ``test.csv`` (columns ``text, intent``) to
    ``out_dir``. ``limit`` caps the training rows (class-balanced); validation and test get a
    quarter of it each. Returns the three paths."""
    frames = load(Path(data_root))
    caps = split_limits(limit)
    frames = {s: balanced_head(f, LABEL, caps[s]) for s, f in frames.items()}
    return write_tables(frames, Path(out_dir))


def make_config(paths: dict[str, Path], args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Fine-tune MiniLM-L6 end to end (the Ludwig reference setting: 3 epochs, batch 32, lr 5e-5,
    64 tokens). The agent replies from a small playbook, hands off to a human when unsure, and its
    hand-off threshold is chosen on validation data so that at most 5 % of answered queries are wrong (Learn then Test)."""
    config = base_config(
        paths,
        inputs=[{"column": TEXT, "modality": "text", "encoder": zoo("minilm-l6", max_length=64)}],
        targets=[{"column": LABEL, "type": "classification"}],
        fusion={"type": "concat", "modality_dropout": 0.0},
        train={"epochs": 3, "batch_size": 32, "lr": 5e-5, "head_lr": 1e-3, "seed": SEED, "metric": f"{LABEL}/accuracy"},
        agent={"type": "customer_service", "target": LABEL, "threshold": 0.5, "escalation": {"max_error": 0.05}, "intents": PLAYBOOK},
    )
    return with_recipe(config, "customer_service", Path(paths["train"]).parent)


def main(argv: list[str] | None = None) -> int:
    return run_example(sys.modules[__name__], argv, smoke_steps=10, smoke_options=_smoke)


def _smoke(args: argparse.Namespace) -> None:
    args.batch_size = args.batch_size or 16


if __name__ == "__main__":
    raise SystemExit(main())
