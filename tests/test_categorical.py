"""Categorical inputs (builtin hash-embedding): stable buckets, clear errors, and a model that learns
from a category alone."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mmagent.encoders.builtin import CategoricalPreprocessor


def test_buckets_are_stable_across_processes_and_types():
    pre = CategoricalPreprocessor(1024)
    here = [int(pre(v)["ids"]) for v in ("red", "green", "7")]
    code = "from mmagent.encoders.builtin import CategoricalPreprocessor as P; p = P(1024); print([int(p(v)['ids']) for v in ('red', 'green', '7')])"
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", **__import__("os").environ}
    ).stdout
    assert str(here) == there.strip()
    assert pre(7)["ids"].item() == pre("7")["ids"].item() == pre(7.0)["ids"].item() == pre(" 7 ")["ids"].item()
    assert pre("red")["ids"].item() != pre("green")["ids"].item()
    with pytest.raises(ValueError, match="single value"):
        pre(["red", "green"])


def test_a_category_alone_is_learned(tmp_path):
    from mmagent.config import config_from_dict
    from mmagent.workflow import train

    rng = np.random.default_rng(0)
    shops = [f"shop-{i}" for i in range(12)]
    rows = [{"shop": s, "label": "fraud" if i % 3 == 0 else "ok"} for _ in range(15) for i, s in enumerate(shops)]
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0)
    frame.to_csv(tmp_path / "train.csv", index=False)
    raw = {
        "data": {"train": str(tmp_path / "train.csv"), "validation_fraction": 0.2},
        "inputs": [{"column": "shop", "modality": "categorical"}],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 16},
        "train": {"epochs": 15, "batch_size": 16, "lr": 1e-2, "head_lr": 1e-2, "seed": int(rng.integers(10))},
    }
    result = train(config_from_dict(raw), tmp_path / "run", progress=False)
    assert result.metrics["validation"]["label"]["accuracy"] == pytest.approx(1.0)


def test_a_list_in_a_categorical_column_is_named(tmp_path):
    from mmagent.data.tables import Table
    from mmagent.data.validation import validate_table
    from mmagent.specs import InputSpec, TargetSpec

    table = Table(pd.DataFrame({"shop": ["a", ["b", "c"], "a"], "y": ["u", "v", "u"]}))
    _, problems = validate_table(table, [InputSpec(column="shop", modality="categorical")], [TargetSpec(column="y")], "skip")
    assert len(problems) == 1 and problems[0].row == 1 and problems[0].column == "shop" and "single value" in problems[0].message
