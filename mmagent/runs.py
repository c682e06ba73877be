"""The run folder: its layout in one place, and reading what a finished run left behind.

::

    RUN_DIR/
      config.json          the validated experiment config (agent block resolved)
      model/               the best model (model.json, model.safetensors, assets/); a fit's ensemble adds
                           members/<i>/ (the other models) and ensemble.json (see mmagent.ensemble)
      metrics.json         final metrics per split, ablation, calibration
      metrics.jsonl        the training log: one line per step / epoch
      calibration.json     temperatures per target, prediction-set quantile, the escalation threshold and its guarantee
      unknown.json         the unknown-input score: its kind, threshold, how both were chosen (+ unknown.safetensors)
      report.md, plots/    the human-readable report
      report.html          the same as one self-contained page (figures embedded, no external links)
      predictions.npz      logits, outputs and targets of the split the report shows (test, else validation)
      leaderboard.csv/.md  the candidates ``mmagent fit`` tried (fit runs only)
      config.yaml          fit runs: the config ``mmagent train`` reproduces the model from
                           (an ensemble: its first model; config.member-<i>.yaml the others)
      checkpoints/last/    the latest training checkpoint (for --resume)
      skipped_rows.csv     rows left out by data.on_bad_row: skip
      lineage.json         a warm-started update: its parent run, the parent's weights checksum, data fingerprints
      tensorboard/         train.log_with: tensorboard event files
      .mmagent-run         marks a folder mmagent created: only such a folder is ever written into

A saved model folder carries ``checksums.sha256`` (``sha256sum -c`` format) of its own files,
written at save and verified at load, so flipped bits or a truncated file are named, not loaded.

Everything that reads a run (the agent, the server, tuning, benchmarks) goes through here, so
none of them needs to import training.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmagent.io import write_text

CONFIG_FILE = "config.json"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
METRICS_LOG = "metrics.jsonl"
CALIBRATION_FILE = "calibration.json"
REPORT_FILE = "report.md"
REPORT_HTML_FILE = "report.html"
PREDICTIONS_FILE = "predictions.npz"
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
PLOTS_DIR = "plots"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINTS_DIR}/last"
SKIPPED_ROWS_FILE = "skipped_rows.csv"
TENSORBOARD_DIR = "tensorboard"
LINEAGE_FILE = "lineage.json"
# calibration.json: the key of the escalation threshold, next to the per-target entries
ESCALATION_KEY = "_escalation_threshold"
BASELINE_KEY = "_baseline"  # the run against the obvious baseline (majority class / training mean) on validation
MARKER_FILE = ".mmagent-run"
CHECKSUMS_FILE = "checksums.sha256"
UNKNOWN_FILE = "unknown.json"  # the unknown-input score's choice and threshold (mmagent.agent.unknown)
UNKNOWN_WEIGHTS = "unknown.safetensors"  # its class means and whitening matrix
ENSEMBLE_FILE = "ensemble.json"  # in a model folder: the other members and every member's temperatures


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (not a run, a finished run, a corrupt file)."""


def model_dir(run_dir: str | Path) -> Path:
    """The saved model of a run (``RUN_DIR/model``); a bare model folder is accepted as well."""
    run_dir = Path(run_dir)
    return run_dir / MODEL_DIR if (run_dir / MODEL_DIR).is_dir() else run_dir


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when the file does not exist. A corrupt file is an
    error naming it, not a traceback from the JSON parser."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's saved config (``config.json``) as a plain mapping; ``{}`` for a bare model folder."""
    return read_json(Path(run_dir) / CONFIG_FILE)


def read_calibration(run_dir: str | Path) -> dict[str, Any]:
    """``calibration.json``: ``{target: {temperature, ece_before, ece_after, ...}, ESCALATION_KEY: {...}}``."""
    return read_json(Path(run_dir) / CALIBRATION_FILE)


