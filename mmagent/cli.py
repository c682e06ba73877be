"""The ``mmagent`` command line (typer). Every command has ``--help``.

User errors (bad config, bad rows, missing files) print a clear message and exit with status 2,
never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="mmagent: fine-tune multimodal encoders into agents that predict, explain and act.")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected user errors into a message + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mmagent.config import ConfigError
        from mmagent.data.validation import DataError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="experiment YAML (data, inputs, targets, fusion, train)"),
    output: Path = typer.Option(..., "-o", "--output", help="run folder to create (model, metrics, report)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.lr=1e-4 (repeatable)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run folder's last checkpoint"),
    num_processes: int = typer.Option(1, "--num-processes", help="data-parallel processes (re-launches through `accelerate launch`)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Fine-tune a model from a config and write the run folder."""
    if num_processes > 1 and "LOCAL_RANK" not in os.environ:
        from mmagent.training.distributed import relaunch

        raise typer.Exit(relaunch(num_processes, sys.argv[1:]))
    from mmagent.config import load_config
    from mmagent.training.trainer import train as run_training

    cfg = load_config(config, set_)
    result = run_training(cfg, output, resume=resume, progress=not quiet)
    if result.metrics:
        typer.echo(json.dumps(_headline(result.metrics), indent=2))


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {split: {t: {k: v for k, v in m.items() if isinstance(v, (int, float))} for t, m in ms.items()} for split, ms in metrics.items() if split in ("validation", "test")}


