"""The HTTP API of an agent (FastAPI).

Endpoints::

    POST /v1/predict   labels + calibrated probabilities per target
    POST /v1/act       the policy's decision (action, reply, escalation, contributions)
    GET  /v1/schema    inputs (column, modality), targets (type, labels), limits
    GET  /healthz      the process is up
    GET  /readyz       the model is loaded (503 until then)
    GET  /metrics      Prometheus: requests by endpoint and status, latency, batch sizes
    GET  /docs         OpenAPI UI (/openapi.json)

Request bodies (``POST /v1/predict`` and ``/v1/act``):

- ``application/json``: ``{"record": {column: value}}`` or ``{"records": [{...}, ...]}``. Text
  columns take strings, numeric columns numbers (or numeric strings), image and audio columns the
  file's bytes as base64 (a ``data:...;base64,`` prefix is accepted). URLs and file paths are
  refused: the server never fetches or opens anything a request names.
- ``multipart/form-data``: one record; form fields for text / numeric columns, file uploads for
  image / audio columns.

Errors are JSON ``{"error": message, "field": column-or-part, "record": index}`` with a 4xx status
(400 malformed body, 401 missing/wrong API key, 413 body too large, 415 content type, 422 a bad
value); a client error never becomes a 500 and never stops the server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import io
import json
import logging
import math
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmagent.agent.policies import Decision
from mmagent.specs import InputSpec, ModelSpec
from mmagent.serving.batching import MicroBatcher, QueueFull
from mmagent.serving.security import API_KEY_HEADER, install_redaction, key_matches, presented_key
from mmagent.serving.settings import ENV_RUN_DIR, ServeSettings

log = logging.getLogger("mmagent.serving")

JSON_TYPES = ("application/json",)
MULTIPART = "multipart/form-data"
IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "GIF", "BMP", "TIFF", "WEBP"}


# -- errors ---------------------------------------------------------------------------------------
class ApiError(Exception):
    """A client error: status + message + the field (column, header or body part) at fault."""

    def __init__(self, status: int, error: str, field: str | None = None, record: int | None = None, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.field, self.record, self.problems = status, error, field, record, problems

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error, "field": self.field}
        if self.record is not None:
            out["record"] = self.record
        if self.problems:
            out["problems"] = self.problems
        return out


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong")
    field: Optional[str] = Field(None, description="the column, header or body part at fault")
    record: Optional[int] = Field(None, description="index of the record (in `records`) at fault")
    problems: Optional[list[dict[str, Any]]] = Field(None, description="every problem, when there are several")


# -- response models ------------------------------------------------------------------------------
class TargetPrediction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Optional[str] = Field(None, description="classification: the most probable label")
    labels: Optional[list[str]] = Field(None, description="multilabel: labels with probability >= 0.5")
    probabilities: Optional[dict[str, float]] = Field(None, description="calibrated probability per label")
    value: Optional[float] = Field(None, description="regression: the predicted value")


class PredictResponse(BaseModel):
    predictions: list[dict[str, TargetPrediction]] = Field(description="one entry per record, in order: target -> prediction")


class ActResponse(BaseModel):
    decisions: list[Decision] = Field(description="one decision per record, in order")


class InputInfo(BaseModel):
    name: str
    columns: list[str]
    modality: Literal["text", "image", "audio", "numeric"]
    required: bool
    encoding: str = Field(description="how to send it in JSON")


class TargetInfo(BaseModel):
    name: str
    type: str
    labels: list[str]


class SchemaResponse(BaseModel):
    inputs: list[InputInfo]
    targets: list[TargetInfo]
    agent_target: Optional[str] = None
    policy: Optional[str] = None
    limits: dict[str, int | float]
    batching: dict[str, int | float]


class Health(BaseModel):
    status: str


ERRORS = {
    400: {"model": ErrorResponse, "description": "malformed body (not JSON, empty, neither `record` nor `records`)"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    413: {"model": ErrorResponse, "description": "body larger than max_body_bytes"},
    415: {"model": ErrorResponse, "description": "content type is not application/json or multipart/form-data"},
    422: {"model": ErrorResponse, "description": "a bad value (unknown column, wrong type, bad base64, undecodable or oversized media)"},
    503: {"model": ErrorResponse, "description": "model not loaded yet, or overloaded"},
}


# -- metrics --------------------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics in a registry of this app's own (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mmagent_requests_total", "HTTP requests by endpoint, method and status", ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "mmagent_request_latency_seconds", "HTTP request latency", ["endpoint"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.batch_size = Histogram("mmagent_batch_size", "records per model call", ["kind"], registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_requests = Histogram("mmagent_batch_requests", "requests per model call", ["kind"], registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_latency = Histogram("mmagent_batch_latency_seconds", "seconds per model call", ["kind"], registry=self.registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.records = Counter("mmagent_records_total", "records answered", ["kind"], registry=self.registry)
        self.ready = Gauge("mmagent_model_ready", "1 once the model is loaded", registry=self.registry)
        self.queue = Gauge("mmagent_queue_records", "records waiting for the model", ["kind"], registry=self.registry)

    def batch_observer(self, kind: str):
        def observe(records: int, requests: int, seconds: float) -> None:
            self.batch_size.labels(kind).observe(records)
            self.batch_requests.labels(kind).observe(requests)
            self.batch_latency.labels(kind).observe(seconds)
            self.records.labels(kind).inc(records)

        return observe


class _Instrument:
    """Pure ASGI middleware: count and time every HTTP request by route template and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


