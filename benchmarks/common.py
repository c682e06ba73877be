"""Shared benchmark plumbing: data root, the state of the git tree, result JSON files, RESULTS.md.

Every benchmark writes ``benchmarks/results/<name>.json`` (atomically) with the rows it measured;
``update_results_md()`` rebuilds ``benchmarks/RESULTS.md`` from the result files, so every row
carries its model, date, commit, machine, machine load and wall time.

A published result must be reproducible, so it must come from a **clean commit**: a full run
refuses to start when tracked files differ from ``HEAD`` (``benchmarks/results/`` and
``RESULTS.md``, which the benchmarks write themselves, excepted), and checks again before writing.
``--draft`` (or ``$MMAGENT_BENCH_DRAFT=1``) runs anyway and writes ``<name>.draft.json``, which the
table generator never reads; ``--smoke`` runs write ``<name>.smoke.json``, never read either.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
DRAFT_ENV = "MMAGENT_BENCH_DRAFT"
#: What the benchmarks write themselves: a change there does not make the code under test dirty.
OUTPUT_PATHS = ("benchmarks/results/", "benchmarks/RESULTS.md")
NOT_STATED = "(not stated)"


def default_data_root() -> Path:
    return Path(os.environ.get("MMAGENT_DATA_ROOT", ROOT.parent / "shared" / "data"))


def load_avg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


#: Load and time when this benchmark process started (this module is imported first thing).
START = {"load": load_avg(), "time": time.time()}


# -- the git tree ---------------------------------------------------------------------------------
class TreeState(NamedTuple):
    commit: str  # short hash of HEAD, "unknown" outside git
    dirty: list[str]  # tracked paths that differ from HEAD, benchmark output excepted

    @property
    def label(self) -> str:
        return self.commit + ("+dirty" if self.dirty else "")


def tree_state(root: Path | None = None) -> TreeState:
    """HEAD of the repository at ``root`` and its tracked files that differ from it (untracked files
    and the benchmarks' own output do not count)."""
    root = Path(root or ROOT)
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return TreeState("unknown", ["(not a git checkout: the code measured cannot be named)"])
    paths = [line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines() if line.strip()]
    return TreeState(head, [p for p in paths if not p.startswith(OUTPUT_PATHS)])


def commit() -> str:
    """``HEAD``'s short hash, ``+dirty`` when tracked files differ from it."""
    return tree_state().label


class RunMode:
    """How this process writes results: smoke, draft or published; fixed when the command line is
    parsed (:class:`BenchParser`). A process that parses its own command line (no ``--draft``)
    is a draft only through ``$MMAGENT_BENCH_DRAFT``."""

    smoke: bool = False
    draft: bool = os.environ.get(DRAFT_ENV, "") not in ("", "0")
    start_state: TreeState | None = None


def refuse_dirty_tree(state: TreeState) -> str:
    shown = ", ".join(state.dirty[:8]) + (f" and {len(state.dirty) - 8} more" if len(state.dirty) > 8 else "")
    return (
        f"refusing to record a result from a dirty tree (commit {state.commit}; changed tracked files: {shown}). "
        f"Commit the changes and run again, or pass --draft (or set {DRAFT_ENV}=1) for a result that never reaches RESULTS.md."
    )


class BenchParser(argparse.ArgumentParser):
    """An ArgumentParser that, once parsed, fixes :class:`RunMode` and refuses a full (not smoke,
    not draft) run from a dirty tree before any work is done."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns = super().parse_args(args, namespace)
        RunMode.smoke = bool(getattr(ns, "smoke", False))
        RunMode.draft = bool(getattr(ns, "draft", False)) or RunMode.draft
        if getattr(ns, "worker", None) is None and not (RunMode.smoke or RunMode.draft):
            state = tree_state()
            if state.dirty:
                self.exit(2, f"{self.prog}: error: {refuse_dirty_tree(state)}\n")
            RunMode.start_state = state
        return ns


def base_parser(description: str) -> BenchParser:
    p = BenchParser(description=description)
    p.add_argument("--data-root", type=Path, default=default_data_root(), help="folder with the shared datasets")
    p.add_argument("--smoke", action="store_true", help="a few steps on a small subset (CI), results not written to RESULTS.md")
    p.add_argument(
        "--draft", action="store_true", help=f"allow a dirty git tree; the result goes to results/<name>.draft.json, never to RESULTS.md (also: ${DRAFT_ENV}=1)"
    )
    p.add_argument("--work-dir", type=Path, default=ROOT / "prepared" / "bench", help="prepared tables and runs (git-ignored)")
    return p


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


# -- result files -----------------------------------------------------------------------------------
def write_result(name: str, rows: list[dict[str, Any]], smoke: bool, extra: dict[str, Any] | None = None, model: str | None = None) -> Path:
    """Write ``results/<name>.json`` and refresh RESULTS.md; ``<name>.smoke.json`` for smoke runs,
    ``<name>.draft.json`` for drafts (neither reaches RESULTS.md).

    Each row: ``{"benchmark", "variant", "metric", "value", "model", "reference"?, "wall_s"}``;
    ``model`` (what was measured, e.g. ``"zoo minilm-l6"``) fills rows that name none.

    A run that was to be published but finds the tree dirty now, or at another commit than when
    it started, writes a draft and exits with status 1: its numbers cannot be tied to one commit."""
    from mmagent.io import write_json

    state = tree_state()
    smoke = smoke or RunMode.smoke
    started = RunMode.start_state
    moved = started is not None and started.commit != state.commit
    refused = not smoke and not RunMode.draft and (bool(state.dirty) or moved)
    draft = not smoke and (RunMode.draft or refused)
    rows = [{**r, "model": r.get("model") or model or NOT_STATED} for r in rows]
    stamp = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (started or state).commit if not (state.dirty or moved) else state.label,
        "dirty_files": state.dirty,
        "machine": machine(),
        "smoke": smoke,
        "draft": draft,
        "load_start": START["load"],
        "load_end": load_avg(),
    }
    suffix = ".smoke.json" if smoke else ".draft.json" if draft else ".json"
    path = RESULTS_DIR / f"{name}{suffix}"
    write_json(path, {**stamp, "name": name, "rows": rows, **(extra or {})})
    for row in rows:
        ref = f" (reference {row['reference']})" if row.get("reference") is not None else ""
        print(f"{row['benchmark']:>22} | {row['variant']:<34} | {row['metric']:<20} | {_fmt(row['value'])}{ref}")
    if not (smoke or draft):
        missing = sorted({r["variant"] for r in rows if r["model"] == NOT_STATED})
        if missing:
            print(f"[bench] warning: rows without a model: {missing}; pass write_result(model=...)", file=sys.stderr)
        update_results_md()
    if refused:
        why = f"HEAD moved from {started.commit} to {state.commit} during the run" if moved and started else refuse_dirty_tree(state)
        print(f"[bench] error: {why}\n[bench] the result was kept as a draft: {path}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    return path


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _published(data: dict[str, Any]) -> bool:
    """A result file that may enter the main table: not smoke, not draft, from a clean commit, and
    written under these rules (it records the machine load; older files did not)."""
    label = str(data.get("commit", ""))
    return not data.get("smoke") and not data.get("draft") and not label.endswith("+dirty") and label not in ("", "unknown") and "load_start" in data


def _load_text(data: dict[str, Any]) -> str:
    start, end = data.get("load_start"), data.get("load_end")
    return "" if start is None and end is None else f"{start} / {end}"


HEADER = "| benchmark | variant | model | metric | value | reference | wall s | date | commit | load 1 min start / end | machine |"


def update_results_md(results_dir: Path | None = None, out: Path | None = None) -> None:
    """Rebuild RESULTS.md from ``results_dir``: the published results, then, apart, any earlier
    result recorded from a dirty tree (kept for context until it is measured again)."""
    from mmagent.io import write_text

    results_dir, out = Path(results_dir or RESULTS_DIR), Path(out or RESULTS_MD)
    published: list[str] = []
    unverified: list[str] = []
    for path in sorted(results_dir.glob("*.json")):
        if path.name.endswith((".smoke.json", ".draft.json")):
            continue
        data = json.loads(path.read_text())
        if data.get("smoke") or data.get("draft"):
            continue
        target = published if _published(data) else unverified
        for r in data["rows"]:
            target.append(
                f"| {r['benchmark']} | {r['variant']} | {r.get('model') or NOT_STATED} | {r['metric']} | {_fmt(r['value'])} | {r.get('reference') or ''} | {_fmt(r.get('wall_s', ''))} "
                f"| {data['date']} | {data['commit']} | {_load_text(data)} | {data['machine']} |"
            )
    lines = [
        "# Benchmark results",
        "",
        "Generated by `benchmarks/*.py` from `benchmarks/results/*.json`. Only full runs from a clean commit are listed here",
        "(a benchmark refuses to record one from a dirty tree; `--draft` and `--smoke` results are never listed). Each row: the",
        "model measured, date, commit, 1-minute load average at the start and end of the run, machine, wall time.",
        "",
        HEADER,
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *published,
    ]
    if not published:
        lines.append("| (none yet: the earlier results below are to be measured again from a clean commit) |  |  |  |  |  |  |  |  |  |  |")
    if unverified:
        lines += [
            "",
            "## Earlier, unverified (dirty tree)",
            "",
            "Recorded from a working tree with uncommitted changes (so the code measured cannot be named), or before results had",
            "to come from a clean commit and state their model and machine load; some predate the code they describe. Kept for",
            "context only, to be replaced by clean re-runs; do not quote them.",
            "",
            HEADER,
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *unverified,
        ]
    write_text(out, "\n".join(lines) + "\n")