@app.command()
@user_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run folder from `mmagent train`"),
    data: Path = typer.Argument(..., help="a table with the same columns (and the targets)"),
    drop_input: List[str] = typer.Option([], "--drop-input", help="treat this input as missing in every row (repeatable)"),
    batch_size: int = typer.Option(32, help="batch size"),
) -> None:
    """Metrics of a trained run on a labelled table, printed as JSON."""
    from mmagent.data.tables import read_table
    from mmagent.data.validation import validate_table
    from mmagent.model import MultimodalModel
    from mmagent.training.evaluate import evaluate as run_eval, make_loader

    model = MultimodalModel.load(run_dir / "model" if (run_dir / "model").is_dir() else run_dir)
    unknown = [d for d in drop_input if d not in model.input_names]
    if unknown:
        raise ValueError(f"--drop-input {unknown}: not an input of this model; inputs: {model.input_names}")
    table, _ = validate_table(read_table(data), model.spec.inputs, model.spec.targets, "error")
    metrics, _ = run_eval(model, make_loader(model, table, batch_size), "cpu", drop=drop_input)
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
@user_errors
def predict(
    run_dir: Path = typer.Argument(..., help="a run folder from `mmagent train`"),
    data: Optional[Path] = typer.Argument(None, help="a table to predict (CSV/JSONL/Parquet)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write predictions as CSV here (default: print JSON)"),
    record: Optional[str] = typer.Option(None, "--record", help='one record as JSON, e.g. \'{"text": "hello"}\''),
    act: bool = typer.Option(False, "--act", help="also apply the agent's policy (action, reply, escalation)"),
) -> None:
    """Predict labels and calibrated probabilities for a table or one --record."""
    from mmagent.agent import Agent

    if (data is None) == (record is None):
        raise ValueError("give either a DATA file or --record JSON (not both)")
    agent = Agent.load(run_dir)
    if record is not None:
        try:
            rec = json.loads(record)
        except json.JSONDecodeError as e:
            raise ValueError(f"--record is not valid JSON: {e}") from None
        if not isinstance(rec, dict):
            raise ValueError("--record must be a JSON object of column -> value")
        out: Any = agent.act(rec).model_dump() if act else agent.predict(rec)[0]
        typer.echo(json.dumps(out, indent=2))
        return
    from mmagent.data.tables import read_table

    table = read_table(data)  # type: ignore[arg-type]
    results = agent.predict(table)
    if output is None:
        typer.echo(json.dumps(results, indent=2))
        return
    import pandas as pd

    from mmagent.io import atomic_path

    rows = []
    for r in results:
        flat: dict[str, Any] = {}
        for target, res in r.items():
            for k, v in res.items():
                if k == "probabilities":
                    flat.update({f"{target}:p({lab})": p for lab, p in v.items()})
                else:
                    flat[f"{target}:{k}"] = "|".join(v) if isinstance(v, list) else v
        rows.append(flat)
    frame = pd.concat([table.frame.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    with atomic_path(output) as tmp:
        frame.to_csv(tmp, index=False)
    typer.echo(f"wrote {len(rows)} predictions to {output}")



@app.command()
@user_errors
def serve(
    run_dir: Path = typer.Argument(..., help="a run folder from `mmagent train`"),
    host: str = typer.Option("127.0.0.1", help="address to bind; a non-loopback address requires an API key"),
    port: int = typer.Option(8000, help="TCP port"),
    workers: int = typer.Option(1, help="uvicorn worker processes (each loads the model)"),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="records per model call when micro-batching; 1 turns batching off"),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="how long a batch waits for more requests"),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="file with one API key per line (also: env MMAGENT_API_KEYS, comma-separated)"),
    max_body_bytes: Optional[int] = typer.Option(None, "--max-body-bytes", help="request body limit in bytes (default 20 MiB)"),
    max_image_pixels: Optional[int] = typer.Option(None, "--max-image-pixels", help="pixel limit per image (default 40 M)"),
    max_audio_seconds: Optional[float] = typer.Option(None, "--max-audio-seconds", help="duration limit per audio clip (default 60 s)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads per worker (default: torch's choice; 1 suits small models on shared CPUs)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N | auto (cuda when available); default cpu"),
    log_level: str = typer.Option("info", "--log-level", help="critical | error | warning | info | debug"),
) -> None:
    """Serve the agent over HTTP: POST /v1/predict and /v1/act, /v1/schema, /healthz, /readyz,
    /metrics and OpenAPI docs at /docs."""
    from mmagent.serving.settings import ENV_RUN_DIR, ENV_SETTINGS, ServeSettings

    if not ((run_dir / "model" / "model.json").is_file() or (run_dir / "model.json").is_file()):
        raise FileNotFoundError(f"{run_dir} is not a run folder (no model/model.json)")
    settings = ServeSettings.from_env(
        host=host, port=port, workers=workers, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, api_key_file=api_key_file,
        max_body_bytes=max_body_bytes, max_image_pixels=max_image_pixels, max_audio_seconds=max_audio_seconds, log_level=log_level, torch_threads=threads, device=device,
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
            fg=typer.colors.RED, err=True,
        )
        raise typer.Exit(2)
    import uvicorn

    from mmagent.serving.security import log_config

    # Worker processes rebuild the app from the environment (keys stay in MMAGENT_API_KEYS / the file).
    os.environ[ENV_RUN_DIR] = str(run_dir.resolve())
    os.environ[ENV_SETTINGS] = settings.model_dump_json()
    typer.echo(f"serving {run_dir} on http://{settings.host}:{settings.port} on {settings.torch_device()} ({settings.workers} worker(s), batches of up to {settings.max_batch_size} / {settings.max_wait_ms:g} ms, API key {'required' if keys else 'not required'})", err=True)
    uvicorn.run(
        "mmagent.serving.app:app_from_env", factory=True, host=settings.host, port=settings.port, workers=settings.workers,
        log_config=log_config(settings.log_level), log_level=settings.log_level, access_log=settings.access_log,
        timeout_graceful_shutdown=10, server_header=False,
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
    storage: Optional[str] = typer.Option(None, "--storage", help="SQLAlchemy URL of the study (default: sqlite:///TUNE_DIR/study.db); share one to search from several machines"),
    study: Optional[str] = typer.Option(None, "--study", help="study name in the storage (default: mmagent)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key before tuning, e.g. --set train.epochs=5 (repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", help="no per-trial progress lines"),
) -> None:
    """Search hyperparameters with Optuna (TPE + pruning); the best trial becomes TUNE_DIR/best."""
    from mmagent.config import load_config
    from mmagent.tuning import tune as run_tune

    cfg = load_config(config, set_)
    result = run_tune(cfg, output, trials, timeout=timeout, storage=storage, study_name=study, progress=not quiet)
    typer.echo(json.dumps({
        "best_trial": result.best_number, "best_value": result.best_value, "metric": result.metric,
        "best_params": result.best_params, "best_dir": str(result.best_dir) if result.best_dir else None,
        "trials": result.counts, "report": str(result.report),
    }, indent=2, default=str))


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


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
