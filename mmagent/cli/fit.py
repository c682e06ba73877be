"""``mmagent fit`` (a bare table to an agent) and ``mmagent fit-worker`` (another process or machine
joining a running fit's search)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmagent.cli.support import read_agent_file, user_errors

commands = typer.Typer()


@commands.command()
@user_errors
def fit(
    train: Optional[Path] = typer.Argument(None, help="training table (CSV/JSONL/Parquet): one row per example"),
    label: Optional[str] = typer.Option(None, "--label", help="the column to predict"),
    output: Path = typer.Option(..., "-o", "--output", help="run folder to create (the chosen model, leaderboard, report)"),
    validation: Optional[Path] = typer.Option(None, "--validation", help="validation table (default: a stratified 10 % of TRAIN)"),
    test: Optional[Path] = typer.Option(None, "--test", help="test table, scored once on the chosen model"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="e.g. 90s, 20m, 1h30m (default: the preset's: fast 5m, balanced 30m, best 2h)"),
    preset: str = typer.Option("balanced", "--preset", help="fast | balanced | best"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="domain policy and encoders: customer_service | medical_imaging | finance"),
    column_type: list[str] = typer.Option([], "--column-type", help="override one column's kind: COL=text|categorical|numeric|image|audio|ignore (repeatable)"),
    agent: Optional[Path] = typer.Option(
        None, "--agent", help="YAML file with the agent block (policy type, playbook, escalation, alerts), merged into the recipe's"
    ),
    seed: int = typer.Option(0, "--seed", help="random seed of every candidate and of the search"),
    metric: Optional[str] = typer.Option(
        None, "--metric", help="validation metric to rank candidates on: accuracy | macro_f1 | mcc | auroc (classification), rmse | mae | r2 (regression)"
    ),
    ensemble: Optional[bool] = typer.Option(
        None, "--ensemble/--no-ensemble", help="average the best candidates when that wins on validation (default: the preset's: balanced and best do)"
    ),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
    resume: bool = typer.Option(
        False, "--resume", help="continue the unfinished fit in -o (its table, settings and finished candidates; --time-budget: new time)"
    ),
    storage: Optional[str] = typer.Option(
        None, "--storage", help="SQLAlchemy URL of the search's study (default: SQLite in -o); PostgreSQL lets workers on other machines join"
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="processes on this machine that train candidates side by side"),
) -> None:
    """Infer the columns, search encoders / freezing / hyperparameters within a time budget, and
    keep the best model as the run (loadable with Agent.load; config.yaml reproduces it)."""
    from mmagent.search.fit import fit as run_fit

    result = run_fit(
        train,
        label,
        output,
        validation=validation,
        test=test,
        time_budget=time_budget,
        preset=preset,
        recipe=recipe,
        column_types=column_type,
        agent=read_agent_file(agent) if agent is not None else None,
        seed=seed,
        metric=metric,
        ensemble=ensemble,
        progress=not quiet,
        resume=resume,
        storage=storage,
        workers=workers,
    )
    if not result.beats_baseline:  # a run that learnt nothing usable is not a success
        typer.echo(f"error: {result.baseline['note']}", err=True)  # type: ignore[index]
        raise typer.Exit(3)


@commands.command("fit-worker")
@user_errors
def fit_worker(
    run_dir: Path = typer.Argument(..., help="the run folder of a running `mmagent fit` (on a shared file system for other machines)"),
    storage: Optional[str] = typer.Option(
        None, "--storage", envvar="MMAGENT_FIT_STORAGE", help="the study's URL, when the fit's storage holds a password (it is never written to disk)"
    ),
    index: Optional[int] = typer.Option(None, "--index", hidden=True, help="worker number (set by fit --workers)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
) -> None:
    """Join the search of a running fit: train candidates from its study until its deadline.
    The fit that started the search ranks every worker's candidates and promotes the winner."""
    from mmagent.search.budget import join_search

    ran = join_search(run_dir, storage=storage, index=index, progress=not quiet)
    typer.echo(f"worker done: {ran} candidate(s) trained")