# -- request decoding -----------------------------------------------------------------------------
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


# -- OpenAPI request schemas ----------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"\W", "_", name)


def record_model(spec: ModelSpec) -> type[BaseModel]:
    """A pydantic model of one JSON record for this model's inputs (for the docs)."""
    fields: dict[str, Any] = {}
    for inp in spec.inputs:
        for col in inp.columns:
            if inp.modality == "text":
                typ, desc, extra = Optional[str], "text", {}
            elif inp.modality == "numeric":
                typ, desc, extra = Optional[float], "a number", {}
            else:
                typ, desc, extra = Optional[str], f"the {inp.modality} file's bytes, base64-encoded", {"json_schema_extra": {"contentEncoding": "base64"}}
            req = " (required)" if inp.required else " (optional: a missing input is allowed)"
            fields[f"f_{_safe(col)}_{len(fields)}"] = (typ, Field(None, alias=col, description=f"{inp.modality} input {inp.key!r}: {desc}{req}", **extra))
    return create_model("Record", __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields)


def request_models(spec: ModelSpec, max_records: int) -> tuple[type[BaseModel], dict[str, Any]]:
    record = record_model(spec)
    body = create_model(
        "RecordsRequest",
        __config__=ConfigDict(extra="forbid"),
        record=(Optional[record], Field(None, description="one record")),
        records=(Optional[list[record]], Field(None, description=f"several records (at most {max_records})", max_length=max_records)),
    )
    multipart: dict[str, Any] = {"type": "object", "properties": {}}
    for inp in spec.inputs:
        for col in inp.columns:
            if inp.modality in ("image", "audio"):
                multipart["properties"][col] = {"type": "string", "format": "binary", "description": f"{inp.modality} file upload"}
            else:
                multipart["properties"][col] = {"type": "string", "description": f"{inp.modality} value"}
    return body, multipart


def _openapi_body(body: type[BaseModel], multipart: dict[str, Any]) -> dict[str, Any]:
    schema = body.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}, MULTIPART: {"schema": multipart}}}}


# -- the app --------------------------------------------------------------------------------------
class _State:
    def __init__(self) -> None:
        self.agent: Any = None
        self.error: str | None = None
        self.predict: MicroBatcher | None = None
        self.act: MicroBatcher | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None


