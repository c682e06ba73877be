"""The last classes of hostile input (issue 23), each fed through every entry point that can receive
it: the CLI, the Python API and HTTP. Each must be a clear error naming the thing to fix (file, row,
column, key or field), never a traceback, a silent acceptance or a 5xx, and must leave nothing behind."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mmagent.cli import app
from mmagent.data import DataError
from mmagent.runs import RunFolderError

N = 240


def _table(path: Path, seed: int, n: int = N) -> Path:
    x = np.random.default_rng(seed).normal(size=n)
    pd.DataFrame({"x": x, "label": np.where(x > 0, "up", "down")}).to_csv(path, index=False)
    return path


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _refused(result, *needles: str) -> str:
    """The CLI refused with one readable line (no traceback) that says each of ``needles``."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"a traceback instead of a message: {result.exception!r}"
    text = " ".join(result.output.split())
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, text
    return text


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmagent.config import config_from_dict
    from mmagent.workflow import train

    folder = tmp_path_factory.mktemp("hostile")
    cfg = {
        "data": {"train": str(_table(folder / "train.csv", 0)), "test": str(_table(folder / "test.csv", 1, 80))},
        "inputs": [{"column": "x", "modality": "numeric"}],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 16},
        "train": {"epochs": 3, "batch_size": 16, "lr": 1e-2, "head_lr": 1e-2, "seed": 0},
    }
    train(config_from_dict(cfg), folder / "run", progress=False)
    return folder / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"  # (tmp_path may be a new sub-folder: copytree makes it)


def _alter_weights(run: Path) -> Path:
    weights = run / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the last tensor
    weights.write_bytes(bytes(data))
    return weights


# -- integrity before trust ---------------------------------------------------------------------------
def test_altered_weights_are_refused_everywhere_and_leave_no_registry_trace(finished_run: Path, tmp_path: Path) -> None:
    from mmagent.agent import Agent
    from mmagent.lifecycle.registry import Registry

    good = finished_run
    run = _copy(good, tmp_path)
    _alter_weights(run)
    data = good.parent / "test.csv"
    with pytest.raises(RunFolderError, match="model.safetensors is corrupt"):
        Agent.load(run)
    fresh = tmp_path / "fresh-registry"
    _refused(_cli("promote", run, "--data", data, "--registry", fresh), "model.safetensors is corrupt")
    assert not fresh.exists()  # a refused run leaves no trace: not even a new registry
    registry = tmp_path / "registry"
    assert _cli("promote", good, "--data", data, "--registry", registry).exit_code == 0
    _refused(_cli("promote", run, "--data", data, "--registry", registry), "model.safetensors is corrupt")
    assert [v.number for v in Registry.open(registry).versions()] == [1]  # the champion only
    for args in (
        ("predict", run, "--record", '{"x": 0.5}'),
        ("export", run, "--format", "onnx", "-o", tmp_path / "m.onnx"),
        ("update", run, "--data", data, "-o", tmp_path / "updated"),
        ("explain", run, "--record", '{"x": 0.5}', "-o", tmp_path / "why"),
        ("drift", run, "--data", data),
    ):
        _refused(_cli(*args), "model.safetensors is corrupt")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "updated").exists() and not (tmp_path / "why").exists()


def test_a_sealed_run_whose_listing_was_deleted_is_refused(finished_run: Path, tmp_path: Path) -> None:
    from mmagent.agent import Agent

    for listing in ("checksums.sha256", "model/checksums.sha256"):
        run = _copy(finished_run, tmp_path / listing.replace("/", "-"))
        (run / listing).unlink()
        with pytest.raises(RunFolderError, match=f"{listing} is missing: this run was sealed"):
            Agent.load(run)
        _refused(_cli("predict", run, "--record", '{"x": 0.5}'), "is missing: this run was sealed")


