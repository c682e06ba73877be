"""The endpoints. Auth, the loaded agent and the micro-batchers come in through FastAPI
dependencies (``Depends``), so each route says what it needs and nothing is a closure over the app.

    POST /v1/predict   labels + calibrated probabilities per target
    POST /v1/act       the policy's decision (action, reply, escalation, contributions)
    POST /v1/explain   one record's decision with attributions per input (words, heatmap, ...)
    GET  /v1/schema    inputs (column, modality), targets (type, labels), limits
    GET  /healthz      the process is up
    GET  /readyz       the model is loaded (503 until then)
    GET  /metrics      Prometheus: requests by endpoint and status, latency, batch sizes
    GET  /docs         OpenAPI UI (/openapi.json); with API keys set, both need a key
    GET  /             the page to try the agent (mmagent.serving.page: a static shell, no key needed,
                       nothing of the model in it; it reads everything above with the key)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from fastapi import APIRouter, Depends, Request, Security
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from mmagent.serving.batching import MicroBatcher, QueueFull, ShuttingDown
from mmagent.serving.decoding import check_records, raw_records
from mmagent.serving.media import MediaBudget, decode_media
from mmagent.serving.metrics import Metrics
from mmagent.serving.schemas import (
    ERRORS,
    ActResponse,
    ApiError,
    ExplainResponse,
    Health,
    PredictResponse,
    SchemaResponse,
    explain_body,
    openapi_body,
    request_models,
)
from mmagent.serving.security import API_KEY_HEADER, key_matches
from mmagent.serving.settings import ServeSettings
from mmagent.serving.swap import Served
from mmagent.serving.threads import runtime_summary
from mmagent.specs import InputSpec, ModelSpec


@dataclass(eq=False)
class ServingState:
    """Everything the routes use, kept on ``app.state.mmagent``."""

    spec: ModelSpec
    settings: ServeSettings
    keys: list[str]
    metrics: Metrics
    columns: dict[str, InputSpec] = field(default_factory=dict)
    served: Served | None = None  # the agent and its version, replaced whole by a live swap
    error: str | None = None
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    executor: concurrent.futures.ThreadPoolExecutor | None = None
    budget: MediaBudget = field(init=False)

    def __post_init__(self) -> None:
        self.columns = {c: inp for inp in self.spec.inputs for c in inp.columns}
        self.budget = MediaBudget(self.settings.max_queue_pixels, self.settings.max_queue_audio_samples)

    @property
    def agent(self) -> Any:
        served = self.served
        return served.agent if served is not None else None

    @property
    def version(self) -> str | None:
        served = self.served
        return served.version if served is not None else None


# -- dependencies ---------------------------------------------------------------------------------
_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="an API key (when the server has keys)")
_bearer = HTTPBearer(auto_error=False, description="the same API key as a bearer token")


# The dependencies are ``async def`` though they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, four hops per request (py-spy under 32 clients showed the pool's
# threads and the event loop taking the GIL from the model thread).
async def get_state(request: Request) -> ServingState:
    return request.app.state.mmagent


async def require_key(
    state: ServingState = Depends(get_state),
    header_key: Optional[str] = Security(_key_header),
    bearer: Optional[HTTPAuthorizationCredentials] = Security(_bearer),
) -> None:
    """401 unless the request presents a configured key (no-op when the server has no keys)."""
    if not state.keys:
        return
    given = (header_key or "").strip() or (bearer.credentials.strip() if bearer is not None else None)
    if not key_matches(given, state.keys):
        raise ApiError(401, "invalid API key" if given else f"missing API key: send header {API_KEY_HEADER} or Authorization: Bearer", API_KEY_HEADER)


async def ready_agent(state: ServingState = Depends(get_state)) -> Any:
    """The loaded agent, or 503 while it loads (or when loading failed)."""
    if state.agent is None:
        raise ApiError(503, "model failed to load: " + state.error if state.error else "model is still loading; retry when /readyz says ready", "model")
    return state.agent


def _batcher(kind: str):
    async def get(state: ServingState = Depends(get_state), _agent: Any = Depends(ready_agent)) -> MicroBatcher:
        return state.batchers[kind]

    return get


# -- routes ---------------------------------------------------------------------------------------
def build_router(spec: ModelSpec, settings: ServeSettings) -> APIRouter:
    """The API's routes; the request-body documentation is built from ``spec``."""
    router = APIRouter()
    extra = openapi_body(*request_models(spec, settings.max_records))
    keyed = [Depends(require_key)]

    @router.post(
        "/v1/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
        openapi_extra=extra,
        tags=["agent"],
        summary="Labels and calibrated probabilities",
        dependencies=keyed,
    )
    async def predict(request: Request, state: ServingState = Depends(get_state), batcher: MicroBatcher = Depends(_batcher("predict"))) -> Any:
        version, results = await _run(request, state, batcher.submit)
        state.metrics.count_outcomes("predict", results)
        return {"predictions": results, "model_version": version}

    @router.post(
        "/v1/act",
        response_model=ActResponse,
        responses=ERRORS,
        openapi_extra=extra,
        tags=["agent"],
        summary="The policy's decision for each record",
        dependencies=keyed,
    )
    async def act(request: Request, state: ServingState = Depends(get_state), batcher: MicroBatcher = Depends(_batcher("act"))) -> Any:
        version, results = await _run(request, state, batcher.submit)
        state.metrics.count_outcomes("act", results)
        return {"decisions": results, "model_version": version}

    @router.post(
        "/v1/explain",
        response_model=ExplainResponse,
        responses=ERRORS,
        openapi_extra=explain_body(spec, settings.max_records),
        tags=["agent"],
        summary="One record's decision and what each input contributed to it",
        dependencies=keyed,
    )
    async def explain(request: Request, state: ServingState = Depends(get_state), _agent: Any = Depends(ready_agent)) -> Any:
        async def one(records: list[Any]) -> list[tuple[str | None, Any]]:
            if len(records) != 1:  # attributions cost many model calls: one record per request
                raise ApiError(422, f"/v1/explain takes one record, got {len(records)}", "records")
            served = state.served  # read once: the whole explanation comes from one version
            loop = asyncio.get_running_loop()  # the model thread, shared with the batchers
            return [(served.version, await loop.run_in_executor(state.executor, lambda: served.agent.explain(records[0]).to_dict()))]  # type: ignore[union-attr]

        version, results = await _run(request, state, one)
        return {**results[0], "model_version": version}

    @router.get(
        "/v1/schema", response_model=SchemaResponse, responses={401: ERRORS[401]}, tags=["agent"], summary="Inputs, targets and limits", dependencies=keyed
    )
    async def schema(state: ServingState = Depends(get_state)) -> Any:
        return _schema(state)

    @router.get("/healthz", response_model=Health, tags=["ops"], summary="The process is up")
    async def healthz() -> Any:
        return {"status": "ok"}

    @router.get(
        "/readyz", response_model=Health, responses={503: ERRORS[503]}, tags=["ops"], summary="The model is loaded", dependencies=[Depends(ready_agent)]
    )
    async def readyz() -> Any:
        return {"status": "ready"}

    @router.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response, dependencies=keyed)
    async def prometheus(state: ServingState = Depends(get_state)) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/openapi.json", include_in_schema=False, dependencies=keyed)
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs", include_in_schema=False, dependencies=keyed)
    async def docs(request: Request, state: ServingState = Depends(get_state)) -> HTMLResponse:
        if not state.keys:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="mmagent - docs")
        # With keys, the page's own fetch of /openapi.json would carry no key: embed the spec.
        return get_swagger_ui_html(openapi_url="", title="mmagent - docs", swagger_ui_parameters={"spec": request.app.openapi()})

    return router


