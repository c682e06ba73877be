"""Built-in encoders that need no pretrained weights: ``mlp`` (numeric columns) and ``mel-cnn`` (audio).

``source: builtin, name: mlp``      numeric columns, standardized with statistics fitted on the
                                    training data (stored in the weights file, so they travel
                                    with the model). Options in ``config``: ``num_features``,
                                    ``width`` (default 64).
``source: builtin, name: hash-embedding``  categorical columns: each value's (stable) hash bucket
                                    gets a learned embedding. Options: ``buckets`` (1024),
                                    ``width`` (32).
``source: builtin, name: mel-cnn``  log-mel spectrogram + a small 2-D CNN; each time frame becomes
                                    a token. Options in ``config``: ``n_mels`` (64), ``width`` (128),
                                    ``channels`` (32); ``sample_rate`` (16 kHz) and ``max_seconds``.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.encoders.base import Encoder, EncoderOutput, Preprocessor, build_named, pool, register_source
from mmagent.encoders.media import audio_seconds, load_audio
from mmagent.specs import EncoderSpec


def _config(spec: EncoderSpec, allowed: dict[str, Any]) -> dict[str, Any]:
    unknown = set(spec.config) - set(allowed)
    if unknown:
        raise ValueError(f"encoder {spec.source}:{spec.name}: unknown config key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return {**allowed, **spec.config}


# -- numeric --------------------------------------------------------------------------------
class NumericPreprocessor(Preprocessor):
    def __init__(self, num_features: int) -> None:
        self.num_features = num_features

    def __call__(self, item: Any) -> dict[str, Tensor]:
        values = torch.as_tensor([float("nan") if v is None else float(v) for v in _as_list(item)], dtype=torch.float32)
        if values.numel() != self.num_features:
            raise ValueError(f"expected {self.num_features} numeric values, got {values.numel()}")
        return {"values": values}

    def placeholder(self) -> dict[str, Tensor]:
        return {"values": torch.full((self.num_features,), float("nan"))}


def _as_list(item: Any) -> list[Any]:
    if isinstance(item, (list, tuple)):
        return list(item)
    if isinstance(item, Tensor):
        return item.flatten().tolist()
    if hasattr(item, "tolist"):
        v = item.tolist()
        return v if isinstance(v, list) else [v]
    return [item]


class NumericMLPEncoder(Encoder):
    """Standardize -> per-feature tokens (value * w_f + b_f) and an MLP over the whole vector.

    A NaN (a missing value inside a present row) becomes 0 after standardization, with a
    missing-indicator so the model can tell it from an average value."""

    modality = "numeric"

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        cfg = _config(spec, {"num_features": 1, "width": 64})
        n, width = int(cfg["num_features"]), int(cfg["width"])
        self.output_dim = width
        self.preprocessor = NumericPreprocessor(n)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.feature_weight = nn.Parameter(torch.randn(n, width) * 0.02)
        self.feature_bias = nn.Parameter(torch.zeros(n, width))
        self.mlp = nn.Sequential(nn.Linear(2 * n, width), nn.GELU(), nn.Linear(width, width))

    def fit(self, raw_items: list[Any]) -> None:
        """Fit standardization statistics on training values (NaN-aware)."""
        values = torch.stack([self.preprocessor(x)["values"] for x in raw_items])
        mean = torch.nanmean(values, 0)
        std = torch.sqrt(torch.nanmean((values - mean) ** 2, 0))
        self.mean.copy_(torch.nan_to_num(mean, nan=0.0))
        self.std.copy_(torch.where(torch.isfinite(std) & (std > 1e-8), std, torch.ones_like(std)))

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        raw = batch["values"]
        missing = torch.isnan(raw)
        x = torch.where(missing, torch.zeros_like(raw), (raw - self.mean) / self.std)
        tokens = x.unsqueeze(-1) * self.feature_weight + self.feature_bias
        pooled = self.mlp(torch.cat([x, missing.to(x.dtype)], -1))
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device), pooled)


# -- categorical ----------------------------------------------------------------------------
class CategoricalPreprocessor(Preprocessor):
    """A category (any scalar; ``"7"`` and ``7`` are the same) -> its hash bucket. Hashing needs no
    vocabulary to store or keep in sync; with buckets well above the number of categories,
    collisions are rare, and a category unseen in training lands on a bucket that has learned
    little, much like an ``<unknown>`` token."""

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets

    def __call__(self, item: Any) -> dict[str, Tensor]:
        if isinstance(item, (list, tuple, dict)):
            raise ValueError(f"a category must be a single value, got {type(item).__name__}")
        text = str(int(item)) if isinstance(item, float) and item.is_integer() else str(item).strip()
        # blake2b, not hash(): Python salts str hashes per process, and buckets must be stable.
        bucket = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % self.buckets
        return {"ids": torch.tensor([bucket], dtype=torch.long)}

    def placeholder(self) -> dict[str, Tensor]:
        return {"ids": torch.zeros(1, dtype=torch.long)}


class HashEmbeddingEncoder(Encoder):
    """A categorical column -> a learned embedding of its hash bucket (one token)."""

    modality = "categorical"

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        cfg = _config(spec, {"buckets": 1024, "width": 32})
        self.output_dim = int(cfg["width"])
        self.preprocessor = CategoricalPreprocessor(int(cfg["buckets"]))
        self.embedding = nn.Embedding(int(cfg["buckets"]), self.output_dim)

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        tokens = self.embedding(batch["ids"])  # (B, 1, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, mask, tokens[:, 0])


# -- log-mel CNN ----------------------------------------------------------------------------
class MelPreprocessor(Preprocessor):
    pad_values = {"mel": 0.0}

    def __init__(self, sample_rate: int, n_mels: int, max_seconds: float) -> None:
        self.sample_rate, self.n_mels, self.max_seconds = sample_rate, n_mels, max_seconds
        self._mel = None

    def __call__(self, item: Any) -> dict[str, Tensor]:
        wave = load_audio(item, self.sample_rate, self.max_seconds)
        if self._mel is None:  # built lazily so the object pickles small into workers
            import torchaudio

            self._mel = torchaudio.transforms.MelSpectrogram(
                self.sample_rate, n_fft=400 * self.sample_rate // 16000 or 400, hop_length=self.sample_rate // 100, n_mels=self.n_mels
            )
        with torch.no_grad():
            mel = torch.log(self._mel(wave) + 1e-6)  # (n_mels, frames)
        return {"mel": mel.T.contiguous()}  # time first, so collate pads time

    def placeholder(self) -> dict[str, Tensor]:
        return {"mel": torch.zeros(4, self.n_mels)}

    def length(self, item: Any) -> float:
        """Seconds of audio (collate pads the frames)."""
        return min(audio_seconds(item, self.sample_rate), self.max_seconds)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mel": None}


class MelCNNEncoder(Encoder):
    """Log-mel spectrogram -> 3 conv blocks (each halves time and frequency) -> one token per frame.

    Padded frames are held at zero before every convolution and at -inf before every max-pool,
    so (in eval mode) a clip's output does not depend on what it was batched with."""

    modality = "audio"

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        cfg = _config(spec, {"n_mels": 64, "width": 128, "channels": 32})
        n_mels, width, ch = int(cfg["n_mels"]), int(cfg["width"]), int(cfg["channels"])
        self.output_dim = width
        self.preprocessor = MelPreprocessor(spec.sample_rate or 16000, n_mels, spec.max_seconds)
        self.input_norm = nn.BatchNorm2d(1)
        blocks, c_in = [], 1
        for c_out in (ch, ch * 2, ch * 4):
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.GELU()))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.proj = nn.Linear(c_in * math.ceil(n_mels / 8), width)

    def layer_groups(self) -> list[nn.Module]:
        return [self.input_norm, *self.blocks, self.proj]

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        mel, mask = batch["mel"], batch["mel_mask"]  # (B, T, F), (B, T)
        x = self.input_norm(mel.unsqueeze(1))  # (B, 1, T, F)
        for block in self.blocks:
            valid = mask[:, None, :, None]
            x = block(x.masked_fill(~valid, 0.0))
            x = self.pool(x.masked_fill(~valid, float("-inf")))
            mask = mask[:, ::2]  # MaxPool2d(2, ceil_mode) keeps ceil(T/2) frames
        x = x.masked_fill(~mask[:, None, :, None], 0.0)
        b, c, t, f = x.shape
        tokens = self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return EncoderOutput(tokens, mask, pool(tokens, mask, self.spec.pooling))


_BUILTINS = {"mlp": NumericMLPEncoder, "mel-cnn": MelCNNEncoder, "hash-embedding": HashEmbeddingEncoder}


@register_source("builtin")
def build_builtin(spec: EncoderSpec) -> Encoder:
    return build_named("builtin", _BUILTINS, spec)
