"""The run folder: its layout in one place, and reading what a finished run left behind.

::

    RUN_DIR/
      config.json          the validated experiment config (agent block resolved)
      model/               the best model (model.json, model.safetensors, assets/)
      metrics.json         final metrics per split, ablation, calibration
      metrics.jsonl        the training log: one line per step / epoch
      calibration.json     temperatures per target (+ the chosen escalation threshold)
      report.md, plots/    the human-readable report
      checkpoints/last/    the latest training checkpoint (for --resume)
      skipped_rows.csv     rows left out by data.on_bad_row: skip

Everything that reads a run (the agent, the server, tuning, benchmarks) goes through here, so
none of them needs to import training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
METRICS_LOG = "metrics.jsonl"
CALIBRATION_FILE = "calibration.json"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINTS_DIR}/last"
SKIPPED_ROWS_FILE = "skipped_rows.csv"
TENSORBOARD_DIR = "tensorboard"
# calibration.json: the key of the escalation threshold, next to the per-target entries
ESCALATION_KEY = "_escalation_threshold"


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (not a run, a finished run, a corrupt file)."""


def model_dir(run_dir: str | Path) -> Path:
    """The saved model of a run (``RUN_DIR/model``); a bare model folder is accepted as well."""
    run_dir = Path(run_dir)
    return run_dir / MODEL_DIR if (run_dir / MODEL_DIR).is_dir() else run_dir


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when the file does not exist. A corrupt file is an
    error naming it, not a traceback from the JSON parser."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's saved config (``config.json``) as a plain mapping; ``{}`` for a bare model folder."""
    return read_json(Path(run_dir) / CONFIG_FILE)


def read_calibration(run_dir: str | Path) -> dict[str, Any]:
    """``calibration.json``: ``{target: {temperature, ece_before, ece_after, ...}, ESCALATION_KEY: {...}}``."""
    return read_json(Path(run_dir) / CALIBRATION_FILE)


def temperatures(calibration: dict[str, Any]) -> dict[str, float]:
    """Target -> fitted temperature, from a calibration mapping."""
    return {k: float(v["temperature"]) for k, v in calibration.items() if isinstance(v, dict) and "temperature" in v}


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``metrics.json``: final metrics per split (``validation``, ``test``), ablation, calibration."""
    return read_json(Path(run_dir) / METRICS_FILE)


def read_metrics_log(run_dir: str | Path, kind: str) -> list[dict[str, Any]]:
    """Entries of ``RUN_DIR/metrics.jsonl``: ``kind="step"`` (training loss lines) or
    ``"epoch"`` (validation lines). A torn last line (a killed run) is skipped."""
    path = Path(run_dir) / METRICS_LOG
    if not path.is_file():
        return []
    key = "loss" if kind == "step" else "validation"
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and key in entry:
            out.append(entry)
    return out


def check_run_dir(run_dir: str | Path, resume: bool) -> Path:
    """Refuse to start a run where it would mix with another: the latest checkpoint folder when
    resuming, ``RUN_DIR`` free of checkpoints otherwise. Returns the checkpoint folder."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / LAST_CHECKPOINT
    if resume and not (run_dir / CHECKPOINTS_DIR).is_dir():
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
    if not resume and (run_dir / CHECKPOINTS_DIR).exists():
        raise FileExistsError(f"{run_dir} already holds a training run; use --resume to continue it or choose another folder")
    return ckpt_dir
