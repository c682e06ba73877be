"""Frozen encoders' outputs shared across trainings (tuning trials, fit candidates, benchmark
variants): :class:`FeatureCacheStore`, the cross-run companion of the per-run
:class:`~mmagent.data.dataset.FeatureCache`.

A search over heads, fusion and learning rates on top of frozen encoders then computes each
encoder's outputs over a table once. Entries are keyed by the encoder (spec + weights digest) and the
rows' content, so nothing stale is ever served.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmagent.data.dataset import FeatureCache, MultimodalDataset
from mmagent.data.tables import Table
from mmagent.io import atomic_path

if TYPE_CHECKING:
    from mmagent.model import MultimodalModel


class FeatureCacheStore:
    """Frozen encoders' outputs shared across trainings (``trainer.train(feature_cache_store=...)``).

    One entry per (encoder, rows, keep_tokens): the encoder is identified by its spec and a digest of
    its weights and buffers (so a randomly initialised frozen encoder matches only when its weights
    do), the rows by the content of the input's cells (media files by path, size and mtime). Entries
    live in memory and, with ``folder``, as safetensors files there (reused by later processes).
    ``builds`` counts encoder passes over a table, ``hits`` entries served without one.
    """

    FORMAT = "mmagent-feature-cache-1"

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.memory: dict[str, tuple[torch.Tensor, list[torch.Tensor] | None]] = {}
        self.builds = 0
        self.hits = 0
        self._digests: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()  # one weights pass per encoder

    def get(
        self,
        model: MultimodalModel,
        table: Table,
        names: list[str],
        keep_tokens: bool,
        batch_size: int,
        device: torch.device,
        num_workers: int = 0,
        progress: bool = False,
    ) -> FeatureCache:
        """A FeatureCache holding ``names``' outputs over ``table``: stored entries where the key
        matches, one encoder pass (for all missing names together) otherwise."""
        cache = FeatureCache()
        missing: dict[str, str | None] = {}
        for name in names:
            key = self.key(model, name, table, keep_tokens)
            entry = None if key is None else (self.memory.get(key) or self._load(key))
            if entry is None:
                missing[name] = key
                continue
            self.hits += 1
            self.memory[key] = entry  # type: ignore[index]
            self._put(cache, name, entry)
        if missing:
            built = FeatureCache()
            built.build(model, table, list(missing), keep_tokens, batch_size, device, num_workers, progress)
            self.builds += 1
            for name, key in missing.items():
                entry = (built.pooled[name], built.tokens.get(name))
                if key is not None:
                    self.memory[key] = entry
                    self._save(key, entry)
                self._put(cache, name, entry)
        return cache

    @staticmethod
    def _put(cache: FeatureCache, name: str, entry: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
        cache.pooled[name] = entry[0]
        if entry[1] is not None:
            cache.tokens[name] = entry[1]

    def key(self, model: MultimodalModel, name: str, table: Table, keep_tokens: bool) -> str | None:
        """The entry key, or None when the rows cannot be fingerprinted (then nothing is shared)."""
        rows = _rows_digest(model, name, table)
        if rows is None:
            return None
        inp = next(i for i in model.spec.inputs if i.key == name)
        h = hashlib.sha256()
        h.update(json.dumps([self.FORMAT, inp.modality, inp.encoder.model_dump(mode="json"), keep_tokens], sort_keys=True, default=str).encode())
        encoder = model.encoders[name]
        if encoder not in self._digests:
            self._digests[encoder] = _weights_digest(encoder)
        h.update(self._digests[encoder].encode())
        h.update(rows.encode())
        return h.hexdigest()[:40]

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.safetensors"

    def _load(self, key: str) -> tuple[torch.Tensor, list[torch.Tensor] | None] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
        except Exception:  # a damaged file: rebuild it
            return None
        tokens = None
        if "tokens" in data:
            tokens = list(torch.split(data["tokens"], data["lengths"].tolist()))
        return data["pooled"], tokens

    def _save(self, key: str, entry: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
        path = self._path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        pooled, tokens = entry
        tensors = {"pooled": pooled.contiguous()}
        if tokens is not None:
            tensors["tokens"] = torch.cat(tokens).contiguous() if tokens else torch.zeros(0, pooled.shape[1], dtype=torch.float16)
            tensors["lengths"] = torch.tensor([len(t) for t in tokens], dtype=torch.int64)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": self.FORMAT})


def _weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=20)
    for name, t in list(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _rows_digest(model: MultimodalModel, name: str, table: Table) -> str | None:
    import numpy as np

    inp = next(i for i in model.spec.inputs if i.key == name)
    ds = MultimodalDataset(table, model, with_targets=False, skip=set(model.encoders))
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{len(table)};".encode())
    for row in range(len(table)):
        v = ds.raw_value(row, inp)
        if isinstance(v, Path):
            try:
                st = v.stat()
                h.update(f"P{v.resolve()}|{st.st_size}|{st.st_mtime_ns};".encode())
            except OSError:
                h.update(f"P{v}|missing;".encode())
        elif v is None or isinstance(v, (str, int, float, bool)):
            h.update(f"V{v!r};".encode())
        elif isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            h.update(f"L{v!r};".encode())
        elif isinstance(v, (bytes, bytearray)):
            h.update(b"B" + hashlib.sha1(v).digest())
        elif isinstance(v, (np.ndarray, torch.Tensor)):
            arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            h.update(f"A{arr.dtype}{arr.shape}".encode() + hashlib.sha1(np.ascontiguousarray(arr).tobytes()).digest())
        else:  # e.g. an in-memory PIL image: not fingerprinted, so not shared
            return None
    return h.hexdigest()
