"""The ``mmagent`` command line (typer). Every command has ``--help``.

Expected errors print one ``error: ...`` message, never a traceback (``error_message`` maps them):
status 2 for a wrong config, data, option or run folder; 1 for a failing system (read-only
folder, full disk).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from mmagent.cli import drift as cli_drift
from mmagent.cli import explain as cli_explain
from mmagent.cli import fit as cli_fit
from mmagent.cli import lifecycle as cli_lifecycle
from mmagent.cli import report as cli_report
from mmagent.cli import zoo as cli_zoo
from mmagent.cli.support import decision_row, load_saved, model_folder, prediction_row, record_from_json, resolve_device, user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, help="mmagent: fine-tune multimodal encoders into agents that predict, explain and act.")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="experiment YAML (data, inputs, targets, fusion, train)"),
    output: Path = typer.Option(..., "-o", "--output", help="run folder to create (model, metrics, report)"),
    set_: list[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.lr=1e-4 (repeatable)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run folder's last checkpoint"),
    num_processes: int = typer.Option(1, "--num-processes", help="data-parallel processes (re-launches through `accelerate launch`)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: chosen by the thread policy; = --set train.threads=N)"),
) -> None:
    """Fine-tune a model from a config and write the run folder."""
    launched = "LOCAL_RANK" in os.environ  # a worker of a multi-process run: the launcher checked
    # (a folder with checkpoints is the trainer's to refuse: it names --resume)
    if not resume and not launched and output.is_dir() and any(output.iterdir()) and not (output / "checkpoints").exists():
        # A fresh run never writes into a folder it did not create: a finished run (its model,
        # metrics) or the user's own files there would be overwritten or mixed with the new run.
        raise FileExistsError(f"{output} already exists and is not empty; choose a new folder for -o (or --resume a run in it)")
    if num_processes > 1 and not launched:
        from mmagent.training.distributed import relaunch

        raise typer.Exit(relaunch(num_processes, sys.argv[1:]))
    from mmagent.config import load_config
    from mmagent.io import removed_on_failure
    from mmagent.workflow import train as run_training

    cfg = load_config(config, [*set_, *([f"train.threads={threads}"] if threads else [])])
    # A run that fails before its first checkpoint leaves no folder behind to block a re-run
    # (in a multi-process run other workers may still be writing it: leave it to them).
    guard = removed_on_failure(output, keep=lambda p: (p / "checkpoints").exists()) if not launched else contextlib.nullcontext()
    with guard:
        result = run_training(cfg, output, resume=resume, progress=not quiet)
    if result.metrics:
        typer.echo(json.dumps(_headline(result.metrics), indent=2))


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        split: {t: {k: v for k, v in m.items() if isinstance(v, (int, float))} for t, m in ms.items()}
        for split, ms in metrics.items()
        if split in ("validation", "test")
    }


@app.command()
@user_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run folder from `mmagent train`"),
    data: Path = typer.Argument(..., help="a table with the same columns (and the targets)"),
    drop_input: list[str] = typer.Option([], "--drop-input", help="treat this input as missing in every row (repeatable)"),
    batch_size: int = typer.Option(32, help="batch size"),
    device: str = typer.Option("auto", "--device", help="cpu | cuda | auto (a GPU when one is visible)"),
) -> None:
    """Metrics of a trained run on a labelled table, printed as JSON."""
    from mmagent.agent.escalation import measure_run
    from mmagent.data.tables import read_table
    from mmagent.data.validation import validate_table
    from mmagent.ensemble import load_model
    from mmagent.inference import make_loader
    from mmagent.inference.evaluate import evaluate as run_eval

    where = resolve_device(device)
    model = load_saved(run_dir, lambda: load_model(model_folder(run_dir), map_location=where)).to(where)
    unknown = [d for d in drop_input if d not in model.input_names]
    if unknown:
        raise ValueError(f"--drop-input {unknown}: not an input of this model; inputs: {model.input_names}")
    table, _ = validate_table(read_table(data), model.spec.inputs, model.spec.targets, "error")
    metrics, preds = run_eval(model, make_loader(model, table, batch_size), where, drop=drop_input)
    if trust := measure_run(run_dir, preds):  # the agent's rules on this table: answered, error among answered, sets, unknown
        metrics["escalation"] = trust
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
@user_errors
def predict(
    run_dir: Path = typer.Argument(..., help="a run folder from `mmagent train`"),
    data: Optional[Path] = typer.Argument(None, help="a table to predict (CSV/JSONL/Parquet)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write predictions as CSV here (default: print JSON)"),
    record: Optional[str] = typer.Option(None, "--record", help='one record as JSON, e.g. \'{"text": "hello"}\''),
    act: bool = typer.Option(False, "--act", help="also apply the agent's policy: action, reply, escalation, reason, confidence per row"),
    device: str = typer.Option("auto", "--device", help="cpu | cuda | auto (a GPU when one is visible)"),
) -> None:
    """Predict labels and calibrated probabilities for a table or one --record; with --act, the
    agent's decisions."""
    from mmagent.agent import Agent

    if (data is None) == (record is None):
        raise ValueError("give either a DATA file or --record JSON (not both)")
    where = resolve_device(device)
    agent = load_saved(run_dir, lambda: Agent.load(run_dir, device=where))
    if record is not None:
        rec = record_from_json(record)
        out: Any = agent.act(rec).model_dump() if act else agent.predict(rec)[0]
        typer.echo(json.dumps(out, indent=2))
        return
    from mmagent.data.tables import read_table

    table = read_table(data)  # type: ignore[arg-type]
    # act_many takes records; a Table passes through as_table with its folder for media paths
    results = [d.model_dump() for d in agent.act_many(table)] if act else agent.predict(table)  # type: ignore[arg-type]
    if output is None:
        typer.echo(json.dumps(results, indent=2))
        return
    rows = [decision_row(r) for r in results] if act else [prediction_row(r) for r in results]
    import pandas as pd

    from mmagent.io import atomic_path

    frame = pd.concat([table.frame.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    with atomic_path(output) as tmp:
        frame.to_csv(tmp, index=False)
    typer.echo(f"wrote {len(rows)} {'decisions' if act else 'predictions'} to {output}")


@app.command()
@user_errors
def serve(
    run_dir: Optional[Path] = typer.Argument(None, help="a run folder from `mmagent train` (or give --registry)"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="serve the version a registry alias points at (see `mmagent promote`)"),
    alias: str = typer.Option("production", "--alias", help="with --registry: the alias to serve"),
    watch_s: float = typer.Option(5.0, "--watch-s", help="seconds between checks for a new version (the alias moved, the run folder replaced); 0: never swap"),
    host: str = typer.Option("127.0.0.1", help="address to bind; a non-loopback address requires an API key"),
    port: int = typer.Option(8000, help="TCP port"),
    workers: int = typer.Option(1, help="uvicorn worker processes (each loads the model)"),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="records per model call when micro-batching; 1 turns batching off"),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="how long a batch waits for more requests"),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="file with one API key per line (also: env MMAGENT_API_KEYS, comma-separated)"),
    max_body_bytes: Optional[int] = typer.Option(None, "--max-body-bytes", help="request body limit in bytes (default 20 MiB)"),
    max_image_pixels: Optional[int] = typer.Option(None, "--max-image-pixels", help="pixel limit per image (default 40 M)"),
    max_audio_seconds: Optional[float] = typer.Option(None, "--max-audio-seconds", help="duration limit per audio clip (default 60 s)"),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch intra-op threads per worker (default: torch's choice; 1 suits small models on shared CPUs)"
    ),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N | auto (cuda when available); default cpu"),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="torch (default) | onnx: the model's ONNX export in ONNX Runtime (CPU), exported into RUN_DIR/onnx on first use"
    ),
    log_level: str = typer.Option("info", "--log-level", help="critical | error | warning | info | debug"),
) -> None:
    """Serve the agent over HTTP: POST /v1/predict and /v1/act, /v1/schema, /healthz, /readyz,
    /metrics and OpenAPI docs at /docs. A new version (the alias moved, the run folder replaced)
    is loaded in the background and swapped in between requests."""
    from mmagent.serving.settings import ENV_RUN_DIR, ENV_SETTINGS, ServeSettings

    if (run_dir is None) == (registry is None):
        raise ValueError("give either a RUN_DIR or --registry DIR (not both)")
    if registry is not None:
        from mmagent.serving.swap import AliasSource

        AliasSource(registry, alias).spec()  # a registry and an alias that holds a version, checked now
    elif not ((run_dir / "model" / "model.json").is_file() or (run_dir / "model.json").is_file()):  # type: ignore[operator]
        raise FileNotFoundError(f"{run_dir} is not a run folder (no model/model.json)")
    settings = ServeSettings.from_env(
        registry=str(registry.resolve()) if registry is not None else None,
        alias=alias,
        watch_s=watch_s,
        host=host,
        port=port,
        workers=workers,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        api_key_file=api_key_file,
        max_body_bytes=max_body_bytes,
        max_image_pixels=max_image_pixels,
        max_audio_seconds=max_audio_seconds,
        log_level=log_level,
        torch_threads=threads,
        device=device,
        backend=backend,
    )
    if settings.torch_device().startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {settings.device}: torch sees no CUDA GPU here; use --device cpu or auto")
    keys = settings.load_keys()
    if not settings.loopback and not keys:
        typer.secho(
            f"error: refusing to bind {settings.host} (not a loopback address) without an API key. "
            "Set MMAGENT_API_KEYS=key1,key2 or pass --api-key-file FILE, or bind 127.0.0.1.",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2)
    from mmagent.serving.threads import plan_threads

    plan = plan_threads(settings)
    if settings.backend == "onnx" and run_dir is not None:  # export (or check the cached export) here: an encoder that cannot be exported fails now, named
        from mmagent.agent import Agent

        runner = Agent.load(run_dir, backend="onnx", threads=plan.model_threads).runner
        typer.echo(
            f"onnx: {'exported' if runner.info['exported_now'] else 'reusing'} {runner.info['path']} (max abs diff vs PyTorch {runner.info['max_abs_diff']:.2g})",
            err=True,
        )
    import uvicorn

    from mmagent.serving.security import log_config

    # Worker processes rebuild the app from the environment (keys stay in MMAGENT_API_KEYS / the file).
    if run_dir is not None:
        os.environ[ENV_RUN_DIR] = str(run_dir.resolve())
    os.environ[ENV_SETTINGS] = settings.model_dump_json()
    what = f"{registry} alias {alias!r}" if registry is not None else str(run_dir)
    typer.echo(
        f"serving {what} on http://{settings.host}:{settings.port} on {settings.torch_device()} ({plan.describe()}; {settings.workers} worker(s), batches of up to {settings.max_batch_size} / {settings.max_wait_ms:g} ms, API key {'required' if keys else 'not required'}); try it in a browser at http://{settings.host}:{settings.port}/",
        err=True,
    )
    uvicorn.run(
        "mmagent.serving.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=log_config(settings.log_level),
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
        server_header=False,
    )


