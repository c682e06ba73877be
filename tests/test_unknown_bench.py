"""The pure parts of the unknown-input benchmark (``benchmarks/_unknown_data.py``) on synthetic inputs."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from benchmarks import _unknown_data as U


def decision(label: str, escalated: bool = False, unknown: bool = False, score: float | None = 0.0) -> SimpleNamespace:
    return SimpleNamespace(label=label, escalated=escalated, unknown=unknown, unknown_score=score)


INTENTS = [f"intent_{i:02d}" for i in range(77)]


def test_oos_choice_is_fixed_and_order_free() -> None:
    first = U.choose_oos_intents(INTENTS)
    assert len(first) == U.N_OOS == 26 and first == sorted(first) and set(first) <= set(INTENTS)
    shuffled = list(np.random.default_rng(5).permutation(INTENTS)) * 3  # any order, repeated (a label column)
    assert U.choose_oos_intents(shuffled) == first
    assert U.choose_oos_intents(INTENTS, seed=1) != first
    with pytest.raises(ValueError):
        U.choose_oos_intents(INTENTS[:5], n=5)


def test_oos_split_is_disjoint_and_keeps_the_whole_test() -> None:
    frame = lambda k: pd.DataFrame({"text": [f"{i} {k}" for i in INTENTS * 2], "intent": INTENTS * 2})  # noqa: E731
    frames = {s: frame(s) for s in ("train", "validation", "test")}
    oos = U.choose_oos_intents(INTENTS)
    out = U.oos_split(frames, oos)
    for split in ("train", "validation", "test_in_scope"):
        assert not set(out[split]["intent"]) & set(oos) and set(out[split]["intent"]) == set(INTENTS) - set(oos)
        assert len(out[split]) == 2 * (77 - 26)
    pd.testing.assert_frame_equal(out["test"], frames["test"])
    assert U.oos_split(frames, oos)["train"].equals(out["train"])  # deterministic


def test_oos_metrics_match_hand_computed_values() -> None:
    # in scope: a, b (4 rows); out of scope: z (2 rows)
    truth = ["a", "a", "b", "b", "z", "z"]
    decisions = [
        decision("a", score=0.1),  # answered, right
        decision("b", score=0.2),  # answered, wrong
        decision("b", escalated=True, score=0.3),  # escalated, right label
        decision("b", score=0.9),  # answered, right (a high score on an in-scope row)
        decision("a", escalated=True, unknown=True, score=0.8),  # OOS caught, unknown
        decision("a", score=0.95),  # OOS answered: an error
    ]
    m = U.oos_metrics(decisions, truth, ["z"])
    assert m["in_scope_accuracy"] == 0.75
    assert m["in_scope_answered_correctly"] == 0.5
    assert m["coverage"] == 0.75
    assert m["oos_recall"] == 0.5 and m["oos_flagged_unknown"] == 0.5 and m["in_scope_flagged_unknown"] == 0.0
    # OOS scores 0.8, 0.95 vs in-scope 0.1, 0.2, 0.3, 0.9: 7 of 8 pairs ranked right
    assert m["unknown_auroc"] == pytest.approx(7 / 8)
    assert m["error_among_answered"] == pytest.approx(2 / 4)  # answered: a (right), b (wrong), b (right), OOS
    assert (m["n_in_scope"], m["n_oos"], m["n_answered"]) == (4, 2, 4)
    goals = U.oos_goals(m, 0.05)
    assert not any(ok for _, ok in goals.values()) and goals["error_among_answered"][0].startswith("<= 0.06")
    perfect = U.oos_goals({"oos_recall": 0.8, "in_scope_answered_correctly": 0.9, "unknown_auroc": 0.95, "error_among_answered": 0.06}, 0.05)
    assert all(ok for _, ok in perfect.values())


def test_metrics_without_the_new_fields() -> None:
    """An agent without ``unknown`` / ``unknown_score``: nothing flagged, no AUROC (not a crash)."""
    plain = [SimpleNamespace(label="a", escalated=False), SimpleNamespace(label="a", escalated=True)]
    m = U.oos_metrics(plain, ["a", "z"], ["z"])
    assert m["oos_flagged_unknown"] == 0.0 and math.isnan(m["unknown_auroc"]) and m["oos_recall"] == 1.0
    with pytest.raises(ValueError):
        U.oos_metrics(plain, ["a"], ["z"])


def test_clopper_pearson_bounds() -> None:
    from scipy.stats import binom

    lower, upper = U.clopper_pearson(5, 100)
    assert lower < 0.05 < upper
    # the defining property: at the bounds, the tail probability of the observed count is alpha
    assert binom.sf(4, 100, lower) == pytest.approx(0.05, rel=1e-6)
    assert binom.cdf(5, 100, upper) == pytest.approx(0.05, rel=1e-6)
    assert U.clopper_pearson(0, 50) == (0.0, pytest.approx(1 - 0.05 ** (1 / 50)))
    assert U.clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        U.clopper_pearson(3, 2)


def test_promise_metrics() -> None:
    truth = ["a"] * 10
    decisions = [decision("a")] * 7 + [decision("b")] + [decision("b", escalated=True)] * 2
    m = U.promise_metrics(decisions, truth, 0.05)
    assert m["error_among_answered"] == pytest.approx(1 / 8) and m["coverage"] == 0.8 and m["accuracy"] == 0.7
    assert m["cp_upper"] == pytest.approx(U.clopper_pearson(1, 8)[1]) and m["n_answered"] == 8
    assert m["within_slack"] == 1.0  # 1 error of 8 answered is consistent with a 5 % error rate
    bad = U.promise_metrics([decision("b")] * 50 + [decision("a")] * 50, ["a"] * 100, 0.05)
    assert bad["error_among_answered"] == 0.5 and bad["within_slack"] == 0.0


def test_separation_auroc() -> None:
    known = [decision("a", score=s) for s in (0.1, 0.2, 0.6)]
    foreign = [decision("a", score=s) for s in (0.5, 0.9)]
    assert U.separation_auroc(known, foreign) == pytest.approx(5 / 6)
    assert math.isnan(U.separation_auroc(known, [decision("a", score=None)]))


def test_set_stats() -> None:
    sets = [SimpleNamespace(prediction_set=["a"]), SimpleNamespace(prediction_set=["a", "b", "c"]), SimpleNamespace(prediction_set=[])]
    assert U.set_stats(sets) == {"mean_set_size": 4 / 3, "singleton_rate": 1 / 3, "n_with_set": 3.0}
    assert math.isnan(U.set_stats([SimpleNamespace(prediction_set=None)])["mean_set_size"])


def test_foreign_metrics_per_kind() -> None:
    decisions = [decision("x", escalated=True, unknown=True), decision("x", unknown=True), decision("x", escalated=True), decision("x")]
    m = U.foreign_metrics(decisions, ["noise", "noise", "blank", "blank"])
    assert (m["flagged_unknown"], m["referred"], m["referred_as_unknown"], m["n"]) == (0.5, 0.5, 0.25, 4)
    assert m["flagged_unknown:noise"] == 1.0 and m["flagged_unknown:blank"] == 0.0 and m["referred:blank"] == 0.5


def test_foreign_images_have_the_size_and_kinds(tmp_path: Path) -> None:
    from PIL import Image

    size = 28
    wave = np.sin(np.linspace(0, 400, 4000)) * np.linspace(0, 1, 4000)
    sources: dict[str, U.Source] = {
        "spectrogram": lambda n: [U.to_grey(U.spectrogram(wave * (k + 1)), size) for k in range(n)],
        "text": lambda n: U.text_images(["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn"] * n, size),
        "photo": lambda n: None,  # unavailable kind: skipped and said so
    }
    images, skipped = U.foreign_images(size, 4, sources)
    kinds = [k for k, _ in images]
    assert skipped == {"photo": "not available"}
    assert {k: kinds.count(k) for k in set(kinds)} == {"spectrogram": 4, "text": 4, "digits": 4, "blank": 3, "noise_uniform": 2, "noise_gaussian": 2}
    assert all(im.shape == (size, size) and im.dtype == np.uint8 for _, im in images)
    assert [int(im.mean()) for k, im in images if k == "blank"] == [0, 255, 128]
    again, _ = U.foreign_images(size, 4, sources)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(images, again))  # deterministic
    assert len(U.foreign_images(size, 50, sources)[0]) >= 200  # the full run's count, without photos
    table = U.write_images(images, tmp_path / "foreign")
    assert list(table.columns) == ["kind", "image"] and len(table) == len(images)
    first = Image.open(table["image"].iloc[0])
    assert first.size == (size, size) and first.mode == "L"


def test_spectrogram_and_grey_scaling() -> None:
    spec = U.spectrogram(np.zeros(100))  # shorter than one window: padded
    assert spec.ndim == 2 and spec.shape[1] == 1
    assert U.to_grey(np.arange(16.0).reshape(4, 4), 8).max() > 200  # stretched to the full range
    assert U.to_grey(np.full((3, 3), 7.0), 5).tolist() == [[7] * 5] * 5  # flat: its level kept
    photos = U.photo_crops(3, 28)
    assert photos is None or all(p.shape == (28, 28) for p in photos)
