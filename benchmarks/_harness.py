"""Lockstep timing for speed benchmarks on a shared, noisy machine.

A speed ratio is only trustworthy when the variants see the same machine load. Each variant runs
in its **own worker process** (so its peak RSS is its own) and the workers take **turns, one step
at a time**: the driver (:func:`run_lockstep`) hands a token to each worker in a fixed round-robin
order over a pair of pipes per worker, and a worker computes only while it holds the token. So
the variants never run at the same time and each step of one is next in time to a step of the
others. Once a worker has no more steps to time (:meth:`Baton.finish`) it keeps the token until
it exits, so its remaining work (validation, test evaluation, saving) never overlaps another
worker's timed steps either. Setup (imports, model loading) runs in parallel before the first
turn.

Per step a worker records ``fetch_s`` (getting the batch: dataset + collation) and ``body_s``
(forward, backward, optimizer, logging...). mmagent's own loops are timed without touching their
code: ``timed_tqdm()`` swaps ``tqdm.auto.tqdm`` (which the trainer and the feature cache import at
call time) for a subclass whose iteration does the timing and the token passing; a plain loop uses
``StepClock.iterate`` the same way; a loop run by another library records its steps with
:meth:`StepClock.record` from that library's callbacks.

Nothing here is imported by mmagent itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, peak_rss_mb

BATON_ENV = "MMAGENT_BENCH_BATON"  # "READ_FD,WRITE_FD" inherited from run_lockstep
READY, TOKEN = b"r", b"t"


class Baton:
    """A worker's side of the lockstep token; all no-ops when the process was not started by
    :func:`run_lockstep` (a worker run by hand just runs freely)."""

    def __init__(self) -> None:
        raw = os.environ.get(BATON_ENV)
        self.rfd, self.wfd = (int(x) for x in raw.split(",")) if raw else (-1, -1)
        self.held = False
        self.free = not raw  # True: no driver, or this worker keeps the token until it exits
        self.started = False
        self.waited_s = 0.0

    def take(self) -> None:
        """Wait for this worker's turn (the first call also tells the driver its setup is done)."""
        if self.free or self.held:
            return
        if not self.started:
            self.started = True
            self._send(READY)
        t = time.perf_counter()
        data = os.read(self.rfd, 1)
        self.waited_s += time.perf_counter() - t
        if not data:  # the driver is gone: run freely
            self.free = True
        self.held = True

    def give(self) -> None:
        if self.free or not self.held:
            return
        self.held = False
        self._send(TOKEN)

    def turn(self) -> None:
        """End of a step: let the other workers do one step each, then continue."""
        self.give()
        self.take()

    def finish(self) -> None:
        """No more steps to time: keep the token until this process exits (the driver then hands it
        on), so the rest of this worker's work runs alone."""
        if not self.free:
            self.take()
            self.free = True

    def _send(self, byte: bytes) -> None:
        try:
            os.write(self.wfd, byte)
        except BrokenPipeError:  # the driver is gone
            self.free = True


def sync_device() -> None:
    """Wait for queued GPU work, so a step's time includes it (nothing to do on CPU)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StepClock:
    """Per-step timings of one worker, grouped by phase (e.g. ``epoch 1/3``)."""

    def __init__(self) -> None:
        self.baton = Baton()
        self.steps: list[dict[str, Any]] = []
        self._mark: float | None = None

    def iterate(self, iterable: Iterable[Any], phase: str) -> Iterator[Any]:
        """Yield the items of ``iterable``; time getting each one and the loop body after it.
        The token is taken before the first item and passed on after every body."""
        it = iter(iterable)
        self.baton.take()
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            t1 = time.perf_counter()
            try:
                yield item
            finally:  # also runs when the loop breaks (GeneratorExit)
                sync_device()
                t2 = time.perf_counter()
                self.steps.append({"phase": phase, "fetch_s": t1 - t0, "body_s": t2 - t1})
                self.baton.turn()

    def start(self) -> None:
        """Wait for this worker's turn and start timing a step (for :meth:`record`)."""
        self.baton.take()
        self._mark = time.perf_counter()

    def record(self, phase: str, last: bool = False) -> None:
        """End a step that began at the previous :meth:`start` / :meth:`record` (batch fetching
        included, as ``body_s``: another library's loop does not tell them apart); pass the token
        on, or with ``last`` keep it (:meth:`Baton.finish`)."""
        if self._mark is None:
            self.start()
        sync_device()
        now = time.perf_counter()
        self.steps.append({"phase": phase, "fetch_s": 0.0, "body_s": now - (self._mark or now)})
        if last:
            self.baton.finish()
        else:
            self.baton.turn()
        self._mark = time.perf_counter()

    def summary(self, **extra: Any) -> dict[str, Any]:
        import torch

        return {
            "steps": self.steps,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "torch_threads": torch.get_num_threads(),
            "waited_s": round(self.baton.waited_s, 3),
            **extra,
        }