@app.command("export")
@user_errors
def export_cmd(
    run_dir: Path = typer.Argument(..., help="a run folder from `mmagent train`"),
    format: str = typer.Option(..., "--format", help="onnx | torchscript"),
    output: Path = typer.Option(..., "-o", "--output", help="file to write (e.g. model.onnx, model.pt); OUT.json gets the layout and the checks"),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: dynamic quantization of Linear layers for CPU serving"),
    data: Optional[Path] = typer.Option(None, "--data", help="a labelled table: check on it and report the accuracy change"),
    batch_size: int = typer.Option(8, "--batch-size", help="rows in the check batch"),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="max abs logit difference that counts as reproducing PyTorch"),
) -> None:
    """Export the model (forward on collated tensors) to ONNX or TorchScript and check that it
    reproduces PyTorch on real batches; optionally quantize it to int8."""
    import warnings

    from mmagent.export import ExportError, export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer / exporter chatter; every claim below is measured
        try:
            report = export(run_dir, format, output, quantize, data, batch_size, tolerance)
        except ExportError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"wrote {output} and {output}.json")
    if not (report.fp32_reproduces if quantize else report.reproduces):
        raise typer.Exit(1)  # the export does not compute what the PyTorch model computes


@app.command()
@user_errors
def tune(
    config: Path = typer.Argument(..., help="experiment YAML; its `tune:` block declares the search space (default space if absent)"),
    output: Path = typer.Option(..., "-o", "--output", help="tuning folder: study.db, trials/, best/ (the final run folder), tune_report.md"),
    trials: int = typer.Option(..., "--trials", help="finished trials wanted in the study (a resumed study counts those it has)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="wall-clock budget in seconds for this call (no new trial starts after it)"),
    storage: Optional[str] = typer.Option(
        None, "--storage", help="SQLAlchemy URL of the study (default: sqlite:///TUNE_DIR/study.db); share one to search from several machines"
    ),
    study: Optional[str] = typer.Option(None, "--study", help="study name in the storage (default: mmagent)"),
    set_: list[str] = typer.Option([], "--set", help="override a config key before tuning, e.g. --set train.epochs=5 (repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", help="no per-trial progress lines"),
) -> None:
    """Search hyperparameters with Optuna (TPE + pruning); the best trial becomes TUNE_DIR/best."""
    from mmagent.config import load_config
    from mmagent.search.tune import tune as run_tune

    cfg = load_config(config, set_)
    result = run_tune(cfg, output, trials, timeout=timeout, storage=storage, study_name=study, progress=not quiet)
    typer.echo(
        json.dumps(
            {
                "best_trial": result.best_number,
                "best_value": result.best_value,
                "metric": result.metric,
                "best_params": result.best_params,
                "best_dir": str(result.best_dir) if result.best_dir else None,
                "trials": result.counts,
                "report": str(result.report),
            },
            indent=2,
            default=str,
        )
    )


@app.command()
@user_errors
def demo(
    name: str = typer.Argument("customer-service", help="customer-service | medical | finance"),
    output: Path = typer.Option(Path("runs/demo"), "-o", "--output", help="folder for the generated data and the run"),
    quick: bool = typer.Option(False, "--quick", help="smaller data, fewer epochs (a smoke run)"),
) -> None:
    """The main job, offline: build a small dataset, fine-tune, evaluate, and show the agent acting."""
    from mmagent.demo import run_demo

    run_demo(name, output / name, quick)


app.registered_commands += cli_report.commands.registered_commands
app.registered_commands += cli_explain.commands.registered_commands
app.registered_commands += cli_lifecycle.commands.registered_commands
app.registered_commands += cli_drift.commands.registered_commands
app.registered_commands += cli_fit.commands.registered_commands
app.add_typer(cli_zoo.commands, name="zoo")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
