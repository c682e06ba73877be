"""Faults around the data: read-only and full disks, damaged run folders, and the CLI options that
go with them (recipe refinement by --set, predict --act on tables, --device)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mmagent.cli import app
from mmagent.cli.support import error_message
from mmagent.config import ConfigError, load_config
from mmagent.data import DataError
from mmagent.io import atomic_dir, removed_on_failure, write_json
from mmagent.model import MultimodalModel
from mmagent.specs import InputSpec, ModelSpec, TargetSpec

N = 12


def _table(folder: Path) -> Path:
    path = folder / "data.csv"
    pd.DataFrame({"x": [float(i) for i in range(N)], "label": ["ab"[i % 2] for i in range(N)]}).to_csv(path, index=False)
    return path


def _config_file(folder: Path) -> Path:
    raw = {
        "data": {"train": str(_table(folder))},
        "inputs": [{"column": "x", "modality": "numeric"}],
        "targets": [{"column": "label"}],
        "train": {"epochs": 1, "batch_size": 4},
    }
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run folder with an (untrained) saved numeric model: enough for predict / evaluate."""
    spec = ModelSpec(
        inputs=[InputSpec(column="x", modality="numeric", encoder={"source": "builtin", "name": "mlp"})],
        targets=[TargetSpec(column="label", labels=["a", "b"])],
    )
    MultimodalModel(spec).save(tmp_path / "run" / "model")
    return tmp_path / "run"


def _one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"a traceback instead of a message: {result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_read_only_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, for whom chmod does not make a folder read-only: refuse like a read-only disk.
    blocked = tmp_path / "ro"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(blocked)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    result = CliRunner().invoke(app, ["train", str(_config_file(tmp_path)), "-o", str(blocked / "run"), "--quiet"])
    line = _one_line_error(result)
    assert result.exit_code == 1 and str(blocked / "run") in line and "Read-only file system" in line


