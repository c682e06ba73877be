"""Images and audio in requests: checked from their headers first, decoded only when admitted.

A few KB of solid-colour PNG decode to hundreds of MB, so the body limit does not bound memory.
Each media value is therefore inspected without decoding (:func:`inspect_media`: PIL reads the
size from the header, soundfile the frames, rate and channels), its decoded size is counted
against the request's budget (413 beyond) and against the budget of every request in progress
(:class:`MediaBudget`, 503 beyond), and only then decoded (:func:`decode_media`).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mmagent.serving.schemas import ApiError, type_name
from mmagent.serving.settings import ServeSettings

IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "GIF", "BMP", "TIFF", "WEBP"}
_DATA_URL = re.compile(r"^data:[\w.+\-]+/[\w.+\-]+(?:;[\w.+\-]+=[\w.+\-]+)*;base64,", re.IGNORECASE)


class Upload:
    """A file part of a multipart body."""

    def __init__(self, data: bytes, filename: str, content_type: str) -> None:
        self.data, self.filename, self.content_type = data, filename, content_type


@dataclass(eq=False)
class Media:
    """An image or audio value that passed its header checks and is not decoded yet."""

    column: str
    modality: str
    data: bytes
    record: int
    pixels: int = 0
    samples: int = 0  # frames x channels


@dataclass
class Cost:
    """Decoded size of a request's media."""

    pixels: int = 0
    samples: int = 0

    def add(self, media: Media) -> None:
        self.pixels += media.pixels
        self.samples += media.samples


# -- checks from the header ----------------------------------------------------------------------
def inspect_media(col: str, value: Any, modality: str, settings: ServeSettings, i: int) -> Media:
    """Bytes of the value (base64 or an upload) and its decoded size, read from the header only;
    422 naming ``col`` for anything undecodable or over a per-item limit."""
    data = _media_bytes(col, value, modality, i)
    return _inspect_image(col, data, settings, i) if modality == "image" else _inspect_audio(col, data, settings, i)


def _media_bytes(col: str, value: Any, modality: str, i: int) -> bytes:
    if isinstance(value, Upload):
        if not value.data:
            raise ApiError(422, f"column {col!r}: the uploaded {modality} file is empty", col, i)
        return value.data
    if not isinstance(value, str):
        raise ApiError(422, f"column {col!r} is {modality}: expected the file's bytes as a base64 string, got {type_name(value)}", col, i)
    text = value.strip()
    if re.match(r"^[a-z][a-z0-9+.\-]*://", text, re.IGNORECASE):
        raise ApiError(422, f"column {col!r}: URLs are not fetched; send the {modality} file's bytes as base64", col, i)
    text = _DATA_URL.sub("", text, count=1)
    try:
        data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"column {col!r}: not valid base64 (send the {modality} file's bytes base64-encoded; file paths are not read)", col, i) from None
    if not data:
        raise ApiError(422, f"column {col!r}: the {modality} is empty", col, i)
    return data


def _inspect_image(col: str, data: bytes, settings: ServeSettings, i: int) -> Media:
    from PIL import Image

    limit = settings.max_image_pixels
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            w, h = img.size
            fmt = img.format
    except Image.DecompressionBombError:
        raise ApiError(422, f"column {col!r}: image is over the pixel limit of {limit}", col, i) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise ApiError(422, f"column {col!r}: cannot decode image ({type(e).__name__}: {str(e)[:120]})", col, i) from None
    if fmt not in IMAGE_FORMATS:
        raise ApiError(422, f"column {col!r}: unsupported image format {fmt}; use one of {sorted(IMAGE_FORMATS)}", col, i)
    if w * h > limit:
        raise ApiError(422, f"column {col!r}: image of {w}x{h} = {w * h} pixels is over the limit of {limit}", col, i)
    return Media(col, "image", data, i, pixels=w * h)