CLOCK = StepClock()


@contextlib.contextmanager
def timed_tqdm(clock: StepClock = CLOCK, phases: tuple[str, ...] = ("epoch ",), last_phase: str | None = None) -> Iterator[None]:
    """Replace ``tqdm.auto.tqdm`` so the bars whose ``desc`` starts with one of ``phases`` (the
    trainer's ``epoch i/n``, the feature cache's ``caching frozen encoders``) report each item to
    ``clock``; other bars (e.g. transformers' weight loading) are left alone. When the bar named
    ``last_phase`` closes, the worker finishes the lockstep."""
    import tqdm.auto

    original = tqdm.auto.tqdm

    class TimedTqdm(original):  # type: ignore[misc, valid-type]
        def __init__(self, iterable: Any = None, *args: Any, **kwargs: Any) -> None:
            self._bench_desc = str(kwargs.get("desc") or "")
            super().__init__(iterable, *args, **kwargs)
            self._bench_iterable = iterable

        def __iter__(self) -> Iterator[Any]:
            if self._bench_desc.startswith(phases):
                yield from clock.iterate(self._bench_iterable, self._bench_desc)
            else:
                yield from super().__iter__()

        def close(self) -> None:
            super().close()
            if last_phase is not None and self._bench_desc == last_phase:
                clock.baton.finish()

    tqdm.auto.tqdm = TimedTqdm
    try:
        yield
    finally:
        tqdm.auto.tqdm = original


def write_worker_result(path: str | Path, payload: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload))


