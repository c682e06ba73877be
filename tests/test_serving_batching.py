"""The micro-batcher on its own: the wait counts from each request's arrival, shutdown fails every
request still waiting, and a bad record does not cost a model call per request."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from mmagent.data.validation import DataError, Problem
from mmagent.serving.batching import MicroBatcher, ShuttingDown
from mmagent.serving.routes import blame_rows


class FakeClock:
    """The batcher's clock, moved by hand: what the batcher decides depends on these times only,
    so a slow or busy machine cannot change the outcome (a wrong wait shows up as a real wait of
    about a minute, caught by the 20 s timeout below)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


MAX_WAIT_S = 60.0  # in fake seconds; a real wait this long means the batcher got the deadline wrong


def test_a_late_joiner_waits_at_most_its_own_max_wait() -> None:
    """A at t=0, B joins the forming batch at t=45, C at t=60: the batch flushes at A's deadline
    (t=60) with all three, so B has waited 15 s, not a new max_wait from its own arrival (a
    deadline that slides with each arrival would hold the batch until t=120)."""
    clock = FakeClock()
    calls: list[tuple[float, list]] = []

    def model(records: list) -> list:
        calls.append((clock(), list(records)))
        clock.t += 5.0  # processing time
        return records

    async def go() -> dict[str, float]:
        b = MicroBatcher(model, max_batch_size=8, max_wait_ms=MAX_WAIT_S * 1000, clock=clock)
        b.start()
        arrived, answered, jobs = {}, {}, []

        async def request(name: str) -> None:
            arrived[name] = clock()
            assert await b.submit([name]) == [name]
            answered[name] = clock()

        for name, t in (("a", 0.0), ("b", 45.0), ("c", 60.0)):
            clock.t = t
            jobs.append(asyncio.ensure_future(request(name)))
            await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*jobs), 20)
        await b.stop()
        return {n: answered[n] - arrived[n] for n in arrived}

    waited = asyncio.run(go())
    assert calls == [(60.0, ["a", "b", "c"])]  # one batch, flushed at the oldest request's deadline
    for name, seconds in waited.items():
        assert seconds <= MAX_WAIT_S + 5.0, f"{name} was answered {seconds} s after it arrived"
    assert waited["b"] == 20.0  # 15 s of waiting + 5 s of processing


def test_a_request_that_arrived_while_the_model_ran_is_not_made_to_wait_again() -> None:
    """A full batch (A1, A2) runs at once; B arrives at t=10 while it runs, and when the model is
    free at t=75, B's deadline (t=70) has passed: B's call starts at once (a wait counted from
    when the collector woke would hold it until t=135)."""
    clock = FakeClock()
    release = threading.Event()
    calls: list[tuple[float, list]] = []

    def model(records: list) -> list:
        calls.append((clock(), list(records)))
        if len(calls) == 1:
            release.wait(20)
        return records

    async def go() -> None:
        b = MicroBatcher(model, max_batch_size=2, max_wait_ms=MAX_WAIT_S * 1000, clock=clock)
        b.start()
        first = asyncio.ensure_future(b.submit(["a1", "a2"]))  # full: flushed without waiting
        while not calls:
            await asyncio.sleep(0.01)
        clock.t = 10.0
        second = asyncio.ensure_future(b.submit(["b"]))
        await asyncio.sleep(0.05)
        clock.t = 75.0
        release.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 20) == [["a1", "a2"], ["b"]]
        await b.stop()

    asyncio.run(go())
    assert calls == [(0.0, ["a1", "a2"]), (75.0, ["b"])]


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


def test_a_lone_client_is_not_made_to_wait() -> None:
    """A (a full batch on its own) runs at once; B, the same client's next request after that
    batch of one request, runs at once too instead of waiting max_wait for company; C and D
    arrive together (a batch of two requests); E, alone after that batch, waits again (more
    clients may be about) until F joins it."""
    clock = FakeClock()
    calls: list[tuple[float, list]] = []

    def model(records: list) -> list:
        calls.append((clock(), list(records)))
        return records

    async def go() -> None:
        b = MicroBatcher(model, max_batch_size=2, max_wait_ms=MAX_WAIT_S * 1000, clock=clock)
        b.start()
        assert await asyncio.wait_for(b.submit(["a1", "a2"]), 20) == ["a1", "a2"]
        clock.t = 100.0
        assert await asyncio.wait_for(b.submit(["b"]), 20) == ["b"]  # the clock never moves: no wait
        clock.t = 200.0
        await asyncio.wait_for(asyncio.gather(b.submit(["c"]), b.submit(["d"])), 20)
        clock.t = 300.0
        e = asyncio.ensure_future(b.submit(["e"]))
        await asyncio.sleep(0.2)
        assert not e.done() and len(calls) == 3, "E should wait for company"
        clock.t = 360.0
        await asyncio.wait_for(asyncio.gather(e, b.submit(["f"])), 20)
        await b.stop()

    asyncio.run(go())
    assert calls == [(0.0, ["a1", "a2"]), (100.0, ["b"]), (200.0, ["c", "d"]), (360.0, ["e", "f"])]
