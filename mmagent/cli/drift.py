"""``mmagent profile`` and ``mmagent drift``: a run's drift profile, and drift of a new table
against it (the scores the server also exposes on ``/metrics``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mmagent.cli.support import load_saved, model_folder, resolve_device, user_errors

commands = typer.Typer()


@commands.command()
@user_errors
def profile(
    run_dir: Path = typer.Argument(..., help="a run folder from `mmagent train` or `mmagent fit`"),
    train: Optional[Path] = typer.Option(None, "--train", help="the training table (default: the one in the run's config)"),
    validation: Optional[Path] = typer.Option(None, "--validation", help="the validation table (default: the run's, or its split of the training table)"),
    device: str = typer.Option("auto", "--device", help="cpu | cuda | auto (a GPU when one is visible)"),
) -> None:
    """(Re)build RUN_DIR/drift_profile.json from the run's training data (runs trained before
    drift watch have none)."""
    from mmagent.config import ExperimentConfig
    from mmagent.lifecycle.profile import write_profile
    from mmagent.runs import read_config
    from mmagent.training.splits import load_splits

    model_folder(run_dir)  # a clear error for a folder that is no run
    raw = read_config(run_dir)
    if not raw:
        raise FileNotFoundError(f"{run_dir} has no config.json: its training data is unknown")
    data = dict(raw.get("data") or {})
    if train is not None:
        data["train"] = str(train.resolve())
    if validation is not None:
        data["validation"] = str(validation.resolve())
    config = ExperimentConfig.model_validate({**raw, "data": data}, context={"base_dir": raw.get("base_dir", ".")})
    splits = load_splits(config)  # the same validation split as training (seeded)
    where = resolve_device(device)
    path = load_saved(run_dir, lambda: write_profile(run_dir, splits.train, splits.validation, where))
    typer.echo(f"wrote {path} ({len(splits.train)} training rows, {len(splits.validation)} validation rows)")


@commands.command()
@user_errors
def drift(
    run_dir: Path = typer.Argument(..., help="a run folder with a drift_profile.json"),
    data: Path = typer.Option(..., "--data", help="the new table (same input columns; labels not needed)"),
    psi: float = typer.Option(0.25, "--psi", help="retrain when any input feature's PSI exceeds this"),
    embedding_shift: float = typer.Option(0.25, "--embedding-shift", help="... or the mean distance to the training centroids rises by this share"),
    confidence_drop: float = typer.Option(0.10, "--confidence-drop", help="... or the mean confidence falls by this much"),
    label_shift: float = typer.Option(0.25, "--label-shift", help="... or predicted-label shares move by this total variation"),
    escalation_rise: float = typer.Option(0.10, "--escalation-rise", help="... or the escalated share rises by this much"),
    min_rows: int = typer.Option(50, "--min-rows", help="fewer rows than this: scores only, no verdict"),
    as_json: bool = typer.Option(False, "--json", help="print the scores as JSON"),
    device: str = typer.Option("auto", "--device", help="cpu | cuda | auto (a GPU when one is visible)"),
) -> None:
    """Drift of a new table against the run's training profile, and whether retraining is due."""
    from pydantic import ValidationError

    from mmagent.agent import Agent
    from mmagent.lifecycle.drift import DriftThresholds, drift_scores, format_scores
    from mmagent.lifecycle.profile import read_profile

    try:
        thresholds = DriftThresholds(
            psi=psi,
            embedding_shift=embedding_shift,
            confidence_drop=confidence_drop,
            label_shift=label_shift,
            escalation_rise=escalation_rise,
            min_rows=min_rows,
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    read_profile(run_dir)  # before loading the model: a run without a profile says so at once
    where = resolve_device(device)
    agent = load_saved(run_dir, lambda: Agent.load(run_dir, device=where))
    result = drift_scores(run_dir, data, thresholds, agent=agent)
    typer.echo(json.dumps(result, indent=2) if as_json else format_scores(result))
