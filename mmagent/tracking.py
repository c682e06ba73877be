"""Experiment tracking through Accelerate's trackers (``train.log_with: none | tensorboard | mlflow``).

The trainer asks for :func:`accelerator_kwargs` when it builds its ``Accelerator``, calls
:func:`start` once the run folder exists (the flattened config becomes the run's params), sends
every line of ``metrics.jsonl`` to ``accelerator.log`` (see ``MetricsLog``) and keeps the tracker's
run id (:func:`run_id`); finishing the run hands the report, metrics and plots to that MLflow run
as artifacts (:func:`log_artifacts`), after training has closed it.

TensorBoard writes event files to ``RUN_DIR/tensorboard``. MLflow logs to ``train.tracking_uri``
(any MLflow tracking URI: a team's server, a database) or, by default, to a local SQLite store next
to the run, ``sqlite:///<RUN_DIR's parent>/mlflow.db``, so every run in one folder lands in one
store; its artifacts then go to ``<RUN_DIR's parent>/mlartifacts``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmagent import runs

if TYPE_CHECKING:
    from mmagent.config import ExperimentConfig

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
# What goes to MLflow as artifacts at the end of a run, when present.
ARTIFACT_FILES = (runs.REPORT_FILE, runs.METRICS_FILE, runs.CONFIG_FILE, runs.CALIBRATION_FILE, runs.LINEAGE_FILE)


def accelerator_kwargs(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """``Accelerator(**kwargs)`` for the configured tracker; ``{}`` without one."""
    if config.train.log_with == "none":
        return {}
    return {"log_with": config.train.log_with, "project_dir": str(run_dir)}


def tracking_uri(config: ExperimentConfig, run_dir: Path) -> str:
    """``train.tracking_uri``, or the embedded default: a SQLite store beside the run folder."""
    if config.train.tracking_uri:
        return config.train.tracking_uri
    return f"sqlite:///{Path(run_dir).resolve().parent / MLFLOW_DB}"


def tracking_params(config_json: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """The config flattened to ``dotted.key -> scalar`` (lists by index; None as "null"): the
    types both TensorBoard's hparams and MLflow's params accept."""
    out: dict[str, str | int | float | bool] = {}
    items = config_json.items() if isinstance(config_json, dict) else enumerate(config_json)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and value:
            out.update(tracking_params(value, f"{name}."))  # type: ignore[arg-type]
        elif isinstance(value, (str, int, float, bool)):
            out[name] = value
        else:
            out[name] = "null" if value is None else str(value)
    return out


def start(accelerator: Any, config: ExperimentConfig, run_dir: Path, config_json: dict[str, Any]) -> None:
    """Open the tracker's run (main process only; a no-op without a tracker)."""
    kind = config.train.log_with
    if kind == "none":
        return
    init_kwargs: dict[str, Any] = {}
    if kind == "mlflow" and accelerator.is_main_process:
        import mlflow

        uri = tracking_uri(config, run_dir)
        mlflow.set_tracking_uri(uri)
        if mlflow.active_run() is not None:  # left open by a run that failed in this process
            mlflow.end_run(status="KILLED")
        artifacts = None
        if uri.startswith("sqlite:///") and not config.train.tracking_uri:
            artifacts = (Path(run_dir).resolve().parent / MLFLOW_ARTIFACTS).as_uri()
        init_kwargs["mlflow"] = {"logging_dir": artifacts, "run_name": Path(run_dir).name, "tags": {"mmagent.run_dir": str(Path(run_dir).resolve())}}
    # TensorBoard: project_dir / project_name is the event folder, RUN_DIR/tensorboard
    project = runs.TENSORBOARD_DIR if kind == "tensorboard" else config.train.experiment
    accelerator.init_trackers(project, config=tracking_params(config_json), init_kwargs=init_kwargs)


def run_id(accelerator: Any, config: ExperimentConfig) -> str | None:
    """The MLflow run the training logged to (main process only), for :func:`log_artifacts`."""
    if config.train.log_with != "mlflow" or not accelerator.is_main_process:
        return None
    return str(accelerator.get_tracker("mlflow", unwrap=True).info.run_id)


def log_artifacts(run_id: str | None, config: ExperimentConfig, run_dir: Path) -> None:
    """MLflow only: the report, metrics, config, calibration, lineage and plots of the finished run,
    added to the (closed) run ``run_id`` the training logged to."""
    if config.train.log_with != "mlflow" or run_id is None:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(config, run_dir))
    for name in ARTIFACT_FILES:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    if (run_dir / runs.PLOTS_DIR).is_dir():
        client.log_artifacts(run_id, str(run_dir / runs.PLOTS_DIR), runs.PLOTS_DIR)
