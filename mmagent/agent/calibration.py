"""Confidence calibration: temperature scaling, calibration error and confidence thresholds.

Everything here works on logits / probabilities held out from training (a validation split), so
it is independent of any model. Typical use when building an agent::

    T = fit_temperature(val_logits, val_labels)               # classification
    probs = apply_temperature(test_logits, T)                  # calibrated probabilities
    ece = expected_calibration_error(probs, test_labels)
    choice = choose_threshold(probs.max(1).values, probs.argmax(1) == test_labels, target_precision=0.95)

Rows whose label is missing (``-100`` for classification, NaN for multi-label) are ignored, the
same convention as :mod:`mmagent.tasks.heads`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mmagent.specs import IGNORE_INDEX

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0

__all__ = [
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "ThresholdChoice",
    "apply_temperature",
    "choose_threshold",
    "expected_calibration_error",
    "expected_calibration_error_binary",
    "fit_temperature",
    "fit_temperature_binary",
]


# -- temperature scaling --------------------------------------------------------------------------
def fit_temperature(logits: Tensor, labels: Tensor, min_t: float = MIN_TEMPERATURE, max_t: float = MAX_TEMPERATURE) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on (N, C) logits and (N,) labels.

    ``T > 1`` softens an over-confident model, ``T < 1`` sharpens an under-confident one. The
    result is clipped to ``[min_t, max_t]``: on separable data the NLL keeps falling as T -> 0, and
    the bound stops that from producing a degenerate 0/1 model."""
    logits, labels = _as_float(logits, "logits"), torch.as_tensor(labels).long()
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    known = labels != IGNORE_INDEX
    logits, labels = logits[known], labels[known]
    if labels.numel() == 0:
        raise ValueError("fit_temperature: no labelled samples")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}) (or be {IGNORE_INDEX} when missing)")
    return _fit(lambda t: F.cross_entropy(logits / t, labels).item(), min_t, max_t)


def fit_temperature_binary(logits: Tensor, targets: Tensor, min_t: float = MIN_TEMPERATURE, max_t: float = MAX_TEMPERATURE) -> float:
    """Multi-label / binary variant: one shared ``T`` for ``sigmoid(logits / T)``, minimising the
    binary cross-entropy of (N, K) logits against (N, K) 0/1 targets (NaN = missing, ignored)."""
    logits, targets = _as_float(logits, "logits"), torch.as_tensor(targets, dtype=torch.float64)
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    known = ~torch.isnan(targets)
    logits, targets = logits[known], targets[known]
    if targets.numel() == 0:
        raise ValueError("fit_temperature_binary: no labelled entries")
    if ((targets != 0) & (targets != 1)).any():
        raise ValueError("targets must be 0 or 1 (or NaN when missing)")
    return _fit(lambda t: F.binary_cross_entropy_with_logits(logits / t, targets).item(), min_t, max_t)


def apply_temperature(logits: Tensor, temperature: float, task_type: Literal["classification", "multilabel"] = "classification") -> Tensor:
    """Calibrated probabilities: ``softmax(logits / T)`` (classification) or ``sigmoid`` (multilabel)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = logits.float() / temperature
    return scaled.softmax(-1) if task_type == "classification" else scaled.sigmoid()


def _fit(nll: Callable[[float], float], min_t: float, max_t: float) -> float:
    """Golden-section search for the minimum of ``nll`` over log T in [log min_t, log max_t].

    The NLL is convex in 1/T, hence unimodal in log T, so a bracketing search finds the global
    minimum without gradients, learning rates or the divergence LBFGS can show on flat losses."""
    if not 0 < min_t < max_t:
        raise ValueError(f"need 0 < min_t < max_t, got {min_t}, {max_t}")
    lo, hi = math.log(min_t), math.log(max_t)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(math.exp(a)), nll(math.exp(b))
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(math.exp(b))
    best = math.exp((lo + hi) / 2)
    # The bracket never evaluates the bounds themselves; prefer them when they are at least as good.
    candidates = [(nll(min_t), min_t), (nll(best), best), (nll(max_t), max_t)]
    return float(min(candidates, key=lambda c: c[0])[1])


def _as_float(x: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(x).detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


# -- calibration error ----------------------------------------------------------------------------
def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Top-label ECE of (N, C) probabilities against (N,) labels: the sample-weighted mean gap
    between confidence (max probability) and accuracy over ``n_bins`` equal-width bins."""
    probs, labels = _as_float(probs, "probs"), torch.as_tensor(labels).long()
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"expected probs (N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    known = labels != IGNORE_INDEX
    confidence, predicted = probs[known].max(1)
    return _ece(confidence, (predicted == labels[known]).double(), n_bins)


