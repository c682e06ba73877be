"""A model registry in a folder: numbered versions of run folders, and aliases (``production``)
that point at one version. Torch-free and training-free: the server reads it to know what to serve.

::

    REGISTRY/
      .mmagent-registry           marks a folder this tool created (no other folder is written into)
      versions/000001.json        one registered run: its path + the SHA-256 of every file the agent loads
      aliases/production.json     the pointer: which version holds the alias (replaced atomically)
      decisions/<time>-<alias>.json / .md   each promotion decision with its comparison table

A version *references* its run folder and records checksums instead of copying it. Runs hold
encoder weights (hundreds of MB with the zoo encoders), mmagent never writes into a finished run,
and the manifest makes any later change loud: :meth:`Registry.verified_run` rehashes every file
before a version is loaded, and a changed, missing or added file is an error naming it, never a
silently different model. (The price: deleting a registered run folder breaks its version; the
error says so.)
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmagent import runs
from mmagent.io import write_json, write_text
from mmagent.specs import ModelSpec

MARKER = ".mmagent-registry"
ALIAS_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# What Agent.load reads from a run: the model folder, the config (policy, playbook embedded) and
# the calibration (temperatures, escalation threshold).
LOADED_FILES = runs.SEALED_FILES + (runs.CHECKSUMS_FILE,)


class RegistryError(ValueError):
    """A registry that cannot be used as asked (not a registry, an unknown version, a changed run)."""


@dataclass
class Version:
    """One registered run."""

    number: int
    run: str
    files: dict[str, str]  # path relative to the run -> SHA-256
    inputs: list[dict[str, Any]]  # the request schema clients use: columns, modality, required
    target: str | None = None
    registered: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # the run's own test/validation headline

    @property
    def name(self) -> str:
        return f"v{self.number}"


def input_signature(spec: ModelSpec) -> list[dict[str, Any]]:
    """What a client must send, per input: columns, modality and whether it is required (sorted,
    so the order of inputs in the spec does not matter)."""
    return sorted(({"columns": list(i.columns), "modality": i.modality, "required": bool(i.required)} for i in spec.inputs), key=json.dumps)


def read_spec(run_dir: str | Path) -> ModelSpec:
    path = runs.model_dir(run_dir) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no model/model.json)")
    return ModelSpec.model_validate(json.loads(path.read_text()))


def manifest(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every file the agent loads from ``run_dir``."""
    model = runs.model_dir(run_dir)
    files = [p for p in model.rglob("*") if p.is_file()] + [run_dir / f for f in LOADED_FILES if (run_dir / f).is_file()]
    return {p.relative_to(run_dir).as_posix(): runs.sha256_file(p) for p in sorted(files)}


