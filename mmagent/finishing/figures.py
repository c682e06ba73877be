"""The report's figures (matplotlib, Agg backend: no display needed), as PNG bytes: written to
``plots/`` for ``report.md`` and embedded in ``report.html``, drawn once for both."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mmagent.finishing.report_data import RunReport

MAX_CONFUSION_LABELS = 40  # beyond this a confusion matrix is unreadable: the table says it all
CURVE_METRICS = ("accuracy", "macro_f1", "rmse")


def figure_name(kind: str, target: str | None = None) -> str:
    """The figure's path in the run folder, e.g. ``plots/confusion_label.png``."""
    return f"plots/{kind}.png" if target is None else f"plots/{kind}_{_file_safe(target)}.png"


def render_figures(report: RunReport) -> dict[str, bytes]:
    """Every figure the run has data for: name (see :func:`figure_name`) -> PNG bytes."""
    plt = _pyplot()
    made: dict[str, bytes] = {}
    try:
        if report.steps or report.epochs:
            made[figure_name("curves")] = to_png(curves(report.steps, report.epochs))
        split = report.eval_split
        for target, m in report.metrics.get(split, {}).items():
            cm = m.get("confusion_matrix")
            if cm and len(cm) <= MAX_CONFUSION_LABELS:
                made[figure_name("confusion", target)] = to_png(confusion(cm, list(m.get("per_class") or range(len(cm))), f"{target} ({split})"))
        if report.predictions:
            pred_split, preds = report.predictions
            for target in (t.column for t in report.spec.targets if t.type == "regression"):
                if target in preds and "targets" in preds[target]:
                    made[figure_name("scatter", target)] = to_png(scatter(preds[target]["targets"], preds[target]["outputs"], f"{target} ({pred_split})"))
        if len(report.ablation) > 1:
            made[figure_name("ablation")] = to_png(ablation(report.ablation))
        for target, c in report.calibration.items():
            if isinstance(c, dict) and c.get("reliability"):
                made[figure_name("reliability", target)] = to_png(reliability(target, c))
        if report.unknown.get("histogram"):
            made[figure_name("unknown_scores")] = to_png(unknown_scores(report.unknown))
        curve = (report.calibration.get("_escalation_threshold") or {}).get("held_out", {}).get("risk_coverage")
        if curve:
            made[figure_name("risk_coverage")] = to_png(risk_coverage(curve, report.calibration["_escalation_threshold"]))
    finally:
        plt.close("all")
    return made


def unknown_scores(unknown: dict[str, Any]) -> Any:
    """Histograms of the unknown-input score: known validation inputs against held-out classes (the
    stand-ins for the unknown), with the threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    known, held = unknown["histogram"].get("known") or [], unknown["histogram"].get("held_out") or []
    values = np.asarray(known + held, dtype=float)
    bins = np.linspace(values.min(), values.max(), 40) if len(values) else 10
    ax.hist(known, bins=bins, alpha=0.6, density=True, label=f"known ({len(known)})")
    if held:
        ax.hist(held, bins=bins, alpha=0.6, density=True, label=f"held-out classes ({len(held)})")
    if unknown.get("threshold") is not None:
        ax.axvline(unknown["threshold"], color="black", ls="--", lw=1, label="threshold")
    ax.set(xlabel=f"{unknown.get('kind')} score (higher: less known)", ylabel="density", title=f"unknown-input score ({unknown.get('target')})")
    ax.legend(fontsize=7)
    return fig


def risk_coverage(curve: list[dict[str, float]], escalation: dict[str, Any]) -> Any:
    """Error among answered against the share answered (most confident first), on held-out data."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([p["coverage"] for p in curve], [p["error"] for p in curve], "o-", ms=3, label="confidence alone")
    held = escalation.get("held_out") or {}
    if held.get("error_among_answered") is not None:
        ax.plot([held["coverage"]], [held["error_among_answered"]], "r*", ms=10, label="the agent's rules")
    if escalation.get("max_error") is not None:
        ax.axhline(escalation["max_error"], color="grey", ls="--", lw=1, label="promised max error")
    ax.set(
        xlim=(0, 1.02),
        ylim=(0, None),
        xlabel="share answered",
        ylabel="error among answered",
        title=f"risk-coverage on {str(held.get('split', '')).split(' ')[0]}",
    )
    ax.legend(fontsize=7)
    return fig


