"""ONNX export of a model's forward on flat tensors (torch.export / dynamo), with the encoder that
fails named when the whole model does not export. Used by ``mmagent export`` and by the ONNX
Runtime serving backend (:mod:`mmagent.inference.onnx`); it needs neither training nor evaluation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmagent.export.layout import FlatWrapper


class ExportError(RuntimeError):
    """The model (or one of its encoders) cannot be exported in the requested format.
    ``culprits``: (input, encoder, first error line) of each encoder that fails on its own."""

    def __init__(self, message: str, culprits: list[tuple[str, str, str]] | None = None) -> None:
        super().__init__(message)
        self.culprits = culprits or []


def export_onnx(wrapper: FlatWrapper, example: tuple[Tensor, ...], path: Path, names: list[str], dims: dict[str, list[int]], outputs: list[str]) -> None:
    """torch.export (dynamo) -> ONNX with dynamic batch / sequence dims. Raises :class:`ExportError`
    naming the encoder(s) that fail on their own, when the whole model does not export."""
    import onnx

    from mmagent.io import atomic_path

    Dim = torch.export.Dim
    shapes = tuple({d: Dim.AUTO for d in dims[n]} for n in names)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                example,
                None,
                input_names=names,
                output_names=outputs,
                dynamic_shapes=(shapes,),
                dynamo=True,
                optimize=True,
                verbose=False,
                report=False,
            )
        proto = program.model_proto  # type: ignore[union-attr]
    except Exception as e:  # noqa: BLE001 - report which part of the model is the problem
        culprits = _onnx_culprits(wrapper, example, names, dims)
        where = (
            "; ".join(f"input {n!r} ({enc}): {msg}" for n, enc, msg in culprits)
            if culprits
            else "the failing part is not a single encoder (fusion / heads, or the combination)"
        )
        raise ExportError(
            f"ONNX export failed: {where}. Underlying error: {first_line(e)}. TorchScript (--format torchscript) may still work.", culprits
        ) from e
    large = proto.ByteSize() > 1_800_000_000
    with atomic_path(path) as tmp:
        if large:  # protobuf's 2 GB limit: weights go to PATH.data
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
        else:
            onnx.save_model(proto, str(tmp))


def first_line(e: BaseException) -> str:
    """The informative line of an exporter error (torch.export puts it under "Exception summary")."""
    import re

    text = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(e).strip().splitlines()]
    summary = next((line for line in text if line.startswith("<class '")), None)
    if summary is None and e.__cause__ is not None:
        return first_line(e.__cause__)
    line = summary or next((line for line in text if line), "")
    return (line if summary else f"{type(e).__name__}: {line}")[:400]


class _EncoderOnly(nn.Module):
    def __init__(self, encoder: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.encoder, self.keys = encoder, keys

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.encoder(dict(zip(self.keys, tensors))).pooled


def _onnx_culprits(wrapper: FlatWrapper, example: tuple[Tensor, ...], names: list[str], dims: dict[str, list[int]]) -> list[tuple[str, str, str]]:
    """Export each encoder alone: the ones that fail, with their first error line."""
    model = wrapper.model
    found = []
    Dim = torch.export.Dim
    for name in model.input_names:
        idx = [i for i, (n, _) in enumerate(wrapper.layout) if n == name]
        keys = [wrapper.layout[i][1] for i in idx]
        args = tuple(example[i] for i in idx)
        shapes = tuple({d: Dim.AUTO for d in dims[names[i]]} for i in idx)
        spec = model.spec.inputs[model.input_names.index(name)].encoder
        try:
            with torch.no_grad():
                torch.onnx.export(
                    _EncoderOnly(model.encoders[name], keys).eval(), args, None, dynamic_shapes=(shapes,), dynamo=True, optimize=False, verbose=False
                )
        except Exception as e:  # noqa: BLE001
            found.append((name, f"{spec.source}:{spec.name}", first_line(e)))
    return found
