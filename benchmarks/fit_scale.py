"""``mmagent fit`` at any size: the same kind of table at 10^4, 10^5 and 10^6 rows, one budget each;
then two workers against one on the same table and budget.

    python -m benchmarks.fit_scale                       # 10^4, 10^5, 10^6 rows, 5 minutes each, + workers
    python -m benchmarks.fit_scale --sizes 10000 --budget 2m --no-workers
    python -m benchmarks.fit_scale --only-workers        # two workers against one at 10^5 rows
    python -m benchmarks.fit_scale --smoke               # CI: 600 rows (300 test), 40 s, one worker and two

The table is generated (no data set of this size is in ../shared/data): a synthetic support-ticket
log, a short text naming the topic among filler words, an amount, a channel, an id and 10 balanced
classes, with 15 % of the texts naming a random topic (so about 86.5 % is the best accuracy any
model can reach). Every fit is ``mmagent fit`` in its own process, as a user runs it; reported:
wall time against the budget (goal: within +10 %), the peak resident memory of the fit's process
tree (polled every 0.2 s; goal: <= 4 GB at 10^6 rows), the rows each candidate trained on (the
plan), test accuracy on a separate 5,000-row table from the same generator (goal: 10^6 rows >= 10^4
rows). Workers: candidates finished per minute of budget and the best validation score, with every
trial in one study and one promotion.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import base_parser, write_result

TOPICS = ["refund", "password", "delivery", "invoice", "card", "upgrade", "cancel", "address", "warranty", "login"]
FILLER = "please help need asap thanks hello issue problem again today order account".split()
NOISE = 0.15  # share of texts that name a random topic
TEST_ROWS = 5000
MODEL = "fit's choice among zoo MiniLM-L6 rungs (text) + numeric + categorical encoders"


def write_tickets(path: Path, n: int, seed: int) -> Path:
    """A synthetic support-ticket table of ``n`` rows (written once; kept for reruns)."""
    import pandas as pd

    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    label = rng.integers(0, len(TOPICS), n)
    named = np.where(rng.random(n) < NOISE, rng.integers(0, len(TOPICS), n), label)
    words = rng.choice(FILLER, size=(n, 5))
    text = [" ".join([*w[:3], TOPICS[t], *w[3:]]) for w, t in zip(words, named)]
    frame = pd.DataFrame(
        {
            "ticket_id": np.arange(n) + seed * 10_000_000,
            "text": text,
            "amount": np.round(rng.gamma(2.0, 30.0, n) + 3 * label, 2),
            "channel": rng.choice(["email", "chat", "phone"], n),
            "label": [TOPICS[c] for c in label],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path.with_suffix(".tmp"), index=False)
    path.with_suffix(".tmp").replace(path)
    return path


class PeakMemory:
    """Peak resident memory of a process and its children (fit's workers), polled in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root, self.peak_mb, self._stop = psutil.Process(pid), 0.0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak_mb = max(self.peak_mb, total / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> float:
        self._stop.set()
        self.thread.join()
        return self.peak_mb


def run_timed(command: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """Run ``command`` to its end: (its output, wall seconds, peak RSS MB of its process tree);
    a non-zero exit raises with the output's tail."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    memory = PeakMemory(proc.pid)
    output, _ = proc.communicate()
    wall, peak = time.perf_counter() - start, memory.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited with {proc.returncode}:\n{output[-3000:]}")
    return output, wall, peak


def run_fit(train: Path, test: Path, out: Path, budget: str, workers: int) -> dict[str, Any]:
    """``mmagent fit`` in its own process; what it took and what it chose."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "mmagent", "fit", str(train), "--label", "label", "--test", str(test)]
    command += ["--time-budget", budget, "-o", str(out), "--workers", str(workers), "--quiet"]
    _, wall, peak = run_timed(command)
    metrics = json.loads((out / "metrics.json").read_text())
    board = list(csv.DictReader((out / "leaderboard.csv").open()))
    metric = next(k for k in board[0] if k.startswith("validation"))
    trained = [r for r in board if r["status"] in ("done", "cut by budget", "pruned") and r["candidate"] != "baseline"]
    plan = []
    for folder in sorted((out / "trials").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
        config = folder / "config.json"
        if folder.name.isdigit() and config.is_file():
            raw = json.loads(config.read_text())
            plan.append(raw["train"].get("sample_rows") or "all")
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak),
        "test_accuracy": metrics["test"]["label"]["accuracy"],
        "best_validation": max(float(r[metric]) for r in trained if r[metric]),
        "candidates": len(trained),
        "rows_per_candidate": plan,
        "validation_rows": json.loads((out / "config.json").read_text())["data"].get("validation_rows") or "all",
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser("mmagent fit at 10^4, 10^5 and 10^6 rows within one budget; two workers against one")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="table sizes (default: 10000 100000 1000000; 600 with --smoke)")
    p.add_argument("--budget", default=None, help="time budget of each fit (default: 5m; 40s with --smoke)")
    p.add_argument("--workers-size", type=int, default=100_000, help="table size for two workers against one (default: 100000)")
    p.add_argument("--no-workers", action="store_true", help="leave out two workers against one")
    p.add_argument("--only-workers", action="store_true", help="only two workers against one (result: fit_scale_workers.json)")
    args = p.parse_args(argv)
    if args.only_workers:
        args.sizes = []
    sizes = args.sizes if args.sizes is not None else ([600] if args.smoke else [10_000, 100_000, 1_000_000])
    budget = args.budget or ("40s" if args.smoke else "5m")
    from mmagent.search.fit_config import parse_duration

    seconds = parse_duration(budget)
    folder = args.work_dir / "fit_scale"
    n_test = 300 if args.smoke else TEST_ROWS
    test = write_tickets(folder / f"test-{n_test}.csv", n_test, seed=99)
    rows: list[dict[str, Any]] = []
    runs: dict[str, dict[str, Any]] = {}
    for n in sizes:
        train = write_tickets(folder / f"train-{n}.csv", n, seed=1)
        print(f"[fit_scale] {n} rows, budget {budget} ...", flush=True)
        runs[f"{n} rows"] = got = run_fit(train, test, folder / f"run-{n}", budget, workers=1)
        print(f"[fit_scale] {n} rows: {json.dumps(got)}", flush=True)
        variant = f"{n} rows, {budget}"
        rows.append({"benchmark": "fit_scale", "variant": variant, "metric": "test accuracy", "value": round(got["test_accuracy"], 4), "wall_s": got["wall_s"]})
        rows.append(
            {"benchmark": "fit_scale", "variant": variant, "metric": "wall / budget", "value": round(got["wall_s"] / seconds, 3), "reference": "<= 1.10"}
        )
        rows.append({"benchmark": "fit_scale", "variant": variant, "metric": "peak RSS MB", "value": got["peak_rss_mb"], "reference": "<= 4096 at 10^6"})
    if not args.no_workers:
        n = 600 if args.smoke else args.workers_size
        train = write_tickets(folder / f"train-{n}.csv", n, seed=1)
        one = runs.get(f"{n} rows") or run_fit(train, test, folder / f"run-{n}", budget, workers=1)
        two = runs[f"{n} rows, 2 workers"] = run_fit(train, test, folder / f"run-{n}-2w", budget, workers=2)
        for label, got in (("1 worker", one), ("2 workers", two)):
            variant = f"{n} rows, {budget}, {label}"
            per_minute = round(got["candidates"] / (seconds / 60), 2)
            rows.append(
                {"benchmark": "fit_scale workers", "variant": variant, "metric": "candidates / budget minute", "value": per_minute, "wall_s": got["wall_s"]}
            )
            rows.append({"benchmark": "fit_scale workers", "variant": variant, "metric": "best validation acc", "value": round(got["best_validation"], 4)})
            rows.append(
                {
                    "benchmark": "fit_scale workers",
                    "variant": variant,
                    "metric": "wall / budget",
                    "value": round(got["wall_s"] / seconds, 3),
                    "reference": "<= 1.10",
                }
            )
    write_result("fit_scale_workers" if args.only_workers else "fit_scale", rows, args.smoke, extra={"runs": runs, "budget": budget}, model=MODEL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