def expected_calibration_error_binary(probs: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Multi-label / binary ECE: every (sample, label) entry is one probabilistic prediction; per
    bin, the gap between mean probability and the fraction of positives (NaN targets ignored)."""
    probs, targets = _as_float(probs, "probs"), torch.as_tensor(targets, dtype=torch.float64)
    if probs.shape != targets.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and targets {tuple(targets.shape)} differ in shape")
    known = ~torch.isnan(targets)
    return _ece(probs[known], targets[known], n_bins)


def _ece(confidence: Tensor, outcome: Tensor, n_bins: int) -> float:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if confidence.numel() == 0:
        raise ValueError("no labelled samples to measure calibration on")
    if confidence.min() < 0 or confidence.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]")
    inner = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1]
    bins = torch.bucketize(confidence, inner)  # bin i holds (i/n, (i+1)/n]; 0 goes to the first
    count = torch.bincount(bins, minlength=n_bins).double()
    gap = torch.bincount(bins, weights=confidence, minlength=n_bins) - torch.bincount(bins, weights=outcome, minlength=n_bins)
    return float(gap.abs().sum() / count.sum())


# -- thresholds -----------------------------------------------------------------------------------
class ThresholdChoice(BaseModel):
    """An acceptance threshold: samples with ``confidence >= threshold`` are accepted (answered),
    the rest abstained on / escalated."""

    model_config = ConfigDict(extra="forbid")
    threshold: float
    precision: float = Field(description="fraction of accepted samples that are correct")
    coverage: float = Field(description="fraction of samples accepted")
    accepted: int
    total: int
    target_precision: float | None = None
    target_coverage: float | None = None
    reached: bool = Field(True, description="False when no threshold reaches target_precision")
    note: str | None = None


def choose_threshold(
    confidences: Tensor,
    correct: Tensor,
    target_precision: float | None = None,
    target_coverage: float | None = None,
) -> ThresholdChoice:
    """Pick a confidence threshold from held-out (N,) confidences and (N,) correctness flags.

    Give exactly one target:

    * ``target_precision``: the lowest threshold whose accepted set has precision >= target, i.e.
      the largest coverage meeting it. If none does, the threshold with the best precision (the
      largest coverage among ties) is returned with ``reached=False`` and a ``note`` saying so.
    * ``target_coverage``: the threshold accepting that fraction of the most confident samples
      (slightly more when the confidence at the cut is tied: equal confidences share a fate).
    """
    if (target_precision is None) == (target_coverage is None):
        raise ValueError("choose_threshold: give exactly one of target_precision or target_coverage")
    conf = _as_float(confidences, "confidences").reshape(-1)
    ok = torch.as_tensor(correct).reshape(-1).to(torch.float64)
    if conf.shape != ok.shape:
        raise ValueError(f"confidences ({conf.numel()}) and correct ({ok.numel()}) differ in length")
    if conf.numel() == 0:
        raise ValueError("choose_threshold: no samples")
    n = conf.numel()
    order = torch.argsort(conf, descending=True, stable=True)
    conf, ok = conf[order], ok[order]
    hits = ok.cumsum(0)
    sizes = torch.arange(1, n + 1, dtype=torch.float64)
    precision = hits / sizes
    # A threshold at conf[k-1] accepts every sample tied with it, so only the last position of
    # each run of equal confidences is a reachable accepted-set size.
    boundary = torch.ones(n, dtype=torch.bool)
    boundary[:-1] = conf[:-1] != conf[1:]

    def result(k: int, **extra: object) -> ThresholdChoice:
        return ThresholdChoice(
            threshold=float(conf[k - 1]),
            precision=float(precision[k - 1]),
            coverage=k / n,
            accepted=k,
            total=n,
            target_precision=target_precision,
            target_coverage=target_coverage,
            **extra,  # type: ignore[arg-type]
        )

    if target_coverage is not None:
        if not 0 < target_coverage <= 1:
            raise ValueError(f"target_coverage must be in (0, 1], got {target_coverage}")
        k = max(1, math.ceil(target_coverage * n - 1e-9))
        k = int(torch.nonzero(boundary[k - 1 :])[0]) + k  # extend to the end of a tie
        return result(k)

    assert target_precision is not None
    if not 0 < target_precision <= 1:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    meets = boundary & (precision >= target_precision - 1e-12)
    if meets.any():
        return result(int(torch.nonzero(meets)[-1]) + 1)
    best = float(precision[boundary].max())
    k = int(torch.nonzero(boundary & (precision == best))[-1]) + 1
    return result(
        k,
        reached=False,
        note=f"no threshold reaches precision {target_precision:g}; best achievable is {best:.3g} (threshold {float(conf[k - 1]):.3g})",
    )
