"""How many threads the model gets when serving, chosen to fit the machine.

A server process has one model thread (batches run one at a time, see ``batching.py``) and an
event loop beside it that parses HTTP and JSON, checks records and forms the next batch. On ``C``
usable cores and ``W`` worker processes, the model gets ``max(1, C // W - 1)`` intra-op threads:
one core per worker stays with its event loop, so requests keep arriving (and the next batch
keeps forming) while a batch runs; more model threads than cores would only make them wait on
each other. ``--threads N`` overrides the choice. torch's inter-op pool is set to 1 (there is one
batch at a time); with ``--backend onnx`` the same count is ONNX Runtime's intra-op threads.
What was chosen is logged at startup and shown in ``/v1/schema`` (``runtime``) and ``/metrics``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

from mmagent.serving.settings import ServeSettings

log = logging.getLogger("mmagent.serving")


@dataclass(frozen=True)
class ThreadPlan:
    backend: str  # torch | onnx
    cores: int  # CPU cores this process may use
    workers: int  # server processes sharing them
    model_threads: int  # intra-op threads of the model call
    chosen_by: str  # "--threads" or "cores"

    def describe(self) -> str:
        why = (
            "set by --threads" if self.chosen_by == "--threads" else f"{self.cores} usable core(s) / {self.workers} worker(s), one core left to the event loop"
        )
        return f"backend {self.backend}, {self.model_threads} model thread(s) ({why})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def plan_threads(settings: ServeSettings, cores: int | None = None) -> ThreadPlan:
    """The thread plan for ``settings`` on a machine with ``cores`` usable cores (default: this one)."""
    cores = cores or usable_cores()
    if settings.torch_threads:
        return ThreadPlan(settings.backend, cores, settings.workers, settings.torch_threads, "--threads")
    return ThreadPlan(settings.backend, cores, settings.workers, max(1, cores // settings.workers - 1), "cores")


def apply_plan(plan: ThreadPlan) -> None:
    """Set torch's thread pools for this process (the onnx backend takes the count at session creation)."""
    import torch

    torch.set_num_threads(plan.model_threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # torch allows this once, before any parallel work; keep what is set
        pass
    log.info("threads: %s", plan.describe())


def register_metrics(registry: Any, plan: ThreadPlan) -> None:
    """``mmagent_model_threads{backend, chosen_by}`` and ``mmagent_cpu_cores`` in ``registry``."""
    from prometheus_client import Gauge

    Gauge("mmagent_model_threads", "intra-op threads of the model call", ["backend", "chosen_by"], registry=registry).labels(plan.backend, plan.chosen_by).set(
        plan.model_threads
    )
    Gauge("mmagent_cpu_cores", "CPU cores this server process may use", registry=registry).set(plan.cores)


def runtime_summary(settings: ServeSettings, agent: Any = None) -> dict[str, Any]:
    """``/v1/schema``'s ``runtime``: the backend actually running the model and the thread plan."""
    plan = plan_threads(settings).as_dict()
    runner = getattr(agent, "runner", None)
    return {**plan, "backend": getattr(runner, "backend", None) or settings.backend}