def create_app(source: "str | Path | Any", settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``source``: a run folder (loaded in the background at startup;
    /readyz says when) or an :class:`~mmagent.agent.Agent`."""
    from mmagent.agent import Agent

    settings = settings or ServeSettings()
    keys = settings.load_keys()
    if not settings.loopback and not keys:
        raise ValueError(f"refusing to serve on {settings.host} (not a loopback address) without an API key: set MMAGENT_API_KEYS or an API key file")
    if isinstance(source, Agent):
        agent, run_dir, spec = source, None, source.model.spec
    else:
        agent, run_dir = None, Path(source)
        model_dir = run_dir / "model" if (run_dir / "model").is_dir() else run_dir
        if not (model_dir / "model.json").is_file():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no model/model.json)")
        spec = ModelSpec.model_validate(json.loads((model_dir / "model.json").read_text()))
    columns: dict[str, InputSpec] = {c: inp for inp in spec.inputs for c in inp.columns}
    metrics = Metrics()
    state = _State()
    install_redaction()

    def on_loaded(loaded: Any) -> None:
        state.agent = loaded
        metrics.ready.set(1)
        ex = state.executor
        state.predict = MicroBatcher(lambda recs: loaded.predict(recs), settings.max_batch_size, settings.max_wait_ms, settings.max_queue, ex, metrics.batch_observer("predict"), "predict")
        state.act = MicroBatcher(lambda recs: [d.model_dump(mode="json") for d in loaded.act_many(recs, explain=settings.explain)], settings.max_batch_size, settings.max_wait_ms, settings.max_queue, ex, metrics.batch_observer("act"), "act")
        state.predict.start()
        state.act.start()
        metrics.queue.labels("predict").set_function(lambda: state.predict.pending if state.predict else 0)
        metrics.queue.labels("act").set_function(lambda: state.act.pending if state.act else 0)

    async def load_in_background() -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            loaded = await loop.run_in_executor(state.executor, lambda: Agent.load(run_dir, device=settings.device))  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - /readyz reports it; the process stays up for /healthz
            state.error = f"{type(e).__name__}: {e}"
            log.error("could not load %s: %s", run_dir, state.error)
            return
        on_loaded(loaded)
        log.info("model loaded from %s in %.1f s; batching up to %d records / %g ms", run_dir, time.perf_counter() - started, settings.max_batch_size, settings.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One model thread: torch already uses every core inside a call, two calls would fight.
        state.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmagent-model")
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        loader = None
        if agent is not None:
            on_loaded(agent)
        else:
            loader = asyncio.get_running_loop().create_task(load_in_background())
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
            for b in (state.predict, state.act):
                if b is not None:
                    await b.stop()
            state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="mmagent",
        version="1",
        summary="A fine-tuned multimodal agent: predict, and act on the prediction.",
        description=(
            "Send records as JSON (images and audio base64-encoded) or as multipart/form-data (file uploads). "
            + (f"Every /v1 endpoint and /metrics needs an API key: header `{API_KEY_HEADER}: KEY` or `Authorization: Bearer KEY`." if keys else "No API key is configured (loopback only).")
        ),
        lifespan=lifespan,
    )
    app.state.mmagent = state
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(_Instrument, metrics=metrics)

    # -- errors -----------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        log.info("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.field, exc.error)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 413:  # the rest of the body was not read: do not reuse the connection
            headers = {"Connection": "close"}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = "path" if exc.status_code == 404 else ("method" if exc.status_code == 405 else None)
        return JSONResponse({"error": str(exc.detail), "field": field}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "header"))
        return JSONResponse({"error": first.get("msg", "invalid request"), "field": field or None}, status_code=422)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal server error", "field": None}, status_code=500)

    def require_key(request: Request) -> None:
        if keys and not key_matches(presented_key(request.headers), keys):
            given = presented_key(request.headers) is not None
            raise ApiError(401, "invalid API key" if given else f"missing API key: send header {API_KEY_HEADER} or Authorization: Bearer", API_KEY_HEADER)

    def ready_agent() -> Any:
        if state.agent is None:
            raise ApiError(503, "model failed to load: " + state.error if state.error else "model is still loading; retry when /readyz says ready", "model")
        return state.agent

    body_model, multipart_schema = request_models(spec, settings.max_records)
    extra = _openapi_body(body_model, multipart_schema)

    async def run(request: Request, kind: str) -> list[Any]:
        require_key(request)
        ready_agent()
        raw, multipart = await raw_records(request, settings, columns)
        needs_thread = multipart or any(isinstance(r, dict) and any(columns.get(c) is not None and columns[c].modality in ("image", "audio") and v is not None for c, v in r.items()) for r in raw)
        records = await run_in_threadpool(decode_records, raw, columns, settings, multipart) if needs_thread else decode_records(raw, columns, settings, multipart)
        batcher = state.predict if kind == "predict" else state.act
        assert batcher is not None
        try:
            return await batcher.submit(records)
        except QueueFull as e:
            raise ApiError(503, str(e), "queue") from None
        except Exception as e:
            raise _model_error(e, len(records)) from e

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=ERRORS, openapi_extra=extra, tags=["agent"], summary="Labels and calibrated probabilities")
    async def predict(request: Request) -> Any:
        return {"predictions": await run(request, "predict")}

    @app.post("/v1/act", response_model=ActResponse, responses=ERRORS, openapi_extra=extra, tags=["agent"], summary="The policy's decision for each record")
    async def act(request: Request) -> Any:
        return {"decisions": await run(request, "act")}

    @app.get("/v1/schema", response_model=SchemaResponse, responses={401: ERRORS[401]}, tags=["agent"], summary="Inputs, targets and limits")
    async def schema(request: Request) -> Any:
        require_key(request)
        loaded = state.agent
        return {
            "inputs": [
                {"name": inp.key, "columns": inp.columns, "modality": inp.modality, "required": inp.required, "encoding": {"text": "string", "numeric": "number", "image": "base64 string (JSON) or file upload (multipart)", "audio": "base64 string (JSON) or file upload (multipart)"}[inp.modality]}
                for inp in spec.inputs
            ],
            "targets": [{"name": t.column, "type": t.type, "labels": list(t.labels or [])} for t in spec.targets],
            "agent_target": getattr(loaded, "target", None),
            "policy": getattr(getattr(loaded, "policy", None), "name", None) or (type(loaded.policy).__name__ if loaded is not None else None),
            "limits": {
                "max_body_bytes": settings.max_body_bytes,
                "max_records": settings.max_records,
                "max_image_pixels": settings.max_image_pixels,
                "max_audio_seconds": settings.max_audio_seconds,
                "max_text_chars": settings.max_text_chars,
            },
            "batching": {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms},
        }

    @app.get("/healthz", response_model=Health, tags=["ops"], summary="The process is up")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Health, responses={503: ERRORS[503]}, tags=["ops"], summary="The model is loaded")
    async def readyz() -> Any:
        ready_agent()
        return {"status": "ready"}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def prometheus(request: Request) -> Response:
        require_key(request)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _model_error(e: Exception, n: int) -> Exception:
    """Errors of the model call: bad rows (DataError, MediaError) are the client's -> 422."""
    from mmagent.data.validation import DataError
    from mmagent.encoders.media import MediaError

    if isinstance(e, ApiError):
        return e
    if isinstance(e, DataError):
        problems = [{"field": p.column, "record": p.row if p.row >= 0 else None, "error": p.message} for p in e.problems]
        first = problems[0] if problems else {"field": None, "record": None, "error": str(e)}
        return ApiError(422, first["error"], first["field"], first["record"], problems if len(problems) > 1 else None)
    if isinstance(e, MediaError):
        return ApiError(422, str(e), None)
    return e


def app_from_env() -> FastAPI:
    """uvicorn factory (``mmagent.serving.app:app_from_env``) for ``mmagent serve`` and its worker
    processes: the run folder from ``MMAGENT_SERVE_RUN_DIR``, settings from the environment."""
    import os

    run_dir = os.environ.get(ENV_RUN_DIR)
    if not run_dir:
        raise RuntimeError(f"set {ENV_RUN_DIR} to the run folder to serve")
    return create_app(run_dir, ServeSettings.from_env())
