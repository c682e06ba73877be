"""The ONNX Runtime backend (``Agent.load(run, backend="onnx")``, ``mmagent serve --backend onnx``):
the same answers as PyTorch (text + image + numbers, gated fusion's contributions, calibration), the
export made once and reused, an encoder that cannot be exported named up front, a bad backend
name refused in one line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmagent.agent import Agent
from mmagent.demo.toy import TINY_BERT
from mmagent.inference.onnx import EXPORT_DIR, EXPORT_FILE, META_FILE, OnnxBackendError, OnnxRunner
from mmagent.model import MultimodalModel
from mmagent.specs import ModelSpec


def _save(folder: Path, spec: dict) -> Path:
    MultimodalModel(ModelSpec.model_validate(spec)).save(folder / "model")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: tiny BERT text + a tiny timm CNN image + two numbers, gated fusion, a fitted
    temperature (so calibration is part of what must match)."""
    folder = _save(
        tmp_path_factory.mktemp("onnx") / "run",
        {
            "inputs": [
                {"column": "text", "modality": "text", "encoder": {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 32}},
                {"column": "image", "modality": "image", "encoder": {"source": "timm", "name": "test_resnet", "pretrained": False, "image_size": 32}},
                {"column": ["x", "z"], "modality": "numeric"},
            ],
            "targets": [{"column": "label", "type": "classification", "labels": ["a", "b", "c"]}],
            "fusion": {"type": "gated", "hidden_dim": 16},
        },
    )
    (folder / "calibration.json").write_text(json.dumps({"label": {"temperature": 0.4}}))
    return folder


def _records(n: int = 6) -> list[dict]:
    rng = np.random.default_rng(0)
    records = [
        {
            "text": "the blue case number " * (i + 1),
            "image": Image.fromarray(rng.integers(0, 256, (28 + 3 * i, 36, 3), dtype=np.uint8)),
            "x": float(i) - 2.0,
            "z": float(rng.normal()),
        }
        for i in range(n)
    ]
    records[1].pop("image")  # inputs missing from some rows: the presence mask must reach the graph
    records[2]["text"] = None
    return records


@pytest.mark.slow  # exports the model (~30 s on a busy 2-core machine); the tests below reuse it
def test_onnx_agent_matches_torch_and_reuses_its_export(run: Path) -> None:
    torch_agent = Agent.load(run)
    onnx_agent = Agent.load(run, backend="onnx")
    assert isinstance(onnx_agent.runner, OnnxRunner) and onnx_agent.runner.info["exported_now"]
    folder = run / EXPORT_DIR
    meta = json.loads((folder / META_FILE).read_text())
    assert (folder / EXPORT_FILE).is_file() and len(meta["onnx_sha256"]) == 64 and "gates" in meta["outputs"]

    records = _records()
    expected, got = torch_agent.probabilities(records), onnx_agent.probabilities(records)
    assert np.ptp(expected["label"][:, 0]) > 1e-3  # the rows differ: the comparison is not trivial
    assert np.abs(expected["label"] - got["label"]).max() < 1e-4
    assert np.abs(expected["_gates"] - got["_gates"]).max() < 1e-4
    for a, b in zip(torch_agent.act_many(records), onnx_agent.act_many(records)):
        assert (a.action, a.label, a.escalated) == (b.action, b.label, b.escalated)
        assert a.contributions.keys() == b.contributions.keys()
        assert all(abs(a.contributions[k] - b.contributions[k]) < 1e-3 for k in a.contributions)

    # A second load reuses the export (checked by its SHA-256); a changed file is not trusted.
    stamp = (folder / EXPORT_FILE).stat().st_mtime_ns
    again = Agent.load(run, backend="onnx")
    assert not again.runner.info["exported_now"] and (folder / EXPORT_FILE).stat().st_mtime_ns == stamp
    from mmagent.inference.onnx import _valid, model_fingerprint

    assert _valid(folder, model_fingerprint(run))
    original = (folder / EXPORT_FILE).read_bytes()
    (folder / EXPORT_FILE).write_bytes(original + b"\0")
    assert not _valid(folder, model_fingerprint(run))
    (folder / EXPORT_FILE).write_bytes(original)


