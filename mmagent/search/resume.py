"""Resuming a ``mmagent fit`` that was killed (or failed) before it promoted a model.

A fit records what it was asked in ``RUN_DIR/fit.json`` when it starts, and each candidate that
finishes leaves ``trials/<n>/candidate.json`` beside its model. ``mmagent fit --resume -o RUN_DIR``
reads both: the same table, label and settings, the finished candidates kept on the leaderboard
(none is trained again), temporary files of the interrupted work removed, and the time left of
the budget (or a new ``--time-budget``) spent on new candidates before the best is promoted.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmagent import runs
from mmagent.io import write_json
from mmagent.search.objective import CandidateResult

FIT_FILE = "fit.json"
CANDIDATE_FILE = "candidate.json"
TRIALS_DIR = "trials"
STAGING = (".promoted",)  # folders fit stages the winner in


@dataclass
class Resumed:
    """What an interrupted fit left to build on: its finished candidates and the budget it used."""

    finished: dict[int, CandidateResult] = field(default_factory=dict)
    used_seconds: float = 0.0


class ResumeError(ValueError):
    """A folder that holds no fit to resume (none there, or one that already finished)."""


def save_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    """``fit.json``: the call's settings (paths absolute) and when it started."""
    write_json(run_dir / FIT_FILE, {"version": 1, "started": time.time(), "used_seconds": 0.0, **settings})


def record_time(run_dir: Path, used_seconds: float) -> None:
    """Note the budget used so far (after each candidate), so a resumed fit knows what is left."""
    path = run_dir / FIT_FILE
    if path.is_file():
        write_json(path, {**runs.read_json(path), "used_seconds": round(used_seconds, 1)})


def save_candidate(folder: Path, result: CandidateResult) -> None:
    """``trials/<n>/candidate.json``: what the finished candidate scored (the model is beside it)."""
    record = asdict(result)
    record["run_dir"] = str(result.run_dir)
    write_json(folder / CANDIDATE_FILE, record)


def unfinished(run_dir: Path) -> bool:
    """``run_dir`` holds a fit that started and did not promote a model."""
    return (run_dir / FIT_FILE).is_file() and not (run_dir / runs.MODEL_DIR).exists() and not (run_dir / runs.METRICS_FILE).exists()


def load_for_resume(run_dir: Path) -> tuple[dict[str, Any], dict[int, CandidateResult]]:
    """The settings of the fit in ``run_dir`` and its finished candidates (by trial number), after
    removing what the interrupted work left half-done: staging folders, trial folders without a
    finished candidate."""
    if not (run_dir / FIT_FILE).is_file():
        raise ResumeError(f"--resume: {run_dir} holds no fit to resume (no {FIT_FILE}); start one with mmagent fit TABLE --label COLUMN -o {run_dir}")
    if not unfinished(run_dir):
        raise ResumeError(f"--resume: the fit in {run_dir} already finished (it holds a model); nothing to resume")
    settings = runs.read_json(run_dir / FIT_FILE)
    for name in STAGING:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    finished: dict[int, CandidateResult] = {}
    for folder in sorted((run_dir / TRIALS_DIR).glob("*")) if (run_dir / TRIALS_DIR).is_dir() else []:
        result = _read_candidate(folder)
        if result is None:  # killed mid-training: its partial model is not a candidate
            shutil.rmtree(folder, ignore_errors=True)
        else:
            finished[int(folder.name)] = result
    return settings, finished


def _read_candidate(folder: Path) -> CandidateResult | None:
    path = folder / CANDIDATE_FILE
    if not folder.is_dir() or not folder.name.isdigit() or not path.is_file() or not (folder / runs.MODEL_DIR / "model.json").is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record["run_dir"] = folder
        record["trial_number"] = int(folder.name)
        return CandidateResult(**record)
    except (OSError, ValueError, TypeError):
        return None  # a torn record: the candidate is trained again if the search picks it