class Registry:
    """A registry folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def open(cls, root: str | Path, create: bool = False) -> Registry:
        """The registry at ``root``; with ``create``, a new or empty folder becomes one. A non-empty
        folder without the marker is refused: it is not ours to write into."""
        root = Path(root)
        if (root / MARKER).is_file():
            return cls(root)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise RegistryError(f"{root} is not an mmagent registry (no {MARKER}) and not empty; refusing to use it: choose a new or empty folder")
        if not create:
            raise RegistryError(f"{root}: no registry there yet (`mmagent promote RUN --registry {root}` creates it)")
        for sub in ("versions", "aliases", "decisions"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        write_text(root / MARKER, json.dumps({"created": _now()}) + "\n")
        return cls(root)

    # -- versions ---------------------------------------------------------------------------------
    def versions(self) -> list[Version]:
        return [self.version(int(p.stem)) for p in sorted((self.root / "versions").glob("[0-9]*.json"))]

    def version(self, number: int) -> Version:
        path = self.root / "versions" / f"{number:06d}.json"
        if not path.is_file():
            raise RegistryError(f"{self.root}: no version {number}")
        return Version(**runs.read_json(path))

    def register(self, run_dir: str | Path) -> Version:
        """Register ``run_dir`` (an existing version when the same run, unchanged, is registered)."""
        run_dir = runs.verify_run(Path(run_dir).resolve())  # integrity before trust: nothing is written for a damaged run
        spec = read_spec(run_dir)
        files = manifest(run_dir)
        for v in self.versions():
            if v.run == str(run_dir) and v.files == files:
                return v
        target = (runs.read_config(run_dir).get("agent") or {}).get("target") or spec.targets[0].column
        metrics = runs.read_metrics(run_dir)
        headline = {s: metrics[s] for s in ("test", "validation") if isinstance(metrics.get(s), dict)}
        headline = {s: {t: {k: v for k, v in m.items() if isinstance(v, (int, float))} for t, m in ms.items()} for s, ms in headline.items()}
        folder = self.root / "versions"
        folder.mkdir(parents=True, exist_ok=True)
        while True:  # claim the next number: a link never replaces an existing file (two registrations race safely)
            number = max((int(p.stem) for p in folder.glob("[0-9]*.json")), default=0) + 1
            version = Version(number, str(run_dir), files, input_signature(spec), target, _now(), headline)
            tmp = folder / f".{number:06d}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(asdict(version), indent=2) + "\n")
            try:
                os.link(tmp, folder / f"{number:06d}.json")
                return version
            except FileExistsError:
                continue
            finally:
                tmp.unlink(missing_ok=True)

    def verified_run(self, version: Version) -> Path:
        """The run folder of ``version`` after checking that every file the agent loads is the one
        registered (and that none was added to the model)."""
        run_dir = Path(version.run)
        if not run_dir.is_dir():
            raise RegistryError(f"version {version.name}: its run folder {run_dir} is gone; register the run again or promote another version")
        now = manifest(run_dir)
        changed = sorted(f for f in version.files if now.get(f) != version.files[f])
        added = sorted(set(now) - set(version.files))
        if changed or added:
            what = "; ".join(x for x in (f"changed or missing: {', '.join(changed)}" if changed else "", f"added: {', '.join(added)}" if added else "") if x)
            raise RegistryError(f"version {version.name}: the run folder {run_dir} is not what was registered ({what}); refusing to load it")
        return run_dir

    # -- aliases ----------------------------------------------------------------------------------
    def _alias_path(self, alias: str) -> Path:
        if not ALIAS_PATTERN.fullmatch(alias):
            raise RegistryError(f"alias {alias!r}: use letters, digits, '_', '.', '-' (at most 64 characters)")
        return self.root / "aliases" / f"{alias}.json"

    def pointer(self, alias: str) -> dict[str, Any] | None:
        """The alias's pointer (``{"alias", "version", "since", "decision"}``), None when unset."""
        data = runs.read_json(self._alias_path(alias))
        return data or None

    def holder(self, alias: str) -> Version | None:
        """The version that holds ``alias`` (None when no version does yet)."""
        pointer = self.pointer(alias)
        return self.version(int(pointer["version"])) if pointer else None

    def set_alias(self, alias: str, version: Version, decision: str | None = None) -> None:
        """Point ``alias`` at ``version``: a temporary file then ``os.replace``, so a reader (the
        server polling it) sees the old pointer or the new one, never a partial file."""
        self.version(version.number)  # it must be registered
        write_json(self._alias_path(alias), {"alias": alias, "version": version.number, "since": _now(), "decision": decision})

    # -- decisions --------------------------------------------------------------------------------
    def decision_path(self, alias: str) -> Path:
        """A new ``decisions/<time>-<alias>.json`` (its ``.md`` sits next to it)."""
        self._alias_path(alias)
        stem = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.6f}"[1:].replace(".", "-") + f"-{alias}"
        return self.root / "decisions" / f"{stem}.json"

    def write_decision(self, path: Path, record: dict[str, Any], markdown: str) -> None:
        """Write a decision as JSON at ``path`` and as Markdown next to it (atomically, each)."""
        write_json(path, record)
        write_text(path.with_suffix(".md"), markdown)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
