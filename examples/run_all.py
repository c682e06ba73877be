"""Run every example, one after another, each in its own process; print a summary table.

    python -m examples.run_all --smoke              # what CI runs (`make examples-smoke`)
    python -m examples.run_all --only banking77 stocknet --epochs 1

Smoke runs write runs/<name>-smoke (replaced each time); full runs write runs/<name> and replace
a previous run there (--overwrite). An example whose dataset folder is absent fails with the reason
(a run that trained nothing must not look like a pass). Exit status 0 only if every example ran and
wrote its metrics; 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

from examples import EXAMPLES
from examples._common import REPO_ROOT, default_data_root, missing_files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.run_all", description=__doc__.strip().splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="each example's smoke mode: a tiny subset and a few steps")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets (default: $MMAGENT_DATA_ROOT or ../shared/data)")
    p.add_argument("--only", nargs="+", choices=EXAMPLES, default=None, help="run only these examples")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per example (smoke default: 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per example before it is stopped (default: 600 in smoke mode, none otherwise)")
    args = p.parse_args(argv)
    data_root = (args.data_root or default_data_root()).expanduser().resolve()
    threads = args.threads or (1 if args.smoke else None)
    timeout = args.timeout or (600.0 if args.smoke else None)

    results: list[dict] = []
    for name in args.only or EXAMPLES:
        module = importlib.import_module(f"examples.{name}")
        missing = missing_files(data_root, module.DATA_DIR, module.REQUIRED)
        if missing:
            print(f"[{name}] FAILED: dataset not found: {', '.join(missing)} (pass --data-root or set MMAGENT_DATA_ROOT)", flush=True)
            results.append({"name": name, "status": "failed", "reason": f"dataset not found: {', '.join(missing)}"})
            continue
        cmd = [sys.executable, "-m", f"examples.{name}", "--data-root", str(data_root), "--quiet"]
        cmd += ["--smoke"] if args.smoke else ["--overwrite"]
        for flag, value in (("--epochs", args.epochs), ("--steps", args.steps), ("--threads", threads)):
            if value is not None:
                cmd += [flag, str(value)]
        print(f"[{name}] running: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            print(((e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""))[-2000:])
            results.append({"name": name, "status": "failed", "reason": f"timed out after {timeout:.0f} s", "seconds": time.perf_counter() - start})
            continue
        seconds = time.perf_counter() - start
        summary = next((json.loads(line[7:]) for line in reversed(proc.stdout.splitlines()) if line.startswith("RESULT ")), None)
        metrics_ok = summary is not None and (Path(summary["run_dir"]) / "metrics.json").is_file()
        if proc.returncode != 0 or not metrics_ok:
            print(proc.stdout[-2000:])
            print(proc.stderr[-4000:], file=sys.stderr)
            reason = f"exit status {proc.returncode}" if proc.returncode else "no metrics.json written"
            results.append({"name": name, "status": "failed", "reason": reason, "seconds": seconds})
            print(f"[{name}] FAILED ({reason}) after {seconds:.0f} s", flush=True)
            continue
        results.append({"name": name, "status": "ok", "seconds": seconds, "test": summary["test"], "run_dir": summary["run_dir"]})
        print(f"[{name}] ok in {seconds:.0f} s: {_metrics_text(summary['test'])}", flush=True)

    print("\n| example | status | seconds | test metrics |\n|---|---|---|---|")
    for r in results:
        detail = _metrics_text(r["test"]) if r["status"] == "ok" else r.get("reason", "")
        print(f"| {r['name']} | {r['status']} | {r.get('seconds', 0):.0f} | {detail} |")
    failed = [r["name"] for r in results if r["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _metrics_text(test: dict) -> str:
    keep = ("accuracy", "macro_f1", "auroc")
    return "; ".join(f"{t}: " + " ".join(f"{k}={v:.3f}" for k, v in m.items() if k in keep) for t, m in test.items())


if __name__ == "__main__":
    raise SystemExit(main())
