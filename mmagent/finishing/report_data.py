"""What a run's report shows, read back from its folder: one source for ``report.md``,
``report.html`` and the plots, so ``mmagent report RUN`` rebuilds them without the data or a model."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmagent import runs
from mmagent.specs import ModelSpec

SPLITS = ("validation", "test")


@dataclass
class RunReport:
    """A finished run as its reports see it (every field from a file in the run folder)."""

    run_dir: Path
    spec: ModelSpec
    config: dict[str, Any]
    metrics: dict[str, dict[str, dict[str, Any]]]  # split -> target -> metric -> value
    ablation: dict[str, dict[str, float]]
    calibration: dict[str, Any]
    rows: dict[str, int]  # rows per split (train, validation, test)
    steps: list[dict[str, Any]] = field(default_factory=list)  # the training log's step lines
    epochs: list[dict[str, Any]] = field(default_factory=list)  # its validation lines
    predictions: tuple[str, dict[str, dict[str, Any]]] | None = None  # (split, per-target arrays)
    leaderboard: list[dict[str, str]] = field(default_factory=list)  # leaderboard.csv rows (fit)
    unknown: dict[str, Any] = field(default_factory=dict)  # unknown.json: the unknown-input score's choice
    members: int = 1  # models averaged (an ensemble from fit); spec, config and training log are the first's

    @property
    def eval_split(self) -> str:
        """The split the detailed results are on: test when the run has one, else validation."""
        return "test" if "test" in self.metrics else "validation"

    def encoder_names(self) -> list[str]:
        """Per input, ``source:name`` as configured (the saved spec names its asset folder instead)."""
        configured = self.config.get("inputs") or []
        out = []
        for i, inp in enumerate(self.spec.inputs):
            enc = configured[i].get("encoder") if i < len(configured) and isinstance(configured[i], dict) else None
            enc = enc if isinstance(enc, dict) and enc.get("name") else {"source": inp.encoder.source, "name": inp.encoder.name}
            out.append(f"{enc.get('source', inp.encoder.source)}:{enc['name']}")
        return out

    def fusion_type(self) -> str:
        fusion = self.config.get("fusion")
        kind = str(fusion.get("type")) if isinstance(fusion, dict) else self.spec.fusion.type
        if self.members > 1:  # the training curves below are the first member's too
            return (
                f"{kind} (an ensemble of {self.members} models averaging calibrated probabilities; fusion, encoders and training curves are the first model's)"
            )
        return kind


def load_run_report(run_dir: str | Path) -> RunReport:
    """Read a finished run (its model spec, metrics, calibration, training log, saved
    predictions and, for a fit, leaderboard). A folder that is not a finished run is an error."""
    run_dir = Path(run_dir)
    spec_file = run_dir / runs.MODEL_DIR / "model.json"
    if not (run_dir / runs.METRICS_FILE).is_file() or not spec_file.is_file():
        raise runs.RunFolderError(f"{run_dir} is not a finished run folder (no {runs.METRICS_FILE} or {runs.MODEL_DIR}/model.json)")
    try:
        spec = ModelSpec.model_validate(runs.read_json(spec_file))
    except ValueError as e:
        raise runs.RunFolderError(f"{spec_file}: not a model spec ({e})") from None
    stored = runs.read_metrics(run_dir)
    metrics = {s: stored[s] for s in SPLITS if isinstance(stored.get(s), dict)}
    rows = stored.get("rows") or {s: max((int(m.get("n", 0)) for m in metrics.get(s, {}).values()), default=0) for s in SPLITS}
    return RunReport(
        run_dir=run_dir,
        spec=spec,
        config=runs.read_config(run_dir),
        metrics=metrics,
        ablation=stored.get("ablation") or {},
        calibration=runs.read_calibration(run_dir) or stored.get("calibration") or {},
        rows=rows,
        steps=runs.read_metrics_log(run_dir, "step"),
        epochs=runs.read_metrics_log(run_dir, "epoch"),
        predictions=runs.read_predictions(run_dir),
        leaderboard=_read_csv(run_dir / runs.LEADERBOARD_CSV),
        unknown=runs.read_json(run_dir / runs.UNKNOWN_FILE),
        members=1 + len(runs.read_json(run_dir / runs.MODEL_DIR / runs.ENSEMBLE_FILE).get("members") or []),
    )


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
