"""Choosing a run's unknown-input score and its threshold, with no labelled unknown input.

1. **Stand-ins for the unknown.** The classes are split into up to :data:`FOLDS` groups; each group
   in turn is held out: the Gaussians are fitted on training rows of the other classes, the
   probability scores read only the other classes' logits, and the held-out classes' validation
   rows play the unknown inputs against the known classes' validation rows. The score with the best
   mean AUROC over the folds is chosen; the Mahalanobis distance unless a probability score beats
   it by :data:`FEATURE_MARGIN` (held-out classes are *near* unknowns; far ones, noise or another
   modality, are where probability scores fail, as a network extrapolates with confident logits,
   while a distance only grows), and always when there are no classes to hold out (regression,
   multilabel, a single class).
2. **The threshold** is the conformal quantile of the chosen score over the known validation rows at
   the false-alarm level the agent block asks for (default 5 %): a new input like the training data
   is flagged unknown with probability at most that level, whatever the score's scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmagent.agent.conformal import conformal_quantile
from mmagent.agent.unknown import SCORE_KINDS, GaussianFeatures, UnknownDetector, probability_score

FOLDS = 4
FEATURE_MARGIN = 0.02  # AUROC a probability score must gain over the feature-space one to replace it
HISTOGRAM_VALUES = 1000  # scores of each kind kept for the report's histogram


@dataclass
class Features:
    """One split as the detector sees it: fused vectors (N, D), integer classes (None for a target
    without classes; rows below 0 have none) and, for validation, the target's raw logits (N, C)."""

    fused: np.ndarray
    classes: np.ndarray | None
    logits: np.ndarray | None = None

    def labelled(self) -> Features:
        """The rows that have a class (all rows of a target without classes)."""
        if self.classes is None:
            return self
        keep = self.classes >= 0
        return Features(self.fused[keep], self.classes[keep], None if self.logits is None else self.logits[keep])


def fit_unknown_detector(
    target: str, train: Features, validation: Features, false_alarm: float = 0.05, score: str = "auto", allow_energy: bool = True, seed: int = 0
) -> UnknownDetector:
    """Fit the detector (see the module doc) on training features and validation features with
    their logits."""
    train, validation = train.labelled(), validation.labelled()
    train_fused, train_classes, val_fused, val_classes = train.fused, train.classes, validation.fused, validation.classes
    val_logits = validation.logits if validation.logits is not None else np.zeros((len(val_fused), 1))
    kinds = [k for k in SCORE_KINDS if k != "energy" or allow_energy]
    if train_classes is None:  # no classes: the probability scores have nothing to say
        kinds = ["mahalanobis"]
    folds = _fold_scores(train_fused, train_classes, val_fused, val_logits, val_classes, kinds, seed)
    auroc = {k: float(np.mean(v)) for k, v in folds["auroc"].items() if v}
    if score != "auto":
        if score not in kinds:
            raise ValueError(f"agent.unknown.score {score!r} cannot be used for this model; possible: {kinds}")
        kind, why = score, "asked for in agent.unknown.score"
    elif auroc:
        kind = max(auroc, key=lambda k: auroc[k] + (FEATURE_MARGIN if k == "mahalanobis" else 0.0))
        why = f"mean AUROC over {folds['n']} folds with held-out classes as stand-ins for the unknown (the feature-space score unless another beats it by {FEATURE_MARGIN})"
    else:
        kind, why = "mahalanobis", "no classes to hold out (one class, regression or multilabel): the feature-space score by default"
    gaussians = (
        GaussianFeatures.fit(train_fused, train_classes if train_classes is not None else np.zeros(len(train_fused), int)) if kind == "mahalanobis" else None
    )
    detector = UnknownDetector(kind, float("inf"), target, gaussians)
    known = detector.score(val_fused, val_logits)
    detector.threshold = conformal_quantile(known, false_alarm)
    detector.info = {
        "false_alarm": false_alarm,
        "chosen_by": why,
        "fold_auroc": {k: round(v, 4) for k, v in auroc.items()},
        "folds": folds["n"],
        "n_fitted": int(len(train_fused)),
        "n_calibration": int(len(known)),
        "guarantee": (
            f"an input like the training data is flagged unknown with probability <= {false_alarm:g} (conformal quantile of {len(known)} validation scores)"
            if np.isfinite(detector.threshold)
            else f"{len(known)} validation rows are too few for a false-alarm level of {false_alarm:g}: nothing is flagged unknown"
        ),
        "histogram": {"known": _sample(known, seed), "held_out": _sample(np.asarray(folds["held_out"].get(kind, [])), seed)},
    }
    return detector


def _fold_scores(
    train_fused: np.ndarray,
    train_classes: np.ndarray | None,
    val_fused: np.ndarray,
    val_logits: np.ndarray,
    val_classes: np.ndarray | None,
    kinds: list[str],
    seed: int,
) -> dict[str, Any]:
    """Per score kind: the AUROC of each fold (held-out classes vs known ones, validation rows) and
    the held-out rows' scores. Folds with no held-out or no known validation row are skipped."""
    from sklearn.metrics import roc_auc_score

    auroc: dict[str, list[float]] = {k: [] for k in kinds}
    held_scores: dict[str, list[float]] = {k: [] for k in kinds}
    if train_classes is None or val_classes is None:
        return {"auroc": auroc, "held_out": held_scores, "n": 0}
    classes = np.unique(train_classes)
    if len(classes) < 2:
        return {"auroc": auroc, "held_out": held_scores, "n": 0}
    groups = np.array_split(np.random.default_rng(seed).permutation(classes), min(FOLDS, len(classes)))
    n = 0
    for held in groups:
        known = np.setdiff1d(classes, held)
        outside = np.isin(val_classes, held)
        if not outside.any() or outside.all():
            continue
        n += 1
        for kind in kinds:
            if kind == "mahalanobis":
                fit_rows = np.isin(train_classes, known)
                scores = GaussianFeatures.fit(train_fused[fit_rows], train_classes[fit_rows]).distance(val_fused)
            elif len(known) < 2:
                continue  # one known class: a probability over it says nothing
            else:
                scores = probability_score(kind, val_logits[:, known])
            auroc[kind].append(float(roc_auc_score(outside, scores)))
            held_scores[kind].extend(scores[outside].tolist())
    return {"auroc": auroc, "held_out": held_scores, "n": n}


def _sample(values: np.ndarray, seed: int) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    if len(values) > HISTOGRAM_VALUES:
        values = np.random.default_rng(seed).choice(values, HISTOGRAM_VALUES, replace=False)
    return [round(float(v), 5) for v in values if np.isfinite(v)]