async def _run(request: Request, state: ServingState, submit: Callable[[list[Any]], Awaitable[list[tuple[str | None, Any]]]]) -> tuple[str | None, list[Any]]:
    """The version that answered and its results, one per record. ``submit`` answers the decoded
    records with (version, result) pairs: a request never spans batches, and a batch is answered
    by one version (see serving/swap.py)."""
    settings, columns = state.settings, state.columns
    raw, multipart = await raw_records(request, settings, columns)
    has_media = multipart or any(
        isinstance(r, dict) and any(c in columns and columns[c].modality in ("image", "audio") and v is not None for c, v in r.items()) for r in raw
    )
    # Header checks (base64, sizes) may take a while on a big body: off the event loop.
    checked, cost = await run_in_threadpool(check_records, raw, columns, settings) if has_media else check_records(raw, columns, settings)
    with state.budget.hold(cost):  # admission before decoding; held until the answer
        records = await run_in_threadpool(decode_media, checked) if cost.pixels or cost.samples else checked
        try:
            answered = await submit(records)
        except QueueFull as e:
            raise ApiError(503, str(e), "queue") from None
        except ShuttingDown as e:
            raise ApiError(503, str(e), "server") from None
        except Exception as e:
            raise model_error(e) from e
    version, results = (answered[0][0] if answered else state.version), [r for _, r in answered]
    for i, result in enumerate(results):
        if not _finite(result):  # JSON has no NaN: say which record, instead of failing the reply
            numeric = [c for c, inp in columns.items() if inp.modality == "numeric" and checked[i].get(c) is not None]
            raise ApiError(
                422,
                f"record {i}: the model's answer is not a finite number (are its numeric values far outside what it was trained on?)",
                ", ".join(numeric) or None,
                i,
            )
    return version, results


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def blame_rows(error: Exception) -> set[int] | None:
    """The records of a batch that a model-call error names (the agent's row checks)."""
    from mmagent.data.validation import DataError

    if isinstance(error, DataError):
        rows = {p.row for p in error.problems if p.row >= 0}
        return rows or None
    return None


def _schema(state: ServingState) -> dict[str, Any]:
    settings, served = state.settings, state.served
    loaded = served.agent if served is not None else None
    # targets and labels may change with a live swap (inputs may not): report the version in service
    targets = loaded.model.spec.targets if loaded is not None and hasattr(loaded, "model") else state.spec.targets
    encoding = {
        "text": "string",
        "numeric": "number",
        "categorical": "string or number",
        "image": "base64 string (JSON) or file upload (multipart)",
        "audio": "base64 string (JSON) or file upload (multipart)",
    }
    return {
        "inputs": [
            {"name": inp.key, "columns": inp.columns, "modality": inp.modality, "required": inp.required, "encoding": encoding[inp.modality]}
            for inp in state.spec.inputs
        ],
        "targets": [{"name": t.column, "type": t.type, "labels": list(t.labels or [])} for t in targets],
        "model_version": served.version if served is not None else None,
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
        "runtime": runtime_summary(settings, loaded),
    }


def model_error(e: Exception) -> Exception:
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
