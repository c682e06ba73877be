"""Export a trained model to ONNX or TorchScript, check it, optionally quantize it to int8.

    mmagent export runs/cs --format onnx -o cs.onnx
    mmagent export runs/cs --format torchscript --quantize int8 --data test.csv -o cs-int8.pt

What is exported is the model's forward on *collated tensors*: preprocessing (tokenizing, image
resizing, log-mel features...) stays in Python — the run folder's preprocessors produce the
inputs. The exported graph takes flat tensors, in this order::

    <input>.<key> for every input and every key its preprocessor collates (e.g. text.input_ids,
    text.attention_mask, image.pixel_values, audio.mel, audio.mel_mask, x.values), then
    present  (B, M) bool, in the order of the model's inputs

and returns one logits tensor per target (``logits.<target>``). A JSON file next to the export
(``OUT.json``) records that layout, the dynamic dimensions, the labels and the check results.

Every figure printed or written is measured here: the max abs difference between the exported
model's outputs and PyTorch's on a real batch (and on a second batch of another size), and, with
``data``, the main metric of each target for PyTorch fp32 and for the exported model.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmagent import runs
from mmagent.data.tables import read_table
from mmagent.export.checks import Runner, compare_accuracy, max_diff
from mmagent.export.layout import FlatWrapper, check_batches, default_data, dynamic_dims, flatten, load_model, tensor_names
from mmagent.export.onnx import ExportError, export_onnx, first_line
from mmagent.model import MultimodalModel

Format = Literal["onnx", "torchscript"]
FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4


@dataclass
class ExportReport:
    format: str
    path: str
    quantize: str | None
    inputs: list[str]
    outputs: list[str]
    dynamic_dims: dict[str, list[int]]
    check_rows: list[int] = field(default_factory=list)  # batch sizes the check ran on
    max_abs_diff: float = float("nan")  # exported vs PyTorch fp32, on those batches
    tolerance: float = TOLERANCE
    reproduces: bool = False  # max_abs_diff <= tolerance (not expected for int8)
    size_bytes: int = 0
    fp32_size_bytes: int | None = None  # for a quantized export: the size of the fp32 export
    fp32_max_abs_diff: float | None = None  # for a quantized export: the fp32 export (made first) vs PyTorch
    fp32_reproduces: bool | None = None
    accuracy: dict[str, dict[str, float]] | None = None  # {target: {metric, pytorch_fp32, exported, change}}
    data: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        what = f"{self.format}" + (f" (dynamic {self.quantize} quantization of Linear layers)" if self.quantize else "")
        out = [
            f"exported {what} -> {self.path} ({self.size_bytes / 1e6:.2f} MB"
            + (f"; fp32: {self.fp32_size_bytes / 1e6:.2f} MB)" if self.fp32_size_bytes else ")")
        ]
        if self.fp32_max_abs_diff is not None:
            verdict = "reproduces PyTorch" if self.fp32_reproduces else "DOES NOT reproduce PyTorch"
            out.append(
                f"fp32 {self.format} export (made before quantizing), on real batches of {self.check_rows} rows: max abs diff of logits vs PyTorch = {self.fp32_max_abs_diff:.3g} (tolerance {self.tolerance:g}): {verdict}"
            )
        verdict = (
            "reproduces PyTorch"
            if self.reproduces
            else ("differs from PyTorch fp32, as int8 quantization does" if self.quantize else "DOES NOT reproduce PyTorch")
        )
        what = "int8 export" if self.quantize else "check"
        out.append(
            f"{what} on real batches of {self.check_rows} rows: max abs diff of logits vs PyTorch fp32 = {self.max_abs_diff:.3g} (tolerance {self.tolerance:g}): {verdict}"
        )
        for target, acc in (self.accuracy or {}).items():
            out.append(
                f"{target}: {acc['metric']} on {self.data} ({int(acc['rows'])} rows): PyTorch fp32 {acc['pytorch_fp32']:.4f}, exported {acc['exported']:.4f} (change {acc['change']:+.4f}); predictions agree on {acc['agreement']:.1%} of rows"
            )
        out += [f"note: {n}" for n in self.notes]
        return out


# -- exporters ----------------------------------------------------------------------------------
def _trace(wrapper: FlatWrapper, example: tuple[Tensor, ...]) -> torch.jit.ScriptModule:
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: checked below by running other shapes
        return torch.jit.trace(wrapper, example, check_trace=False, strict=False)


def export_torchscript(wrapper: FlatWrapper, example: tuple[Tensor, ...], path: Path) -> None:
    from mmagent.io import atomic_path

    traced = _trace(wrapper, example)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))


def export(
    run_dir: str | Path,
    fmt: str,
    output: str | Path,
    quantize: str | None = None,
    data: str | Path | None = None,
    batch_size: int = 8,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Export, check against PyTorch on real batches, optionally quantize; write ``OUT.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    if quantize not in (None, "int8"):
        raise ValueError(f"--quantize: only 'int8' is supported, got {quantize!r}")
    start = time.perf_counter()
    if (Path(run_dir) / "model.json").is_file() or (Path(run_dir) / runs.MODEL_DIR).is_dir():
        runs.verify_run(run_dir)  # integrity before anything is written
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model = load_model(run_dir)
    data_path = Path(data) if data is not None else default_data(run_dir)
    if data_path is None:
        raise ValueError("no data to check the export on: pass --data FILE (a table with the model's input columns)")
    table = read_table(data_path)
    from mmagent.data.validation import validate_table

    labelled = all(t.column in table.columns for t in model.spec.targets) and data is not None
    table, _ = validate_table(table, model.spec.inputs, model.spec.targets if labelled else [], "error", need_targets=labelled)
    batches = check_batches(model, table, batch_size)
    layout = [(name, key) for name in model.input_names for key in batches[0]["inputs"][name]]
    names = tensor_names(layout)
    outputs = [f"logits.{t}" for t in model.heads]
    dims = dynamic_dims(model, batches, layout)
    wrapper = FlatWrapper(model, layout).eval()
    examples = [flatten(b, layout) for b in batches]
    with torch.no_grad():
        expected = [[o.numpy() for o in wrapper(*ex)] for ex in examples]

    report = ExportReport(
        fmt,
        str(output),
        quantize,
        names,
        outputs,
        dims,
        [int(ex[-1].shape[0]) for ex in examples],
        tolerance=tolerance,
        data=str(data_path) if labelled else None,
    )

    def check(path: Path) -> tuple[Runner, float]:
        runner = Runner(fmt, path, names)
        try:
            got = [runner(ex) for ex in examples]
        except Exception as e:  # noqa: BLE001 - e.g. a shape baked into the graph
            raise ExportError(f"the exported {fmt} model fails on a real batch of another size: {first_line(e)}") from e
        return runner, max(max_diff(g, e) for g, e in zip(got, expected))

    def write_fp32(path: Path) -> None:
        if fmt == "torchscript":
            export_torchscript(wrapper, examples[0], path)
        else:
            export_onnx(wrapper, examples[0], path, names, dims, outputs)

    if quantize == "int8":
        # The fp32 export is made and checked first (it must reproduce PyTorch), then quantized.
        fp32 = output.with_name(output.stem + ".fp32-tmp" + output.suffix)
        try:
            write_fp32(fp32)
            report.fp32_size_bytes = _size(fp32)
            _, report.fp32_max_abs_diff = check(fp32)
            report.fp32_reproduces = bool(report.fp32_max_abs_diff <= tolerance)
            if fmt == "torchscript":
                from torch.ao.quantization import quantize_dynamic

                qmodel = quantize_dynamic(_copy(model), {nn.Linear}, dtype=torch.qint8)
                export_torchscript(FlatWrapper(qmodel, layout).eval(), examples[0], output)
            else:
                _ort_quantize(fp32, output)
        finally:
            for p in (fp32, fp32.with_name(fp32.name + ".data")):
                if p.exists():
                    p.unlink()
    else:
        write_fp32(output)
    report.size_bytes = _size(output)
    runner, report.max_abs_diff = check(output)
    report.reproduces = bool(report.max_abs_diff <= tolerance)
    if labelled:
        report.accuracy = compare_accuracy(model, wrapper, runner, table, layout, max(batch_size, 32), str(data_path))
    elif data is None:
        report.notes.append(f"checked on rows of {data_path} (the run's own data); pass --data FILE with labels to measure the accuracy change")
    if quantize and not labelled:
        report.notes.append("no labelled --data given: the accuracy change of int8 quantization was not measured")
    if fmt == "onnx" and len(runner.feed_names) < len(names):
        report.notes.append(f"the ONNX graph dropped unused inputs: {sorted(set(names) - set(runner.feed_names))}")
    report.seconds = round(time.perf_counter() - start, 2)
    _write_meta(model, report, output)
    return report


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _ort_quantize(fp32: Path, output: Path) -> None:
    """onnxruntime dynamic int8 quantization of MatMul / Gemm: the ONNX counterpart of torch's
    Linear-only ``quantize_dynamic``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's "consider pre-processing" advice is noise here
    try:
        quantize_dynamic(str(fp32), str(output), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)


def _copy(model: MultimodalModel) -> MultimodalModel:
    import copy

    return copy.deepcopy(model)


def _write_meta(model: MultimodalModel, report: ExportReport, output: Path) -> None:
    from mmagent.io import write_json

    meta = {
        "format": report.format,
        "inputs": report.inputs,
        "outputs": report.outputs,
        "dynamic_dims": report.dynamic_dims,
        "model_inputs": [{"name": i.key, "columns": i.columns, "modality": i.modality} for i in model.spec.inputs],
        "targets": [{"name": h.spec.column, "type": h.spec.type, "labels": list(h.spec.labels or [])} for h in model.heads.values()],
        "report": asdict(report),
    }
    write_json(Path(str(output) + ".json"), _finite(meta))


def _finite(obj: Any) -> Any:
    """NaN / inf -> None, so the JSON is valid everywhere."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


__all__ = ["ExportError", "ExportReport", "FlatWrapper", "Runner", "export", "FORMATS"]
