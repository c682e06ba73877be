"""Dataset and collation: table rows -> per-input tensors (via each encoder's preprocessor),
presence flags and encoded targets.

An empty cell means that input is missing for the row: the preprocessor's placeholder goes in its
slot and ``present`` is False, so fusion ignores it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmagent.data.tables import Table, is_empty, label_text, parse_number, resolve_media, split_labels
from mmagent.data.validation import DataError, Problem
from mmagent.encoders.base import pad_stack
from mmagent.encoders.media import MediaError
from mmagent.specs import IGNORE_INDEX, UNSEEN_INDEX, EncoderOutput, InputSpec, ModelSpec, TargetSpec


class ModelLike(Protocol):
    """What the data layer needs of a model (a :class:`mmagent.model.MultimodalModel`): its spec,
    its encoders (for their preprocessors; frozen ones are run to fill a :class:`FeatureCache`) and
    its heads (for their fitted target specs). A protocol, so the data layer never imports model.py."""

    spec: ModelSpec

    @property
    def encoders(self) -> Mapping[str, Any]: ...

    @property
    def heads(self) -> Mapping[str, Any]: ...


def fit_targets(table: Table, targets: list[TargetSpec]) -> list[TargetSpec]:
    """Label vocabularies (sorted) and regression scale, from the training table."""
    fitted = []
    for t in targets:
        values = [r.get(t.column) for r in table.records]
        if t.type == "classification":
            labels = sorted({label_text(v) for v in values if not is_empty(v)}, key=_natural)
            fitted.append(t.model_copy(update={"labels": t.labels or labels}))
        elif t.type == "multilabel":
            labels = sorted({x for v in values for x in split_labels(v, t.separator)}, key=_natural)
            fitted.append(t.model_copy(update={"labels": t.labels or labels}))
        else:
            nums = np.array([parse_number(v) for v in values], dtype=np.float64)
            nums = nums[np.isfinite(nums)]
            std = float(nums.std()) if len(nums) > 1 and nums.std() > 0 else 1.0
            fitted.append(t.model_copy(update={"mean": float(nums.mean()) if len(nums) else 0.0, "std": std}))
    return fitted


def _natural(label: str) -> tuple:
    """Numbers sort as numbers ("2" < "10"), then text."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def encode_target(spec: TargetSpec, value: Any) -> Tensor:
    """One cell -> the head's training target. A missing label becomes 'ignore'; a label the
    model does not know becomes 'unseen' (ignored by the loss, counted wrong by the metrics)."""
    if spec.type == "classification":
        if is_empty(value):
            return torch.tensor(IGNORE_INDEX)
        label = label_text(value)
        return torch.tensor(spec.labels.index(label) if label in spec.labels else UNSEEN_INDEX)
    if spec.type == "multilabel":
        out = torch.zeros(len(spec.labels))  # an empty cell: no label applies
        for label in split_labels(value, spec.separator):
            if label in spec.labels:
                out[spec.labels.index(label)] = 1.0
        return out
    return torch.tensor(parse_number(value), dtype=torch.float32)


class MultimodalDataset(Dataset):
    """Rows of a :class:`Table` as model-ready samples.

    ``training=True`` uses the preprocessors' augmenting variants. Inputs listed in ``skip``
    (frozen encoders with cached outputs) are not decoded at all.
    """

    def __init__(self, table: Table, model: ModelLike, with_targets: bool = True, training: bool = False, skip: set[str] | None = None) -> None:
        self.table = table
        self.inputs: list[InputSpec] = list(model.spec.inputs)
        self.targets: list[TargetSpec] = [h.spec for h in model.heads.values()] if with_targets else []
        self.skip = set(skip or ())
        self.preprocessors = {}
        for inp in self.inputs:
            pre = model.encoders[inp.key].preprocessor
            if training and hasattr(pre, "training"):
                pre = copy.copy(pre)
                pre.training = True
            if hasattr(pre, "warmed"):
                # tokenized once here, not once per epoch (a copy: the model's preprocessor stays as is)
                pre = pre.warmed([self.raw_value(i, inp) for i in range(len(table))])
            self.preprocessors[inp.key] = pre

    def __len__(self) -> int:
        return len(self.table)

    def lengths(self) -> list[float] | None:
        """Per row, how much padding it brings to a batch: over the inputs whose batches are padded
        to their longest item (text, variable-length audio), the sum of each one's length as a
        fraction of its longest. None when no input is padded (length grouping cannot pay).
        Inputs served from a frozen-encoder cache count too: the cache must not change the data
        order (it is a speed-up that may change on ``--resume``)."""
        total: np.ndarray | None = None
        for inp in self.inputs:
            pre = self.preprocessors[inp.key]
            values = (self.raw_value(i, inp) for i in range(len(self)))
            per = [None if v is None else pre.length(v) for v in values]
            if all(x is None for x in per):
                continue
            arr = np.array([x or 0.0 for x in per], dtype=np.float64)
            arr /= max(arr.max(), 1e-9)
            total = arr if total is None else total + arr
        return None if total is None else total.tolist()

    def raw_value(self, row: int, inp: InputSpec) -> Any:
        record = self.table.records[row]
        if inp.modality == "numeric":
            values = [record.get(c) for c in inp.columns]
            return None if all(is_empty(v) for v in values) else [parse_number(v) for v in values]
        value = record.get(inp.column)  # type: ignore[arg-type]
        if is_empty(value):
            return None
        return resolve_media(value.strip() if isinstance(value, str) else value, self.table.base_dir) if inp.modality in ("image", "audio") else value

    def __getitem__(self, row: int) -> dict[str, Any]:
        features, present = {}, []
        for inp in self.inputs:
            value = self.raw_value(row, inp)
            present.append(value is not None)
            if inp.key in self.skip:
                continue
            pre = self.preprocessors[inp.key]
            try:
                features[inp.key] = pre.placeholder() if value is None else pre(value)
            except (MediaError, ValueError) as e:
                raise DataError([Problem(self.table.source, row, inp.columns[0], str(e), self.table.where(row))]) from e
        record = self.table.records[row]
        targets = {t.column: encode_target(t, record.get(t.column)) for t in self.targets}
        return {"index": row, "features": features, "present": present, "targets": targets}


