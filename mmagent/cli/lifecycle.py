"""The ``mmagent`` commands that keep an agent current: ``update`` (warm start), ``compare`` and
``promote`` (merged into the main app in cli.py; each parses its options and calls one function in
``lifecycle/``). Exit status 3 means the challenger was refused (1 and 2 keep their meaning: a
failing system, a wrong input)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mmagent.cli.support import resolve_device, user_errors

commands = typer.Typer()

REFUSED = 3


@commands.command()
@user_errors
def compare(
    run_a: Path = typer.Argument(..., help="a run folder (the baseline, e.g. the champion)"),
    run_b: Path = typer.Argument(..., help="another run folder (e.g. the challenger)"),
    data: Path = typer.Option(..., "--data", help="a labelled evaluation table both agents are scored on"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write the comparison here: FILE.json (JSON) or FILE.md (Markdown)"),
    latency_records: int = typer.Option(32, "--latency-records", help="single-record calls per agent for the latency median"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
) -> None:
    """Score two agents on the same table: overall and per-class metrics, calibration (ECE on this
    table), latency and throughput (measured alternately on this machine)."""
    from mmagent.io import write_json, write_text
    from mmagent.lifecycle.compare import compare as run_compare

    if output is not None and output.suffix.lower() not in (".json", ".md"):
        raise ValueError(f"-o {output}: the file name must end in .json or .md")
    result = run_compare(run_a, run_b, data, latency_records=latency_records, device=resolve_device(device))
    typer.echo(result.text())
    if output is not None:
        if output.suffix.lower() == ".json":
            write_json(output, result.to_dict())
        else:
            write_text(output, result.markdown())
        typer.echo(f"wrote {output}")


@commands.command()
@user_errors
def promote(
    run: Path = typer.Argument(..., help="the challenger's run folder"),
    data: Path = typer.Option(..., "--data", help="a labelled evaluation table (the same one for champion and challenger)"),
    registry: Path = typer.Option(..., "--registry", help="the registry folder (created on first use)"),
    alias: str = typer.Option("production", "--alias", help="the alias to move to the challenger"),
    tolerance: float = typer.Option(0.01, "--tolerance", help="how much worse than the champion is still accepted (absolute; relative for MAE/RMSE)"),
    min_support: int = typer.Option(20, "--min-support", help="classes with at least this many examples must not get worse either"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
) -> None:
    """Promote RUN to the registry alias if it is not worse than the version holding it (overall
    and on every well-supported class); the first promotion always succeeds. The decision is
    written to REGISTRY/decisions/ and printed; exit status 3 when refused."""
    from mmagent.lifecycle.promote import promote as run_promote

    decision = run_promote(run, data, registry, alias, tolerance, min_support, device=resolve_device(device))
    typer.echo(decision.markdown())
    typer.echo(f"decision written to {decision.record} (and .md)")
    if not decision.accepted:
        typer.secho(
            f"error: refused: {decision.challenger} does not replace {decision.champion} as {alias!r}: " + "; ".join(decision.reasons),
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(REFUSED)
    typer.echo(json.dumps({"alias": alias, "version": decision.challenger}))


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
