"""More than one process (or machine) on one fit's search.

The fit that starts a search writes ``RUN_DIR/search.json`` (:class:`SearchSpec`): the Optuna
study's storage and name, the base config, the space, the pruner and the deadline (wall clock).
A worker (``mmagent fit-worker RUN_DIR``, or one of the ``--workers N`` processes the fit starts
itself) reads it, checks the table's rows once, opens the same study and runs trials until the
deadline: the ladder's queued rungs first, then the sampler's suggestions, every candidate trained
into ``RUN_DIR/trials/<n>``. So there is one study, one leaderboard (every worker's candidates,
read back from their folders), one deadline and one promotion (by the fit that started it).

Workers on other machines need the run folder on a shared file system (the same path) and a
storage every machine reaches (PostgreSQL: ``--storage postgresql://user@host/db``; SQLite only
serves processes of one machine). A worker that dies loses only its trial: the storage's heartbeat
fails it and queues it once more (see :mod:`mmagent.search.study`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mmagent.io import write_json

SPEC_FILE = "search.json"
WORKER_LOGS = "workers"
SEED_STRIDE = 7919  # each worker's sampler draws its own sequence: equal seeds would suggest equal trials


class SearchSpec(BaseModel):
    """What a worker needs to join a running search (``RUN_DIR/search.json``)."""

    storage: str | None  # None when the URL holds a password: the worker is given it (--storage)
    study: str
    base: dict[str, Any]  # the raw config every candidate starts from
    space: dict[str, Any]
    pruner: dict[str, Any]
    metric: str | None
    seed: int
    deadline: float  # seconds since the epoch: one deadline for every worker
    offset: int  # trial n trains into trials/<offset + n> (a resumed fit numbers on)
    queued: int  # the first trials are the ladder's rungs
    prune_queued: bool
    startup_trials: int | None


def write_spec(out_dir: Path, spec: SearchSpec) -> None:
    write_json(out_dir / SPEC_FILE, spec.model_dump())


def read_spec(run_dir: Path) -> SearchSpec:
    """The running search in ``run_dir``; a clear error when there is none."""
    path = run_dir / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no search to join (no {SPEC_FILE}): start one with mmagent fit TABLE --label COLUMN -o {run_dir}")
    return SearchSpec.model_validate_json(path.read_text())


def shareable_url(url: str) -> str | None:
    """The storage URL as written to ``search.json``: None when it carries a password (never
    written to disk; each worker is given it)."""
    from sqlalchemy.engine import make_url

    return None if make_url(url).password else url


def check_storage(url: str) -> None:
    """Refuse, before any work, a storage URL that is not one, whose driver is missing, or whose
    database does not answer."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    from mmagent.search.study import mask_url

    try:
        parsed = make_url(url)
    except Exception:
        raise ValueError(f"--storage {url!r}: not a database URL; use e.g. sqlite:///search.db or postgresql://user:password@host/db") from None
    try:
        engine = sqlalchemy.create_engine(parsed)
    except ImportError:
        raise ValueError(f"--storage {mask_url(url)}: the {parsed.get_backend_name()} driver is not installed: pip install 'mmagent[workers]'") from None
    try:
        with engine.connect():
            pass
    except Exception as e:
        raise ValueError(f"--storage {mask_url(url)}: cannot connect: {str(e).splitlines()[0]}") from None
    finally:
        engine.dispose()


def start_local_workers(run_dir: Path, count: int, storage: str, threads: int | None) -> list[subprocess.Popen]:
    """``count`` worker processes on this machine (``mmagent fit-worker``), each logging to
    ``RUN_DIR/workers/<i>.log``. The storage URL reaches them through the environment, never a file."""
    logs = run_dir / WORKER_LOGS
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "MMAGENT_FIT_STORAGE": storage}
    if threads:  # workers of one machine share its cores
        env["OMP_NUM_THREADS"] = str(threads)
    procs = []
    for i in range(1, count + 1):
        command = [sys.executable, "-m", "mmagent", "fit-worker", str(run_dir), "--index", str(i)]
        with open(logs / f"{i}.log", "ab") as log:
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
    return procs


def wait_for_workers(procs: list[subprocess.Popen], study: Any, deadline: float, grace: float) -> None:
    """After this process's own trials: wait for the local workers to end, and for trials still
    RUNNING elsewhere (other machines) to finish, up to ``grace`` seconds past the deadline; a
    local worker still running then is stopped (its trial is lost, the others stand). A candidate
    cut by the deadline is still scored on validation, which can take a slow backbone a minute on a
    shared machine (100,000 rows, two workers: 76 s past a 5-minute budget before this limit)."""
    from optuna.trial import TrialState

    from mmagent.search.study import recover_dead_local_trials

    limit = deadline + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, limit - time.time()))
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=30)
    recover_dead_local_trials(study)  # a local worker that died mid-trial: that trial failed, the rest stand
    while time.time() < limit and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        time.sleep(2.0)


def worker_threads(workers: int) -> int | None:
    """Torch threads per process when ``workers`` processes share this machine's cores."""
    cores = os.cpu_count() or 1
    return max(1, cores // workers) if workers > 1 else None
