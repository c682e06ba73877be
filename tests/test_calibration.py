"""Calibration: temperature scaling fixes an over-confident model, ECE, threshold choice."""

from __future__ import annotations

import math

import pytest
import torch

from mmagent.agent.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    apply_temperature,
    choose_threshold,
    expected_calibration_error,
    expected_calibration_error_binary,
    fit_temperature,
    fit_temperature_binary,
)


def _overconfident(n: int = 4000, c: int = 5, scale: float = 4.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(true logits); the "model" reports scale x the true logits."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, c, generator=g) * 1.5
    labels = torch.multinomial(true.softmax(1), 1, generator=g).squeeze(1)
    return true * scale, labels


def test_temperature_scaling_recovers_overconfidence_and_lowers_ece() -> None:
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert abs(t - 4.0) / 4.0 < 0.2
    before = expected_calibration_error(logits.softmax(1), labels)
    after = expected_calibration_error(apply_temperature(logits, t), labels)
    assert before > 0.15 and after < 0.05 and after < before / 3


def test_temperature_of_a_calibrated_model_is_about_one_and_ignores_missing_labels() -> None:
    logits, labels = _overconfident(scale=1.0, seed=1)
    labels[::7] = -100  # missing labels must not count
    assert abs(fit_temperature(logits, labels) - 1.0) < 0.15


def test_temperature_is_bounded_on_separable_data() -> None:
    logits = torch.tensor([[1.0, -1.0], [-1.0, 1.0]] * 10)
    labels = torch.tensor([0, 1] * 10)
    assert fit_temperature(logits, labels) == pytest.approx(MIN_TEMPERATURE, rel=1e-3)
    # Pure noise: labels independent of the logits, so the best model is uniform (T -> max).
    assert fit_temperature(logits, torch.tensor([0, 0, 1, 1] * 5)) == pytest.approx(MAX_TEMPERATURE, rel=1e-3)


def test_binary_temperature_and_ece() -> None:
    g = torch.Generator().manual_seed(2)
    true = torch.randn(3000, 4, generator=g) * 1.5
    targets = torch.bernoulli(true.sigmoid(), generator=g)
    targets[0, :2] = float("nan")  # missing entries ignored
    t = fit_temperature_binary(3 * true, targets)
    assert abs(t - 3.0) / 3.0 < 0.2
    before = expected_calibration_error_binary((3 * true).sigmoid(), targets)
    after = expected_calibration_error_binary(apply_temperature(3 * true, t, "multilabel"), targets)
    assert after < before / 2


def test_ece_known_values() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    # bin (0.867, 0.933]: conf 0.9, both right -> gap 0.1; bin (0.533, 0.6]: conf 0.6, one right -> 0.1
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.1)
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(probs, torch.tensor([0, 1]))


def _brute_force(conf: list[float], ok: list[bool], target: float) -> tuple[float, int]:
    best = (math.inf, 0)
    for t in sorted(set(conf)):
        acc = [o for c, o in zip(conf, ok) if c >= t]
        if sum(acc) / len(acc) >= target and len(acc) > best[1]:
            best = (t, len(acc))
    return best


def test_choose_threshold_for_precision_on_known_example() -> None:
    conf = torch.tensor([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=torch.float64)
    ok = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    # Precision of the top k: 1, 1, 1, .75, .8, .83, .71, .63 -> the largest k with >= 0.8 is 6.
    choice = choose_threshold(conf, ok, target_precision=0.8)
    assert (choice.threshold, choice.accepted, choice.coverage) == (0.6, 6, 0.75)
    assert choice.precision == pytest.approx(5 / 6) and choice.reached
    assert choose_threshold(conf, ok, target_precision=1.0).threshold == 0.85


def test_choose_threshold_matches_brute_force_with_ties() -> None:
    g = torch.Generator().manual_seed(3)
    conf = (torch.rand(300, generator=g) * 20).round() / 20  # many ties
    ok = torch.rand(300, generator=g) < conf
    for target in (0.5, 0.7, 0.9):
        choice = choose_threshold(conf, ok, target_precision=target)
        threshold, accepted = _brute_force(conf.tolist(), ok.tolist(), target)
        assert (choice.threshold, choice.accepted) == (pytest.approx(threshold), accepted)
        assert choice.precision >= target
        assert choice.accepted == int((conf >= choice.threshold).sum())


def test_choose_threshold_for_coverage() -> None:
    conf = torch.tensor([0.9, 0.8, 0.8, 0.7, 0.6])
    ok = torch.tensor([True, False, True, True, False])
    assert choose_threshold(conf, ok, target_coverage=0.2).accepted == 1
    tied = choose_threshold(conf, ok, target_coverage=0.4)  # the cut falls inside the 0.8 tie
    assert tied.accepted == 3 and tied.coverage == pytest.approx(0.6) and tied.threshold == pytest.approx(0.8)
    assert choose_threshold(conf, ok, target_coverage=1.0).threshold == pytest.approx(0.6)


def test_choose_threshold_unreachable_and_bad_arguments() -> None:
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6])
    ok = torch.tensor([False, True, True, False])
    choice = choose_threshold(conf, ok, target_precision=0.9)
    assert not choice.reached and "no threshold reaches precision 0.9" in (choice.note or "")
    assert choice.precision == pytest.approx(2 / 3) and choice.accepted == 3  # best precision
    with pytest.raises(ValueError, match="exactly one"):
        choose_threshold(conf, ok)
    with pytest.raises(ValueError, match="exactly one"):
        choose_threshold(conf, ok, target_precision=0.9, target_coverage=0.5)
    with pytest.raises(ValueError, match="target_coverage"):
        choose_threshold(conf, ok, target_coverage=0.0)
