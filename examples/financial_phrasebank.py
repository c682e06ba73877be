"""Finance text: Financial PhraseBank (50Agree) news sentences -> positive / negative / neutral (zoo MiniLM-L6).

Data: ``<data-root>/financial_phrasebank/Sentences_50Agree.txt``: one ``sentence@label`` per line,
latin-1, CRLF. There is no official split: a fixed seeded (42) stratified 80/20 train/test split,
then 10 % of the 80 held out (seeded, stratified) as validation. The 8 sentences that occur twice
(2 of them with different labels) are kept once (first occurrence), so no sentence is in both train
and test: 4,838 rows.

The licence is CC BY-NC-SA 3.0: non-commercial use only.

    python -m examples.financial_phrasebank          # 4 epochs, batch 32, lr 5e-5
    python -m examples.financial_phrasebank --smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from examples._common import SEED, balanced_head, base_config, require, run_example, split_limits, stratified_split, with_recipe, write_tables, zoo

NAME = "financial_phrasebank"
DATA_DIR = "financial_phrasebank"
FILE = "Sentences_50Agree.txt"
REQUIRED = (FILE,)
SMOKE_LIMIT = 96
TEXT, LABEL = "text", "sentiment"
LABELS = ("negative", "neutral", "positive")
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1  # of the 80 % training part


def read_sentences(path: Path) -> pd.DataFrame:
    """``sentence@label`` lines (latin-1; CRLF or bare CR line ends) -> ``text, sentiment``."""
    rows = []
    for n, line in enumerate(Path(path).read_bytes().decode("latin-1").splitlines(), 1):
        if not line.strip():
            continue
        text, sep, label = line.rpartition("@")
        label = label.strip()
        if not sep or label not in LABELS:
            raise ValueError(f"{path}:{n}: expected 'sentence@label' with label in {LABELS}, got {line[:80]!r}")
        rows.append({TEXT: text.strip(), LABEL: label})
    return pd.DataFrame(rows)


def load(data_root: Path, dedupe: bool = True) -> dict[str, pd.DataFrame]:
    """Full train / validation / test frames (the fixed seeded split described above)."""
    frame = read_sentences(require(data_root, DATA_DIR, REQUIRED) / FILE)
    if dedupe:
        frame = frame.drop_duplicates(subset=TEXT, keep="first").reset_index(drop=True)
    train_all, test = stratified_split(frame, LABEL, TEST_FRACTION, SEED)
    train, validation = stratified_split(train_all, LABEL, VALIDATION_FRACTION, SEED)
    return {"train": train, "validation": validation, "test": test}


def prepare(data_root: Path, out_dir: Path, limit: int | None = None) -> dict[str, Path]:
    """Write the three tables (``text, sentiment``, UTF-8) to ``out_dir``; ``limit`` caps the
    training rows (class-balanced), validation and test get a quarter each."""
    caps = split_limits(limit)
    frames = {s: balanced_head(f, LABEL, caps[s]) for s, f in load(Path(data_root)).items()}
    return write_tables(frames, Path(out_dir))


def make_config(paths: dict[str, Path], args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Fine-tune MiniLM-L6; select the epoch by validation macro-F1 (the classes are imbalanced).
    The agent raises an alert when negative news is likely."""
    config = base_config(
        paths,
        inputs=[{"column": TEXT, "modality": "text", "encoder": zoo("minilm-l6", max_length=96)}],
        targets=[{"column": LABEL, "type": "classification"}],
        fusion={"type": "concat", "modality_dropout": 0.0},
        train={"epochs": 4, "batch_size": 32, "lr": 5e-5, "head_lr": 1e-3, "seed": SEED, "metric": f"{LABEL}/macro_f1"},
        agent={
            "type": "finance",
            "target": LABEL,
            "threshold": 0.5,
            "alerts": [{"label": "negative", "above": 0.7, "message": "negative news: review the position"}],
        },
    )
    return with_recipe(config, "finance", Path(paths["train"]).parent)


def main(argv: list[str] | None = None) -> int:
    return run_example(sys.modules[__name__], argv, smoke_steps=8, smoke_options=_smoke)


def _smoke(args: argparse.Namespace) -> None:
    args.batch_size = args.batch_size or 16


if __name__ == "__main__":
    raise SystemExit(main())