def test_a_run_whose_config_or_calibration_changed_after_training_is_refused(finished_run: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from mmagent.agent import Agent
    from mmagent.serving.app import create_app

    run = _copy(finished_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["inputs"][0]["encoder"]["name"] = "hash-embedding"  # an edited encoder, silently ignored before
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match=r"config.json is corrupt.*sealed"):
        Agent.load(run)
    _refused(_cli("predict", run, "--record", '{"x": 0.5}'), "config.json is corrupt")
    with TestClient(create_app(run)) as client:
        for _ in range(100):
            ready = client.get("/readyz")
            if ready.status_code != 503 or "config.json" in ready.text:
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and "config.json is corrupt" in ready.text
        answer = client.post("/v1/predict", json={"records": [{"x": 0.5}]})
        assert answer.status_code == 503  # not ready: every request is told so, none is answered by a damaged run


def test_a_temperature_that_cannot_work_is_named_not_turned_into_nan(finished_run: Path, tmp_path: Path) -> None:
    from mmagent.agent import Agent

    run = _copy(finished_run, tmp_path)
    (run / "checksums.sha256").unlink()  # an older run, from before runs were sealed:
    (run / ".mmagent-run").write_text(json.dumps({"created": "2026-01-01"}))  # its marker says nothing of a seal
    for bad in (0, -1.0, "warm"):
        calibration = json.loads((run / "calibration.json").read_text())
        calibration["label"]["temperature"] = bad
        (run / "calibration.json").write_text(json.dumps(calibration))
        with pytest.raises(RunFolderError, match=r"calibration.json: label.temperature must be a positive number"):
            Agent.load(run)
        _refused(_cli("predict", run, "--record", '{"x": 0.5}'), "label.temperature must be a positive number")


# -- settings that cannot work are refused -------------------------------------------------------------
@pytest.mark.parametrize("budget", ["0", "1s", "-5"])
def test_a_budget_that_cannot_work_is_refused_before_any_work(tmp_path: Path, budget: str) -> None:
    from mmagent.search.fit import fit

    table = _table(tmp_path / "t.csv", 0)
    _refused(_cli("fit", table, "--label", "label", "-o", tmp_path / "run", "--time-budget", budget), "fit needs at least 20s")
    with pytest.raises(ValueError, match="fit needs at least 20s"):
        fit(table, "label", tmp_path / "run2", time_budget=float(budget.rstrip("s")), progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()


def test_negative_loader_workers_are_a_config_error_naming_the_key(tmp_path: Path) -> None:
    import yaml

    from mmagent.config import ConfigError, config_from_dict

    raw = {
        "data": {"train": str(_table(tmp_path / "t.csv", 0)), "num_workers": -1},
        "inputs": [{"column": "x", "modality": "numeric"}],
        "targets": [{"column": "label"}],
    }
    with pytest.raises(ConfigError, match="data.num_workers"):
        config_from_dict(raw)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    _refused(_cli("train", tmp_path / "cfg.yaml", "-o", tmp_path / "run"), "data.num_workers")
    assert not (tmp_path / "run").exists()


# -- media cells of the wrong kind, found before training and at every entry point ------------------------
@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmagent.model import MultimodalModel
    from mmagent.specs import InputSpec, ModelSpec, TargetSpec

    folder = tmp_path_factory.mktemp("image-run")
    spec = ModelSpec(
        inputs=[InputSpec(column="image", modality="image", encoder={"source": "timm", "name": "resnet18", "pretrained": False, "image_size": 32})],
        targets=[TargetSpec(column="label", labels=["a", "b"])],
    )
    MultimodalModel(spec).save(folder / "run" / "model")
    return folder / "run"


def test_an_image_cell_holding_a_number_is_refused_up_front(image_run: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from mmagent.agent import Agent
    from mmagent.serving.app import create_app

    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"image": 5 if i == 3 else "a.png", "label": "ab"[i % 2]}) + "\n" for i in range(8)))
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = _cli("fit", tmp_path / "t.jsonl", "--label", "label", "--column-type", "image=image", "-o", tmp_path / "run", "--time-budget", "20s")
    _refused(result, "t.jsonl", "row 4", "'image'", "an image must be a file path")
    assert not (tmp_path / "run").exists()
    agent = Agent.load(image_run)
    with pytest.raises(DataError, match="an image must be a file path.*got int '5'"):
        agent.predict({"image": 5})
    with pytest.raises(DataError, match=r"got shape \(5, 5, 7\)"):
        agent.predict({"image": np.zeros((5, 5, 7), np.uint8)})
    with TestClient(create_app(image_run)) as client:
        for _ in range(200):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        answer = client.post("/v1/predict", json={"records": [{"image": 5}]})
        assert answer.status_code == 422 and "image" in answer.text


