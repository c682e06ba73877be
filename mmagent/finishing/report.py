"""The end of a run: evaluate the best model, calibrate it, and write metrics.json, the
predictions the report shows, and the reports (report.md with plots/, report.html)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmagent import runs
from mmagent.agent.escalation import fit_detector, fit_escalation
from mmagent.agent.fitting import calibrate
from mmagent.ensemble import EnsembleModel, load_model
from mmagent.finishing.baseline import compare_with_baseline, verdict
from mmagent.finishing.figures import render_figures
from mmagent.finishing.report_data import RunReport, load_run_report
from mmagent.finishing.report_html import write_html_report
from mmagent.finishing.report_trust import HEADER, TrustSummary, trust_summary
from mmagent.inference import Predictions, make_loader, run_model
from mmagent.inference.evaluate import ablation_table, evaluate
from mmagent.io import atomic_path, write_json, write_text
from mmagent.lifecycle.profile import profile_at_end_of_training
from mmagent.metrics import MetricRef

if TYPE_CHECKING:
    from mmagent.config import ExperimentConfig
    from mmagent.data.tables import Table
    from mmagent.training.splits import Splits

#: Training rows the unknown-input score's Gaussians are fitted on (a seeded sample beyond this):
#: enough for class means and a shrunk covariance, one bounded pass whatever the table's size.
UNKNOWN_FIT_ROWS = 2000


def finalize_run(run_dir: Path, config: ExperimentConfig, splits: Splits, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Evaluate the saved best model on validation (and test), calibrate it, and write
    calibration.json, metrics.json, predictions.npz, plots, report.md and report.html."""
    model = load_model(run_dir / runs.MODEL_DIR).to(device)  # one model, or an ensemble
    bs = config.train.batch_size
    metrics: dict[str, Any] = {}
    val_loader = make_loader(model, splits.validation, bs, num_workers=config.loader_workers, by_length=True)
    metrics["validation"], val_preds = evaluate(model, val_loader, device)
    eval_loader, test_preds = val_loader, None
    if splits.test is not None:
        eval_loader = make_loader(model, splits.test, bs, num_workers=config.loader_workers, by_length=True)
        metrics["test"], test_preds = evaluate(model, eval_loader, device)
    calibration: dict[str, Any] = calibrate(model, val_preds, test_preds)
    baseline = baseline_check(model, config, splits.train, val_preds, metrics["validation"])
    if baseline:  # sealed with the calibration: the agent reads it back and escalates all if not beaten
        calibration[runs.BASELINE_KEY] = baseline
    escalation = fit_trust(run_dir, model, config, splits, val_preds, test_preds, calibration)
    if escalation:
        calibration[runs.ESCALATION_KEY] = escalation
    write_json(run_dir / runs.CALIBRATION_FILE, calibration)
    runs.seal_run(run_dir)  # config, calibration and unknown-input score: refused at load if changed
    ablation = ablation_table(model, eval_loader, device, metrics.get("test", metrics["validation"]))
    rows = {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test) if splits.test is not None else 0}
    write_json(run_dir / runs.METRICS_FILE, {**metrics, "ablation": ablation, "calibration": calibration, "rows": rows})
    save_predictions(run_dir, "test" if test_preds is not None else "validation", test_preds or val_preds)
    write_reports(run_dir)
    profile_at_end_of_training(run_dir, splits.train, splits.validation, device)  # drift_profile.json, for drift watch
    if progress:
        print(f"run saved to {run_dir} (report: {run_dir / runs.REPORT_FILE}, {run_dir / runs.REPORT_HTML_FILE})")
        if baseline and not baseline["beats"]:
            print(f"WARNING: {baseline['note']}")
        if escalation and not escalation.get("reached", True):
            print(f"warning: escalation target not reached: {escalation.get('note') or escalation.get('guarantee')}")
    return metrics


