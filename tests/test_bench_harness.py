"""The lockstep harness: workers take strict turns, one step each, and a finished worker's
remaining work runs alone (benchmarks/_harness.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks import _harness as H

WORKER = """
import json, sys, time
sys.path.insert(0, {root!r})
from benchmarks._harness import StepClock

name, n = sys.argv[1], int(sys.argv[2])
result = sys.argv[sys.argv.index("--result") + 1]
clock, spans = StepClock(), []
for _ in clock.iterate(range(n), "epoch 1/1"):
    t0 = time.monotonic(); time.sleep(0.02); spans.append([name, "step", t0, time.monotonic()])
clock.baton.finish()
t0 = time.monotonic(); time.sleep(0.05); spans.append([name, "tail", t0, time.monotonic()])
json.dump({{"spans": spans, "steps": clock.steps}}, open(result, "w"))
"""


def test_three_workers_take_strict_turns(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(H.ROOT)))
    steps = {"A": 3, "B": 5, "C": 4}
    results = H.run_lockstep([[sys.executable, str(script), name, str(n)] for name, n in steps.items()], timeout_s=60)
    spans = sorted((s for r in results for s in r["spans"]), key=lambda s: s[2])
    for before, after in zip(spans, spans[1:]):  # never two workers at once, tails included
        assert after[2] >= before[3], (before, after)
    order = [f"{name}{'-tail' if kind == 'tail' else ''}" for name, kind, _, _ in spans]
    # round robin in the given order; a worker that finished does its tail on its next turn, alone, and leaves
    assert order == ["A", "B", "C", "A", "B", "C", "A", "B", "C", "A-tail", "B", "C", "B", "C-tail", "B-tail"]
    for r, n in zip(results, steps.values()):
        assert len(r["steps"]) == n and all(s["body_s"] >= 0.02 for s in r["steps"])
