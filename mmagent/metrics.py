"""Metrics, the vocabulary everyone may import (torch-free; scikit-learn loads only when a metric is
computed): which metric each task is judged on, which way is better, :class:`MetricRef` (the typed
``TARGET/METRIC`` that config, training, search, export and reports all speak), and the metrics
themselves per target type (scikit-learn's definitions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmagent.specs import IGNORE_INDEX, UNSEEN_INDEX, TargetSpec

#: Main metric per task type and whether larger is better: used for early stopping and ablations.
MAIN_METRIC = {"classification": ("accuracy", True), "multilabel": ("macro_f1", True), "regression": ("rmse", False)}
#: Metrics where a smaller value is better (the rest: larger is better).
LOWER_IS_BETTER = ("rmse", "mae", "loss", "log_loss")
#: The validation metrics a model can be selected on, per task (the first is the default).
SELECTABLE_METRICS = {
    "classification": ("accuracy", "macro_f1", "mcc", "auroc"),
    "multilabel": ("macro_f1", "micro_f1", "subset_accuracy", "auroc"),
    "regression": ("rmse", "mae", "r2"),
}


@dataclass(frozen=True)
class MetricRef:
    """One metric of one target, e.g. ``intent/accuracy``, with the direction that is better."""

    target: str
    name: str

    @classmethod
    def parse(cls, text: str) -> MetricRef:
        """``"TARGET/METRIC"`` -> MetricRef (a target name may itself hold no ``/``)."""
        target, sep, name = str(text).partition("/")
        if not sep or not target or not name:
            raise ValueError(f"a metric is named TARGET/METRIC (e.g. label/accuracy), got {text!r}")
        return cls(target, name)

    @classmethod
    def main(cls, spec: TargetSpec) -> MetricRef:
        """The target's main metric (accuracy, macro-F1 or RMSE by task)."""
        return cls(spec.column, MAIN_METRIC[spec.type][0])

    @property
    def larger_better(self) -> bool:
        return self.name not in LOWER_IS_BETTER

    def __str__(self) -> str:
        return f"{self.target}/{self.name}"


def main_metric(spec: TargetSpec) -> tuple[str, bool]:
    return MAIN_METRIC[spec.type]


def is_better(score: float, loss: float | None, best_score: float | None, best_loss: float | None, larger_better: bool) -> bool:
    """Whether a validation ``score`` beats ``best_score``; on a tie, the lower validation log-loss
    wins. A small validation set saturates accuracy (FSDD: a dozen candidates at 300 of 300), and
    then the first model to get there is no better a choice than the most confident one."""
    if best_score is None:
        return True
    if score != best_score:
        return score > best_score if larger_better else score < best_score
    return loss is not None and best_loss is not None and loss < best_loss


def classification_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str], detailed: bool = True) -> dict[str, Any]:
    """scikit-learn's definitions over the labels that occur. A row whose label the model never
    saw in training (``UNSEEN_INDEX``) is a wrong answer in accuracy and macro-F1 (all such labels
    together count as one class there, with F1 0: the model cannot predict them); ``unseen_labels``
    counts those rows. Rows without a label (``IGNORE_INDEX``) are left out."""
    from sklearn import metrics as skm

    known = y != IGNORE_INDEX
    out: dict[str, Any] = {"n": int(known.sum()), "unseen_labels": int((y == UNSEEN_INDEX).sum())}
    if not known.any():
        return out
    probs, y = probs[known], y[known]
    pred = probs.argmax(1)
    idx = list(range(len(labels)))
    out["accuracy"] = float(skm.accuracy_score(y, pred))
    occurring = sorted(set(np.unique(y).tolist()) | set(np.unique(pred).tolist()))
    out["macro_f1"] = float(skm.f1_score(y, pred, labels=occurring, average="macro", zero_division=0))
    # Matthews correlation: 0 for a constant or chance-level predictor, whatever the class balance
    # (the honest yardstick where accuracy flatters the majority class, e.g. market movement).
    out["mcc"] = float(skm.matthews_corrcoef(y, pred))
    seen = y != UNSEEN_INDEX  # class probabilities only exist for labels the model knows
    try:
        if len(labels) == 2:
            out["auroc"] = float(skm.roc_auc_score(y[seen], probs[seen, 1]))
        elif len(np.unique(y[seen])) == len(labels):
            out["auroc"] = float(skm.roc_auc_score(y[seen], probs[seen], multi_class="ovr", labels=idx))
    except ValueError:
        pass  # a single class present: AUROC undefined
    if seen.any():  # the tie-breaker between models a saturated accuracy cannot tell apart
        out["log_loss"] = float(skm.log_loss(y[seen], np.clip(probs[seen], 1e-12, 1.0), labels=idx))
    if detailed:
        p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=idx, zero_division=0)
        out["per_class"] = {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, lab in enumerate(labels)}
        out["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=idx).tolist()
    return out


def multilabel_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str], threshold: float = 0.5) -> dict[str, Any]:
    from sklearn import metrics as skm

    pred = (probs >= threshold).astype(int)
    y = y.astype(int)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "subset_accuracy": float(skm.accuracy_score(y, pred)),
        "micro_f1": float(skm.f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
    }
    usable = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    if usable:
        out["auroc"] = float(np.mean([skm.roc_auc_score(y[:, j], probs[:, j]) for j in usable]))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    out["per_label"] = {lab: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(s[j])} for j, lab in enumerate(labels)}
    return out


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from sklearn import metrics as skm

    known = np.isfinite(y)
    pred, y = pred[known], y[known]
    if len(y) == 0:
        return {"n": 0}
    return {
        "n": int(len(y)),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else float("nan"),
    }


def target_metrics(spec: TargetSpec, outputs: np.ndarray, y: np.ndarray, detailed: bool = True) -> dict[str, Any]:
    """``outputs``: probabilities (classification, multilabel) or values (regression)."""
    if spec.type == "classification":
        return classification_metrics(outputs, y, spec.labels, detailed)
    if spec.type == "multilabel":
        return multilabel_metrics(outputs, y, spec.labels)
    return regression_metrics(outputs, y)
