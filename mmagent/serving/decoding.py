"""Reading a request into records: body limits, JSON / multipart parsing, and the check and
decoding of every value (text, numbers, base64 or uploaded images and audio).

Nothing is ever read from a path or fetched from a URL a request names.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmagent.specs import InputSpec
from mmagent.serving.schemas import MULTIPART, ApiError
from mmagent.serving.settings import ServeSettings

JSON_TYPES = ("application/json",)
IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "GIF", "BMP", "TIFF", "WEBP"}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) a declared or an actual size over ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length {declared[:20]!r}", "Content-Length") from None
        if n > limit:
            raise ApiError(413, f"request body of {n} bytes is over the limit of {limit} bytes", "body")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets request.form() parse what was read  # type: ignore[attr-defined]
    return body


def media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


async def raw_records(request: Request, settings: ServeSettings, columns: dict[str, InputSpec]) -> tuple[list[Any], bool]:
    """Records as sent (not yet checked), and whether they came from multipart."""
    kind = media_type(request)
    if kind not in JSON_TYPES and kind != MULTIPART:
        shown = kind or "none"
        raise ApiError(415, f"unsupported content type {shown!r}; send application/json or multipart/form-data", "Content-Type")
    body = await read_body(request, settings.max_body_bytes)
    if not body.strip():
        raise ApiError(400, "empty request body; send {\"record\": {...}} or {\"records\": [...]}", "body")
    if kind == MULTIPART:
        return [await _multipart_record(request, settings, columns)], True
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ApiError(400, f"body is not valid JSON: {str(e)[:200]}", "body") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, 'the body must be a JSON object: {"record": {...}} or {"records": [...]}', "body")
    extra = sorted(set(parsed) - {"record", "records"})
    if extra:
        raise ApiError(400, f"unknown top-level key(s) {extra}; use \"record\" or \"records\"", extra[0])
    if ("record" in parsed) == ("records" in parsed):
        raise ApiError(400, 'give exactly one of "record" (an object) or "records" (a list of objects)', "body")
    if "record" in parsed:
        if not isinstance(parsed["record"], dict):
            raise ApiError(422, f'"record" must be an object of column -> value, got {_type(parsed["record"])}', "record")
        return [parsed["record"]], False
    records = parsed["records"]
    if not isinstance(records, list):
        raise ApiError(422, f'"records" must be a list of objects, got {_type(records)}', "records")
    if not records:
        raise ApiError(422, '"records" is empty', "records")
    if len(records) > settings.max_records:
        raise ApiError(422, f"{len(records)} records in one request; the limit is {settings.max_records}", "records")
    return records, False


async def _multipart_record(request: Request, settings: ServeSettings, columns: dict[str, InputSpec]) -> dict[str, Any]:
    from starlette.datastructures import UploadFile

    n_fields = max(8, len(columns) * 2)
    try:
        form = await request.form(max_files=n_fields, max_fields=n_fields, max_part_size=settings.max_body_bytes)
    except StarletteHTTPException as e:
        raise ApiError(400, f"malformed multipart body: {e.detail}", "body") from None
    except Exception as e:  # noqa: BLE001 - the parser raises assorted errors on broken input
        raise ApiError(400, f"malformed multipart body: {str(e)[:200]}", "body") from None
    record: dict[str, Any] = {}
    try:
        for key in form.keys():
            values = form.getlist(key)
            if len(values) > 1:
                raise ApiError(422, f"field {key!r} given {len(values)} times", key)
            value = values[0]
            if isinstance(value, UploadFile):
                record[key] = _Upload(await value.read(), value.filename or "", value.content_type or "")
            else:
                record[key] = value
    finally:
        await form.close()
    return record


class _Upload:
    """A file part of a multipart body."""

    def __init__(self, data: bytes, filename: str, content_type: str) -> None:
        self.data, self.filename, self.content_type = data, filename, content_type


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def decode_records(records: list[Any], columns: dict[str, InputSpec], settings: ServeSettings, multipart: bool) -> list[dict[str, Any]]:
    """Check every value and decode media; raise :class:`ApiError` (422) naming the first bad field.

    Text -> str; numeric -> float (None when empty); image -> RGB PIL image; audio -> (mono float32
    waveform, sample rate). Nothing is ever read from a path or fetched from a URL."""
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ApiError(422, f"record {i} must be an object of column -> value, got {_type(rec)}", f"records[{i}]", i)
        unknown = [c for c in rec if c not in columns]
        if unknown:
            raise ApiError(422, f"unknown column {unknown[0]!r}; this model's input columns are {list(columns)}", str(unknown[0]), i)
        decoded: dict[str, Any] = {}
        for col, value in rec.items():
            decoded[col] = _decode_value(col, value, columns[col].modality, settings, i)
        if all(v is None for v in decoded.values()):
            raise ApiError(422, f"record {i} has no input value; give at least one of {list(columns)}", ", ".join(columns) if not rec else ", ".join(rec), i)
        out.append(decoded)
    return out


def _decode_value(col: str, value: Any, modality: str, settings: ServeSettings, i: int) -> Any:
    if value is None or (isinstance(value, str) and not value.strip() and modality != "text"):
        return None
    if modality == "text":
        if not isinstance(value, str):
            raise ApiError(422, f"column {col!r} is text: expected a string, got {_type(value)}", col, i)
        if len(value) > settings.max_text_chars:
            raise ApiError(422, f"column {col!r}: text of {len(value)} characters is over the limit of {settings.max_text_chars}", col, i)
        return value if value.strip() else None
    if modality == "numeric":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ApiError(422, f"column {col!r} is numeric: expected a number, got {_type(value)}", col, i)
        try:
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (ValueError, OverflowError):
            raise ApiError(422, f"column {col!r} is numeric: {str(value)[:40]!r} is not a (finite) number", col, i) from None
        if math.isinf(number):
            raise ApiError(422, f"column {col!r}: infinite values are not allowed", col, i)
        return None if math.isnan(number) else number
    data = _media_bytes(col, value, modality, i)
    if modality == "image":
        return _decode_image(col, data, settings, i)
    return _decode_audio(col, data, settings, i)


_DATA_URL = re.compile(r"^data:[\w.+\-]+/[\w.+\-]+(?:;[\w.+\-]+=[\w.+\-]+)*;base64,", re.IGNORECASE)


def _media_bytes(col: str, value: Any, modality: str, i: int) -> bytes:
    if isinstance(value, _Upload):
        if not value.data:
            raise ApiError(422, f"column {col!r}: the uploaded {modality} file is empty", col, i)
        return value.data
    if not isinstance(value, str):
        raise ApiError(422, f"column {col!r} is {modality}: expected the file's bytes as a base64 string, got {_type(value)}", col, i)
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


def _decode_image(col: str, data: bytes, settings: ServeSettings, i: int) -> Any:
    import warnings

    from PIL import Image

    limit = settings.max_image_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
            w, h = img.size
            if w * h > limit:
                raise ApiError(422, f"column {col!r}: image of {w}x{h} = {w * h} pixels is over the limit of {limit}", col, i)
            if img.format not in IMAGE_FORMATS:
                raise ApiError(422, f"column {col!r}: unsupported image format {img.format}; use one of {sorted(IMAGE_FORMATS)}", col, i)
            img.load()
            return img.convert("RGB")
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(422, f"column {col!r}: image is over the pixel limit of {limit}", col, i) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise ApiError(422, f"column {col!r}: cannot decode image ({type(e).__name__}: {str(e)[:120]})", col, i) from None


def _decode_audio(col: str, data: bytes, settings: ServeSettings, i: int) -> Any:
    import numpy as np
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ApiError(422, f"column {col!r}: cannot decode audio (WAV, FLAC, OGG or MP3 bytes expected): {str(e)[:120]}", col, i) from None
    if info.samplerate <= 0 or info.frames <= 0:
        raise ApiError(422, f"column {col!r}: audio has no samples", col, i)
    seconds = info.frames / info.samplerate
    if seconds > settings.max_audio_seconds:
        raise ApiError(422, f"column {col!r}: audio of {seconds:.1f} s is over the limit of {settings.max_audio_seconds:g} s", col, i)
    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise ApiError(422, f"column {col!r}: cannot decode audio: {str(e)[:120]}", col, i) from None
    wave = wave.mean(1)
    if wave.size == 0:
        raise ApiError(422, f"column {col!r}: audio has no samples (truncated?)", col, i)
    if not np.isfinite(wave).all():
        raise ApiError(422, f"column {col!r}: audio contains NaN or infinite samples", col, i)
    return (np.ascontiguousarray(wave), int(sr))


