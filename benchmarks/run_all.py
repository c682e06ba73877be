"""Run every benchmark, one after another, each in its own process; print a summary.

    python -m benchmarks.run_all --smoke            # what CI runs (`make bench-smoke`)
    python -m benchmarks.run_all --only banking77 fsdd

Each benchmark is ``python -m benchmarks.<name>`` and writes ``benchmarks/results/<name>.json``
(``<name>.smoke.json`` in smoke mode, ``<name>.draft.json`` with ``--draft``). Missing data is a
failure, never a silent pass: when the data root (``../shared/data`` or ``--data-root`` /
``$MMAGENT_DATA_ROOT``) is absent nothing runs and the exit status is 1; a benchmark whose own
dataset folder is absent fails with a message naming it. A full run from a dirty git tree is
refused up front unless ``--draft`` (see ``benchmarks/common.py``). Exit status 1 if any benchmark failed.

To add a benchmark, add its module name to :data:`BENCHMARKS` (the quality ones, then the speed ones).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import DRAFT_ENV, ROOT, default_data_root, refuse_dirty_tree, tree_state

#: Section 1 of issue 7: quality on real data.
QUALITY: list[str] = [
    "fit_quality",
    "banking77",
    "fsdd",
    "av_digits",
    "breastmnist",
    "financial_phrasebank",
    "stocknet",
    "lifecycle_banking77",
    "unknown_inputs",
]
#: Section 2: speed (framework overhead, vs the Hugging Face Trainer, frozen cache, memory); extend this list.
SPEED: list[str] = ["overhead", "vs_hf_trainer", "frozen_cache", "tune_cache", "serve_load", "gpu_throughput", "fit_scale", "vs_autogluon"]
#: Benchmarks that generate their own data (no --data-root).
GENERATED_DATA: set[str] = {"tune_cache", "serve_load", "fit_scale"}
# Smoke runs that do more than a few steps: fit_quality fits all six data sets (40 s budget each:
# a fit refuses budgets under its measured minimum, ~20-25 s for these tiny tables here); serve_load
# exports MiniLM to ONNX and starts four servers; unknown_inputs fits three (about 150 s on an idle
# 2-core machine, over 300 s on a busy one); vs_autogluon, where AutoGluon is installed, runs both tools.
SMOKE_TIMEOUT: dict[str, float] = {"fit_quality": 900.0, "serve_load": 600.0, "unknown_inputs": 600.0, "vs_autogluon": 600.0}
BENCHMARKS: list[str] = QUALITY + SPEED


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.strip().splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="each benchmark's smoke mode (tiny subset, a few steps; results in *.smoke.json)")
    p.add_argument("--draft", action="store_true", help="allow a dirty git tree; results go to *.draft.json, never to RESULTS.md")
    p.add_argument("--data-root", type=Path, default=None, help="folder with the shared datasets (default: $MMAGENT_DATA_ROOT or ../shared/data)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=None, help="run only these benchmarks")
    p.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[], help="leave these out")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per benchmark (passed on as --threads)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark before it is stopped (default: 300 in smoke mode, none otherwise)")
    args = p.parse_args(argv)

    data_root = (args.data_root or default_data_root()).expanduser().resolve()
    if not data_root.is_dir():
        print(f"[run_all] error: data root {data_root} not found (pass --data-root or set MMAGENT_DATA_ROOT); no benchmark ran", flush=True)
        return 1
    if not (args.smoke or args.draft):
        state = tree_state()
        if state.dirty:
            print(f"[run_all] error: {refuse_dirty_tree(state)}", flush=True)
            return 1
    timeout = args.timeout or (300.0 if args.smoke else None)
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    env = {
        **os.environ,
        "MMAGENT_DATA_ROOT": str(data_root),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **({DRAFT_ENV: "1"} if args.draft else {}),
    }

    summary: list[tuple[str, str, float]] = []
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.{name}"] + ([] if name in GENERATED_DATA else ["--data-root", str(data_root)])
        if args.smoke:
            cmd.append("--smoke")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"[run_all] {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        try:
            limit = SMOKE_TIMEOUT.get(name, timeout) if args.smoke and not args.timeout else timeout
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as e:
            out = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
            print(out[-3000:])
            summary.append((name, f"failed: timed out after {limit:.0f} s", time.perf_counter() - start))
            continue
        seconds = time.perf_counter() - start
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:])
            why = next((ln for ln in reversed((proc.stdout + proc.stderr).splitlines()) if "error:" in ln), "")
            status = f"failed (exit {proc.returncode})" + (f": {why.strip()[:300]}" if why else "")
        else:
            status = "ok"
            print("\n".join(ln for ln in lines if " | " in ln))  # the result rows
        print(f"[run_all] {name}: {status} ({seconds:.1f} s)", flush=True)
        summary.append((name, status, seconds))

    print("\n| benchmark | status | seconds |\n|---|---|---|")
    for name, status, seconds in summary:
        print(f"| {name} | {status} | {seconds:.1f} |")
    return 1 if any(s.startswith("failed") for _, s, _ in summary) else 0


if __name__ == "__main__":
    raise SystemExit(main())
