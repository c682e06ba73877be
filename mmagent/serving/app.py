"""The HTTP API of an agent (FastAPI): the app factory.

Endpoints are in :mod:`mmagent.serving.routes`; OpenAPI UI at /docs (/openapi.json), which need
the API key like every /v1 endpoint when keys are set.

Request bodies (``POST /v1/predict`` and ``/v1/act``):

- ``application/json``: ``{"record": {column: value}}`` or ``{"records": [{...}, ...]}``. Text
  columns take strings, numeric columns numbers (or numeric strings), image and audio columns the
  file's bytes as base64 (a ``data:...;base64,`` prefix is accepted). URLs and file paths are
  refused: the server never fetches or opens anything a request names.
- ``multipart/form-data``: one record; form fields for text / numeric columns, file uploads for
  image / audio columns.

Errors are JSON ``{"error": message, "field": column-or-part, "record": index}`` with a 4xx status
(400 malformed body, 401 missing/wrong API key, 408 body not sent in time, 413 body or decoded
media too large, 415 content type, 422 a bad value, 503 loading or overloaded); a client error
never becomes a 500, never costs the client its kept-alive connection and never stops the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmagent.serving.batching import MicroBatcher
from mmagent.serving.metrics import Instrument, Metrics
from mmagent.serving.middleware import Guard
from mmagent.serving.routes import ServingState, blame_rows, build_router
from mmagent.serving.schemas import ApiError
from mmagent.serving.security import API_KEY_HEADER, install_redaction
from mmagent.serving.settings import ENV_RUN_DIR, ServeSettings
from mmagent.serving.threads import apply_plan, plan_threads, register_metrics
from mmagent.specs import ModelSpec

log = logging.getLogger("mmagent.serving")


def create_app(source: str | Path | Any, settings: ServeSettings | None = None) -> FastAPI:
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
    metrics = Metrics()
    state = ServingState(spec, settings, keys, metrics)
    threads = plan_threads(settings)
    register_metrics(metrics.registry, threads)
    install_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One model thread: torch already uses every core inside a call, two calls would fight.
        state.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmagent-model")
        apply_plan(threads)  # model threads vs the event loop: serving/threads.py
        loader = None
        if agent is not None:
            _on_loaded(state, agent)
        else:
            loader = asyncio.get_running_loop().create_task(_load_in_background(state, run_dir, threads.model_threads))  # type: ignore[arg-type]
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
            for b in state.batchers.values():
                await b.stop()
            state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="mmagent",
        version="1",
        summary="A fine-tuned multimodal agent: predict, and act on the prediction.",
        description=(
            "Send records as JSON (images and audio base64-encoded) or as multipart/form-data (file uploads). "
            + (
                f"Every /v1 endpoint and /metrics needs an API key: header `{API_KEY_HEADER}: KEY` or `Authorization: Bearer KEY`."
                if keys
                else "No API key is configured (loopback only)."
            )
        ),
        lifespan=lifespan,
        docs_url=None,  # /docs and /openapi.json are routes of their own, behind the API key
        redoc_url=None,
        openapi_url=None,
    )
    app.state.mmagent = state
    app.state.settings = settings
    app.state.metrics = metrics
    # Added last = outermost: Instrument sees the status Guard answers with (408, 500).
    app.add_middleware(Guard, body_timeout_s=settings.body_timeout_s)
    app.add_middleware(Instrument, metrics=metrics)
    _install_error_handlers(app)
    app.include_router(build_router(spec, settings))
    return app


def _on_loaded(state: ServingState, loaded: Any) -> None:
    settings, metrics = state.settings, state.metrics
    state.agent = loaded
    metrics.ready.set(1)
    ex = state.executor

    def act(recs: list[Any]) -> list[Any]:
        return [d.model_dump(mode="json") for d in loaded.act_many(recs, explain=settings.explain)]

    for kind, fn in (("predict", loaded.predict), ("act", act)):
        batcher = MicroBatcher(fn, settings.max_batch_size, settings.max_wait_ms, settings.max_queue, ex, metrics.batch_observer(kind), kind, blame_rows)
        batcher.start()
        state.batchers[kind] = batcher
        metrics.queue.labels(kind).set_function(lambda b=batcher: b.pending)


async def _load_in_background(state: ServingState, run_dir: Path, threads: int) -> None:
    from mmagent.agent import Agent

    settings = state.settings
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        loaded = await loop.run_in_executor(
            state.executor, lambda: Agent.load(run_dir, device=settings.torch_device(), backend=settings.backend, threads=threads)
        )
    except Exception as e:  # noqa: BLE001 - /readyz reports it; the process stays up for /healthz
        state.error = f"{type(e).__name__}: {e}"
        log.error("could not load %s: %s", run_dir, state.error)
        return
    _on_loaded(state, loaded)
    log.info(
        "model loaded from %s in %.1f s (backend %s, %d model thread(s)); batching up to %d records / %g ms",
        run_dir,
        time.perf_counter() - started,
        settings.backend,
        threads,
        settings.max_batch_size,
        settings.max_wait_ms,
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        log.info("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.field, exc.error)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 413 and exc.field == "body":  # the rest of the body was not read: do not reuse the connection
            headers = {"Connection": "close"}
        if exc.status == 503:
            headers = {"Retry-After": "1"}
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


def app_from_env() -> FastAPI:
    """uvicorn factory (``mmagent.serving.app:app_from_env``) for ``mmagent serve`` and its worker
    processes: the run folder from ``MMAGENT_SERVE_RUN_DIR``, settings from the environment."""
    import os

    run_dir = os.environ.get(ENV_RUN_DIR)
    if not run_dir:
        raise RuntimeError(f"set {ENV_RUN_DIR} to the run folder to serve")
    return create_app(run_dir, ServeSettings.from_env())
