"""ONNX Runtime as the model runner: the run's model exported to ONNX once, then run by onnxruntime.

    agent = Agent.load("runs/cs", backend="onnx")
    mmagent serve runs/cs --backend onnx

The graph is the model's forward on collated tensors (:mod:`mmagent.export.onnx`, the same export
as ``mmagent export --format onnx``), plus gated fusion's per-input gates when the model has them.
It is made on first use into ``RUN_DIR/onnx/`` (or, when the run folder is read-only, into
``$MMAGENT_CACHE/onnx/<model hash>/``), written atomically with ``export.json``: the SHA-256 of
``model.onnx`` and the hash of the model folder it was exported from. Later loads reuse it while
both still match and export again when the model changed. Every load also checks the graph against
PyTorch on two synthetic batches (different sizes and lengths, one with an input missing): logits
and gates within :data:`TOLERANCE`, or the load fails. Preprocessing, calibration and the policy
stay in Python, exactly as with the torch backend; only the forward pass changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmagent.data.dataset import Collator
from mmagent.export.layout import FlatWrapper, dynamic_dims, flatten, tensor_names
from mmagent.inference import BatchOutput, TorchRunner
from mmagent.io import atomic_dir, write_json
from mmagent.model import MultimodalModel
from mmagent.runs import CHECKSUMS_FILE, model_dir, sha256_file

EXPORT_DIR = "onnx"
EXPORT_FILE = "model.onnx"
META_FILE = "export.json"
KIND = "mmagent-onnx-runner"  # marks a folder this module wrote (never overwrite one it did not)
TOLERANCE = 1e-4  # max abs difference of logits / gates / fused vectors vs PyTorch
FORMAT = 2  # 2: the graph also returns the fused vector (the unknown-input score reads it)


class OnnxBackendError(ValueError):
    """The ONNX backend cannot serve this run (an encoder does not export, the graph does not
    reproduce PyTorch, onnxruntime is missing, a folder in the way)."""


class _GatedWrapper(FlatWrapper):
    """:class:`FlatWrapper` that also returns gated fusion's (B, M) gates (the agent's contributions)
    and the (B, D) fused vector (the unknown-input score's features)."""

    def __init__(self, model: MultimodalModel, layout: list[tuple[str, str]], gates: bool) -> None:
        super().__init__(model, layout)
        self.gates = gates

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        inputs: dict[str, dict[str, Tensor]] = {}
        for (name, key), t in zip(self.layout, tensors[:-1]):
            inputs.setdefault(name, {})[key] = t
        out = self.model(inputs, tensors[-1])
        logits = tuple(out.logits[t] for t in self.targets)
        return logits + ((out.gates,) if self.gates else ()) + (out.fused,)


class OnnxRunner:
    """A :class:`~mmagent.inference.ModelRunner` backed by an onnxruntime session (CPU)."""

    backend = "onnx"

    def __init__(self, path: Path, layout: list[tuple[str, str]], targets: list[str], gates: bool, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise OnnxBackendError("the onnx backend needs onnxruntime: pip install 'mmagent[export]'") from e
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(threads or 0)  # 0: onnxruntime's choice (one per core)
        opts.inter_op_num_threads = 1  # one batch at a time: parallelism goes inside the ops
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path, self.layout, self.targets, self.gates, self.threads = path, layout, targets, gates, threads
        self.names = tensor_names(layout)
        self.feeds = {i.name for i in self.session.get_inputs()}  # unused inputs are pruned from the graph
        self.outputs = output_names(targets, gates)
        self.info: dict[str, Any] = {}

    def __call__(self, batch: dict[str, Any], present: Tensor) -> BatchOutput:
        flat = flatten({"inputs": batch["inputs"], "present": present}, self.layout)
        feed = {n: t.detach().cpu().numpy() for n, t in zip(self.names, flat) if n in self.feeds}
        out = self.session.run(self.outputs, feed)
        logits = {t: torch.from_numpy(np.asarray(o)) for t, o in zip(self.targets, out)}
        gates = torch.from_numpy(np.asarray(out[len(self.targets)])) if self.gates else None
        return BatchOutput(logits, gates, torch.from_numpy(np.asarray(out[-1])))


def output_names(targets: list[str], gates: bool) -> list[str]:
    """The graph's outputs, in order: logits per target, gates (gated fusion), the fused vector."""
    return [f"logits.{t}" for t in targets] + (["gates"] if gates else []) + ["fused"]


# -- example batches ----------------------------------------------------------------------------
_TEXTS = ["hello", "where is my card", "I would like to change the address on my account, please", "ok thanks"]


def _example(modality: str, columns: int, row: int) -> Any:
    """A synthetic value of ``modality`` for example row ``row`` (sizes vary with the row)."""
    if modality == "text":
        return _TEXTS[row % len(_TEXTS)]
    if modality == "numeric":
        return [float(row) - 1.5 + 0.25 * c for c in range(columns)]
    if modality == "categorical":
        return f"category-{row}"
    if modality == "image":
        from PIL import Image

        pixels = np.random.default_rng(row).integers(0, 256, (40 + 8 * row, 48, 3), dtype=np.uint8)
        return Image.fromarray(pixels)
    if modality == "audio":
        seconds = 0.3 + 0.2 * row
        t = np.arange(int(16000 * seconds), dtype=np.float32) / 16000
        return (0.1 * np.sin(2 * np.pi * (220 + 40 * row) * t), 16000)
    raise OnnxBackendError(f"no example input for modality {modality!r}")


def example_batches(model: MultimodalModel) -> list[dict[str, Any]]:
    """Two collated batches of synthetic records (3 and 2 rows; text lengths, image sizes and
    audio durations differ; in the second, the first input is missing from one row)."""
    collate = Collator(model)
    batches = []
    for rows, missing in ((range(0, 3), None), (range(3, 5), 3)):
        samples = []
        for row in rows:
            features, present = {}, []
            for i, inp in enumerate(model.spec.inputs):
                pre = model.encoders[inp.key].preprocessor
                value = None if (row == missing and i == 0 and len(model.spec.inputs) > 1) else _example(inp.modality, len(inp.columns), row)
                features[inp.key] = pre.placeholder() if value is None else pre(value)
                present.append(value is not None)
            samples.append({"index": row, "features": features, "present": present, "targets": {}})
        batches.append(collate(samples))
    return batches


# -- the exported graph on disk -----------------------------------------------------------------
def model_fingerprint(run_dir: str | Path) -> str:
    """SHA-256 of the saved model: of its checksum listing (verified when the model loads), else
    of every file's name and content."""
    folder = model_dir(run_dir)
    listing = folder / CHECKSUMS_FILE
    if listing.is_file():
        return hashlib.sha256(listing.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        digest.update(f"{p.relative_to(folder).as_posix()}  {sha256_file(p)}\n".encode())
    return digest.hexdigest()


def _cache_root() -> Path:
    return Path(os.environ.get("MMAGENT_CACHE") or Path.home() / ".cache" / "mmagent")


def _valid(folder: Path, fingerprint: str) -> bool:
    """``folder`` holds this module's export of the model with ``fingerprint``, intact."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    path = folder / EXPORT_FILE
    return (
        meta.get("kind") == KIND
        and meta.get("format") == FORMAT
        and meta.get("model_sha256") == fingerprint
        and path.is_file()
        and sha256_file(path) == meta.get("onnx_sha256")
    )


def _ours(folder: Path) -> bool:
    try:
        return json.loads((folder / META_FILE).read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def export_location(run_dir: str | Path, fingerprint: str) -> Path:
    """Where the export lives: ``RUN_DIR/onnx`` when the run folder is writable (or already holds
    it), else a cache folder keyed by the model's hash."""
    run_dir = Path(run_dir)
    own = run_dir / EXPORT_DIR
    if _valid(own, fingerprint):
        return own
    if own.exists() and not _ours(own):
        raise OnnxBackendError(f"{own} exists and was not written by mmagent: move it away so the ONNX export can go there")
    if os.access(run_dir, os.W_OK) and (not own.exists() or os.access(own, os.W_OK)):
        return own
    return _cache_root() / EXPORT_DIR / fingerprint[:20]


def ensure_export(run_dir: str | Path, model: MultimodalModel, batches: list[dict[str, Any]], gates: bool) -> tuple[Path, bool]:
    """The export's folder, exported now (True) or reused (False)."""
    import warnings

    from mmagent.export.onnx import ExportError, export_onnx

    fingerprint = model_fingerprint(run_dir)
    folder = export_location(run_dir, fingerprint)
    if _valid(folder, fingerprint):
        return folder, False
    layout = _layout(model, batches)
    names = tensor_names(layout)
    outputs = output_names(list(model.heads), gates)
    started = time.perf_counter()
    with atomic_dir(folder) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # exporter chatter; the graph is checked below
                export_onnx(
                    _GatedWrapper(model, layout, gates).eval(),
                    flatten(batches[0], layout),
                    tmp / EXPORT_FILE,
                    names,
                    dynamic_dims(model, batches, layout),
                    outputs,
                )
        except ExportError as e:
            culprits = getattr(e, "culprits", None)
            what = "; ".join(f"input {n!r} ({enc}) cannot be exported to ONNX: {msg}" for n, enc, msg in culprits) if culprits else str(e)
            raise OnnxBackendError(f"the onnx backend cannot run {run_dir}: {what}. Serve it with --backend torch") from e
        meta = {
            "kind": KIND,
            "format": FORMAT,
            "model_sha256": fingerprint,
            "onnx_sha256": sha256_file(tmp / EXPORT_FILE),
            "inputs": names,
            "outputs": outputs,
            "export_seconds": round(time.perf_counter() - started, 2),
            "torch": torch.__version__,
        }
        write_json(tmp / META_FILE, meta)
    return folder, True


def _layout(model: MultimodalModel, batches: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(name, key) for name in model.input_names for key in batches[0]["inputs"][name]]


def max_difference(a: BatchOutput, b: BatchOutput) -> float:
    """Largest absolute difference between two forward passes' logits, gates and fused vectors."""
    pairs = [(a.logits[k], b.logits[k]) for k in a.logits]
    pairs += [(x, y) for x, y in ((a.gates, b.gates), (a.fused, b.fused)) if x is not None and y is not None]
    return max(float((x.double().cpu() - y.double().cpu()).abs().max()) if x.numel() else 0.0 for x, y in pairs)


@torch.no_grad()
def load_onnx_runner(run_dir: str | Path, model: MultimodalModel, threads: int | None = None) -> OnnxRunner:
    """An :class:`OnnxRunner` for the run's model (on the CPU): exported when missing or stale,
    checked against PyTorch on every load."""
    model = model.eval()
    batches = example_batches(model)
    reference = [TorchRunner(model, "cpu")(b, b["present"]) for b in batches]
    gates = reference[0].gates is not None
    folder, exported = ensure_export(run_dir, model, batches, gates)
    runner = OnnxRunner(folder / EXPORT_FILE, _layout(model, batches), list(model.heads), gates, threads)
    diff = max(max_difference(runner(b, b["present"]), r) for b, r in zip(batches, reference))
    if not diff <= TOLERANCE:
        raise OnnxBackendError(
            f"the ONNX export in {folder} does not reproduce PyTorch (max abs difference {diff:.3g} > {TOLERANCE:g}); serve with --backend torch"
        )
    runner.info = {"path": str(folder / EXPORT_FILE), "exported_now": exported, "max_abs_diff": diff, "intra_op_threads": threads or "onnxruntime default"}
    return runner