def curves(steps: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> Any:
    """Training loss (each step, placed within its epoch, and the mean per epoch) and the
    validation metrics after each epoch."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    by_epoch: dict[int, list[float]] = {}
    for s in steps:
        by_epoch.setdefault(int(s.get("epoch", 1)), []).append(float(s["loss"]))
    xs, ys = [], []
    for e, losses in sorted(by_epoch.items()):
        xs += [e - 1 + (i + 1) / len(losses) for i in range(len(losses))]
        ys += losses
    if xs:
        axes[0].plot(xs, ys, lw=0.8, alpha=0.6, label="each step")
        axes[0].plot(sorted(by_epoch), [float(np.mean(by_epoch[e])) for e in sorted(by_epoch)], "o-", label="mean per epoch")
        axes[0].legend(fontsize=7)
    axes[0].set(title="training loss", xlabel="epoch")
    for target, d in epochs[-1]["validation"].items() if epochs else []:
        for k in CURVE_METRICS:
            if k in d:
                axes[1].plot([h["epoch"] for h in epochs], [h["validation"].get(target, {}).get(k) for h in epochs], marker="o", label=f"{target}/{k}")
    axes[1].set(title="validation", xlabel="epoch")
    if axes[1].lines:
        axes[1].legend(fontsize=7)
    return fig


def confusion(cm: list[list[int]], labels: list[str], title: str) -> Any:
    plt = _pyplot()
    size = 1 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(max(size, 3.5), max(size, 3.5)))
    ax.imshow(np.array(cm), cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i, row in enumerate(cm):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, v, ha="center", va="center", fontsize=6)
    return fig


def reliability(target: str, c: dict[str, Any]) -> Any:
    """Reliability diagram: accuracy against confidence per bin, before and after temperature
    scaling, on the data the ECE was measured on; the diagonal is perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for when, style in (("before", "o-"), ("after", "s-")):
        bins = c["reliability"].get(when) or []
        ece = c.get(f"ece_{when}", float("nan"))
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, ms=4, label=f"{when} (ECE {ece:.3f})")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence",
        ylabel="accuracy",
        title=f"{target}: T={c['temperature']:.2f}, on {c.get('measured_on', 'validation').split(',')[0]}",
    )
    ax.legend(fontsize=7, loc="upper left")
    return fig


def ablation(table: dict[str, dict[str, float]]) -> Any:
    """One panel per target metric: its value with all inputs and with each input dropped."""
    plt = _pyplot()
    cols = sorted({k for row in table.values() for k in row})
    names = list(table)
    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 0.9 + 0.35 * len(names)), squeeze=False)
    for ax, col in zip(axes[0], cols):
        values = [float(table[n].get(col, float("nan"))) for n in names]
        ax.barh(range(len(names)), values, color=["#4c72b0" if i == 0 else "#dd8452" for i in range(len(names))])
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3f}", va="center", fontsize=7)
        ax.set(title=col, xlim=(0, max([v for v in values if np.isfinite(v)] + [1e-9]) * 1.2))
    return fig


def scatter(y: np.ndarray, pred: np.ndarray, title: str) -> Any:
    """Predicted against true values (rows with a known value); the diagonal is a perfect fit."""
    plt = _pyplot()
    y, pred = np.asarray(y, dtype=float).reshape(-1), np.asarray(pred, dtype=float).reshape(-1)
    known = np.isfinite(y)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.scatter(y[known], pred[known], s=8, alpha=0.6)
    if known.any():
        lo, hi = float(min(y[known].min(), pred[known].min())), float(max(y[known].max(), pred[known].max()))
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=1)
    ax.set(xlabel="true", ylabel="predicted", title=title)
    return fig


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs (or opens) a display
    import matplotlib.pyplot as plt

    return plt


def to_png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
