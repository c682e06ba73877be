"""Is this input like anything the model was trained on? An unknown-input score on every prediction.

Three scores, higher meaning "less like the training data":

* ``mahalanobis``: the distance of the fused representation (the vector the heads read) to the
  nearest class mean, under one covariance shared by all classes (Lee et al. 2018; Podolskiy et al.
  2021 for intents). Fitted on training rows; a regression or multilabel target has one "class".
* ``msp``: one minus the largest softmax probability (Hendrycks & Gimpel 2017).
* ``energy``: ``-logsumexp(logits)`` (Liu et al. 2020). Not for an ensemble, whose logits are
  normalised log-probabilities (their logsumexp is always 0).

Which one a run uses, and where it draws the line, is chosen without any labelled unknown input
(:mod:`mmagent.agent.fitting`): classes are held out in turn to stand in for the unknown, and the
threshold is a conformal quantile of the scores of known validation inputs. At serving time the
score is one small matrix product on a vector the model computes anyway.

Saved in the run folder as ``unknown.json`` (the choice, the threshold and how they were chosen)
and ``unknown.safetensors`` (class means and the whitening matrix, no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from mmagent.io import atomic_path, write_json
from mmagent.runs import UNKNOWN_FILE, UNKNOWN_WEIGHTS, RunFolderError, read_json

ScoreKind = Literal["mahalanobis", "msp", "energy"]
SCORE_KINDS: tuple[str, ...] = ("mahalanobis", "msp", "energy")


@dataclass
class GaussianFeatures:
    """Class-conditional Gaussians with a shared covariance, stored whitened: ``means`` (C, D) and
    ``whitener`` (D, D) with ``whitener.T @ cov @ whitener = I`` (shrunk towards the identity, so a
    few hundred rows in a few hundred dimensions still give a usable inverse)."""

    means: np.ndarray
    whitener: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, classes: np.ndarray) -> GaussianFeatures:
        """Fit on (N, D) features and (N,) integer classes (one class for regression / multilabel)."""
        from sklearn.covariance import LedoitWolf

        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(classes)
        labels = np.unique(y)
        means = np.stack([x[y == c].mean(0) for c in labels])
        centred = x - means[np.searchsorted(labels, y)]
        cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
        values, vectors = np.linalg.eigh(cov)
        values = np.maximum(values, 1e-6 * max(float(values.max()), 1e-12))
        whitener = vectors / np.sqrt(values)
        return cls((means @ whitener).astype(np.float32), whitener.astype(np.float32))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) squared Mahalanobis distance of each row to its nearest class mean."""
        z = np.asarray(features, dtype=np.float32) @ self.whitener
        d = (z * z).sum(1, keepdims=True) - 2.0 * z @ self.means.T + (self.means * self.means).sum(1)[None, :]
        return np.maximum(d.min(1), 0.0)


def probability_score(kind: str, logits: np.ndarray) -> np.ndarray:
    """``msp`` or ``energy`` from (N, C) raw logits (the model's, before any temperature)."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(z - top).sum(1))
    if kind == "energy":
        return -lse
    if kind == "msp":
        return 1.0 - np.exp(top[:, 0] - lse)
    raise ValueError(f"unknown score kind {kind!r}; one of {list(SCORE_KINDS)}")


@dataclass
class UnknownDetector:
    """A run's unknown-input score and the threshold above which an input counts as unknown."""

    kind: str
    threshold: float
    target: str
    gaussians: GaussianFeatures | None = None
    info: dict[str, Any] = field(default_factory=dict)  # how it was chosen: folds, AUROCs, false-alarm level

    def score(self, fused: np.ndarray | None, logits: np.ndarray) -> np.ndarray:
        """(N,) scores from the model's fused vectors (N, D) and the target's raw logits (N, C)."""
        if self.kind == "mahalanobis":
            if self.gaussians is None or fused is None:
                raise RunFolderError("the mahalanobis unknown score needs the fitted Gaussians and the model's fused vectors")
            return self.gaussians.distance(fused)
        return probability_score(self.kind, logits)

    def is_unknown(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    # -- persistence ----------------------------------------------------------------------------
    def save(self, run_dir: str | Path) -> None:
        """``unknown.json`` and, for ``mahalanobis``, ``unknown.safetensors``; each written atomically."""
        run_dir = Path(run_dir)
        if self.gaussians is not None:
            with atomic_path(run_dir / UNKNOWN_WEIGHTS) as tmp:
                save_file({"means": self.gaussians.means, "whitener": self.gaussians.whitener}, str(tmp))
        threshold = self.threshold if np.isfinite(self.threshold) else None  # JSON has no infinity
        write_json(run_dir / UNKNOWN_FILE, {"kind": self.kind, "threshold": threshold, "target": self.target, **self.info})

    @classmethod
    def load(cls, run_dir: str | Path) -> UnknownDetector | None:
        """The run's detector, or None for a run made before unknown scores existed."""
        run_dir = Path(run_dir)
        meta = read_json(run_dir / UNKNOWN_FILE)
        if not meta:
            return None
        kind, target = meta.get("kind"), meta.get("target")
        threshold = meta.get("threshold")
        if kind not in SCORE_KINDS or not isinstance(target, str):
            raise RunFolderError(f"{run_dir / UNKNOWN_FILE}: kind must be one of {list(SCORE_KINDS)} and target a name, got {kind!r}, {target!r}")
        if threshold is not None and not isinstance(threshold, (int, float)):
            raise RunFolderError(f"{run_dir / UNKNOWN_FILE}: threshold must be a number or null, got {threshold!r}")
        gaussians = None
        if kind == "mahalanobis":
            try:
                arrays = load_file(str(run_dir / UNKNOWN_WEIGHTS))
                gaussians = GaussianFeatures(arrays["means"], arrays["whitener"])
            except (OSError, SafetensorError, KeyError) as e:
                raise RunFolderError(f"{run_dir / UNKNOWN_WEIGHTS}: cannot read the unknown-score Gaussians ({e})") from None
            if gaussians.means.ndim != 2 or gaussians.whitener.shape != (gaussians.means.shape[1],) * 2:
                raise RunFolderError(f"{run_dir / UNKNOWN_WEIGHTS}: means {gaussians.means.shape} and whitener {gaussians.whitener.shape} do not fit together")
        info = {k: v for k, v in meta.items() if k not in ("kind", "threshold", "target")}
        return cls(kind, float("inf") if threshold is None else float(threshold), target, gaussians, info)