class Collator:
    """Batches samples: each input's preprocessor pads its own tensors; cached encoder outputs
    (if any) are gathered by row index."""

    def __init__(self, model: ModelLike, cache: FeatureCache | None = None) -> None:
        self.preprocessors = {k: e.preprocessor for k, e in model.encoders.items()}
        self.cache = cache

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        index = torch.tensor([s["index"] for s in samples])
        inputs = {name: pre.collate([s["features"][name] for s in samples]) for name, pre in self.preprocessors.items() if name in samples[0]["features"]}
        batch: dict[str, Any] = {
            "index": index,
            "inputs": inputs,
            "present": torch.tensor([s["present"] for s in samples], dtype=torch.bool),
            "targets": {k: torch.stack([s["targets"][k] for s in samples]) for k in samples[0]["targets"]},
        }
        if self.cache is not None:
            batch["cached"] = self.cache.gather(index)
        return batch


class FeatureCache:
    """Outputs of frozen encoders, computed once per row (in eval mode, without augmentation).

    Only pooled vectors are kept unless ``keep_tokens`` (needed by cross-attention fusion);
    tokens are stored trimmed to their valid length, in float16 to halve memory.
    """

    def __init__(self) -> None:
        self.pooled: dict[str, Tensor] = {}
        self.tokens: dict[str, list[Tensor]] = {}

    @property
    def names(self) -> set[str]:
        return set(self.pooled)

    @torch.no_grad()
    def build(
        self,
        model: ModelLike,
        table: Table,
        names: list[str],
        keep_tokens: bool,
        batch_size: int,
        device: torch.device,
        num_workers: int = 0,
        progress: bool = False,
    ) -> None:
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        ds = MultimodalDataset(table, model, with_targets=False, skip=set(model.encoders) - set(names))
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=Collator(model), generator=torch.Generator())
        pooled: dict[str, list[Tensor]] = {n: [] for n in names}
        tokens: dict[str, list[Tensor]] = {n: [] for n in names}
        for batch in tqdm(loader, desc="caching frozen encoders", disable=not progress, leave=False):
            for name in names:
                enc = model.encoders[name].eval()
                out = enc({k: v.to(device) for k, v in batch["inputs"][name].items()})
                pooled[name].append(out.pooled.float().cpu())
                if keep_tokens:
                    for t, m in zip(out.tokens.cpu(), out.mask.cpu()):
                        tokens[name].append(t[m].half())
        self.pooled = {n: torch.cat(v) for n, v in pooled.items()}
        self.tokens = {n: v for n, v in tokens.items() if keep_tokens}

    def gather(self, index: Tensor) -> dict[str, EncoderOutput]:
        out = {}
        for name, pooled in self.pooled.items():
            p = pooled[index]
            if name in self.tokens:
                toks, mask = pad_stack([self.tokens[name][i].float() for i in index.tolist()])
            else:  # fusion only reads pooled: one pseudo-token keeps shapes valid
                toks, mask = p.unsqueeze(1), torch.ones(len(index), 1, dtype=torch.bool)
            out[name] = EncoderOutput(toks, mask, p)
        return out