def _inspect_audio(col: str, data: bytes, settings: ServeSettings, i: int) -> Media:
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ApiError(422, f"column {col!r}: cannot decode audio (WAV, FLAC, OGG or MP3 bytes expected): {str(e)[:120]}", col, i) from None
    if info.samplerate <= 0 or info.frames <= 0:
        raise ApiError(422, f"column {col!r}: audio has no samples (truncated?)", col, i)
    if info.samplerate > settings.max_audio_sample_rate:
        raise ApiError(422, f"column {col!r}: sample rate {info.samplerate} Hz is over the limit of {settings.max_audio_sample_rate} Hz", col, i)
    if info.channels > settings.max_audio_channels:
        raise ApiError(422, f"column {col!r}: audio has {info.channels} channels; the limit is {settings.max_audio_channels}", col, i)
    seconds = info.frames / info.samplerate
    if seconds > settings.max_audio_seconds:
        raise ApiError(422, f"column {col!r}: audio of {seconds:.1f} s is over the limit of {settings.max_audio_seconds:g} s", col, i)
    promised = _wav_data_bytes(data)
    if promised is not None and promised[0] > promised[1]:  # training rejects these too
        raise ApiError(422, f"column {col!r}: WAV is truncated: its header promises {promised[0]} data bytes, the file holds {promised[1]}", col, i)
    return Media(col, "audio", data, i, samples=info.frames * info.channels)


def _wav_data_bytes(data: bytes) -> tuple[int, int] | None:
    """(promised, present) sizes of a RIFF WAV's data chunk, from the chunk headers."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if data[pos : pos + 4] == b"data":
            return length, len(data) - pos - 8
        pos += 8 + length + (length % 2)
    return None


def check_request_budget(cost: Cost, settings: ServeSettings) -> None:
    """413 when one request's media would decode to more than its budget."""
    if cost.pixels > settings.max_request_pixels:
        raise ApiError(413, f"the request's images hold {cost.pixels} pixels in all; the limit per request is {settings.max_request_pixels}", "records")
    if cost.samples > settings.max_request_audio_samples:
        raise ApiError(
            413, f"the request's audio holds {cost.samples} samples in all; the limit per request is {settings.max_request_audio_samples}", "records"
        )


class MediaBudget:
    """Decoded pixels and samples held by the requests in progress (from admission until their
    answer). Used from the event loop only, so no lock."""

    def __init__(self, max_pixels: int, max_samples: int) -> None:
        self.max_pixels, self.max_samples = max_pixels, max_samples
        self.pixels = self.samples = 0

    @contextmanager
    def hold(self, cost: Cost) -> Iterator[None]:
        """Reserve ``cost`` for the duration of the block; 503 when the budget is spent."""
        if cost.pixels and self.pixels + cost.pixels > self.max_pixels:
            raise ApiError(503, f"the server is decoding {self.pixels} image pixels for other requests (limit {self.max_pixels}); retry later", "queue")
        if cost.samples and self.samples + cost.samples > self.max_samples:
            raise ApiError(503, f"the server is decoding {self.samples} audio samples for other requests (limit {self.max_samples}); retry later", "queue")
        self.pixels += cost.pixels
        self.samples += cost.samples
        try:
            yield
        finally:
            self.pixels -= cost.pixels
            self.samples -= cost.samples


# -- decoding ------------------------------------------------------------------------------------
def decode_media(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with every :class:`Media` decoded: an RGB PIL image, or (mono float32 waveform,
    sample rate). Run only after admission."""
    return [{c: (_decode(v) if isinstance(v, Media) else v) for c, v in rec.items()} for rec in records]


def _decode(m: Media) -> Any:
    return _decode_image(m) if m.modality == "image" else _decode_audio(m)


def _decode_image(m: Media) -> Any:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size was checked
            img = Image.open(io.BytesIO(m.data))
            img.load()
            return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise ApiError(422, f"column {m.column!r}: cannot decode image ({type(e).__name__}: {str(e)[:120]})", m.column, m.record) from None


def _decode_audio(m: Media) -> Any:
    import numpy as np
    import soundfile as sf

    try:
        wave, sr = sf.read(io.BytesIO(m.data), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise ApiError(422, f"column {m.column!r}: cannot decode audio: {str(e)[:120]}", m.column, m.record) from None
    wave = wave.mean(1)
    if wave.size == 0:
        raise ApiError(422, f"column {m.column!r}: audio has no samples (truncated?)", m.column, m.record)
    if not np.isfinite(wave).all():
        raise ApiError(422, f"column {m.column!r}: audio contains NaN or infinite samples", m.column, m.record)
    return (np.ascontiguousarray(wave), int(sr))
