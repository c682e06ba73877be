"""The thread policy: how many threads torch's CPU math (intra-op) uses in a training process.

Why a policy: torch starts one OpenMP thread per physical core whatever else runs there, and
OpenMP threads spin-wait on each other at every operator. On a machine busier than its cores (a
shared CI box, loader workers, other jobs) the threads of one process then wait for cores held by
others, and two threads were measured slower than one on a loaded 2-core machine. The choice, in
order:

1. ``train.threads`` (``mmagent train --threads N`` or ``--set train.threads=N``): used as given;
2. ``OMP_NUM_THREADS`` set: torch already follows it; kept (multi-process launches set it per
   process, see ``training/distributed.py``);
3. a resumed run: the count its checkpoint was trained with (another count can change sums in
   their last bits, and ``--resume`` promises the uninterrupted run's weights);
4. otherwise: the cores this process may run on (CPU affinity, capped by a cgroup CPU quota),
   minus the DataLoader worker processes (each keeps a core busy), minus the load other
   processes put on the machine (the 1-minute load average less this process's own average
   use), rounded, at least 1 and at most the usable cores.

The trainer logs the choice and its reason (on screen and in ``metrics.jsonl``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuFacts:
    """What the policy looks at; :func:`cpu_facts` reads them from this machine."""

    affinity: int  # cores this process may run on
    quota: float | None  # cgroup CPU quota in cores (None: no quota)
    load: float | None  # 1-minute load average (None where the OS has none)
    own_load: float = 0.0  # this process's own average CPU use, in cores


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  # "config", "env" or "auto"
    reason: str


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max``, v1 ``cfs_quota_us``), or None."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q, p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota_us = int(q.read_text())
            return None if quota_us <= 0 else quota_us / int(p.read_text())
    except (OSError, ValueError):  # unreadable or unexpected: no quota known
        return None
    return None


def own_cpu_load() -> float:
    """This process's CPU seconds over its age (at least a minute, the load average's window): its
    own share of the load average, so a long-running process (a search) does not count itself."""
    try:
        import psutil

        proc = psutil.Process()
        t = proc.cpu_times()
        return (t.user + t.system) / max(60.0, time.time() - proc.create_time())
    except Exception:  # psutil missing or the process table unreadable: count nothing
        return 0.0


def cpu_facts() -> CpuFacts:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return CpuFacts(affinity=affinity, quota=cgroup_quota(), load=load, own_load=own_cpu_load())


def choose_threads(
    facts: CpuFacts, requested: int | None = None, workers: int = 0, env: Mapping[str, str] | None = None, previous: int | None = None
) -> ThreadChoice:
    """The thread count for one process (see the module docstring); a pure function of its inputs.
    ``previous``: the count a resumed checkpoint was trained with, kept when nothing is requested."""
    env = os.environ if env is None else env
    if requested is not None:
        return ThreadChoice(int(requested), "config", f"train.threads = {requested}")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), "env", f"OMP_NUM_THREADS = {omp}")
    if previous is not None:
        return ThreadChoice(int(previous), "checkpoint", "the count the resumed checkpoint was trained with")
    cores = facts.affinity
    why = [f"{facts.affinity} cores in this process's CPU affinity"]
    if facts.quota is not None and facts.quota < cores:
        cores = max(1, math.floor(facts.quota))
        why.append(f"cgroup quota {facts.quota:g} cores")
    others = max(0.0, (facts.load or 0.0) - facts.own_load)
    if facts.load is not None:
        why.append(f"load {others:.1f} from other processes (1-min average {facts.load:.1f})")
    if workers:
        why.append(f"{workers} loader worker(s)")
    free = cores - workers - others
    threads = max(1, min(cores, math.floor(free + 0.5)))
    return ThreadChoice(threads, "auto", ", ".join(why))


def apply_thread_policy(requested: int | None = None, workers: int = 0, previous: int | None = None) -> ThreadChoice:
    """Choose (:func:`choose_threads` on this machine) and set torch's intra-op threads; the setting
    stays for the process (torch has one pool per process)."""
    import torch

    choice = choose_threads(cpu_facts(), requested, workers, previous=previous)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice
