"""A plain reader for CTranslate2 ``model.bin`` files (format version 6), no ctranslate2 needed.

Layout: uint32 version; string (the spec name); uint32 revision; uint32 variable count; per
variable: name, uint8 rank, rank x uint32 dims, uint8 dtype, uint32 byte count, raw data; then
(in newer files) uint32 alias count and (alias, target) string pairs. Strings are a uint16 length
(with the trailing NUL) and the bytes. Nothing in the file is executed: it is parsed as data.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmagent.encoders.zoo.cache import ZooError

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 ``model.bin`` whose names start with ``prefix``.

    Aliases are not returned (see :func:`read_ctranslate2_model`). Arrays are copies (the file
    buffer is released).
    """
    return _read_ctranslate2(path, prefix, with_aliases=False)[0]


def read_ctranslate2_model(path: Path, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Like :func:`read_ctranslate2`, plus the aliases stored after the variables: ``{alias: target}``
    (e.g. ``decoder/projection/weight -> decoder/embeddings/weight``), all of them, whatever ``prefix``."""
    return _read_ctranslate2(path, prefix, with_aliases=True)


def _read_ctranslate2(path: Path, prefix: str, with_aliases: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string() -> str:
        nonlocal pos
        n = take("H")
        s = data[pos : pos + n].rstrip(b"\0").decode("utf-8")
        pos += n
        return s

    try:
        version = take("I")
        if version != 6:
            raise ZooError(f"{path}: CTranslate2 format version {version}, expected 6")
        string()  # spec name, e.g. WhisperSpec
        take("I")  # spec revision
        out: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name = string()
            rank = take("B")
            dims = [take("I") for _ in range(rank)]
            dtype, nbytes = take("B"), take("I")
            if name.startswith(prefix):
                if dtype not in _CT2_DTYPES:
                    raise ZooError(f"{path}: variable {name} has unknown dtype code {dtype}")
                arr = np.frombuffer(data, dtype=_CT2_DTYPES[dtype], count=nbytes // np.dtype(_CT2_DTYPES[dtype]).itemsize, offset=pos)
                out[name] = arr.reshape(dims).copy()
            pos += nbytes
        if pos > len(data):
            raise ZooError(f"{path}: truncated CTranslate2 model file")
        aliases: dict[str, str] = {}
        if with_aliases and pos < len(data):  # the alias section (absent in some older files)
            for _ in range(take("I")):
                alias = string()
                aliases[alias] = string()
    except struct.error as e:
        raise ZooError(f"{path}: truncated or not a CTranslate2 model file ({e})") from e
    return out, aliases


class CT2Weights:
    """The float variables under ``prefix`` of a CTranslate2 file, read once each.

    Every read is recorded so that :meth:`check_all_used` can refuse a file holding tensors no
    mapping knows about: silently dropping one would load a model that differs from the file.
    ``label`` names the model in errors; ``keep_dtype`` keeps the file's precision (otherwise
    float32); ``error`` is the exception class raised, so each caller keeps its own error type.
    """

    def __init__(
        self,
        variables: dict[str, np.ndarray],
        prefix: str,
        path: Path,
        error: type[Exception] = ZooError,
        keep_dtype: bool = False,
        label: str = "zoo:whisper-tiny.en",
    ) -> None:
        self.variables, self.prefix, self.path = variables, prefix, path
        self.error, self.keep_dtype, self.label = error, keep_dtype, label
        self.used: set[str] = set()
        self.part = prefix.rstrip("/")

    def get(self, name: str) -> Tensor:
        """The float tensor ``prefix + name``; an error when it is missing or quantized."""
        key = self.prefix + name
        if key not in self.variables:
            raise self.error(f"{self.label}: {key} not found in {self.path}")
        arr = self.variables[key]
        if arr.dtype not in (np.float16, np.float32):
            raise self.error(f"{self.label}: {key} is {arr.dtype} (a quantized model?); expected float16/float32")
        self.used.add(key)
        return torch.from_numpy(arr if self.keep_dtype else arr.astype(np.float32))

    def split(self, name: str, parts: int, layer: int) -> tuple[list[Tensor], list[Tensor]]:
        """The fused projection ``name`` (CTranslate2 stacks q/k/v, or k/v, in one linear) as
        ``parts`` square weights and their biases."""
        w, b = self.get(name + "/weight"), self.get(name + "/bias")
        d = int(w.shape[-1])
        where = f"{self.label}: {self.part} layer {layer} {name}"
        if w.shape != (parts * d, d) or b.shape != (parts * d,):
            raise self.error(f"{where} has shape {tuple(w.shape)}, expected {(parts * d, d)}")
        ws, bs = list(w.split(d, 0)), list(b.split(d, 0))
        # Whisper's k_proj has no bias; CTranslate2 stores zeros there (keys come second to last: q?, k, v)
        if bs[parts - 2].abs().max() > 0:
            raise self.error(f"{where} has a non-zero key bias, which Whisper cannot hold")
        return ws, bs

    def check_all_used(self) -> None:
        """Refuse a file with tensors under ``prefix`` that no mapping read."""
        unused = [k for k, v in self.variables.items() if k not in self.used and v.ndim > 0]  # scalars (e.g. num_heads) are config
        if unused:
            raise self.error(f"{self.label}: {self.part} variables not mapped: {unused[:5]}")
