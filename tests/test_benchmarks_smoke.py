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
        cwd=ROOT,
        env=_env(SHARED_DATA),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(result.read_text())
    assert data["smoke"] is True and data["name"] == "breastmnist"
    for key in ("date", "commit", "machine", "threads"):
        assert data[key] not in (None, "")
    rows = data["rows"]
    assert [(r["metric"], "probe" in r["variant"]) for r in rows] == [
        ("test AUC", False),
        ("test accuracy", False),
        ("test AUC", True),
        ("test accuracy", True),
    ]
    for r in rows:
        assert r["benchmark"] == "breastmnist" and "EfficientNet-Lite0" in r["variant"] and "smoke subset" in r["variant"]
        assert 0.0 <= r["value"] <= 1.0 and r["wall_s"] > 0 and r["reference"]
    # smoke runs never touch the published table
    assert (results_md.read_text() if results_md.is_file() else None) == md_before


def test_run_all_fails_without_data(tmp_path: Path) -> None:
    missing = tmp_path / "no-data-here"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--smoke", "--data-root", str(missing)],
        cwd=ROOT,
        env=_env(missing),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error: data root" in proc.stdout and str(missing) in proc.stdout and "no benchmark ran" in proc.stdout


@pytest.mark.parametrize("name,folder", [("fsdd", "fsdd"), ("vs_hf_trainer", "banking77"), ("overhead", "banking77"), ("unknown_inputs", "banking77")])
def test_benchmark_fails_without_its_dataset(tmp_path: Path, name: str, folder: str) -> None:
    """A smoke run with no data fails (exit 2) naming the missing folder; it never measures
    something else or passes silently."""
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--smoke", "--data-root", str(tmp_path), "--work-dir", str(tmp_path / "work")],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[bench] error:" in proc.stderr and str(tmp_path / folder) in proc.stderr
    assert not (tmp_path / "work" / f"{name}-smoke" / "runs").exists()


def test_vs_hf_trainer_keeps_the_trainer_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both Trainer variants share epochs, batch, lr, seed and the epoch selection with mmagent;
    everything else stays the Trainer's default, and only the grouped one groups by length."""
    import dataclasses

    from transformers import TrainingArguments

    from benchmarks import vs_hf_trainer as V
    from benchmarks.common import RunMode

    monkeypatch.setattr(RunMode, "smoke", RunMode.smoke)  # parsing sets the process's run mode: restore it after
    args = V.parse(["--smoke", "--epochs", "2", "--batch-size", "16", "--lr", "3e-5"])
    defaults = TrainingArguments(output_dir=str(tmp_path / "d"))
    plain, grouped = (V.training_arguments(args, tmp_path / "run", g) for g in (False, True))
    for a in (plain, grouped):
        assert (a.num_train_epochs, a.per_device_train_batch_size, a.learning_rate, a.seed, a.max_steps) == (2, 16, 3e-5, V.SEED, 3)
        assert a.load_best_model_at_end and a.metric_for_best_model == "accuracy" and getattr(a.eval_strategy, "value", a.eval_strategy) == "epoch"
        for name in ("optim", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "dataloader_num_workers", "gradient_accumulation_steps"):
            assert getattr(a, name) == getattr(defaults, name), name
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = "group_by_length" if "group_by_length" in fields else "train_sampling_strategy"
    assert getattr(plain, key) == getattr(defaults, key)
    assert getattr(grouped, key) in (True, "group_by_length")


def test_vs_hf_trainer_rows_compare_the_same_work() -> None:
    from benchmarks import vs_hf_trainer as V

    def res(variant: str, step_s: list[float], acc: float) -> dict:
        steps = [{"phase": "epoch 1/1", "fetch_s": 0.0, "body_s": s} for s in step_s]
        return {
            "variant": variant,
            "steps": steps,
            "accuracy": acc,
            "macro_f1": acc / 2,
            "best_epoch": 1,
            "peak_rss_mb": 100.0,
            "precision": "fp32",
            "optimizer": "adamw_torch_fused",
            "torch_threads": 1,
        }

    results = {"mmagent": res("mmagent", [1.0, 1.0], 0.9), "hf": res("hf", [2.0, 1.0], 0.8), "hf_grouped": res("hf_grouped", [1.5, 1.0], 0.85)}
    rows = V.summarize(results, seen=64, subset="s", wall=1.0)
    value = lambda variant_start, metric: next(r["value"] for r in rows if r["variant"].startswith(variant_start) and r["metric"] == metric)  # noqa: E731
    assert value("mmagent train", "train samples/s") == 32.0 and value("HF Trainer + Auto", "train samples/s") == round(64 / 3, 2)
    assert value("mmagent / HF Trainer defaults", "samples/s ratio") == 1.5
    assert value("mmagent / HF Trainer group_by_length", "samples/s ratio") == 1.25
    assert value("mmagent - HF Trainer defaults", "test accuracy difference") == 0.1
    assert any("length-grouped" in r["variant"] for r in rows)
