"""``mmagent.train``: a finished run from a config, the two steps one after the other: training
(:func:`mmagent.training.trainer.train`: the loop, the best model saved) then finishing
(:func:`mmagent.finishing.finish_run`: evaluation, calibration, unknown-input score, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmagent.config import ExperimentConfig
from mmagent.finishing import finish_run
from mmagent.training.trainer import TrainResult
from mmagent.training.trainer import train as train_only


def train(config: ExperimentConfig, run_dir: str | Path, **options: Any) -> TrainResult:
    """Train (``options``: those of :func:`mmagent.training.trainer.train`: ``resume``, ``progress``,
    ``splits``, ``on_epoch_end``, ``feature_cache_store``, ``stop_requested``), then finish the run
    on the main process; ``result.metrics`` holds the validation and test metrics."""
    result = train_only(config, run_dir, **options)
    if result.main and result.config is not None and result.splits is not None:
        progress = bool(options.get("progress", True))
        result.metrics = finish_run(result.run_dir, result.config, result.splits, result.device, progress, result.tracker_run_id)
    return result
