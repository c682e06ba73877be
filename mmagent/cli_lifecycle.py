"""The ``mmagent`` commands that keep an agent current (``update``; more to come). ``cli.py`` adds
them to its app; each command only parses its options and calls one function in ``lifecycle/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mmagent.cli_support import user_errors

commands = typer.Typer()


@commands.command()
@user_errors
def update(
    run_dir: Path = typer.Argument(..., help="the run to start from (its weights, vocabularies, scales and training table)"),
    data: Path = typer.Option(..., "--data", help="the new training table (may add labels)"),
    output: Path = typer.Option(..., "-o", "--output", help="run folder to create for the updated model"),
    replay: float = typer.Option(0.3, "--replay", help="old training rows mixed back in, as a share of the new rows (stratified by label; 0: none)"),
    validation: Optional[Path] = typer.Option(None, "--validation", help="validation table (default: a stratified split of new + replayed rows)"),
    test: Optional[Path] = typer.Option(None, "--test", help="test table, scored once on the updated model"),
    set_: list[str] = typer.Option([], "--set", help="override a key of RUN's config, e.g. --set train.epochs=2 (repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Warm-start a new run from RUN on new data plus replayed old rows; lineage.json records where it came from."""
    from mmagent.lifecycle.update import update as run_update

    result = run_update(run_dir, data, output, replay=replay, validation=validation, test=test, overrides=set_, progress=not quiet)
    scores = {
        split: {t: {k: v for k, v in m.items() if isinstance(v, (int, float))} for t, m in ms.items()}
        for split, ms in result.metrics.items()
        if split in ("validation", "test")
    }
    typer.echo(json.dumps({"run": str(result.run_dir), "labels_added": result.lineage["labels_added"], **scores}, indent=2))
