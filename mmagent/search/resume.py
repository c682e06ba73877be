"""Resuming a ``mmagent fit`` that was killed (or failed) before it promoted a model.

A fit records what it was asked in ``RUN_DIR/fit.json`` when it starts, and each candidate that
finishes leaves ``trials/<n>/candidate.json`` beside its model. ``mmagent fit --resume -o RUN_DIR``
reads both: the same table, label and settings, the finished candidates kept on the leaderboard
(none is trained again), temporary files of the interrupted work removed, and the time left of
the budget (or a new ``--time-budget``) spent on new candidates before the best is promoted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmagent import runs
from mmagent.io import write_json
from mmagent.search.objective import CandidateResult

FIT_FILE = "fit.json"
LOCK_FILE = ".fit.lock"
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


def hold_fit_lock(run_dir: Path) -> Path:
    """Claim ``RUN_DIR/.fit.lock`` for this process: a second fit or resume of the same folder is
    refused while the first runs (a lock whose process is gone is taken over). Returns the lock's
    path; the caller removes it when done."""
    from mmagent.search.study import pid_alive

    lock = run_dir / LOCK_FILE
    for _ in range(2):
        try:
            with open(lock, "x") as f:  # atomic: exactly one process creates it
                f.write(str(os.getpid()))
            return lock
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and pid_alive(holder):
                raise ResumeError(f"another fit is running in {run_dir} (process {holder}); wait for it, or stop it and --resume") from None
            lock.unlink(missing_ok=True)  # left by a fit that was killed
    raise ResumeError(f"{lock}: cannot claim the folder's lock")


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
    holder = (run_dir / LOCK_FILE).read_text().strip() if (run_dir / LOCK_FILE).is_file() else ""
    from mmagent.search.study import pid_alive

    if holder.isdigit() and int(holder) != os.getpid() and pid_alive(int(holder)):  # before touching anything
        raise ResumeError(f"another fit is running in {run_dir} (process {holder}); wait for it, or stop it and --resume")
    settings = runs.read_json(run_dir / FIT_FILE)
    for name in STAGING:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    finished: dict[int, CandidateResult] = {}
    for folder in sorted((run_dir / TRIALS_DIR).glob("*")) if (run_dir / TRIALS_DIR).is_dir() else []:
        result = read_candidate(folder)
        if result is None:  # killed mid-training: its partial model is not a candidate
            shutil.rmtree(folder, ignore_errors=True)
        else:
            finished[int(folder.name)] = result
    return settings, finished


def read_candidate(folder: Path) -> CandidateResult | None:
    """The finished candidate in ``trials/<n>`` (None: unfinished, or its record torn)."""
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