def temperatures(calibration: dict[str, Any], source: str = CALIBRATION_FILE) -> dict[str, float]:
    """Target -> fitted temperature, from a calibration mapping. A temperature that is not a
    positive finite number (0 would turn every probability into NaN) is an error naming the target."""
    out = {}
    for k, v in calibration.items():
        if isinstance(v, dict) and "temperature" in v:
            t = v["temperature"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
                raise RunFolderError(f"{source}: {k}.temperature must be a positive number, got {t!r}")
            out[k] = float(t)
    return out


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``metrics.json``: final metrics per split (``validation``, ``test``), ablation, calibration."""
    return read_json(Path(run_dir) / METRICS_FILE)


def read_metrics_log(run_dir: str | Path, kind: str) -> list[dict[str, Any]]:
    """Entries of ``RUN_DIR/metrics.jsonl``: ``kind="step"`` (training loss lines) or
    ``"epoch"`` (validation lines). A torn last line (a killed run) is skipped."""
    path = Path(run_dir) / METRICS_LOG
    if not path.is_file():
        return []
    key = "loss" if kind == "step" else "validation"
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and key in entry:
            out.append(entry)
    return out


def read_predictions(run_dir: str | Path) -> tuple[str, dict[str, dict[str, Any]]] | None:
    """``predictions.npz``: ``(split, {target: {"logits", "outputs", "targets": array}})``, or
    None when the run has none (a run finished before they were saved)."""
    import zipfile

    import numpy as np

    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:  # plain arrays only: nothing is unpickled
            split, out = str(data["split"]), {}
            for key in data.files:
                kind, _, target = key.partition("/")
                if target:
                    out.setdefault(target, {})[kind] = data[key]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise RunFolderError(f"{path}: cannot read the saved predictions ({e})") from None
    return split, out


def check_run_dir(run_dir: str | Path, resume: bool) -> Path:
    """Refuse to start a run where it would overwrite or mix with something else; returns the
    checkpoint folder. Resuming needs the latest checkpoint. A fresh run needs a new or empty
    folder, or one mmagent created (``MARKER_FILE``) whose run neither holds a checkpoint nor
    finished (a model or final metrics, even with checkpoints removed)."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / LAST_CHECKPOINT
    if resume:
        # the checkpoints folder exists from the run's start; training.checkpoint.prepare_resume
        # recovers its latest complete state (or restarts a run that died before its first one)
        if not (run_dir / CHECKPOINTS_DIR).is_dir():
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
        return ckpt_dir
    if not run_dir.exists():
        return ckpt_dir
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is a file, not a folder; choose a folder for the run")
    if any(run_dir.iterdir()) and not (run_dir / MARKER_FILE).is_file():
        raise RunFolderError(
            f"{run_dir} is not empty and is not an mmagent run folder (no {MARKER_FILE}); refusing to write into it: choose a new or empty folder"
        )
    if (run_dir / CHECKPOINTS_DIR).exists():
        raise FileExistsError(f"{run_dir} already holds a training run; use --resume to continue it or choose another folder")
    finished = [name for name in (MODEL_DIR, METRICS_FILE) if (run_dir / name).exists()]
    if finished:
        raise FileExistsError(f"{run_dir} holds a finished run ({', '.join(finished)}); choose another folder (nothing in it is overwritten)")
    return ckpt_dir


def check_new_run_dir(output: str | Path, command: str) -> None:
    """For commands that write a whole new run (``fit``, ``update``): :func:`check_run_dir`, and
    refuse even an mmagent folder that holds anything but its marker (never mix two runs)."""
    output = Path(output)
    check_run_dir(output, resume=False)
    if output.is_dir() and any(p.name != MARKER_FILE for p in output.iterdir()):
        raise FileExistsError(f"{output} already holds files: {command} writes a new run folder; choose another -o")


def create_run_dir(run_dir: str | Path, resume: bool = False) -> None:
    """Create the run folder (after :func:`check_run_dir` passed) and mark it as mmagent's. A
    fresh start in a marked folder whose run died before its first checkpoint drops that run's
    training log, so two runs never mix in ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / MARKER_FILE
    if not marker.is_file():
        write_text(marker, json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")  # names the path on a full disk
    if not resume:
        (run_dir / METRICS_LOG).unlink(missing_ok=True)


# -- checksums of a saved folder's own files -------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: str | Path, files: Iterable[Path] | None = None) -> None:
    """Write ``folder/CHECKSUMS_FILE`` for ``files`` (default: every file under ``folder``)."""
    folder = Path(folder)
    paths = sorted(files) if files is not None else sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}" for p in paths]
    (folder / CHECKSUMS_FILE).write_text("\n".join(lines) + "\n")


#: Files of a run folder the agent reads besides its model; sealed with checksums when the run ends.
SEALED_FILES = (CONFIG_FILE, CALIBRATION_FILE, UNKNOWN_FILE, UNKNOWN_WEIGHTS)


def seal_run(run_dir: str | Path) -> None:
    """Write ``RUN_DIR/checksums.sha256`` over the run's :data:`SEALED_FILES` and the model folder's
    own listing, so that a changed config, calibration, unknown-input score or model listing is
    refused at load; the run's marker records that it was sealed, so a deleted listing is refused too.
    (Checksums catch damage and edits, not a forger who rewrites them: they are not signatures.)"""
    run_dir = Path(run_dir)
    listing = [run_dir / MODEL_DIR / CHECKSUMS_FILE] if (run_dir / MODEL_DIR / CHECKSUMS_FILE).is_file() else []
    write_checksums(run_dir, [run_dir / f for f in SEALED_FILES if (run_dir / f).is_file()] + listing)
    marker = read_json(run_dir / MARKER_FILE) if (run_dir / MARKER_FILE).is_file() else {}
    write_text(run_dir / MARKER_FILE, json.dumps({**marker, "sealed": True}) + "\n")


def _sealed(run_dir: Path) -> bool:
    try:
        return bool(read_json(run_dir / MARKER_FILE).get("sealed"))
    except RunFolderError:
        return True  # a damaged marker: the listing is required


def verify_run(run_dir: str | Path, model: bool = True) -> Path:
    """Check a run folder before anything reads or adopts it: the model folder's checksums (with
    ``model``; loading a model checks them too) and the run's sealed files. Returns the run folder;
    a folder that is not a run, or any changed, truncated or missing file, is a
    :class:`RunFolderError` naming it."""
    run_dir = Path(run_dir)
    folder = model_dir(run_dir)
    if not (folder / "model.json").is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no {MODEL_DIR}/model.json)")
    if folder != run_dir and _sealed(run_dir):
        for listing in (run_dir / CHECKSUMS_FILE, folder / CHECKSUMS_FILE):
            if not listing.is_file():
                raise RunFolderError(f"{listing} is missing: this run was sealed when it ended; restore the file or train again")
    if model:
        verify_checksums(folder)
    if folder != run_dir:
        try:
            verify_checksums(run_dir)
        except RunFolderError as e:
            raise RunFolderError(
                f"{e} (a run's config, calibration and unknown-input score are sealed when it ends: to act differently, pass another policy to Agent.load(policy=...), or train a new run)"
            ) from None
    return run_dir


def verify_checksums(folder: str | Path) -> None:
    """Check every file listed in ``folder/CHECKSUMS_FILE``; a folder without one (saved before
    checksums existed) is accepted as is. A changed, truncated or missing file is an error naming it."""
    folder = Path(folder)
    listing = folder / CHECKSUMS_FILE
    if not listing.is_file():
        return
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        expected, _, name = line.partition("  ")
        path = folder / name
        if not name or len(expected) != 64 or ".." in Path(name).parts:
            raise RunFolderError(f"{listing}, line {n}: not a checksum line")
        if not path.is_file():
            raise RunFolderError(f"{path} is missing (listed in {listing})")
        if sha256_file(path) != expected:
            raise RunFolderError(f"{path} is corrupt: its SHA-256 does not match {listing} (a changed or truncated file); restore it or train again")