def baseline_check(model: Any, config: ExperimentConfig, train: Table, val_preds: Predictions, val_metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The run's selection metric on validation against the obvious baseline's (see
    :mod:`mmagent.finishing.baseline`), with the sentence to show when the model does not beat it."""
    ref = MetricRef.parse(config.train.metric) if config.train.metric else MetricRef.main(model.heads[config.agent.target or next(iter(model.heads))].spec)
    target, metric, spec = ref.target, ref.name, model.heads[ref.target].spec
    if target not in val_preds.targets or metric not in val_metrics.get(target, {}):
        return None
    check = compare_with_baseline(spec, metric, val_metrics[target][metric], train, val_preds.targets[target])
    if check and not check["beats"]:
        check["note"] = verdict(check)
    return check


def fit_trust(
    run_dir: Path, model: Any, config: ExperimentConfig, splits: Splits, val_preds: Predictions, test_preds: Predictions | None, calibration: dict[str, Any]
) -> dict[str, Any] | None:
    """Fit the agent target's unknown-input detector (saved as ``unknown.json``) on a sample of
    training rows and validation, then its escalation thresholds (returned for calibration.json)."""
    target = config.agent.target or next(iter(model.heads))
    kind = model.heads[target].spec.type
    dropped = model.input_names if len(model.input_names) > 1 else []
    rows = np.random.default_rng(0).permutation(len(splits.train))[: UNKNOWN_FIT_ROWS // (1 + len(dropped))]
    train_sample = splits.train.subset(np.sort(rows))
    known_train = _as_given_and_without_each_input(model, train_sample, config, dropped)
    known_val = _as_given_and_without_each_input(model, splits.validation, config, dropped, val_preds)
    detector = fit_detector(target, kind, known_train, known_val, config.agent, allow_energy=not isinstance(model, EnsembleModel))
    if detector is not None:
        detector.save(run_dir)
    if kind != "classification":
        return None
    temperature = float(calibration.get(target, {}).get("temperature", 1.0))
    blocked = (calibration.get(runs.BASELINE_KEY) or {}).get("beats") is False  # the agent answers nothing: measure that
    return fit_escalation(target, val_preds, temperature, config.agent, detector, test_preds, blocked)


def _as_given_and_without_each_input(model: Any, table: Table, config: ExperimentConfig, dropped: list[str], given: Predictions | None = None) -> Predictions:
    """Predictions of ``table`` as given, then with each input in ``dropped`` missing in every row:
    a model trained with modality dropout answers a request without one of its inputs, so such a
    request is not unknown, and the unknown-input score learns that. Only what the score reads is
    kept (fused vectors, logits, targets)."""
    device = next(model.parameters()).device
    loader = make_loader(model, table, config.train.batch_size, num_workers=config.loader_workers, by_length=True)
    parts = [given if given is not None else run_model(model, loader, device)] + [run_model(model, loader, device, drop=[name]) for name in dropped]
    if len(parts) == 1 or any(p.fused is None for p in parts):
        return parts[0]
    return Predictions(
        logits={k: np.concatenate([p.logits[k] for p in parts]) for k in parts[0].logits},
        outputs={},
        targets={k: np.concatenate([p.targets[k] for p in parts]) for k in parts[0].targets},
        gates=None,
        fused=np.concatenate([p.fused for p in parts]),  # type: ignore[misc]
    )


def save_predictions(run_dir: Path, split: str, preds: Predictions) -> None:
    """``predictions.npz`` (atomically): per target, the logits, outputs (probabilities or values)
    and encoded targets of ``split``, so the report's figures can be redrawn and checked later."""
    arrays: dict[str, np.ndarray] = {"split": np.array(split)}
    for kind in ("logits", "outputs", "targets"):
        arrays.update({f"{kind}/{t}": np.asarray(v) for t, v in getattr(preds, kind).items()})
    with atomic_path(run_dir / runs.PREDICTIONS_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def write_reports(run_dir: str | Path) -> RunReport:
    """(Re)write ``plots/``, ``report.md`` and ``report.html`` from what the run folder holds
    (``mmagent report RUN`` calls this for an existing run)."""
    report = load_run_report(run_dir)
    figures = render_figures(report)
    for name, data in figures.items():
        with atomic_path(report.run_dir / name) as tmp:
            tmp.write_bytes(data)
    write_markdown_report(report, list(figures))
    write_html_report(report.run_dir, report, figures)
    return report


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def scalar_table(metrics: dict[str, dict[str, Any]]) -> str:
    rows = ["| target | metric | value |", "|---|---|---|"]
    for target, ms in metrics.items():
        rows += [f"| {target} | {k} | {_fmt(v)} |" for k, v in ms.items() if isinstance(v, (int, float))]
    return "\n".join(rows)


def write_markdown_report(report: RunReport, plots: list[str]) -> None:
    """``report.md``: metrics, per-class tables, ablation, calibration, history, links to the plots."""
    spec, n, history = report.spec, report.rows, report.epochs
    lines = ["# mmagent run report", ""]
    baseline = report.calibration.get(runs.BASELINE_KEY) or {}
    if baseline.get("beats") is False:
        lines += [f"**Warning: {baseline.get('note')}.**", ""]
    names = report.encoder_names()
    lines += ["- inputs: " + ", ".join(f"`{i.key}` ({i.modality}, {names[k]})" for k, i in enumerate(spec.inputs))]
    lines += ["- targets: " + ", ".join(f"`{t.column}` ({t.type})" for t in spec.targets)]
    rows = "/".join(str(n.get(s, "?")) for s in ("train", "validation", "test"))
    lines += [f"- fusion: {report.fusion_type()}; epochs run: {len(history)}; rows train/validation/test: {rows}", ""]
    ablation, calibration = report.ablation, report.calibration
    for split, ms in report.metrics.items():
        lines += [f"## {split.capitalize()} metrics", "", scalar_table(ms), ""]
        for target, m in ms.items():
            if "per_class" in m:
                lines += [f"### {split}: per-class ({target})", "", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
                lines += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |" for c, v in m["per_class"].items()]
                lines.append("")
            if "per_label" in m:
                lines += [f"### {split}: per-label ({target})", "", "| label | precision | recall | f1 | support |", "|---|---|---|---|---|"]
                lines += [
                    f"| {c} | {v.get('precision', float('nan')):.3f} | {v.get('recall', float('nan')):.3f} | {v['f1']:.3f} | {v['support']} |"
                    for c, v in m["per_label"].items()
                ]
                lines.append("")
    cols = sorted({k for row in ablation.values() for k in row})
    lines += ["## Modality ablation", "", "What each input contributes: the same data with one input dropped.", ""]
    lines += ["| inputs | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |" for name, row in ablation.items()]
    if calibration:
        lines += _calibration_lines(calibration)
    lines += _trust_lines(trust_summary(calibration, report.unknown))
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
    write_text(report.run_dir / runs.REPORT_FILE, "\n".join(lines) + "\n")


def _calibration_lines(calibration: dict[str, Any]) -> list[str]:
    lines = ["", "## Calibration", "", "Temperature scaling fitted on validation; ECE measured on data the temperature was not fitted on.", ""]
    lines += ["| target | temperature | ECE before | ECE after | measured on | rows |", "|---|---|---|---|---|---|"]
    entries = {t: c for t, c in calibration.items() if isinstance(c, dict) and "temperature" in c}
    lines += [
        f"| {t} | {c['temperature']:.3f} | {c['ece_before']:.4f} | {c['ece_after']:.4f} | {c.get('measured_on', 'validation')} | {c.get('n_measured', '')} |"
        for t, c in entries.items()
    ]
    lines += [f"\nNote ({t}): {c['note']}." for t, c in entries.items() if c.get("note")]
    return lines


def _trust_lines(summary: TrustSummary) -> list[str]:
    if not summary:
        return []
    lines = ["", "## Unknown inputs and escalation", ""]
    lines += [f"{s}\n" for s in summary.sentences] + [f"**Warning:** {w}\n" for w in summary.warnings]
    if summary.rows:
        lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] + ["| " + " | ".join(r) + " |" for r in summary.rows]
    return lines
