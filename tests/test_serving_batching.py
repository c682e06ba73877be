"""The micro-batcher on its own: the wait counts from each request's arrival, shutdown fails every
request still waiting, and a bad record does not cost a model call per request."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest

from mmagent.data.validation import DataError, Problem
from mmagent.serving.batching import MicroBatcher, ShuttingDown
from mmagent.serving.routes import blame_rows


def test_wait_counts_from_arrival() -> None:
    """B arrives while A's slow call runs and has waited longer than max_wait when A is done:
    its call must start at once, not after another max_wait."""
    calls: list[tuple[float, float]] = []

    def slow(records: list) -> list:
        start = time.perf_counter()
        time.sleep(0.6)
        calls.append((start, time.perf_counter()))
        return records

    async def go() -> None:
        b = MicroBatcher(slow, max_batch_size=8, max_wait_ms=400)
        b.start()
        first = asyncio.ensure_future(b.submit(["a"]))
        await asyncio.sleep(0.45)  # A's batch closed at 0.4 s and its call runs until ~1.0 s
        second = asyncio.ensure_future(b.submit(["b"]))
        assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [["a"], ["b"]]
        await b.stop()

    asyncio.run(go())
    assert len(calls) == 2
    gap = calls[1][0] - calls[0][1]
    assert gap < 0.2, f"B waited {gap:.2f} s more after A's call (max_wait counted from when the batcher woke)"


def test_stop_fails_every_waiting_request() -> None:
    release = threading.Event()

    def blocked(records: list) -> list:
        release.wait(10)
        return records

    async def go() -> list:
        b = MicroBatcher(blocked, max_batch_size=2, max_wait_ms=50)
        b.start()
        jobs = [asyncio.ensure_future(b.submit([i])) for i in range(2)]  # one running batch
        await asyncio.sleep(0.2)
        jobs += [asyncio.ensure_future(b.submit([i, i])) for i in range(3)]  # queued behind it
        await asyncio.sleep(0.1)
        await b.stop()
        try:
            return await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 3)
        finally:
            release.set()

    results = asyncio.run(go())
    assert len(results) == 5
    assert all(isinstance(r, ShuttingDown) for r in results), results


def _calls_for_one_bad(n: int, error: type[Exception], blame) -> tuple[int, list]:
    calls: list[int] = []

    def model(records: list) -> list:
        calls.append(len(records))
        bad = [i for i, r in enumerate(records) if r == "bad"]
        if bad:
            if error is DataError:
                raise DataError([Problem("<records>", i, "text", "bad value") for i in bad])
            raise error("bad input somewhere")
        return [r.upper() for r in records]

    async def go() -> list:
        b = MicroBatcher(model, max_batch_size=64, max_wait_ms=200, blame=blame)
        b.start()
        out = await asyncio.gather(*(b.submit(["bad" if i == 5 else f"r{i}"]) for i in range(n)), return_exceptions=True)
        await b.stop()
        return out

    return len(calls), asyncio.run(go())


@pytest.mark.parametrize("blame,error,most", [(blame_rows, DataError, 3), (None, RuntimeError, 1 + 2 * math.ceil(math.log2(16)))])
def test_one_bad_record_does_not_cost_a_call_per_request(blame, error, most: int) -> None:
    n = 16
    calls, out = _calls_for_one_bad(n, error, blame)
    assert calls <= most, f"{calls} model calls for {n} requests with one bad record"
    assert isinstance(out[5], error)
    assert [o for i, o in enumerate(out) if i != 5] == [[f"R{i}"] for i in range(n) if i != 5]
    if error is DataError:  # the bad request's error names its own record, not the batch's row
        assert [p.row for p in out[5].problems] == [0]
