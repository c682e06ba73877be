"""Prediction batches cut by length: least padded work, every row once, outputs in table order."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pandas as pd
import pytest

from mmagent.config import config_from_dict
from mmagent.data.tables import as_table
from mmagent.demo.toy import TINY_BERT
from mmagent.inference import make_loader, padded_batches, run_model
from mmagent.training.trainer import build_model


def _cost(batches: list[list[int]], lengths: list[float], call_cost: float) -> float:
    longest = max(lengths)
    return sum(call_cost * longest + len(b) * max(lengths[i] for i in b) for b in batches)


def _brute_force(lengths: list[float], max_batch: int, call_cost: float) -> float:
    """The least cost over every way to cut the sorted rows (contiguous runs are optimal)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        batches, current = [], [order[0]]
        for cut, row in zip(cuts, order[1:]):
            if cut:
                batches.append(current)
                current = []
            current.append(row)
        batches.append(current)
        if all(len(b) <= max_batch for b in batches):
            best = min(best, _cost(batches, lengths, call_cost))
    return best


def test_short_and_long_rows_run_apart_similar_rows_together():
    lengths = [5.0] * 12 + [60.0] * 4
    random.Random(0).shuffle(lengths)
    batches = padded_batches(lengths, max_batch=32, call_cost=3.0)
    assert sorted(len(b) for b in batches) == [4, 12]
    assert {lengths[i] for i in batches[0]} == {5.0} and {lengths[i] for i in batches[1]} == {60.0}
    assert len(padded_batches([7.0] * 20, max_batch=32)) == 1  # nothing to gain from a second call
    assert sorted(len(b) for b in padded_batches([7.0] * 20, max_batch=8)) == [4, 8, 8]


@pytest.mark.parametrize("seed", range(6))
def test_every_row_once_and_the_cut_is_optimal(seed):
    rng = random.Random(seed)
    lengths = [float(rng.randint(1, 40)) for _ in range(rng.randint(2, 11))]
    max_batch, call_cost = rng.randint(2, 6), rng.choice([0.5, 2.0, 5.0])
    batches = padded_batches(lengths, max_batch, call_cost)
    assert sorted(batches.order) == list(range(len(lengths))) and all(len(b) <= max_batch for b in batches)
    assert _cost(batches, lengths, call_cost) == pytest.approx(_brute_force(lengths, max_batch, call_cost))


def test_outputs_come_back_in_table_order():
    texts = ["hi"] * 6 + [" ".join(["a long request about a card payment"] * 4)] * 3 + ["a medium one here"] * 3
    random.Random(1).shuffle(texts)
    frame = pd.DataFrame({"text": texts, "label": ["x", "y"] * 6})
    config = config_from_dict(
        {
            "data": {"train": "unused.csv"},
            "inputs": [
                {"column": "text", "modality": "text", "encoder": {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 48}}
            ],
            "targets": [{"column": "label"}],
            "fusion": {"type": "concat", "hidden_dim": 16},
        }
    )
    table = as_table(frame)
    model = build_model(config, table).eval()
    grouped_loader = make_loader(model, table, 32, by_length=True)
    assert len(grouped_loader.batch_sampler) > 1  # the mixed lengths were cut into several calls
    grouped = run_model(model, grouped_loader)
    one_by_one = run_model(model, make_loader(model, table, 1))
    np.testing.assert_allclose(grouped.logits["label"], one_by_one.logits["label"], atol=1e-5)
    np.testing.assert_array_equal(grouped.targets["label"], one_by_one.targets["label"])