def test_full_disk_names_the_file_and_leaves_no_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    real_write = Path.write_text

    def write_text(self: Path, *args, **kwargs):
        if str(self).startswith(str(run)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk raises it: no file name
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    result = CliRunner().invoke(app, ["train", str(_config_file(tmp_path)), "-o", str(run), "--quiet"])
    line = _one_line_error(result)
    assert result.exit_code == 1 and f"{run}/" in line and "No space left on device" in line  # the file that failed
    assert not run.exists(), "a failed start leaves no half-written run folder"


def test_atomic_writes_leave_nothing_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as info:
        write_json(tmp_path / "a.json", {"x": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "a.json")
    with pytest.raises(OSError) as info:
        with atomic_dir(tmp_path / "model") as tmp:
            write_json(tmp / "model.json", {})
    assert info.value.filename == str(tmp_path / "model")
    assert list(tmp_path.iterdir()) == [], "no temporary file or folder is left"


def test_a_folder_the_tool_did_not_create_is_never_removed(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(RuntimeError), removed_on_failure(tmp_path / "mine"):
        raise RuntimeError("boom")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(RuntimeError), removed_on_failure(tmp_path / "new") as new:
        new.mkdir()
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()


def test_predict_on_truncated_weights(run_dir: Path, tmp_path: Path) -> None:
    weights = run_dir / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = _one_line_error(CliRunner().invoke(app, ["predict", str(run_dir), str(_table(tmp_path))]))
    assert str(weights) in line and "truncated" in line


def test_predict_with_an_unknown_encoder_in_the_saved_model(run_dir: Path, tmp_path: Path) -> None:
    from mmagent.runs import write_checksums

    spec_file = run_dir / "model" / "model.json"
    spec = json.loads(spec_file.read_text())
    spec["inputs"][0]["encoder"]["name"] = "no-such-encoder"
    spec_file.write_text(json.dumps(spec))
    write_checksums(spec_file.parent)  # intact files, as saved by an install that had this encoder
    result = CliRunner().invoke(app, ["predict", str(run_dir), str(_table(tmp_path))])
    line = _one_line_error(result)
    assert result.exit_code == 2 and str(run_dir) in line and "'no-such-encoder'" in line


def test_predict_act_writes_decisions_for_a_table(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "decisions.csv"
    result = CliRunner().invoke(app, ["predict", str(run_dir), str(_table(tmp_path)), "--act", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    decisions = pd.read_csv(out)
    assert len(decisions) == N
    assert {"action", "reply", "escalated", "reason", "confidence", "label"} <= set(decisions.columns)
    assert decisions["action"].notna().all() and decisions["confidence"].between(0, 1).all()
    printed = CliRunner().invoke(app, ["predict", str(run_dir), str(_table(tmp_path)), "--act"])
    assert printed.exit_code == 0 and [d["action"] for d in json.loads(printed.stdout)] == list(decisions["action"])


def test_evaluate_and_predict_run_on_the_device_asked_for(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmagent.agent
    import mmagent.inference.evaluate as ev

    seen: dict[str, object] = {}
    real_eval, real_load = ev.evaluate, mmagent.agent.Agent.load

    def spy_eval(model, loader, device="cpu", drop=()):
        seen["evaluate"] = str(device)
        return real_eval(model, loader, device, drop)

    def spy_load(run, device="cpu", **kw):
        seen["predict"] = str(device)
        return real_load(run, device=device, **kw)

    monkeypatch.setattr(ev, "evaluate", spy_eval)
    monkeypatch.setattr(mmagent.agent.Agent, "load", staticmethod(spy_load))
    data = str(_table(tmp_path))
    assert CliRunner().invoke(app, ["evaluate", str(run_dir), data, "--device", "cpu"]).exit_code == 0
    assert CliRunner().invoke(app, ["predict", str(run_dir), data, "--device", "cpu"]).exit_code == 0
    assert seen == {"evaluate": "cpu", "predict": "cpu"}
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert CliRunner().invoke(app, ["evaluate", str(run_dir), data, "--device", "auto"]).exit_code == 0
    assert seen["evaluate"] == auto
    cuda = CliRunner().invoke(app, ["evaluate", str(run_dir), data, "--device", "cuda"])
    if torch.cuda.is_available():
        assert cuda.exit_code == 0 and seen["evaluate"] == "cuda"
    else:
        assert "no CUDA GPU" in _one_line_error(cuda)


def test_set_refines_the_recipe_encoder(tmp_path: Path) -> None:
    raw = {
        "recipe": "customer_service",
        "data": {"train": "t.csv"},
        "inputs": [{"column": "text", "modality": "text"}, {"column": "a", "modality": "audio"}],
        "targets": [{"column": "intent"}],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path, ["inputs.0.encoder.freeze=all", "inputs.1.encoder.max_seconds=2"])
    text, audio = cfg.inputs[0].encoder, cfg.inputs[1].encoder
    assert (text.source, text.name, text.max_length, text.freeze) == ("zoo", "minilm-l6", 64, "all")
    assert (audio.name, audio.max_seconds, audio.freeze) == ("whisper-tiny.en", 2.0, "all")
    other = load_config(path, ["inputs.0.encoder={source: hf, name: bert, pretrained: false}"])
    assert other.inputs[0].encoder.max_length != 64, "another model keeps none of the recipe's encoder settings"


def test_one_mapping_of_errors_to_exit_codes(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))
    assert error_message(full) == (f"{tmp_path / 'x'}: No space left on device", 1)
    assert error_message(ConfigError("bad key"))[1] == 2
    assert error_message(DataError([], header="bad rows"))[1] == 2
    assert error_message(FileNotFoundError("no such run"))[1] == 2
    assert error_message(RuntimeError("a bug")) is None, "bugs keep their traceback"


def test_train_never_writes_into_a_folder_it_did_not_create(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    line = _one_line_error(CliRunner().invoke(app, ["train", str(_config_file(tmp_path)), "-o", str(out), "--quiet"]))
    assert str(out) in line and "not empty" in line
    assert (out / "config.json").read_text() == '{"mine": true}' and len(list(out.iterdir())) == 1
