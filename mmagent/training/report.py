"""The end of a run: evaluate the best model, calibrate it, and write metrics.json, report.md and plots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmagent import runs
from mmagent.agent.fitting import calibrate, escalation_threshold
from mmagent.inference import make_loader
from mmagent.io import atomic_path, write_json, write_text
from mmagent.lifecycle.profile import profile_at_end_of_training
from mmagent.model import MultimodalModel
from mmagent.runs import read_metrics_log
from mmagent.training.evaluate import ablation_table, evaluate

if TYPE_CHECKING:
    from mmagent.config import ExperimentConfig
    from mmagent.training.splits import Splits


def finalize_run(
    run_dir: Path, config: ExperimentConfig, splits: Splits, history: list[dict[str, Any]], device: torch.device, progress: bool = True
) -> dict[str, Any]:
    """Evaluate the saved best model on validation (and test), calibrate it, and write
    calibration.json, metrics.json, plots and report.md."""
    model = MultimodalModel.load(run_dir / runs.MODEL_DIR).to(device)
    bs = config.train.batch_size
    metrics: dict[str, Any] = {}
    val_loader = make_loader(model, splits.validation, bs, num_workers=config.loader_workers)
    metrics["validation"], val_preds = evaluate(model, val_loader, device)
    eval_loader, test_preds = val_loader, None
    if splits.test is not None:
        eval_loader = make_loader(model, splits.test, bs, num_workers=config.loader_workers)
        metrics["test"], test_preds = evaluate(model, eval_loader, device)
    calibration: dict[str, Any] = calibrate(model, val_preds, test_preds)
    escalation = escalation_threshold(model, val_preds, calibration, config.agent)
    if escalation:
        calibration[runs.ESCALATION_KEY] = escalation
    write_json(run_dir / runs.CALIBRATION_FILE, calibration)
    ablation = ablation_table(model, eval_loader, device, metrics.get("test", metrics["validation"]))
    write_json(run_dir / runs.METRICS_FILE, {**metrics, "ablation": ablation, "calibration": calibration})
    plots = write_plots(run_dir, model, metrics, history, calibration)
    write_report(
        run_dir,
        config,
        model,
        metrics,
        ablation,
        calibration,
        history,
        plots,
        n=(len(splits.train), len(splits.validation), len(splits.test) if splits.test else 0),
    )
    profile_at_end_of_training(run_dir, splits.train, splits.validation, device)  # drift_profile.json, for drift watch
    if progress:
        print(f"run saved to {run_dir} (report: {run_dir / runs.REPORT_FILE})")
        if escalation and not escalation.get("reached", True):
            print(f"warning: escalation target not reached: {escalation.get('note')}")
    return metrics


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def scalar_table(metrics: dict[str, dict[str, Any]]) -> str:
    rows = ["| target | metric | value |", "|---|---|---|"]
    for target, ms in metrics.items():
        rows += [f"| {target} | {k} | {_fmt(v)} |" for k, v in ms.items() if isinstance(v, (int, float))]
    return "\n".join(rows)


def write_report(
    run_dir: Path,
    config: ExperimentConfig,
    model: MultimodalModel,
    metrics: dict[str, Any],
    ablation: dict[str, dict[str, float]],
    calibration: dict[str, Any],
    history: list[dict[str, Any]],
    plots: list[str],
    n: tuple[int, int, int],
) -> None:
    lines = ["# mmagent run report", ""]
    lines += ["- inputs: " + ", ".join(f"`{i.key}` ({i.modality}, {i.encoder.source}:{i.encoder.name})" for i in model.spec.inputs)]
    lines += ["- targets: " + ", ".join(f"`{t.column}` ({t.type})" for t in model.spec.targets)]
    lines += [f"- fusion: {config.fusion.type}; epochs run: {len(history)}; rows train/validation/test: {n[0]}/{n[1]}/{n[2]}", ""]
    for split, ms in metrics.items():
        lines += [f"## {split.capitalize()} metrics", "", scalar_table(ms), ""]
        for target, m in ms.items():
            if "per_class" in m:
                lines += [f"### {split}: per-class ({target})", "", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
                lines += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |" for c, v in m["per_class"].items()]
                lines.append("")
    cols = sorted({k for row in ablation.values() for k in row})
    lines += ["## Modality ablation", "", "What each input contributes: the same data with one input dropped.", ""]
    lines += ["| inputs | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |" for name, row in ablation.items()]
    if calibration:
        lines += _calibration_lines(calibration)
    if history:
        lines += ["", "## Training history", "", "| epoch | step | seconds | validation |", "|---|---|---|---|"]
        lines += [
            f"| {h['epoch']} | {h['step']} | {h['seconds']} | "
            + "; ".join(f"{t}/{k}={_fmt(v)}" for t, d in h["validation"].items() for k, v in d.items() if k in ("accuracy", "macro_f1", "rmse", "auroc"))
            + " |"
            for h in history
        ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    write_text(run_dir / runs.REPORT_FILE, "\n".join(lines) + "\n")


def _calibration_lines(calibration: dict[str, Any]) -> list[str]:
    lines = ["", "## Calibration", "", "Temperature scaling fitted on validation; ECE measured on data the temperature was not fitted on.", ""]
    lines += ["| target | temperature | ECE before | ECE after | measured on | rows |", "|---|---|---|---|---|---|"]
    entries = {t: c for t, c in calibration.items() if isinstance(c, dict) and "temperature" in c}
    lines += [
        f"| {t} | {c['temperature']:.3f} | {c['ece_before']:.4f} | {c['ece_after']:.4f} | {c.get('measured_on', 'validation')} | {c.get('n_measured', '')} |"
        for t, c in entries.items()
    ]
    lines += [f"\nNote ({t}): {c['note']}." for t, c in entries.items() if c.get("note")]
    c = calibration.get(runs.ESCALATION_KEY)
    if c:
        lines += ["", f"Escalation threshold chosen on validation: {c['threshold']:.3f} (precision {c['precision']:.3f}, coverage {c['coverage']:.3f})."]
        if not c.get("reached", True):
            lines += ["", f"**Warning: the escalation target was not reached.** {c.get('note') or ''} The agent uses the threshold with the best precision."]
    return lines


def write_plots(
    run_dir: Path, model: MultimodalModel, metrics: dict[str, Any], history: list[dict[str, Any]], calibration: dict[str, Any] | None = None
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    (run_dir / runs.PLOTS_DIR).mkdir(exist_ok=True)
    steps = read_metrics_log(run_dir, "step")
    if steps or history:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        if steps:
            axes[0].plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=1)
        axes[0].set(title="training loss", xlabel="step")
        for target, d in history[-1]["validation"].items() if history else []:
            for k in ("accuracy", "macro_f1", "rmse"):
                if k in d:
                    axes[1].plot([h["epoch"] for h in history], [h["validation"][target].get(k) for h in history], marker="o", label=f"{target}/{k}")
        axes[1].set(title="validation", xlabel="epoch")
        axes[1].legend(fontsize=7)
        _save(fig, run_dir / "plots" / "curves.png")
        made.append("plots/curves.png")
    split = "test" if "test" in metrics else "validation"
    for target, m in metrics[split].items():
        cm = m.get("confusion_matrix")
        if not cm or len(cm) > 40:
            continue
        labels = model.heads[target].spec.labels
        fig, ax = plt.subplots(figsize=(1 + 0.45 * len(labels), 1 + 0.45 * len(labels)))
        ax.imshow(np.array(cm), cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=f"{target} ({split})")
        for i, row in enumerate(cm):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, v, ha="center", va="center", fontsize=6)
        name = f"plots/confusion_{_file_safe(target)}.png"
        _save(fig, run_dir / name)
        made.append(name)
    for target, c in (calibration or {}).items():
        if isinstance(c, dict) and c.get("reliability"):
            made.append(_reliability_plot(run_dir, target, c))
    return made


def _reliability_plot(run_dir: Path, target: str, c: dict[str, Any]) -> str:
    """Reliability diagram: accuracy against confidence per bin, before and after temperature
    scaling, on the data the ECE was measured on; the diagonal is perfect calibration."""
    import matplotlib.pyplot as plt

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
    name = f"plots/reliability_{_file_safe(target)}.png"
    _save(fig, run_dir / name)
    return name


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
