"""Dynamic micro-batching: concurrent requests share one model call.

Each request puts its records on an asyncio queue, stamped with its arrival time, and awaits a
future. One collector task takes the oldest waiting request, then keeps adding requests until the
batch holds ``max_batch_size`` records or the *oldest* request's deadline (its arrival +
``max_wait_ms``) is reached, and runs the model on the whole batch in a worker thread (so the
event loop keeps accepting connections meanwhile). Every request in a batch arrived no earlier
than the oldest one, so none waits longer than ``max_wait_ms`` from its own arrival: one that
joins late has a later deadline than the one the batch flushes at, and one that arrived while the
model was busy with the previous batch is not made to wait again (its deadline may already be
past: the batch then flushes with whatever is queued). Times come from ``clock`` (injectable, so
tests can control them).
While the model runs, new requests queue up and form the next batch: under load, batches fill
without waiting. A lone client is not made to wait: when the previous batch held a single request
and nothing else is queued, the request runs at once (the wait could only add latency: one
client's next request cannot arrive before this one is answered). The first request after
several arrived together waits as usual.

A request larger than ``max_batch_size`` runs alone (it is never split). Records are meant to be
checked before they are submitted; if a batched call fails anyway, the failing requests are found
without a call per request: ``blame`` (when given) names the bad records from the error, and the
others run again in one call; otherwise the batch is halved until the failure is isolated (about
``2 log2(n)`` calls for one bad request among ``n``). ``max_batch_size = 1`` turns batching off.
On :meth:`stop`, every request not yet answered (queued, carried over or in a running batch) is
failed with :class:`ShuttingDown`, so none is left waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("mmagent.serving")


class QueueFull(RuntimeError):
    """More records are waiting than ``max_queue``: the server is overloaded (503)."""


class ShuttingDown(RuntimeError):
    """The batcher stopped before this request was answered (503)."""


@dataclass(eq=False)  # compared by identity: records may hold arrays
class _Job:
    records: list[Any]
    future: asyncio.Future
    queued_at: float  # arrival, on the batcher's clock


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
        blame: Callable[[Exception], set[int] | None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch  # (records, requests, seconds) after each model call
        self.name = name
        self.blame = blame  # error of a batched call -> indices of the bad records (None: unknown)
        self.clock = clock  # seconds; arrivals and deadlines are read from it
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mmagent-{name}")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._pending_records = 0
        self._carry: _Job | None = None  # a request that did not fit the previous batch
        self._taken: list[_Job] = []  # taken off the queue, not answered yet
        self._last_requests = 0  # requests in the previous batch (0: none yet)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mmagent-batcher-{self.name}")

    async def stop(self) -> None:
        """Stop collecting and fail every request not answered yet."""
        taken = self._taken  # the list itself: cancelling the collector rebinds self._taken
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        waiting = list(taken) + ([self._carry] if self._carry is not None else [])
        if self._queue is not None:
            while not self._queue.empty():
                waiting.append(self._queue.get_nowait())
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the server is shutting down; retry"))
        self._taken, self._carry, self._pending_records = [], None, 0
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
        job = _Job(list(records), asyncio.get_running_loop().create_future(), self.clock())
        self._pending_records += len(records)
        await self._queue.put(job)
        return await job.future

    async def _next_batch(self) -> list[_Job]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.records)
        self._taken = batch  # from here on, stop() fails them instead of dropping them
        # The oldest request's deadline: every later one arrived after it, so has a later deadline.
        deadline = first.queued_at + self.max_wait
        if self._last_requests == 1 and self._queue.empty():
            deadline = -math.inf  # a lone client (see the module's docstring): no wait
        while size < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - self.clock()
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
        self._last_requests = len(batch)
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
        live = [j for j in batch if not j.future.done()]  # a client that went away: skip it
        try:
            if live:
                await self._settle(live)
        finally:
            self._pending_records -= sum(len(j.records) for j in batch)
            self._taken = []

    async def _settle(self, jobs: list[_Job]) -> None:
        """Answer ``jobs`` in one call; when it fails, isolate the failing jobs without a call
        per job (see the module's docstring)."""
        records = [r for j in jobs for r in j.records]
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self._call, records)
        except Exception as e:  # noqa: BLE001 - handed to the request(s) that caused it
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(e)
                return
            bad = self._bad_jobs(jobs, e)
            if bad:
                good = [j for j in jobs if j not in bad]
                groups = ([good] if good else []) + [[j] for j in bad]  # each bad one alone: its error names its own rows
            else:
                groups = [jobs[: len(jobs) // 2], jobs[len(jobs) // 2 :]]
            for group in groups:
                await self._settle(group)
        else:
            self._deliver(jobs, results, len(records), time.perf_counter() - start)

    def _bad_jobs(self, jobs: list[_Job], error: Exception) -> list[_Job]:
        rows = self.blame(error) if self.blame is not None else None
        if not rows:
            return []
        bad, first = [], 0
        for job in jobs:
            if any(first <= r < first + len(job.records) for r in rows):
                bad.append(job)
            first += len(job.records)
        return bad

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
