"""The benchmark commands run end to end (smoke mode) and write the result rows RESULTS.md needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MMAGENT_DATA_ROOT", ROOT.parent / "shared" / "data"))


def _env(data_root: Path) -> dict[str, str]:
    return {**os.environ, "MMAGENT_DATA_ROOT": str(data_root), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.skipif(not (SHARED_DATA / "breastmnist" / "BreastMNIST.npz").is_file(), reason=f"BreastMNIST not found under {SHARED_DATA}")
def test_breastmnist_smoke_writes_expected_rows(tmp_path: Path) -> None:
    result = ROOT / "benchmarks" / "results" / "breastmnist.smoke.json"
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    md_before = results_md.read_text() if results_md.is_file() else None
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.breastmnist", "--smoke", "--threads", "1", "--data-root", str(SHARED_DATA), "--work-dir", str(tmp_path)],
        cwd=ROOT, env=_env(SHARED_DATA), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(result.read_text())
    assert data["smoke"] is True and data["name"] == "breastmnist"
    for key in ("date", "commit", "machine", "threads"):
        assert data[key] not in (None, "")
    rows = data["rows"]
    assert [(r["metric"], "probe" in r["variant"]) for r in rows] == [("test AUC", False), ("test accuracy", False), ("test AUC", True), ("test accuracy", True)]
    for r in rows:
        assert r["benchmark"] == "breastmnist" and "EfficientNet-Lite0" in r["variant"] and "smoke subset" in r["variant"]
        assert 0.0 <= r["value"] <= 1.0 and r["wall_s"] > 0 and r["reference"]
    # smoke runs never touch the published table
    assert (results_md.read_text() if results_md.is_file() else None) == md_before


def test_run_all_skips_cleanly_without_data(tmp_path: Path) -> None:
    missing = tmp_path / "no-data-here"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--smoke", "--data-root", str(missing)], cwd=ROOT, env=_env(missing), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped" in proc.stdout and str(missing) in proc.stdout


def test_benchmark_skips_cleanly_without_its_dataset(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fsdd", "--smoke", "--data-root", str(tmp_path), "--work-dir", str(tmp_path / "work")], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[bench] skipped:" in proc.stdout and "fsdd" in proc.stdout
    assert not (tmp_path / "work" / "fsdd-smoke" / "runs").exists()
