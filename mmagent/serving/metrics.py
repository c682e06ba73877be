"""Prometheus metrics of one app (in a registry of its own) and the middleware that counts and
times every HTTP request by route template and status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Metrics:
    """Prometheus metrics in a registry of this app's own (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mmagent_requests_total", "HTTP requests by endpoint, method and status", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mmagent_request_latency_seconds",
            "HTTP request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.batch_size = Histogram(
            "mmagent_batch_size", "records per model call", ["kind"], registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
        )
        self.batch_requests = Histogram(
            "mmagent_batch_requests", "requests per model call", ["kind"], registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128)
        )
        self.batch_latency = Histogram(
            "mmagent_batch_latency_seconds",
            "seconds per model call",
            ["kind"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.records = Counter("mmagent_records_total", "records answered", ["kind"], registry=self.registry)
        self.ready = Gauge("mmagent_model_ready", "1 once the model is loaded", registry=self.registry)
        self.model_version = Info("mmagent_model", "the model version in service", registry=self.registry)
        self.swaps = Counter("mmagent_model_swaps_total", "live swaps to a new model version", registry=self.registry)
        self.outcomes = Counter(
            "mmagent_outcomes_total",
            "records by outcome: unknown (unlike the training data), escalated (handed over, unknown or not), answered",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.queue = Gauge("mmagent_queue_records", "records waiting for the model", ["kind"], registry=self.registry)

    def count_outcomes(self, kind: str, results: list[Any]) -> None:
        """Count what ``/v1/predict`` (dicts per target) or ``/v1/act`` (decisions) answered."""
        for r in results:
            if kind == "act":
                get = r.get if isinstance(r, dict) else lambda key, default=None, r=r: getattr(r, key, default)
                unknown, escalated = bool(get("unknown", False)), bool(get("escalated", False))
            else:
                unknown, escalated = any(isinstance(t, dict) and t.get("unknown") for t in r.values()), False
            if unknown:
                self.outcomes.labels(kind, "unknown").inc()
            self.outcomes.labels(kind, "escalated" if escalated else "answered" if kind == "act" else "predicted").inc()

    def batch_observer(self, kind: str) -> Callable[[int, int, float], None]:
        """The micro-batcher's ``on_batch`` callback for ``kind`` (predict / act)."""

        def observe(records: int, requests: int, seconds: float) -> None:
            self.batch_size.labels(kind).observe(records)
            self.batch_requests.labels(kind).observe(requests)
            self.batch_latency.labels(kind).observe(seconds)
            self.records.labels(kind).inc(records)

        return observe


class Instrument:
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
