"""Thresholds with finite-sample guarantees, chosen on held-out (validation) predictions.

Three promises an agent makes, each kept by a classic construction:

* **Prediction sets** (split conformal, the LAC score ``1 - p_true``; Sadinle et al. 2019): the set
  ``{y: p_y >= 1 - q}`` holds the true label with probability >= ``1 - alpha`` for a new input drawn
  like the calibration rows. :func:`conformal_quantile` gives ``q``.
* **Few false alarms** on known inputs (conformal novelty detection; Bates et al. 2023): flag an input
  as unknown when its score exceeds the ``ceil((n+1)(1-alpha))``-th smallest score of ``n`` known
  calibration rows; a new known input is then flagged with probability <= ``alpha``. The same
  :func:`conformal_quantile`.
* **Error among answered** (Learn then Test; Angelopoulos et al. 2021): over a fixed grid of
  confidence thresholds, test "error among the answered > max_error" with the Hoeffding-Bentkus
  p-value of each, keep those Bonferroni-Holm rejects at family-wise error ``delta``, and answer
  from the lowest kept threshold. With probability >= ``1 - delta`` over the calibration draw, the error among
  answered inputs is <= ``max_error``. :func:`selective_threshold`.

The Learn-then-Test pieces are a short implementation checked against MAPIE's
(``mapie.risk_control``) in the tests, so no extra dependency is needed at serving time.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import binom

#: The thresholds Learn then Test may choose from: fixed before seeing any data, as its guarantee
#: needs; finer near 1, where a demanding error target lands. Few, because each costs power: every
#: one is tested at about ``delta / len(THRESHOLD_GRID)`` (a fixed-sequence walk from the strictest
#: would need no such split, but stops at once where almost no row is that confident).
THRESHOLD_GRID = np.array([0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.993, 0.996, 0.998, 0.999])


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n+1)(1-alpha))``-th smallest of ``n`` calibration scores: a new exchangeable score
    exceeds it with probability <= ``alpha``. ``inf`` when ``n`` is too small for that level
    (``alpha < 1/(n+1)``): no finite threshold keeps the promise."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    k = math.ceil((len(s) + 1) * (1 - alpha))
    return float(s[k - 1]) if 1 <= k <= len(s) else float("inf")


def prediction_set_quantile(probs: np.ndarray, labels: np.ndarray, alpha: float) -> float:
    """``q`` of the LAC prediction sets ``{y: p_y >= 1 - q}`` at miscoverage ``alpha``, from (N, C)
    calibrated probabilities and (N,) true labels."""
    probs, labels = np.asarray(probs), np.asarray(labels).astype(int)
    return conformal_quantile(1.0 - probs[np.arange(len(labels)), labels], alpha)


def prediction_sets(probs: np.ndarray, quantile: float) -> np.ndarray:
    """(N, C) bool: label ``y`` is in row ``i``'s set when ``p_iy >= 1 - quantile``."""
    return np.asarray(probs) >= 1.0 - quantile - 1e-12


def hoeffding_bentkus_p_value(risk: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """p-values of "true risk > alpha" from empirical risks of a 0/1 loss over ``n`` rows each: the
    smaller of the Hoeffding and the (binary) Bentkus bounds (Learn then Test, section 3.2). Rows
    with ``n == 0`` get 1: nothing was observed."""
    risk, n = np.asarray(risk, dtype=np.float64), np.asarray(n, dtype=np.float64)
    capped = np.minimum(risk, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = capped * np.log(capped / alpha) + (1 - capped) * np.log((1 - capped) / (1 - alpha))
    h1 = np.where(capped == 0, np.log(1 / (1 - alpha)), h1)  # the limit of h1 at 0
    hoeffding = np.exp(-n * h1)
    bentkus = binom.cdf(np.ceil(n * risk), n, alpha)
    return np.where(n > 0, np.minimum(hoeffding, bentkus), 1.0)


def holm_rejections(p_values: np.ndarray, delta: float) -> np.ndarray:
    """Indices of the hypotheses Bonferroni-Holm rejects at family-wise error ``delta``, sorted."""
    p = np.asarray(p_values, dtype=np.float64)
    rejected = []
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > delta / (len(p) - rank):
            break
        rejected.append(int(i))
    return np.array(sorted(rejected), dtype=int)


class SelectiveChoice(BaseModel):
    """The confidence threshold that keeps the error among answered inputs below ``max_error``."""

    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(description="answer when the top probability is >= this (1.0 and above: never)")
    max_error: float
    delta: float = Field(description="the guarantee fails with probability at most this, over the calibration draw")
    reached: bool = Field(description="False when no threshold could be certified: the agent escalates everything")
    answered: int = Field(description="calibration rows answered at the threshold")
    total: int
    error: float | None = Field(description="error among the answered calibration rows")
    coverage: float
    guarantee: str


def selective_threshold(
    confidence: np.ndarray, correct: np.ndarray, max_error: float, delta: float = 0.1, eligible: np.ndarray | None = None
) -> SelectiveChoice:
    """Learn then Test for the error among answered: the lowest grid threshold ``t`` whose
    hypothesis "error among rows with confidence >= t is above ``max_error``" Bonferroni-Holm rejects
    at ``delta``. ``eligible``: rows the rest of the policy would answer at all (known inputs with a
    single-label prediction set); the others are never answered, whatever the threshold."""
    if not 0 < max_error < 1 or not 0 < delta < 1:
        raise ValueError(f"max_error and delta must be in (0, 1), got {max_error}, {delta}")
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    wrong = ~np.asarray(correct, dtype=bool).reshape(-1)
    ok = np.ones_like(wrong) if eligible is None else np.asarray(eligible, dtype=bool).reshape(-1)
    answered = (conf[None, :] >= THRESHOLD_GRID[:, None]) & ok[None, :]
    n = answered.sum(1)
    errors = (answered & wrong[None, :]).sum(1)
    risk = np.where(n > 0, errors / np.maximum(n, 1), 0.0)
    kept = holm_rejections(hoeffding_bentkus_p_value(risk, n, max_error), delta)
    total = len(conf)
    statement = f"with probability >= {100 * (1 - delta):g}% over the validation draw, the error among answered inputs is <= {max_error:g}"
    if len(kept) == 0:
        return SelectiveChoice(
            threshold=float("inf"),
            max_error=max_error,
            delta=delta,
            reached=False,
            answered=0,
            total=total,
            error=None,
            coverage=0.0,
            guarantee=f"no threshold could be certified on {total} validation rows to keep the error among answered inputs <= {max_error:g} with probability >= {100 * (1 - delta):g}%: every input is escalated",
        )
    i = int(kept.min())  # the grid is increasing: the lowest certified threshold answers the most
    return SelectiveChoice(
        threshold=float(THRESHOLD_GRID[i]),
        max_error=max_error,
        delta=delta,
        reached=True,
        answered=int(n[i]),
        total=total,
        error=float(risk[i]) if n[i] else None,
        coverage=float(n[i] / max(total, 1)),
        guarantee=statement + f" (Learn then Test: Hoeffding-Bentkus p-values over {len(THRESHOLD_GRID)} thresholds, Bonferroni-Holm)",
    )
