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
import dataclasses
import logging
import time
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmagent.serving.batching import MicroBatcher
from mmagent.serving.metrics import Instrument, Metrics
from mmagent.serving.middleware import Guard
from mmagent.serving.page import build_page_router
from mmagent.serving.routes import ServingState, blame_rows, build_router
from mmagent.serving.schemas import ApiError
from mmagent.serving.security import API_KEY_HEADER, install_redaction
from mmagent.serving.settings import ENV_RUN_DIR, ServeSettings
from mmagent.serving.swap import AliasSource, RunSource, Served, Swapper
from mmagent.serving.threads import apply_plan, plan_threads, register_metrics

log = logging.getLogger("mmagent.serving")


def create_app(source: str | Path | Any, settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``source``: a run folder or a :class:`~mmagent.serving.swap.Source`
    (e.g. a registry alias), loaded in the background at startup (/readyz says when) and watched
    for new versions every ``settings.watch_s`` seconds (live swap); or an
    :class:`~mmagent.agent.Agent`, served as is."""
    from mmagent.agent import Agent

    settings = settings or ServeSettings()
    keys = settings.load_keys()
    if not settings.loopback and not keys:
        raise ValueError(f"refusing to serve on {settings.host} (not a loopback address) without an API key: set MMAGENT_API_KEYS or an API key file")
    if isinstance(source, Agent):
        agent, watched, spec = source, None, source.model.spec
    else:
        agent, watched = None, source if hasattr(source, "poll") else RunSource(source)
        spec = watched.spec()
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
        loader, swapper = None, None
        if agent is not None:
            _on_loaded(state, Served(agent, getattr(agent, "version", None) or "in-process"))
        else:
            load = partial(Agent.load, device=settings.torch_device(), backend=settings.backend, threads=threads.model_threads)
            swapper = Swapper(watched, load, spec, lambda s: _install(state, s), settings.watch_s)
            loader = asyncio.get_running_loop().create_task(_load_in_background(state, swapper, threads.model_threads))
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
            if swapper is not None:
                await asyncio.get_running_loop().run_in_executor(None, swapper.stop)
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
    app.include_router(build_page_router())  # GET /: the page to try the agent (no model data in it)
    return app


def _install(state: ServingState, served: Served) -> None:
    """Put ``served`` in service: one assignment, read once per batch by the batch functions.
    Each version gets its own drift monitor (its run's profile), built here, off the request path."""
    from mmagent.lifecycle.monitor import drift_monitor

    previous = state.version
    served = dataclasses.replace(served, monitor=drift_monitor(served.run_dir, served.agent, state.settings.drift_window))
    state.served = served
    state.metrics.model_version.info({"version": str(served.version)})
    if previous is not None:
        state.metrics.swaps.inc()


def _on_loaded(state: ServingState, served: Served) -> None:
    settings, metrics = state.settings, state.metrics
    _install(state, served)
    # Drift watch: every answered batch leaves cheap summaries in a bounded window
    # (lifecycle.monitor); /metrics reads the monitor of the version in service.
    metrics.registry.register(_ServedDrift(state))
    metrics.ready.set(1)
    ex = state.executor

    # Each batch reads the agent in service once, so one version answers the whole batch; the
    # version travels with every result, so the reply says which one answered.
    def predict(recs: list[Any]) -> list[Any]:
        now = state.served
        fn = now.monitor.wrap(now.agent.predict) if now.monitor is not None else now.agent.predict
        return [(now.version, r) for r in fn(recs)]

    def act(recs: list[Any]) -> list[Any]:
        now = state.served

        def decide(batch: list[Any]) -> list[Any]:
            return [d.model_dump(mode="json") for d in now.agent.act_many(batch, explain=settings.explain)]

        fn = now.monitor.wrap(decide) if now.monitor is not None else decide
        return [(now.version, d) for d in fn(recs)]

    for kind, fn in (("predict", predict), ("act", act)):
        batcher = MicroBatcher(fn, settings.max_batch_size, settings.max_wait_ms, settings.max_queue, ex, metrics.batch_observer(kind), kind, blame_rows)
        batcher.start()
        state.batchers[kind] = batcher
        metrics.queue.labels(kind).set_function(lambda b=batcher: b.pending)


async def _load_in_background(state: ServingState, swapper: Swapper, model_threads: int) -> None:
    settings = state.settings
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        served = await loop.run_in_executor(state.executor, swapper.load_first)
    except Exception as e:  # noqa: BLE001 - /readyz reports it; the process stays up for /healthz
        state.error = f"{type(e).__name__}: {e}"
        log.error("could not load the model: %s", state.error)
        return
    _on_loaded(state, served)
    swapper.start()
    log.info(
        "model version %s loaded in %.1f s (backend %s, %d model thread(s)); batching up to %d records / %g ms%s",
        served.version,
        time.perf_counter() - started,
        settings.backend,
        model_threads,
        settings.max_batch_size,
        settings.max_wait_ms,
        f"; checking for new versions every {settings.watch_s:g} s" if settings.watch_s > 0 else "",
    )


class _ServedDrift:
    """A Prometheus collector: the drift gauges of the version in service (none without a profile)."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    def describe(self) -> list[Any]:
        return []  # collected on every scrape: the gauges change with the version in service

    def collect(self) -> Any:
        served = self.state.served
        if served is not None and served.monitor is not None:
            yield from served.monitor.collect()


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
    processes: the run folder from ``MMAGENT_SERVE_RUN_DIR`` (or ``settings.registry`` and
    ``settings.alias``), settings from the environment."""
    import os

    settings = ServeSettings.from_env()
    if settings.registry:
        return create_app(AliasSource(settings.registry, settings.alias), settings)
    run_dir = os.environ.get(ENV_RUN_DIR)
    if not run_dir:
        raise RuntimeError(f"set {ENV_RUN_DIR} to the run folder to serve")
    return create_app(run_dir, settings)
