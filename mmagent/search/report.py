"""The search's report: ``tune_report.md`` (every trial, the best parameters, parameter
importances), ``tune_plot.png`` and ``tune_results.json``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmagent.io import atomic_path, write_json, write_text
from mmagent.search.study import best_trial, state_counts, trial_errors, trial_seconds

if TYPE_CHECKING:
    import optuna

    from mmagent.data.feature_store import FeatureCacheStore


def write_tune_report(
    study: optuna.Study, tune_dir: Path, metric: str, direction: str, storage: str, best_dir: Path | None, store: FeatureCacheStore | None = None
) -> Path:
    """Write ``tune_report.md`` (+ ``tune_plot.png`` and ``tune_results.json``) into ``tune_dir``."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    errors = trial_errors(study)
    best = best_trial(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    importances: dict[str, float] = {}
    importance_note = "needs at least 2 completed trials"
    if len(complete) >= 2:
        try:
            import optuna

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study)
            importance_note = "" if importances else "no parameter varied across completed trials"
        except Exception as e:  # too few distinct values, a single parameter value, ...
            importance_note = f"not computable ({type(e).__name__}: {e})"
    plot = _plot(trials, importances, direction, tune_dir / "tune_plot.png")
    counts = state_counts(study)

    lines = ["# mmagent tuning report", ""]
    lines += [f"- study: `{study.study_name}` in `{storage}`", f"- objective: {direction} `{metric}` (validation; a trial's value is its best epoch)"]
    lines += ["- trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "- trials: none"]
    if best is not None:
        lines += [
            f"- best: trial {best.number}, {metric} = {best.value:.4f}"
            + (f"; finalized run folder: `{best_dir.name}/` (model, metrics.json, report.md)" if best_dir else ""),
            "",
        ]
        lines += ["## Best parameters", "", "| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | {_cell(v)} |" for k, v in best.params.items()]
    lines += ["", "## Trials", "", "| # | state | value | seconds | epochs | parameters |", "|---|---|---|---|---|---|"]
    for t in trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        if t.state == TrialState.PRUNED and t.intermediate_values:
            step = max(t.intermediate_values)
            value = f"({t.intermediate_values[step]:.4f} at epoch {step})"
        note = f" — {errors[t.number]}" if t.state == TrialState.FAIL and errors.get(t.number) else ""
        params = "; ".join(f"{k}={_cell(v)}" for k, v in t.params.items())
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | {value} | {trial_seconds(t):.1f} | {t.user_attrs.get('epochs_run', '')} | {params}{_cell(note)} |"
        )
    lines += ["", "## Parameter importances", ""]
    if importances:
        lines += [
            "Share of the objective's variation explained by each parameter (Optuna's default evaluator), over completed trials."
            + (f" Only {len(complete)} completed trials: a rough indication." if len(complete) < 10 else ""),
            "",
        ]
        lines += ["| parameter | importance |", "|---|---|"] + [f"| `{k}` | {v:.3f} |" for k, v in importances.items()]
    else:
        lines.append(f"Not available: {importance_note}.")
    if plot:
        lines += ["", f"![trials and importances]({plot})"]
    if store is not None:
        lines += [
            "",
            "## Frozen-encoder cache",
            "",
            f"This run: {store.builds} encoder pass(es) over a table, {store.hits} reuse(s) of cached outputs"
            + (f" (stored in `{store.folder.name}/`)." if store.folder else "."),
        ]
    path = tune_dir / "tune_report.md"
    write_text(path, "\n".join(lines) + "\n")
    write_json(
        tune_dir / "tune_results.json",
        {
            "study": study.study_name,
            "metric": metric,
            "direction": direction,
            "counts": counts,
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params, "dir": str(best_dir) if best_dir else None},
            "importances": importances,
            "trials": [
                {
                    "number": t.number,
                    "state": t.state.name.lower(),
                    "value": t.value,
                    "params": t.params,
                    "seconds": trial_seconds(t),
                    "epochs_run": t.user_attrs.get("epochs_run"),
                    "intermediate": {str(k): v for k, v in t.intermediate_values.items()},
                }
                for t in trials
            ],
        },
    )
    return path


def _cell(v: Any) -> str:
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def _plot(trials: list[optuna.trial.FrozenTrial], importances: dict[str, float], direction: str, path: Path) -> str | None:
    from optuna.trial import TrialState

    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if importances else 1, figsize=(11 if importances else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    comp = [t for t in done if t.state == TrialState.COMPLETE]
    ax.scatter([t.number for t in comp], [t.value for t in comp], label="complete", zorder=3)
    pruned = [t for t in done if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned:
        ax.scatter(
            [t.number for t in pruned],
            [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
            marker="x",
            color="tab:red",
            label="pruned (last score)",
            zorder=3,
        )
    best_so_far, xs, ys = None, [], []
    for t in sorted(comp, key=lambda t: t.number):
        if best_so_far is None or (t.value > best_so_far if direction == "maximize" else t.value < best_so_far):
            best_so_far = t.value
        xs.append(t.number)
        ys.append(best_so_far)
    if xs:
        ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    ax.set(title="trials", xlabel="trial", ylabel="validation score")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    if importances:
        ax2 = axes[0][1]
        names = list(importances)[::-1]
        ax2.barh(names, [importances[n] for n in names])
        ax2.set(title="parameter importance", xlabel="importance")
        ax2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name
