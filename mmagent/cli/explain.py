"""``mmagent explain RUN --record RECORD -o DIR``: one record's explanation as files.

Writes ``DIR/explanation.json`` (what ``POST /v1/explain`` returns), one
``DIR/<image input>_heatmap.png`` per image input (the heatmap over the image) and
``DIR/explanation.html`` (highlighted words, audio importance bars, the overlays embedded).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from mmagent.cli.support import load_saved, record_from_json, resolve_device, user_errors

commands = typer.Typer()


def read_record(record: str) -> tuple[dict[str, Any], Path]:
    """``--record``: a JSON object, or a ``.json`` file holding one (its media paths are relative
    to the file). Returns the record and the folder media paths are taken from."""
    text, base = record, Path(".")
    if record.strip().endswith(".json") and not record.lstrip().startswith("{"):
        path = Path(record)
        if not path.is_file():
            raise FileNotFoundError(f"--record: no such file {path}")
        text, base = path.read_text(encoding="utf-8"), path.parent
    return record_from_json(text), base


def safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


@commands.command()
@user_errors
def explain(
    run_dir: Path = typer.Argument(..., help="a run folder from `mmagent train` or `mmagent fit`"),
    record: str = typer.Option(..., "--record", help='one record: JSON (\'{"text": "..."}\') or a .json file (media paths relative to it)'),
    output: Path = typer.Option(..., "-o", "--output", help="a new or empty folder for explanation.json, .html and heatmap PNGs"),
    device: str = typer.Option("auto", "--device", help="cpu | cuda | auto (a GPU when one is visible)"),
) -> None:
    """Explain the agent's decision for one record: word scores, image heatmaps, audio importance."""
    from mmagent import runs
    from mmagent.agent import Agent
    from mmagent.agent.explain_render import html_page, png_bytes
    from mmagent.io import atomic_path, write_json, write_text

    rec, base = read_record(record)
    runs.check_run_dir(output, resume=False)  # before any work: never write into a folder we did not create
    where = resolve_device(device)
    agent = load_saved(run_dir, lambda: Agent.load(run_dir, device=where))
    explanation = agent.explain(rec, base_dir=base)
    body = explanation.to_dict()
    runs.create_run_dir(output)
    for name, info in body["inputs"].items():
        if info["modality"] == "image":
            with atomic_path(output / f"{safe_name(name)}_heatmap.png") as tmp:
                tmp.write_bytes(png_bytes(info["overlay_png"]))
    write_json(output / "explanation.json", body)
    write_text(output / "explanation.html", html_page(body, explanation.texts))
    value = body["decision"].get("value")  # a regression target explains a value, not a label
    label = body["explained_label"] if body["explained_label"] is not None or value is None else f"{value:.4g}"
    typer.echo(f"{body['target']}: {label} ({body['decision']['action']}); wrote {output / 'explanation.json'} and {output / 'explanation.html'}")
