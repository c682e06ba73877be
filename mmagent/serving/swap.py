"""Live swap: serve a new model version without dropping a request.

A *source* says which version should be served now: :class:`RunSource` (a run folder; a new run
put in its place is a new version) or :class:`AliasSource` (a registry alias, e.g.
``production``, whose pointer ``mmagent promote`` moves). The :class:`Swapper` polls the source
every ``poll_s`` seconds in a daemon thread; when the version changes it loads the new agent in
that thread, off the request path, checks that it takes the same inputs as the schema clients use
(otherwise it logs an error and keeps serving the old one), and then installs it with one
reference assignment. The micro-batchers read that reference once per batch, so a batch is
answered entirely by one version and no request sees a half-loaded model; batches already
running finish on the old agent, which is freed when they are done.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mmagent import runs
from mmagent.lifecycle.registry import LOADED_FILES, Registry, input_signature, read_spec
from mmagent.specs import ModelSpec

log = logging.getLogger("mmagent.serving")


@dataclass(frozen=True)
class Served:
    """An agent and the version it is, installed together (one reference: never torn)."""

    agent: Any
    version: str
    run_dir: Path | None = None  # where it was loaded from (None: an agent handed in)
    monitor: Any = None  # its drift monitor (lifecycle.monitor), when the run has a profile


class Source(Protocol):
    def spec(self) -> ModelSpec:
        """The spec of the version to serve at startup: the schema clients are given."""

    def poll(self) -> str | None:
        """A cheap key of what should be served now (None: nothing servable yet)."""

    def resolve(self, key: str) -> tuple[str, Path]:
        """(version name, run folder) for ``key``, checked; raises when it cannot be served."""


class RunSource:
    """A run folder. Its files' sizes and modification times are the key; a change is loaded once
    it has stayed the same for two polls (a run being copied into place is not loaded half-way),
    and the version is named after the content of the small files that identify the model."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._last: str | None = None

    def spec(self) -> ModelSpec:
        return read_spec(self.run_dir)

    def _stat_key(self) -> str | None:
        model = runs.model_dir(self.run_dir)
        try:
            files = [p for p in model.rglob("*") if p.is_file()] + [self.run_dir / f for f in LOADED_FILES if (self.run_dir / f).is_file()]
            stats = sorted(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}:{p.stat().st_ino}" for p in files)
        except OSError:  # a file removed while we looked: the folder is being replaced
            return None
        return hashlib.sha256("\n".join(stats).encode()).hexdigest() if stats else None

    def poll(self) -> str | None:
        key, previous = self._stat_key(), self._last
        self._last = key
        return key if key is not None and key == previous else None  # unchanged for two polls

    def first(self) -> str | None:
        return self._stat_key()

    def resolve(self, key: str) -> tuple[str, Path]:
        digest = hashlib.sha256()
        for f in (runs.model_dir(self.run_dir) / runs.CHECKSUMS_FILE, self.run_dir / runs.CONFIG_FILE, self.run_dir / runs.CALIBRATION_FILE):
            digest.update(f.read_bytes() if f.is_file() else b"-")
        return f"run-{digest.hexdigest()[:12]}", self.run_dir


class AliasSource:
    """A registry alias: the key is the version its pointer names; the run folder is verified
    against the version's checksums before it is loaded."""

    def __init__(self, registry: str | Path, alias: str) -> None:
        self.registry, self.alias = Registry.open(registry), alias
        self.registry.pointer(alias)  # a bad alias name fails here, at startup

    def spec(self) -> ModelSpec:
        holder = self.registry.holder(self.alias)
        if holder is None:
            raise FileNotFoundError(f"registry {self.registry.root}: no version holds the alias {self.alias!r} yet (`mmagent promote RUN` sets it)")
        return read_spec(holder.run)

    def poll(self) -> str | None:
        try:
            pointer = self.registry.pointer(self.alias)
        except ValueError as e:  # a corrupt pointer file: keep serving, say why
            log.error("registry alias %s: %s", self.alias, e)
            return None
        return str(pointer["version"]) if pointer else None

    def first(self) -> str | None:
        return self.poll()

    def resolve(self, key: str) -> tuple[str, Path]:
        version = self.registry.version(int(key))
        return version.name, self.registry.verified_run(version)


class Swapper:
    """Load the version ``source`` names and install it with ``install``; see the module docstring."""

    def __init__(self, source: Any, load: Callable[[Path], Any], schema: ModelSpec, install: Callable[[Served], None], poll_s: float = 5.0) -> None:
        self.source, self.load, self.install, self.poll_s = source, load, install, poll_s
        self.signature = input_signature(schema)
        self.key: str | None = None  # what is being served
        self.failed: str | None = None  # a version that could not be served (not retried until the pointer moves)
        self.swaps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load_first(self) -> Served:
        """The version to serve at startup (blocking; raises when it cannot be loaded)."""
        key = self.source.first()
        if key is None:
            raise FileNotFoundError("nothing to serve: the run folder is empty or the alias is not set")
        served = self._load(key)
        self.key = key
        return served

    def _load(self, key: str) -> Served:
        version, run_dir = self.source.resolve(key)
        agent = self.load(run_dir)
        got = input_signature(agent.model.spec)
        if got != self.signature:
            raise ValueError(
                f"version {version} takes other inputs than the schema clients use ({got} instead of {self.signature}); keeping the version in service"
            )
        agent.version = version
        return Served(agent, version, run_dir)

    def check_once(self) -> bool:
        """Poll once; load and install a new version if there is one. True when a swap happened."""
        key = self.source.poll()
        if key is None or key in (self.key, self.failed):
            return False
        try:
            served = self._load(key)
        except Exception as e:  # noqa: BLE001 - a bad new version must never take the server down
            self.failed = key
            log.error("live swap refused (still serving the previous version): %s: %s", type(e).__name__, e)
            return False
        self.install(served)
        self.key, self.failed = key, None
        self.swaps += 1
        log.info("live swap: now serving version %s", served.version)
        return True

    def start(self) -> None:
        if self.poll_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mmagent-swapper", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the watcher keeps watching
                log.exception("live swap: unexpected error while checking for a new version")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
