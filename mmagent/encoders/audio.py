"""Audio helpers shared by several encoder sources (``hf``, ``torchaudio``, ``zoo``).

- :class:`MaskedGroupNorm`: GroupNorm over time that ignores padding, so a clip's output does not
  depend on the clips batched with it (wav2vec2-base / HuBERT-base feature encoders);
- :func:`trim_whisper_positions` / :class:`WhisperFeaturesPreprocessor`: Whisper's encoder on a
  window of ``max_seconds`` instead of its fixed 30 s, with log-mel features padded to it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.encoders.preprocessors import WaveformPreprocessor


class MaskedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` over (B, C, T) that, when ``valid_lengths`` (B,) is set, takes its statistics
    over each sample's real frames only.

    wav2vec2-base / HuBERT-base (and their torchaudio twins) normalise the first conv layer's output
    over time with GroupNorm, so zero padding would change every frame of a shorter clip in a
    batch. The encoder sets ``valid_lengths`` around its forward; the parameters (and state-dict
    keys) are those of the GroupNorm it replaces."""

    valid_lengths: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        lengths = self.valid_lengths
        if lengths is None or x.dim() != 3:
            return super().forward(x)
        b, c, t = x.shape
        g = self.num_groups
        xg = x.float().reshape(b, g, c // g, t)  # statistics in float32, as nn.GroupNorm under autocast
        m = (torch.arange(t, device=x.device)[None, :] < lengths.to(x.device)[:, None]).float()
        m = m[:, None, None, :]  # (B, 1, 1, T)
        count = (m.sum(-1, keepdim=True) * (c // g)).clamp_min(1.0)
        mean = (xg * m).sum((2, 3), keepdim=True) / count
        var = ((xg - mean).pow(2) * m).sum((2, 3), keepdim=True) / count
        y = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(b, c, t)
        if self.affine:
            y = y * self.weight.float()[None, :, None] + self.bias.float()[None, :, None]
        return y.to(x.dtype)


def use_masked_group_norm(parent: nn.Module, attr: str = "layer_norm") -> MaskedGroupNorm | None:
    """Swap ``parent.<attr>`` (an ``nn.GroupNorm``) for a :class:`MaskedGroupNorm` sharing its
    parameters. Returns the new module, or None when there is no GroupNorm there."""
    old = getattr(parent, attr, None)
    if isinstance(old, MaskedGroupNorm):
        return old
    if type(old) is not nn.GroupNorm:
        return None
    new = MaskedGroupNorm(old.num_groups, old.num_channels, eps=old.eps, affine=old.affine)
    if old.affine:
        new.weight, new.bias = old.weight, old.bias
    setattr(parent, attr, new)
    return new


def conv_output_lengths(lengths: Tensor, kernel: int, stride: int) -> Tensor:
    """Frames out of an unpadded Conv1d: floor((L - k) / s) + 1 (at least 0)."""
    return (torch.div(lengths - kernel, stride, rounding_mode="floor") + 1).clamp_min(0)


WHISPER_FRAMES_PER_POSITION = 2  # conv1 (stride 1) then conv2 (stride 2) over mel frames


def whisper_positions(max_seconds: float, sample_rate: int = 16000, hop_length: int = 160) -> int:
    """Encoder positions for ``max_seconds`` of audio: 50 per second for Whisper's 10 ms hop."""
    return max(1, math.ceil(max_seconds * sample_rate / hop_length / WHISPER_FRAMES_PER_POSITION))


def trim_whisper_positions(encoder: nn.Module, max_seconds: float, sample_rate: int = 16000, hop_length: int = 160) -> int:
    """Shorten a Whisper encoder's 30 s window to ``max_seconds`` (never lengthen it).

    Keeps the first ``ceil(max_seconds * 50)`` rows of ``embed_positions`` and sets
    ``max_source_positions`` (module and config), so the encoder then takes exactly
    ``2 * positions`` mel frames. Call it after loading weights. Returns the number of positions.
    """
    table = encoder.embed_positions
    n = min(whisper_positions(max_seconds, sample_rate, hop_length), table.num_embeddings)
    if n < table.num_embeddings:
        new = nn.Embedding(n, table.embedding_dim, device=table.weight.device, dtype=table.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(table.weight[:n])
        new.weight.requires_grad_(table.weight.requires_grad)
        encoder.embed_positions = new
    encoder.max_source_positions = n
    encoder.config.max_source_positions = n
    return n


class WhisperFeaturesPreprocessor(WaveformPreprocessor):
    """Waveform -> Whisper log-mel ``input_features`` (n_mels, 2 * positions), padded with silence to
    the (trimmed) encoder window, plus ``num_frames``: encoder frames that hold real audio.

    Every sample is padded to the same fixed window, so its features never depend on the batch.
    """

    pad_values: dict[str, float] = {}

    def __init__(self, feature_extractor: Any, num_positions: int) -> None:
        self.feature_extractor = feature_extractor
        self.num_positions = int(num_positions)
        self.hop_length = int(feature_extractor.hop_length)
        self.num_samples = WHISPER_FRAMES_PER_POSITION * self.num_positions * self.hop_length
        sample_rate = int(feature_extractor.sampling_rate)
        super().__init__(sample_rate, self.num_samples / sample_rate, normalize=False)
        self.pad_values = {}

    def __call__(self, item: Any) -> dict[str, Tensor]:
        return self.features(self.waveform(item))

    def features(self, wave: Tensor) -> dict[str, Tensor]:
        wave = wave[: self.num_samples]
        feats = self.feature_extractor(
            wave.numpy(), sampling_rate=self.sample_rate, padding="max_length", max_length=self.num_samples, truncation=True, return_tensors="np"
        )["input_features"][0]
        mel_frames = math.ceil(int(wave.shape[0]) / self.hop_length)
        frames = min(max(1, math.ceil(mel_frames / WHISPER_FRAMES_PER_POSITION)), self.num_positions)
        return {"input_features": torch.from_numpy(feats).float(), "num_frames": torch.tensor(frames, dtype=torch.long)}

    def placeholder(self) -> dict[str, Tensor]:
        return self.features(torch.zeros(self.sample_rate // 10))

    def save(self, folder: Any) -> None:
        self.feature_extractor.save_pretrained(str(folder))
