"""`mmagent export`: ONNX and TorchScript reproduce PyTorch; int8 runs and reports accuracy; an
encoder that cannot be exported is named instead of crashing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import TINY_BERT, write_multimodal_table


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small trained run: text (tiny BERT) + audio (mel-CNN) + a number."""
    from mmagent.config import config_from_dict
    from mmagent.training.trainer import train

    folder = tmp_path_factory.mktemp("export")
    train_csv = write_multimodal_table(folder, 48, 0, "train.csv")
    test_csv = write_multimodal_table(folder, 30, 1, "test.csv")
    cfg = {
        "data": {"train": str(train_csv)},
        "inputs": [
            {"column": "text", "modality": "text", "encoder": {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 32}},
            {
                "column": "audio",
                "modality": "audio",
                "encoder": {"source": "builtin", "name": "mel-cnn", "config": {"width": 16, "channels": 4, "n_mels": 16}, "max_seconds": 1.0},
            },
            {"column": "x", "modality": "numeric"},
        ],
        "targets": [{"column": "label", "type": "classification"}],
        "fusion": {"type": "concat", "hidden_dim": 32},
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "head_lr": 3e-3, "seed": 0},
    }
    train(config_from_dict(cfg), folder / "run", progress=False)
    return {"dir": folder / "run", "test": test_csv, "out": folder / "out"}


def _check(report, tolerance: float = 1e-4) -> None:  # noqa: ANN001
    assert report.reproduces, report.lines()
    assert 0 <= report.max_abs_diff < tolerance
    assert len(report.check_rows) == 2 and report.check_rows[0] != report.check_rows[1]  # two batch sizes


def test_onnx_export_reproduces_pytorch_and_int8_reports_accuracy(run: dict) -> None:
    """One ONNX export (through the CLI): the fp32 graph reproduces PyTorch; its int8 version
    runs and its accuracy change on the test table is reported."""
    import onnx
    import onnxruntime as ort
    from typer.testing import CliRunner

    from mmagent.cli import app

    out = run["out"] / "model-int8.onnx"
    result = CliRunner().invoke(app, ["export", str(run["dir"]), "--format", "onnx", "--quantize", "int8", "--data", str(run["test"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "fp32 onnx export" in result.output and "max abs diff" in result.output and "accuracy on" in result.output
    meta = json.loads(Path(str(out) + ".json").read_text())
    report = meta["report"]
    assert report["fp32_reproduces"] and 0 <= report["fp32_max_abs_diff"] < 1e-4
    assert len(report["check_rows"]) == 2 and report["check_rows"][0] != report["check_rows"][1]  # two batch sizes
    assert 0 <= report["max_abs_diff"] < 1.0  # int8: close to fp32, not equal
    acc = report["accuracy"]["label"]
    assert acc["metric"] == "accuracy" and acc["rows"] == 30 and 0 <= acc["exported"] <= 1 and 0 <= acc["pytorch_fp32"] <= 1
    assert acc["change"] == pytest.approx(acc["exported"] - acc["pytorch_fp32"])
    assert meta["inputs"][-1] == "present" and meta["targets"][0]["labels"] == ["a", "b", "c"]
    assert meta["dynamic_dims"]["text.input_ids"] == [0, 1] and meta["dynamic_dims"]["audio.mel"] == [0, 1]
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}, ops
    # The graph runs on its own in onnxruntime, at a batch size and lengths it was not exported with.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {i.name for i in session.get_inputs()}
    b, t, frames = 3, 11, 17
    inputs = {
        "text.input_ids": np.random.randint(3, 250, (b, t)).astype(np.int64),
        "text.attention_mask": np.ones((b, t), np.int64),
        "audio.mel": np.random.randn(b, frames, 16).astype(np.float32),
        "audio.mel_mask": np.ones((b, frames), bool),
        "x.values": np.random.randn(b, 1).astype(np.float32),
        "present": np.ones((b, 3), bool),
    }
    (logits,) = session.run(None, {k: v for k, v in inputs.items() if k in feeds})
    assert logits.shape == (b, 3) and np.isfinite(logits).all()


def test_torchscript_reproduces_pytorch(run: dict) -> None:
    from mmagent.export import export

    out = run["out"] / "model.pt"
    report = export(run["dir"], "torchscript", out, data=run["test"])
    _check(report)
    assert report.accuracy["label"]["change"] == 0.0
    module = torch.jit.load(str(out))
    assert isinstance(module, torch.jit.ScriptModule)


def test_int8_quantized_runs_and_reports_accuracy(run: dict) -> None:
    from mmagent.export import export

    out = run["out"] / "model-int8.pt"
    report = export(run["dir"], "torchscript", out, quantize="int8", data=run["test"])
    assert report.quantize == "int8" and np.isfinite(report.max_abs_diff)
    assert report.max_abs_diff < 1.0  # close to fp32, not equal
    acc = report.accuracy["label"]
    for k in ("pytorch_fp32", "exported"):
        assert 0.0 <= acc[k] <= 1.0
    assert acc["change"] == pytest.approx(acc["exported"] - acc["pytorch_fp32"])
    assert any("accuracy on" in line and "change" in line for line in report.lines())
    graph = str(torch.jit.load(str(out)).inlined_graph)
    assert "quantized" in graph  # Linear layers really are int8 (dynamic quantization)


def test_unexportable_encoder_is_named(tmp_path: Path) -> None:
    """An encoder with data-dependent control flow: the error names it, nothing crashes."""
    from mmagent.encoders.base import register_source
    from mmagent.encoders.builtin import NumericMLPEncoder
    from mmagent.export import ExportError, export
    from mmagent.model import MultimodalModel
    from mmagent.specs import ModelSpec

    class Branchy(NumericMLPEncoder):
        def forward(self, batch):  # noqa: ANN001
            out = super().forward(batch)
            if bool((batch["values"] > 0).any()):  # depends on the data: torch.export cannot trace it
                return out
            return type(out)(out.tokens, out.mask, out.pooled * 2)

    register_source("test-branchy")(lambda spec: Branchy(spec))
    spec = ModelSpec.model_validate(
        {
            "inputs": [
                {"column": "y", "modality": "numeric"},
                {"column": "x", "modality": "numeric", "encoder": {"source": "test-branchy", "name": "mlp"}},
            ],
            "targets": [{"column": "label", "type": "classification", "labels": ["a", "b"]}],
            "fusion": {"type": "concat", "hidden_dim": 8},
        }
    )
    MultimodalModel(spec).save(tmp_path / "run" / "model")
    pd.DataFrame({"y": np.arange(12.0), "x": np.linspace(-1, 1, 12), "label": ["a", "b"] * 6}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ExportError) as err:
        export(tmp_path / "run", "onnx", tmp_path / "m.onnx", data=tmp_path / "d.csv")
    message = str(err.value)
    assert "input 'x' (test-branchy:mlp)" in message and "'y'" not in message
    assert "torchscript" in message.lower()
    # TorchScript tracing records the branch taken; the check on two real batches still passes here.
    report = export(tmp_path / "run", "torchscript", tmp_path / "m.pt", data=tmp_path / "d.csv")
    assert report.max_abs_diff < 1e-4
