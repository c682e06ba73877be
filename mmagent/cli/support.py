"""What the command line shares: the one mapping from the package's errors to an ``error:`` line
and an exit status, device choice, loading a saved model with a clear error, and the rows that
``predict`` writes."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

# Warnings (an uncertified promise, a run below its baseline) read as one line, not Python's source echo.
warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"warning: {message}\n"


def error_message(err: BaseException) -> tuple[str, int] | None:
    """The one place that maps the package's errors to what the CLI prints and its exit status:
    (message, status), or None for a bug (which keeps its traceback). Status 2: the input (config,
    data, run folder, option) is wrong; 1: the system failed (a read-only folder, a full disk)."""
    from mmagent.config import ConfigError
    from mmagent.data.validation import DataError

    if isinstance(err, (ConfigError, DataError, FileExistsError)):
        return str(err), 2
    if isinstance(err, OSError):
        if err.filename and err.strerror:  # "[Errno 28] ...: 'path'" -> "path: No space left on device"
            return f"{err.filename}: {err.strerror}", 1 if not isinstance(err, FileNotFoundError) else 2
        return str(err), 2 if isinstance(err, FileNotFoundError) else 1
    if isinstance(err, (ValueError, ImportError)):  # incl. EncoderError, MediaError, pydantic errors
        return str(err), 2
    return None


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into ``error: MESSAGE`` on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            mapped = error_message(e)
            if mapped is None:
                raise
            typer.secho(f"error: {mapped[0]}", fg=typer.colors.RED, err=True)
            raise typer.Exit(mapped[1]) from None

    return wrapper


def record_from_json(text: str) -> dict[str, Any]:
    """``--record``'s JSON: one object of column -> value, or a one-line error naming the option."""
    import json

    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--record is not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise ValueError("--record must be a JSON object of column -> value")
    return record


def resolve_device(choice: str) -> str:
    """``cpu`` | ``cuda`` | ``auto`` (a GPU when one is visible) -> a torch device string."""
    import torch

    if choice not in ("cpu", "cuda", "auto"):
        raise ValueError(f"--device {choice!r}: use cpu, cuda or auto")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible here; use --device cpu or auto")
    return choice


def model_folder(run_dir: Path) -> Path:
    folder = run_dir / "model" if (run_dir / "model").is_dir() else run_dir
    if not (folder / "model.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no model/model.json)")
    return folder


def load_saved(run_dir: Path, load: Callable[[], Any]) -> Any:
    """Run a model loader; a damaged saved model (truncated weights, an unknown encoder or a bad
    model.json) becomes one error line that names the run folder (and the weights file)."""
    from safetensors import SafetensorError

    folder = model_folder(run_dir)
    try:
        return load()
    except SafetensorError as e:
        raise ValueError(f"{folder / 'model.safetensors'}: cannot read the weights ({e}); the file is truncated or damaged, re-export or re-train") from None
    except ValueError as e:  # an unknown encoder or an edited spec in model.json, a bad policy, bad JSON
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{run_dir}: cannot load the saved model: {first}") from None


# Decision fields a table of decisions carries, in this order (the rest is in --record / the API).
DECISION_COLUMNS = (
    "target",
    "label",
    "labels",
    "value",
    "confidence",
    "action",
    "reply",
    "escalated",
    "reason",
    "transcript",
    "unknown",
    "unknown_score",
    "prediction_set",
)


def decision_row(decision: dict[str, Any]) -> dict[str, Any]:
    row = {k: decision.get(k) for k in DECISION_COLUMNS}
    row["labels"] = "|".join(row["labels"] or [])
    row["prediction_set"] = "|".join(row["prediction_set"]) if row["prediction_set"] is not None else None
    return row


def prediction_row(result: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for target, res in result.items():
        for k, v in res.items():
            if k == "probabilities":
                flat.update({f"{target}:p({lab})": p for lab, p in v.items()})
            else:
                flat[f"{target}:{k}"] = "|".join(v) if isinstance(v, list) else v
    return flat


def read_agent_file(path: Path) -> dict[str, Any]:
    """``fit --agent FILE``: the agent block in a YAML file; a playbook named in it is relative to it."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"--agent: file not found: {path}")
    block = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(block, dict):
        raise ValueError(f"--agent {path}: the file must hold a mapping (type: ..., playbook: ...)")
    if isinstance(block.get("playbook"), str):  # relative to the agent file, like a config's paths
        block["playbook"] = str((path.parent / block["playbook"]).resolve())
    return block
