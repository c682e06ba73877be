"""``mmagent report RUN``: rebuild a finished run's report.md, plots and report.html from what its
folder holds (no data, no model run). Registered on the main app by ``cli.py``."""

from __future__ import annotations

from pathlib import Path

import typer

from mmagent.cli.support import user_errors

commands = typer.Typer()


@commands.command()
@user_errors
def report(run_dir: Path = typer.Argument(..., help="a finished run folder (from `mmagent train` or `mmagent fit`)")) -> None:
    """Regenerate report.md (with plots/) and the self-contained report.html of a finished run."""
    from mmagent import runs
    from mmagent.finishing.report import write_reports

    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if not (run_dir / runs.MARKER_FILE).is_file():
        # only a folder mmagent created is ever written into
        raise runs.RunFolderError(f"{run_dir} is not an mmagent run folder (no {runs.MARKER_FILE}); refusing to write into it")
    write_reports(run_dir)
    typer.echo(f"wrote {run_dir / runs.REPORT_FILE} and {run_dir / runs.REPORT_HTML_FILE}")
