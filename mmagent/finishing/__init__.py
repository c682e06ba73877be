"""Finishing a trained run: evaluation on validation and test, calibration, the baseline check, the
unknown-input score and escalation thresholds, the drift profile, the report (markdown, plots,
HTML), and the experiment tracker's artifacts. Called by whoever trained the run, after training
(:func:`mmagent.workflow.train`, ``mmagent train``, ``fit``'s promotion, ``mmagent update``), never
from inside the training loop: training knows nothing of agents, lifecycles or reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmagent import tracking
from mmagent.finishing.report import UNKNOWN_FIT_ROWS, finalize_run, write_reports

if TYPE_CHECKING:
    from mmagent.config import ExperimentConfig
    from mmagent.training.splits import Splits


def finish_run(
    run_dir: str | Path, config: ExperimentConfig, splits: Splits, device: Any = "cpu", progress: bool = True, tracker_run_id: str | None = None
) -> dict[str, Any]:
    """Finish the run in ``run_dir`` (its best model saved by training): evaluate, calibrate, fit
    the unknown-input score and escalation, write metrics, report and drift profile, seal the run;
    then (MLflow) log the report to the tracker's run ``tracker_run_id``. Returns the metrics."""
    import torch

    run_dir = Path(run_dir)
    metrics = finalize_run(run_dir, config, splits, torch.device(device), progress)
    tracking.log_artifacts(tracker_run_id, config, run_dir)
    return metrics


__all__ = ["UNKNOWN_FIT_ROWS", "finalize_run", "finish_run", "write_reports"]
