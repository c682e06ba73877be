"""Reading a request into records: body limits, JSON / multipart parsing, and the check and
decoding of every value (text, numbers, base64 or uploaded images and audio).

Nothing is ever read from a path or fetched from a URL a request names.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmagent.data.tables import SURROGATE_MESSAGE
from mmagent.serving.media import Cost, Media, Upload, check_request_budget, inspect_media
from mmagent.serving.schemas import MULTIPART, ApiError, BigInt, type_name
from mmagent.serving.settings import ServeSettings
from mmagent.specs import InputSpec

JSON_TYPES = ("application/json",)
FLOAT32_MAX = 3.4028234663852886e38
_SURROGATE = re.compile("[\ud800-\udfff]")


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


def mediatype_name(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


async def raw_records(request: Request, settings: ServeSettings, columns: dict[str, InputSpec]) -> tuple[list[Any], bool]:
    """Records as sent (not yet checked), and whether they came from multipart."""
    kind = mediatype_name(request)
    if kind not in JSON_TYPES and kind != MULTIPART:
        shown = kind or "none"
        raise ApiError(415, f"unsupported content type {shown!r}; send application/json or multipart/form-data", "Content-Type")
    body = await read_body(request, settings.max_body_bytes)
    if not body.strip():
        raise ApiError(400, 'empty request body; send {"record": {...}} or {"records": [...]}', "body")
    if kind == MULTIPART:
        return [await _multipart_record(request, settings, columns)], True
    parsed = parse_json(body)
    if not isinstance(parsed, dict):
        raise ApiError(400, 'the body must be a JSON object: {"record": {...}} or {"records": [...]}', "body")
    extra = sorted(set(parsed) - {"record", "records"})
    if extra:
        raise ApiError(400, f'unknown top-level key(s) {extra}; use "record" or "records"', extra[0])
    if ("record" in parsed) == ("records" in parsed):
        raise ApiError(400, 'give exactly one of "record" (an object) or "records" (a list of objects)', "body")
    if "record" in parsed:
        if not isinstance(parsed["record"], dict):
            raise ApiError(422, f'"record" must be an object of column -> value, got {type_name(parsed["record"])}', "record")
        return [parsed["record"]], False
    records = parsed["records"]
    if not isinstance(records, list):
        raise ApiError(422, f'"records" must be a list of objects, got {type_name(records)}', "records")
    if not records:
        raise ApiError(422, '"records" is empty', "records")
    if len(records) > settings.max_records:
        raise ApiError(422, f"{len(records)} records in one request; the limit is {settings.max_records}", "records")
    return records, False


def parse_json(body: bytes) -> Any:
    """The JSON body; a number too long or too large for a float is kept as a marker
    (:class:`BigInt`, ``inf``) so the check of its column can name it instead of failing here."""
    try:
        return json.loads(body, parse_int=_parse_int)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ApiError(400, f"body is not valid JSON: {str(e)[:200]}", "body") from None
    except ValueError as e:  # whatever else the parser refuses
        raise ApiError(400, f"body is not valid JSON: {str(e)[:200]}", "body") from None


def _parse_int(digits: str) -> Any:
    # Python refuses int() of more than 4300 digits (a CPU-time guard); no model input needs 300.
    return BigInt(digits) if len(digits.lstrip("-")) > 300 else int(digits)


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
                record[key] = Upload(await value.read(), value.filename or "", value.content_type or "")
            else:
                record[key] = value
    finally:
        await form.close()
    return record


def check_records(records: list[Any], columns: dict[str, InputSpec], settings: ServeSettings) -> tuple[list[dict[str, Any]], Cost]:
    """Check every record before it is batched, so a bad one never reaches (and fails) a batch;
    raise :class:`ApiError` naming the first bad field.

    Text -> str; numeric -> float (None when empty); image / audio -> :class:`Media` checked from
    its header (decoded later by :func:`~mmagent.serving.media.decode_media`, once admitted).
    Also returns the decoded size of the request's media, checked against the request budget."""
    out, cost = [], Cost()
    inputs = {id(inp): inp for inp in columns.values()}.values()
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ApiError(422, f"record {i} must be an object of column -> value, got {type_name(rec)}", f"records[{i}]", i)
        unknown = [c for c in rec if c not in columns]
        if unknown:
            raise ApiError(422, f"unknown column {unknown[0]!r}; this model's input columns are {list(columns)}", str(unknown[0]), i)
        checked: dict[str, Any] = {}
        for col, value in rec.items():
            checked[col] = _check_value(col, value, columns[col].modality, settings, i)
            if isinstance(checked[col], Media):
                cost.add(checked[col])
        if all(v is None for v in checked.values()):
            raise ApiError(422, f"record {i} has no input value; give at least one of {list(columns)}", ", ".join(columns) if not rec else ", ".join(rec), i)
        for inp in inputs:  # the agent's own row check, per record: required inputs
            if inp.required and all(checked.get(c) is None for c in inp.columns):
                raise ApiError(422, f"record {i}: the {inp.modality} input {inp.columns[0]!r} is required", inp.columns[0], i)
        out.append(checked)
    check_request_budget(cost, settings)
    return out, cost


def _check_value(col: str, value: Any, modality: str, settings: ServeSettings, i: int) -> Any:
    if value is None or (isinstance(value, str) and not value.strip() and modality != "text"):
        return None
    if modality == "text":
        if not isinstance(value, str):
            raise ApiError(422, f"column {col!r} is text: expected a string, got {type_name(value)}", col, i)
        if len(value) > settings.max_text_chars:
            raise ApiError(422, f"column {col!r}: text of {len(value)} characters is over the limit of {settings.max_text_chars}", col, i)
        if _SURROGATE.search(value):  # a lone UTF-16 surrogate: valid JSON escape, not valid text
            raise ApiError(422, f"column {col!r}: {SURROGATE_MESSAGE}", col, i)  # the Agent API's words too
        return value if value.strip() else None
    if modality == "numeric":
        return _number(col, value, i)
    if modality == "categorical":
        return _category(col, value, settings, i)
    return inspect_media(col, value, modality, settings, i)


def _category(col: str, value: Any, settings: ServeSettings, i: int) -> str | int | float:
    """A category is one short string or number (the training table's cells were such values)."""
    if isinstance(value, BigInt) or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ApiError(422, f"column {col!r} is categorical: expected a string or a number, got {type_name(value)}", col, i)
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(422, f"column {col!r} is categorical: {value} is not a category", col, i)
    if isinstance(value, str):
        if len(value) > settings.max_text_chars or _SURROGATE.search(value):
            raise ApiError(422, f"column {col!r} is categorical: not a valid short value", col, i)
    return value


def _number(col: str, value: Any, i: int) -> float | None:
    if isinstance(value, BigInt):
        raise ApiError(422, f"column {col!r}: an integer of {len(value.digits)} digits is out of range", col, i)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ApiError(422, f"column {col!r} is numeric: expected a number, got {type_name(value)}", col, i)
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        raise ApiError(422, f"column {col!r} is numeric: {str(value)[:40]!r} is not a (finite) number", col, i) from None
    if math.isnan(number):
        return None
    # The model computes in float32: a larger value becomes infinite and the answer NaN.
    if abs(number) > FLOAT32_MAX:
        raise ApiError(422, f"column {col!r}: {number:g} is out of range (the model's numbers are 32-bit floats, at most {FLOAT32_MAX:.3g})", col, i)
    return number
