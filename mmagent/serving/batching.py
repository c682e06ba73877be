"""Dynamic micro-batching: concurrent requests share one model call.

Each request puts its records on an asyncio queue and awaits a future. One collector task takes
the first waiting request, then keeps adding requests until the batch holds ``max_batch_size``
records or ``max_wait_ms`` has passed since the first one arrived, and runs the model on the whole
batch in a worker thread (so the event loop keeps accepting connections meanwhile). While the model
runs, new requests queue up and form the next batch: under load, batches fill without waiting.

A request larger than ``max_batch_size`` runs alone (it is never split). If a batched call fails,
each request of the batch is retried on its own, so one bad request cannot fail the others.
``max_batch_size = 1`` turns batching off (one request per model call).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


log = logging.getLogger("mmagent.serving")


class QueueFull(RuntimeError):
    """More records are waiting than ``max_queue``: the server is overloaded (503)."""


@dataclass(eq=False)  # compared by identity: records may hold arrays
class _Job:
    records: list[Any]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Group concurrent ``submit`` calls into calls of ``fn(records) -> results`` (one per record)."""

    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 2048,
        executor: concurrent.futures.Executor | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
        name: str = "model",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch  # (records, requests, seconds) after each model call
        self.name = name
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mmagent-{name}")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._pending_records = 0
        self._carry: _Job | None = None  # a request that did not fit the previous batch

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mmagent-batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:  # fail whatever is still waiting
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(RuntimeError("server shutting down"))
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> int:
        return self._pending_records

    # -- use --------------------------------------------------------------------------------------
    async def submit(self, records: list[Any]) -> list[Any]:
        """Results for ``records`` (in order), computed in some batch."""
        if self._task is None or self._queue is None:
            self.start()
        assert self._queue is not None
        if not records:
            return []
        if self._pending_records + len(records) > self.max_queue:
            raise QueueFull(f"{self._pending_records} records are waiting for the model (limit {self.max_queue}); retry later")
        job = _Job(list(records), asyncio.get_running_loop().create_future())
        self._pending_records += len(records)
        await self._queue.put(job)
        return await job.future

    async def _next_batch(self) -> list[_Job]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.records)
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if size + len(job.records) > self.max_batch_size:
                self._carry = job  # starts the next batch
                break
            batch.append(job)
            size += len(job.records)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - never let the collector die: fail this batch only
                log.exception("micro-batcher %s: unexpected error", self.name)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)

    async def _process(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        live = [j for j in batch if not j.future.done()]  # a client that went away: skip it
        records = [r for j in live for r in j.records]
        try:
            if not live:
                return
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self._call, records)
            except Exception:  # noqa: BLE001 - isolate the failing request(s)
                await self._one_by_one(live, loop)
            else:
                self._deliver(live, results, len(records), time.perf_counter() - start)
        finally:
            self._pending_records -= sum(len(j.records) for j in batch)

    def _call(self, records: list[Any]) -> list[Any]:
        results = list(self.fn(records))
        if len(results) != len(records):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(records)} records")
        return results

    def _deliver(self, jobs: list[_Job], results: list[Any], n: int, seconds: float) -> None:
        if self.on_batch is not None:
            self.on_batch(n, len(jobs), seconds)
        i = 0
        for job in jobs:
            part = results[i : i + len(job.records)]
            i += len(job.records)
            if not job.future.done():
                job.future.set_result(part)

    async def _one_by_one(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        for job in jobs:
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self._call, job.records)
            except Exception as e:  # noqa: BLE001 - handed to the request that caused it
                if not job.future.done():
                    job.future.set_exception(e)
            else:
                self._deliver([job], results, len(job.records), time.perf_counter() - start)
