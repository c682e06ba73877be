"""``report.html``: the run report as one self-contained page (figures embedded as base64 PNG,
CSS inline, no script, no external link), readable anywhere the file is copied to.

Built from the same :class:`~mmagent.finishing.report_data.RunReport` and figures as ``report.md``:
headline metrics, per-class (or per-label) tables and the confusion matrix, a predicted-vs-true
scatter and residual statistics for regression, training curves, modality-ablation bars, the
reliability diagram before/after calibration (with where it was measured), and the leaderboard of
a ``mmagent fit`` run. Numbers carry their full value in ``data-value`` for anyone parsing the page.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from mmagent import runs
from mmagent.finishing.figures import figure_name, render_figures
from mmagent.finishing.report_data import RunReport, load_run_report
from mmagent.finishing.report_trust import HEADER, trust_summary
from mmagent.io import write_text

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; } tr.chosen { background: #fff6d6; font-weight: 600; }
figure { margin: .5rem 0 1.2rem; } img { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: .85rem; } .warning { color: #a33; font-weight: 600; }
"""


def write_html_report(run_dir: str | Path, report: RunReport | None = None, figures: dict[str, bytes] | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` atomically; reads the run folder (and draws the figures)
    unless they are given. Returns the file's path."""
    report = report if report is not None else load_run_report(run_dir)
    figures = figures if figures is not None else render_figures(report)
    path = Path(run_dir) / runs.REPORT_HTML_FILE
    write_text(path, render_html(report, figures))
    return path


def render_html(report: RunReport, figures: dict[str, bytes]) -> str:
    """The page as a string (see module doc)."""
    body = _header(report) + _headline(report)
    for target in report.spec.targets:
        body += _target_section(report, target.column, target.type, figures)
    body += _curves(report, figures) + _ablation(report, figures) + _calibration(report, figures) + _trust(report, figures) + _leaderboard(report)
    title = f"mmagent run report: {report.run_dir.resolve().name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{_e(title)}</h1>\n{body}</body>\n</html>\n"
    )


# -- sections ---------------------------------------------------------------------------------------
def _header(report: RunReport) -> str:
    names = report.encoder_names()
    inputs = ", ".join(f"<code>{_e(i.key)}</code> ({_e(i.modality)}, {_e(names[k])})" for k, i in enumerate(report.spec.inputs))
    targets = ", ".join(f"<code>{_e(t.column)}</code> ({_e(t.type)})" for t in report.spec.targets)
    rows = " / ".join(str(report.rows.get(s, "?")) for s in ("train", "validation", "test"))
    items = [f"inputs: {inputs}", f"targets: {targets}", f"fusion: {_e(report.fusion_type())}; epochs run: {len(report.epochs)}"]
    items.append(f"rows train / validation / test: {rows}; detailed results below are on the <strong>{report.eval_split}</strong> split")
    return '<section id="summary"><ul>' + "".join(f"<li>{i}</li>" for i in items) + "</ul></section>\n"


def _headline(report: RunReport) -> str:
    rows = [
        [_e(split), _e(target), _e(name), _num(v)]
        for split, ms in report.metrics.items()
        for target, m in ms.items()
        for name, v in m.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return '<section id="headline"><h2>Headline metrics</h2>' + _table(["split", "target", "metric", "value"], rows, "headline") + "</section>\n"


def _target_section(report: RunReport, target: str, kind: str, figures: dict[str, bytes]) -> str:
    split = report.eval_split
    m = report.metrics.get(split, {}).get(target, {})
    out = f'<section id="results-{_e(_slug(target))}" class="target-results" data-target="{_e(target)}" data-split="{split}">'
    if kind == "regression":
        out += f"<h2>{_e(target)}: predicted against true ({split} split)</h2>"
        out += _figure(figures, figure_name("scatter", target), "Each point is one row; on the dashed diagonal the prediction is exact.")
        out += _residuals(report, target)
    else:
        per = m.get("per_class") if kind == "classification" else m.get("per_label")
        word = "class" if kind == "classification" else "label"
        out += f"<h2>{_e(target)}: per-{word} results ({split} split)</h2>"
        if per:
            rows = [[_e(c), _num(v.get("precision")), _num(v.get("recall")), _num(v.get("f1")), _num(v.get("support"))] for c, v in per.items()]
            out += _table([word, "precision", "recall", "f1", "support"], rows, f"per-{word}", target=target)
        if m.get("unseen_labels"):
            out += f'<p class="note">{m["unseen_labels"]} row(s) have a label never seen in training: counted as wrong answers, not in the table.</p>'
        out += _figure(figures, figure_name("confusion", target), f"Confusion matrix on the {split} split: rows are the true class, columns the prediction.")
    return out + "</section>\n"


def _residuals(report: RunReport, target: str) -> str:
    """Residual (predicted - true) statistics from the saved predictions."""
    if not report.predictions or target not in report.predictions[1]:
        return '<p class="note">No saved predictions for this run: residual statistics unavailable.</p>'
    split, preds = report.predictions
    y = np.asarray(preds[target].get("targets"), dtype=float).reshape(-1)
    pred = np.asarray(preds[target].get("outputs"), dtype=float).reshape(-1)
    known = np.isfinite(y)
    if not known.any():
        return '<p class="note">No labelled rows: residual statistics unavailable.</p>'
    res = pred[known] - y[known]
    stats = {
        "rows": int(known.sum()),
        "mean residual (bias)": float(res.mean()),
        "std of residuals": float(res.std()),
        "MAE": float(np.abs(res).mean()),
        "RMSE": float(np.sqrt((res**2).mean())),
        "median |residual|": float(np.median(np.abs(res))),
        "90th percentile |residual|": float(np.percentile(np.abs(res), 90)),
        "max |residual|": float(np.abs(res).max()),
    }
    return f"<h3>Residuals ({_e(split)} split)</h3>" + _table(["statistic", "value"], [[_e(k), _num(v)] for k, v in stats.items()], "residuals", target=target)


def _curves(report: RunReport, figures: dict[str, bytes]) -> str:
    if not report.epochs and not report.steps:
        return ""
    out = '<section id="curves"><h2>Training curves</h2>'
    out += _figure(figures, figure_name("curves"), "Left: training loss at each step and its mean per epoch. Right: validation metrics after each epoch.")
    rows = [
        [_num(h.get("epoch")), _num(h.get("step")), _num(h.get("seconds"))]
        + [
            "; ".join(
                f"{_e(t)}/{_e(k)} = {_fmt(v)}" for t, d in h["validation"].items() for k, v in d.items() if k in ("accuracy", "macro_f1", "rmse", "auroc")
            )
        ]
        for h in report.epochs
    ]
    return out + _table(["epoch", "step", "seconds", "validation"], rows, "history") + "</section>\n"


def _ablation(report: RunReport, figures: dict[str, bytes]) -> str:
    if not report.ablation:
        return ""
    cols = sorted({k for row in report.ablation.values() for k in row})
    out = '<section id="ablation"><h2>Modality ablation</h2>'
    out += f'<p class="note">What each input contributes: the main metric on the {report.eval_split} split with all inputs, then with one input treated as missing in every row.</p>'
    out += _figure(figures, figure_name("ablation"), "Main metric with all inputs (blue) and without each input (orange).")
    rows = [[_e(name)] + [_num(row.get(c)) for c in cols] for name, row in report.ablation.items()]
    return out + _table(["inputs", *cols], rows, "ablation") + "</section>\n"


def _calibration(report: RunReport, figures: dict[str, bytes]) -> str:
    entries = {t: c for t, c in report.calibration.items() if isinstance(c, dict) and "temperature" in c}
    if not entries:
        return ""
    out = '<section id="calibration"><h2>Calibration</h2>'
    out += '<p class="note">The temperature is fitted on the validation split; ECE and the reliability diagram are measured on data it was not fitted on.</p>'
    for target, c in entries.items():
        where = c.get("measured_on", "validation")
        phrase = "the test split, which calibration never saw" if where == "test" else f"the {where}"
        out += f'<div class="reliability" data-target="{_e(target)}" data-measured-on="{_e(where)}">'
        out += f"<h3>{_e(target)}: reliability diagram on {_e(phrase)}</h3>"
        rows = [[_num(c["temperature"]), _num(c.get("ece_before")), _num(c.get("ece_after")), _e(where), _num(c.get("n_measured")), _num(c.get("n_fitted"))]]
        out += _table(["temperature", "ECE before", "ECE after", "measured on", "rows measured", "validation rows fitted"], rows, "calibration", target=target)
        if c.get("note"):
            out += f'<p class="note">Note: {_e(c["note"])}.</p>'
        out += _figure(figures, figure_name("reliability", target), f"Accuracy against confidence per bin, before and after temperature scaling, on {phrase}.")
        out += "</div>"
    return out + "</section>\n"


def _trust(report: RunReport, figures: dict[str, bytes]) -> str:
    summary = trust_summary(report.calibration, report.unknown)
    if not summary:
        return ""
    out = '<section id="unknown"><h2>Unknown inputs and escalation</h2>'
    out += "".join(f"<p>{_e(s).replace('**', '')}</p>" for s in summary.sentences)
    out += "".join(f'<p class="warning">{_e(w)}</p>' for w in summary.warnings)
    if summary.rows:
        out += _table(HEADER, summary.rows, "escalation")
    out += _figure(
        figures,
        figure_name("unknown_scores"),
        "Unknown-input scores of known validation inputs and of held-out classes standing in for the unknown; the line is the threshold.",
    )
    out += _figure(figures, figure_name("risk_coverage"), "Error among answered inputs against the share answered, most confident first.")
    return out + "</section>\n"


def _leaderboard(report: RunReport) -> str:
    if not report.leaderboard:
        return ""
    cols = list(report.leaderboard[0])  # the unnamed first column marks the chosen candidate with *
    out = '<section id="leaderboard"><h2>Fit leaderboard</h2><p class="note">Candidates <code>mmagent fit</code> tried, in the order they ran; the highlighted row (*) is the chosen model.</p>'
    out += '<table class="leaderboard"><thead><tr>' + "".join(f"<th>{_e(c or 'chosen')}</th>" for c in cols) + "</tr></thead><tbody>"
    for r in report.leaderboard:
        chosen = ' class="chosen"' if r.get("", "").strip() == "*" else ""
        out += f"<tr{chosen}>" + "".join(f"<td>{_e(r.get(c) or '')}</td>" for c in cols) + "</tr>"
    return out + "</tbody></table></section>\n"


# -- pieces -----------------------------------------------------------------------------------------
def _figure(figures: dict[str, bytes], name: str, caption: str) -> str:
    data = figures.get(name)
    if data is None:
        return ""
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img alt="{_e(name)}" src="{src}"><figcaption>{_e(caption)}</figcaption></figure>'


def _table(header: list[str], rows: list[list[str]], kind: str, target: str | None = None) -> str:
    """Cells in ``rows`` are already HTML (escaped text or :func:`_num` cells)."""
    attrs = f' class="{kind}"' + (f' data-target="{_e(target)}"' if target is not None else "")
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(v: Any) -> str:
    """A numeric cell: shown rounded, the full value in ``data-value``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '<td class="num">–</td>'
    return f'<td class="num" data-value="{v!r}">{_fmt(v)}</td>'


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
