"""A killed or failed ``mmagent fit`` is resumed, keeping its finished candidates (issue 23)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mmagent.cli import app


def _table(path: Path, n: int = 400) -> Path:
    x = np.random.default_rng(0).normal(size=(n, 2))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "label": np.where(x.sum(1) > 0, "up", "down")}).to_csv(path, index=False)
    return path


def _candidates(run: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((run / "trials").glob("*/candidate.json"))}


def test_a_killed_fit_resumes_with_its_finished_candidates(tmp_path: Path) -> None:
    table, run = _table(tmp_path / "t.csv"), tmp_path / "run"
    args = [sys.executable, "-m", "mmagent", "fit", str(table), "--label", "label", "-o", str(run), "--time-budget", "90s", "--no-ensemble", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _candidates(run) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert _candidates(run), "no candidate finished before the kill"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no clean-up runs: as a killed machine leaves it
        proc.wait()
    finished = _candidates(run)
    assert not (run / "model").exists()
    again = CliRunner().invoke(app, ["fit", str(table), "--label", "label", "-o", str(run)])
    assert again.exit_code != 0 and "--resume" in " ".join(again.output.split())  # the clear choice, nothing touched
    assert _candidates(run) == finished
    (run / "trials" / "99").mkdir()  # a half-trained candidate, as a kill mid-epoch leaves one
    (run / ".promoted").mkdir()
    done = CliRunner().invoke(app, ["fit", "--resume", "-o", str(run), "--time-budget", "30s"])
    assert done.exit_code == 0, done.output
    assert (run / "model" / "model.json").is_file() and not (run / ".promoted").exists() and not (run / "trials" / "99").exists()
    board = (run / "leaderboard.csv").read_text()
    for number in finished:  # kept on the leaderboard, and not trained again
        assert f"{int(number):02d}-" in board
        assert json.loads((run / "trials" / number / "candidate.json").read_text()) == finished[number]
    nothing = CliRunner().invoke(app, ["fit", "--resume", "-o", str(run)])
    assert nothing.exit_code != 0 and "already finished" in nothing.output


def test_a_fit_that_failed_while_promoting_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmagent.finishing.report as report

    table, run = _table(tmp_path / "t.csv", 300), tmp_path / "run"
    real = report.write_json

    def full_disk(path, *args, **kwargs):
        if Path(path).name == "calibration.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(report, "write_json", full_disk)
    failed = CliRunner().invoke(app, ["fit", str(table), "--label", "label", "-o", str(run), "--time-budget", "20s", "--preset", "fast", "--quiet"])
    assert failed.exit_code == 1 and "No space left on device" in failed.output
    assert _candidates(run) and not (run / "model").exists() and not (run / ".promoted").exists()  # no half-written promotion
    monkeypatch.setattr(report, "write_json", real)
    done = CliRunner().invoke(app, ["fit", "--resume", "-o", str(run), "--quiet"])
    assert done.exit_code == 0, done.output
    assert (run / "model" / "model.json").is_file() and (run / "report.md").is_file()


def test_a_second_fit_on_the_same_folder_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    from mmagent.search.resume import LOCK_FILE, save_settings

    run = tmp_path / "run"
    run.mkdir()
    save_settings(run, {"train": str(_table(tmp_path / "t.csv")), "label": "label", "budget": 30})
    (run / "trials" / "0").mkdir(parents=True)  # what a live fit is writing
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / LOCK_FILE).write_text(str(holder.pid))
        result = CliRunner().invoke(app, ["fit", "--resume", "-o", str(run)])
        assert result.exit_code == 2 and f"another fit is running in {run} (process {holder.pid})" in " ".join(result.output.split())
        assert (run / "trials" / "0").is_dir()  # nothing of the running fit was touched
    finally:
        holder.kill()
        holder.wait()


def test_resume_needs_a_fit_to_resume(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fit", "--resume", "-o", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "holds no fit to resume" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["fit", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--label" in result.output and not (tmp_path / "run").exists()