def test_bad_backend_name_is_a_clear_error(run: Path) -> None:
    from typer.testing import CliRunner

    from mmagent.cli import app

    with pytest.raises(ValueError, match=r"backend must be one of \['torch', 'onnx'\], got 'tensorrt'"):
        Agent.load(run, backend="tensorrt")
    result = CliRunner().invoke(app, ["serve", str(run), "--backend", "tensorrt"])
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and "backend" in result.output and "'torch' or 'onnx'" in result.output
    result = CliRunner().invoke(app, ["serve", str(run), "--backend", "onnx", "--device", "cuda"])
    assert result.exit_code == 2 and "CPU" in result.output


@pytest.mark.slow
def test_serve_backend_onnx_answers_act(run: Path) -> None:
    from fastapi.testclient import TestClient

    from mmagent.serving.app import create_app
    from mmagent.serving.settings import ServeSettings

    record = {"text": "where is my blue case", "x": 0.5, "z": -1.0}
    expected = Agent.load(run).act(record).model_dump(mode="json")
    app = create_app(run, ServeSettings(backend="onnx", torch_threads=1))
    with TestClient(app) as client:
        deadline = time.time() + 120
        while client.get("/readyz").status_code != 200:
            assert time.time() < deadline, client.get("/readyz").json()
            time.sleep(0.2)
        r = client.post("/v1/act", json={"record": record})
        assert r.status_code == 200, r.text
        decision = r.json()["decisions"][0]
        assert decision["action"] == expected["action"] and decision["label"] == expected["label"]
        assert abs(decision["confidence"] - expected["confidence"]) < 1e-4
        runtime = client.get("/v1/schema").json()["runtime"]
        assert runtime["backend"] == "onnx" and runtime["model_threads"] == 1 and runtime["chosen_by"] == "--threads"
        assert 'mmagent_model_threads{backend="onnx",chosen_by="--threads"} 1.0' in client.get("/metrics").text


@pytest.mark.slow
def test_an_encoder_that_cannot_be_exported_is_named_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --backend onnx` exports before the server starts: the error names the input."""
    from typer.testing import CliRunner

    from mmagent.cli import app
    from mmagent.encoders.base import register_source
    from mmagent.encoders.builtin import NumericMLPEncoder

    class Branchy(NumericMLPEncoder):
        def forward(self, batch):  # noqa: ANN001
            out = super().forward(batch)
            if bool((batch["values"] > 0).any()):  # depends on the data: torch.export cannot trace it
                return out
            return type(out)(out.tokens, out.mask, out.pooled * 2)

    register_source("test-branchy-serve")(lambda spec: Branchy(spec))
    run = _save(
        tmp_path / "run",
        {
            "inputs": [
                {"column": "y", "modality": "numeric"},
                {"column": "x", "modality": "numeric", "encoder": {"source": "test-branchy-serve", "name": "mlp"}},
            ],
            "targets": [{"column": "label", "type": "classification", "labels": ["a", "b"]}],
            "fusion": {"type": "concat", "hidden_dim": 8},
        },
    )
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started despite the failed export"))
    result = CliRunner().invoke(app, ["serve", str(run), "--backend", "onnx"])
    assert result.exit_code == 2, result.output
    assert "input 'x' (test-branchy-serve:mlp) cannot be exported to ONNX" in result.output and "'y'" not in result.output
    assert "--backend torch" in result.output
    with pytest.raises(OnnxBackendError, match="input 'x'"):
        Agent.load(run, backend="onnx")
    assert not (run / EXPORT_DIR).exists()  # nothing half-written left behind


@pytest.mark.slow
def test_zoo_minilm_agent_matches_torch_on_onnx(tmp_path: Path) -> None:
    """The real zoo MiniLM-L6 (what the serving benchmark serves): ONNX Runtime reproduces PyTorch."""
    run = _save(
        tmp_path / "run",
        {
            "inputs": [{"column": "text", "modality": "text", "encoder": {"source": "zoo", "name": "minilm-l6", "max_length": 64}}],
            "targets": [{"column": "intent", "type": "classification", "labels": ["card", "refund", "address"]}],
            "fusion": {"type": "gated", "hidden_dim": 32},
        },
    )
    texts = pd.Series(["my card has not arrived", "I want my money back for the broken kettle", "please update my address", "hi"])
    records = [{"text": t} for t in texts]
    expected = Agent.load(run).probabilities(records)["intent"]
    got = Agent.load(run, backend="onnx").probabilities(records)["intent"]
    assert np.ptp(expected[:, 0]) > 1e-4 and np.abs(expected - got).max() < 1e-4
