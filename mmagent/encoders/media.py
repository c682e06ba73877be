"""Decoding raw media into arrays: images to RGB PIL images, audio to mono float waveforms.

Errors are raised as :class:`MediaError` with a short human message; the data layer adds the file,
row and column.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

# Refuse decompression bombs: 40 megapixels is plenty for any encoder input.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aiff", ".aif", ".opus"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class MediaError(ValueError):
    """An input could not be decoded (missing, corrupt, unsupported)."""


def load_image(item: Any) -> Image.Image:
    """Path / bytes / PIL image / array (HW, HWC; uint8 or float in [0, 1]) / CHW tensor -> RGB PIL."""
    if isinstance(item, Image.Image):
        img = item
    elif isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise MediaError(f"image file not found: {path}")
        try:
            with Image.open(path) as f:
                f.load()
                img = f.copy()
        except Image.DecompressionBombError as e:
            raise MediaError(f"image too large (over {MAX_IMAGE_PIXELS} pixels): {path}") from e
        except Exception as e:  # PIL raises many types for corrupt files
            raise MediaError(f"cannot decode image {path}: {e}") from e
    elif isinstance(item, (bytes, bytearray)):
        try:
            img = Image.open(io.BytesIO(item))
            img.load()
        except Image.DecompressionBombError as e:
            raise MediaError(f"image too large (over {MAX_IMAGE_PIXELS} pixels)") from e
        except Exception as e:
            raise MediaError(f"cannot decode image bytes: {e}") from e
    else:
        arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3):
            raise MediaError(f"image array must be HW or HWC, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    return img.convert("RGB")


def _read_audio_file(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not path.is_file():
        raise MediaError(f"audio file not found: {path}")
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise MediaError(f"unsupported audio format {path.suffix!r} ({path.name}); use one of {sorted(AUDIO_EXTENSIONS)}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
        return data.T, int(sr)
    except Exception as first:
        try:  # soundfile lacks some codecs (e.g. older libsndfile without mp3); librosa falls back to audioread
            import librosa

            data, sr = librosa.load(str(path), sr=None, mono=False)
            return np.atleast_2d(data).astype(np.float32), int(sr)
        except Exception:
            raise MediaError(f"cannot decode audio {path}: {first}") from first


def load_audio(item: Any, target_sr: int, max_seconds: float | None = None, default_sr: int | None = None) -> torch.Tensor:
    """Decode to a mono float32 waveform at ``target_sr``, cropped to ``max_seconds``.

    ``item``: a path; ``(array, sample_rate)``; ``{"array", "sampling_rate"}`` (HF datasets style);
    or a bare array / tensor (1-D mono or 2-D channels-first), taken to be at ``default_sr``
    (``target_sr`` when not given).
    """
    if isinstance(item, (str, Path)):
        wave, sr = _read_audio_file(Path(item))
    elif isinstance(item, dict) and "array" in item:
        wave, sr = np.asarray(item["array"], dtype=np.float32), int(item.get("sampling_rate", default_sr or target_sr))
    elif isinstance(item, tuple) and len(item) == 2:
        wave, sr = np.asarray(item[0], dtype=np.float32), int(item[1])
    else:
        wave = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item, dtype=np.float32)
        sr = default_sr or target_sr
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2 and wave.shape[0] > wave.shape[1]:
        wave = wave.T  # (frames, channels) given: make it channels-first
    if wave.ndim == 2:
        wave = wave.mean(0)
    if wave.ndim != 1:
        raise MediaError(f"audio must be 1-D (mono) or 2-D (channels), got shape {wave.shape}")
    if wave.size == 0:
        raise MediaError("audio is empty (0 samples)")
    if not np.isfinite(wave).all():
        raise MediaError("audio contains NaN or infinite samples")
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * sr))]
    tensor = torch.from_numpy(np.ascontiguousarray(wave))
    if sr != target_sr:
        import torchaudio.functional as AF

        tensor = AF.resample(tensor, sr, target_sr)
    return tensor


def audio_seconds(item: Any, default_sr: int) -> float:
    """Duration of an audio item without decoding it where possible (a file's header); arrays are
    taken to be at ``default_sr`` unless they carry their rate. Used to group clips of similar
    length into batches, so an unreadable file counts as 0 s (its row fails later, with the reason)."""
    try:
        if isinstance(item, (str, Path)):
            import soundfile as sf

            return float(sf.info(str(item)).duration)
        if isinstance(item, dict) and "array" in item:
            return len(item["array"]) / float(item.get("sampling_rate", default_sr))
        if isinstance(item, tuple) and len(item) == 2:
            return np.asarray(item[0]).shape[-1] / float(item[1])
        return np.asarray(item).shape[-1] / float(default_sr)
    except Exception:
        return 0.0
