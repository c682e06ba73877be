"""Running an exported model (ONNX Runtime or TorchScript) and comparing it with PyTorch: the
largest output difference, and each target's main metric for both on a labelled table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmagent.data.tables import Table
from mmagent.export.layout import FlatWrapper, batches_of, flatten
from mmagent.model import MultimodalModel


class Runner:
    """Call an exported artifact like the wrapper: flat tensors in, tuple of numpy logits out."""

    def __init__(self, fmt: str, path: Path, names: list[str]) -> None:
        self.fmt, self.names = fmt, names
        if fmt == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self.feed_names = [i.name for i in self.session.get_inputs()]
        else:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, tensors: tuple[Tensor, ...]) -> list[np.ndarray]:
        if self.fmt == "onnx":
            feed = {n: t.numpy() for n, t in zip(self.names, tensors) if n in self.feed_names}  # unused inputs are pruned from the graph
            return [np.asarray(o) for o in self.session.run(None, feed)]
        with torch.no_grad():
            out = self.module(*tensors)
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0 for x, y in zip(a, b))


def compare_accuracy(
    model: MultimodalModel, wrapper: FlatWrapper, runner: Runner, table: Table, layout: list[tuple[str, str]], batch_size: int, source: str
) -> dict[str, dict[str, float]]:
    """Main metric per target (that the table labels): PyTorch fp32 vs the exported model."""
    from mmagent.metrics import main_metric, target_metrics

    ref: dict[str, list[Tensor]] = {t: [] for t in wrapper.targets}
    got: dict[str, list[Tensor]] = {t: [] for t in wrapper.targets}
    targets: dict[str, list[Tensor]] = {t: [] for t in wrapper.targets}
    for batch in batches_of(model, table, batch_size, with_targets=True):
        flat = flatten(batch, layout)
        with torch.no_grad():
            expected = wrapper(*flat)
        for t, e, o in zip(wrapper.targets, expected, runner(flat)):
            ref[t].append(e)
            got[t].append(torch.from_numpy(np.asarray(o, dtype=np.float32)))
            targets[t].append(batch["targets"][t])
    out = {}
    for t in wrapper.targets:
        head = model.heads[t]
        name, _ = main_metric(head.spec)
        y = torch.cat(targets[t]).numpy()
        p_ref, p_got = head.predict(torch.cat(ref[t])).numpy(), head.predict(torch.cat(got[t])).numpy()
        m_ref = target_metrics(head.spec, p_ref, y, False).get(name, float("nan"))
        m_got = target_metrics(head.spec, p_got, y, False).get(name, float("nan"))
        if head.spec.type == "classification":
            agree = float((p_ref.argmax(1) == p_got.argmax(1)).mean())
        elif head.spec.type == "multilabel":
            agree = float(((p_ref >= 0.5) == (p_got >= 0.5)).all(1).mean())
        else:
            scale = max(float(np.std(p_ref)), 1e-8)
            agree = float((np.abs(p_ref - p_got) <= 0.05 * scale).mean())
        if math.isnan(m_ref) and math.isnan(m_got):
            continue
        out[t] = {
            "metric": name,
            "rows": float(len(y)),
            "pytorch_fp32": float(m_ref),
            "exported": float(m_got),
            "change": float(m_got - m_ref),
            "agreement": agree,
        }
    return out