def run_lockstep(commands: list[list[str]], timeout_s: float, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run worker commands (each gets ``--result FILE`` appended) in lockstep, in the given order
    (worker 0 takes the first step); return their result dicts (plus ``wall_s``: the whole
    lockstep run). A worker that fails raises RuntimeError with the tail of its output."""
    import tempfile

    n = len(commands)
    if n < 2:
        raise ValueError("a lockstep run needs at least two workers")
    tmp = Path(tempfile.mkdtemp(prefix="mmagent-bench-"))
    procs: list[subprocess.Popen] = []
    logs: list[Any] = []
    to_worker: list[int] = []  # the driver writes the token here
    from_worker: list[int] = []  # the worker writes READY / TOKEN here; EOF when it exits
    start = time.perf_counter()
    deadline = start + timeout_s

    def fail(i: int, why: str) -> RuntimeError:
        for q in procs:  # only the processes started here, by their Popen handle
            if q.poll() is None:
                q.kill()
                q.wait()
        logs[i].seek(0)
        return RuntimeError(f"worker {' '.join(commands[i][2:6])} {why}:\n{logs[i].read()[-4000:]}")

    def receive(i: int, what: str) -> bytes:
        """One byte from worker ``i`` (b"" when it exited); fails on a crash or the deadline."""
        while True:
            readable, _, _ = select.select([from_worker[i]], [], [], 1.0)
            if readable:
                return os.read(from_worker[i], 1)
            if procs[i].poll() is not None:  # exited; a child may still hold the pipe open
                if procs[i].returncode != 0:
                    raise fail(i, f"failed {what} (exit {procs[i].returncode})")
                return b""
            if time.perf_counter() > deadline:
                raise fail(i, f"timed out after {timeout_s:.0f} s {what}")

    try:
        for i, cmd in enumerate(commands):
            down_r, down_w = os.pipe()
            up_r, up_w = os.pipe()
            log = open(tmp / f"worker{i}.log", "w+")
            logs.append(log)
            e = {**os.environ, **(env or {}), BATON_ENV: f"{down_r},{up_w}", "PYTHONUNBUFFERED": "1"}
            procs.append(
                subprocess.Popen(
                    [*cmd, "--result", str(tmp / f"worker{i}.json")], cwd=ROOT, env=e, pass_fds=(down_r, up_w), stdout=log, stderr=subprocess.STDOUT
                )
            )
            os.close(down_r)  # now only the worker holds its ends (EOF when it exits)
            os.close(up_w)
            to_worker.append(down_w)
            from_worker.append(up_r)
        active = []
        for i in range(n):  # barrier: every worker finished its setup (or exited without a step)
            if receive(i, "during setup") == READY:
                active.append(i)
        k = 0
        while active:  # round robin: worker i does one step, hands the token back, the next goes
            k %= len(active)
            i = active[k]
            try:
                os.write(to_worker[i], TOKEN)
                got = receive(i, "during its steps")
            except BrokenPipeError:
                got = b""
            if got == TOKEN:
                k += 1
            else:  # exited (after Baton.finish, the token goes with it)
                active.pop(k)
        for i, p in enumerate(procs):
            try:
                p.wait(timeout=max(1.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                raise fail(i, f"timed out after {timeout_s:.0f} s") from None
        wall = time.perf_counter() - start
        results = []
        for i, p in enumerate(procs):
            out = tmp / f"worker{i}.json"
            if p.returncode != 0 or not out.is_file():
                raise fail(i, f"failed (exit {p.returncode})")
            res = json.loads(out.read_text())
            res["wall_s"] = round(wall, 1)
            results.append(res)
    finally:
        for fd in to_worker + from_worker:
            with contextlib.suppress(OSError):
                os.close(fd)
        for log in logs:
            log.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def worker_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def step_seconds(result: dict[str, Any], prefix: str = "epoch", skip: int = 0) -> list[float]:
    """fetch + body of each step whose phase starts with ``prefix``, the first ``skip`` dropped."""
    xs = [s["fetch_s"] + s["body_s"] for s in result["steps"] if s["phase"].startswith(prefix)]
    _expect(xs, prefix)
    return xs[skip:]


def phase_times(steps: list[dict[str, Any]], prefix: str = "") -> dict[str, list[float]]:
    """Step seconds (fetch + body) grouped by phase, for the phases starting with ``prefix``."""
    out: dict[str, list[float]] = {}
    for s in steps:
        if s["phase"].startswith(prefix):
            out.setdefault(s["phase"], []).append(s["fetch_s"] + s["body_s"])
    _expect(out, prefix)
    return out


def _expect(found: Any, prefix: str) -> None:
    if not found:
        raise RuntimeError(
            f"no timed steps in phase {prefix!r}: mmagent's loops are timed through their tqdm bars "
            "('epoch i/n' in the trainer, 'caching frozen encoders' in FeatureCache.build); if those "
            "names changed, update benchmarks/_harness.py and the benchmark's phases"
        )


def set_threads(n: int | None) -> None:
    """In a worker: the thread count its driver chose (also as ``OMP_NUM_THREADS``, which mmagent's
    thread policy defers to). None: leave threads to torch, or to mmagent's policy."""
    if n:
        import torch

        torch.set_num_threads(n)
        os.environ["OMP_NUM_THREADS"] = str(n)


def driver_threads(requested: int | None) -> dict[str, Any]:
    """In a driver: choose the workers' thread count once, as the quality benchmarks do
    (``--threads``, else ``$MMAGENT_BENCH_THREADS``, else 1 when the machine is busier than its
    cores, else torch's default), so both sides of a lockstep run use the same."""
    from benchmarks._quality import set_threads as choose

    return choose(requested)


# -- the command line of a lockstep benchmark ---------------------------------------------------
def parse(
    p: argparse.ArgumentParser, argv: Sequence[str] | None, workers: Sequence[str], timeout: float, defaults: Sequence[tuple[str, Any, Any]]
) -> argparse.Namespace:
    """Add the flags every lockstep benchmark shares (``--threads``, ``--timeout``; hidden: the
    ones a driver passes to its ``workers``) to ``p``, parse ``argv``, and give each option of
    ``defaults`` (``(dest, full, smoke)``) left unset its value for the mode."""
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of each worker (default: $MMAGENT_BENCH_THREADS, else 1 when the machine is busier than its cores, else torch's)",
    )
    p.add_argument("--timeout", type=float, default=timeout, help="seconds per lockstep run")
    p.add_argument("--worker", choices=list(workers), help=argparse.SUPPRESS)
    p.add_argument("--table-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for name, full, smoke in defaults:
        if getattr(a, name) is None:
            setattr(a, name, smoke if a.smoke else full)
    return a


def worker_main(args: argparse.Namespace, work: Callable[[argparse.Namespace], dict[str, Any]]) -> int:
    """A worker process: the driver's thread count, ``work(args)``, its result to ``--result``."""
    set_threads(args.threads)
    write_worker_result(args.result, work(args))
    return 0


def driver_setup(args: argparse.Namespace, name: str) -> tuple[dict[str, Any], Path]:
    """A driver: choose the workers' thread count once (``args.threads`` set to it); return the
    thread info for the result file and the benchmark's work folder."""
    thread_info = driver_threads(args.threads)
    args.threads = thread_info["threads"]
    return thread_info, args.work_dir / (f"{name}-smoke" if args.smoke else name)


def worker_args(args: argparse.Namespace, table_dir: Path, *options: str) -> list[str]:
    """The flags a driver passes to both workers: data root, table folder, each of ``options``
    (``"batch_size"`` -> ``--batch-size VALUE``) and the thread count when one was chosen."""
    out = ["--data-root", str(args.data_root), "--table-dir", str(table_dir)]
    for name in options:
        out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return out + (["--threads", str(args.threads)] if args.threads else [])


def fresh_dir(path: Path) -> Path:
    """``path`` with whatever a previous run left there removed (the trainer creates it anew)."""
    if path.exists():
        shutil.rmtree(path)
    return path