# -- the Python API is as strict as the server ----------------------------------------------------------
def test_the_same_request_gets_the_same_verdict_from_the_api_the_cli_and_http(finished_run: Path) -> None:
    from fastapi.testclient import TestClient

    from mmagent.agent import Agent
    from mmagent.serving.app import create_app

    agent = Agent.load(finished_run)
    with pytest.raises(DataError, match=r"unknown column 'colour'; this model's input columns are \['x'\]"):
        agent.act({"x": 0.5, "colour": "red"})
    _refused(_cli("predict", finished_run, "--record", '{"x": 0.5, "colour": "red"}'), "unknown column 'colour'")
    with TestClient(create_app(finished_run)) as client:
        for _ in range(200):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        answer = client.post("/v1/act", json={"records": [{"x": 0.5, "colour": "red"}]})
        assert answer.status_code == 422 and answer.json()["field"] == "colour" and "unknown column 'colour'" in answer.json()["error"]
        assert client.post("/v1/act", json={"records": [{"x": 0.5}]}).status_code == 200  # the connection stays usable
    for bad in (None, 3, ["not a record"]):
        with pytest.raises(DataError, match="records must be a dict, a list of dicts or a table"):
            agent.act(bad)  # type: ignore[arg-type]


# -- every error names the thing to fix ----------------------------------------------------------------
def test_a_lone_surrogate_in_text_is_named_by_row_and_column(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from mmagent.agent import Agent
    from mmagent.data.tables import Table
    from mmagent.data.validation import check_rows
    from mmagent.model import MultimodalModel
    from mmagent.serving.app import create_app
    from mmagent.specs import InputSpec, ModelSpec, TargetSpec
    from tests.conftest import TINY_BERT

    text = InputSpec(column="text", modality="text", encoder={"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 16})
    frame = pd.DataFrame({"text": pd.Series(["fine", "bad \ud800 char"], dtype=object)})
    problems = check_rows(Table(frame, "requests.jsonl"), [text], [], need_targets=False)
    assert [(p.row, p.column) for p in problems] == [(1, "text")] and "lone surrogate" in problems[0].message
    MultimodalModel(ModelSpec(inputs=[text], targets=[TargetSpec(column="label", labels=["a", "b"])])).save(tmp_path / "run" / "model")
    with pytest.raises(DataError, match="row 2, column 'text': text holds a lone surrogate"):
        Agent.load(tmp_path / "run").act_many([{"text": "fine"}, {"text": "bad \ud800 char"}])
    with TestClient(create_app(tmp_path / "run")) as client:
        for _ in range(200):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        body = '{"records": [{"text": "bad \\ud800 char"}]}'  # a JSON escape decodes to a lone surrogate
        answer = client.post("/v1/act", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422 and "lone surrogate" in answer.text


def test_a_png_given_as_the_config_and_a_latin1_byte_in_a_csv_are_named(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "config.png")
    _refused(_cli("train", tmp_path / "config.png", "-o", tmp_path / "run"), str(tmp_path / "config.png"), "not a UTF-8 text file")
    (tmp_path / "t.csv").write_bytes(b"text,label\nhello,a\nfine,b\ncaf\xe9 au lait,a\n")
    _refused(_cli("fit", tmp_path / "t.csv", "--label", "label", "-o", tmp_path / "run"), "t.csv, line 4 (row 3), column 'text': byte 0xe9 is not UTF-8")
    assert not (tmp_path / "run").exists()


def test_an_invalid_hf_encoder_config_names_the_key_path(tmp_path: Path) -> None:
    import yaml

    raw = {
        "data": {"train": str(_table(tmp_path / "t.csv", 0))},
        "inputs": [
            {
                "column": "x",
                "modality": "text",
                "encoder": {
                    "source": "hf",
                    "name": "bert",
                    "pretrained": False,
                    "config": {"hidden_size": 30, "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 99},
                },
            }
        ],
        "targets": [{"column": "label"}],
        "train": {"epochs": 1},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    _refused(_cli("train", tmp_path / "cfg.yaml", "-o", tmp_path / "run"), "inputs.0.encoder (hf:bert", "hidden size (30) is not a multiple")


# -- a full disk or a read-only folder is a clear error and leaves nothing half-written ------------------
def test_fit_into_a_read_only_folder_is_one_clear_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    table, blocked = _table(tmp_path / "t.csv", 0), tmp_path / "ro"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # tests may run as root, for whom chmod does not make a folder read-only
        if str(path).startswith(str(blocked)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    text = _refused(_cli("fit", table, "--label", "label", "-o", blocked / "run", "--time-budget", "20s"), str(blocked / "run"), "Read-only file system")
    assert len([line for line in text.split("error:") if line.strip()]) == 1 and not blocked.exists()
