"""Plumbing shared by the quality benchmarks (section 1 of issue 7): threads, data checks, and
``fit()`` = train one config through the mmagent API, then evaluate its best model on the test table.

Every benchmark prepares its tables with the matching ``examples/<name>.py`` module where one
exists, trains with :func:`mmagent.training.trainer.train` (training only: the run's report,
plots and calibration, the finishing step, are not what is measured) and evaluates the best epoch's saved model with
:func:`mmagent.inference.evaluate.evaluate`. Frozen encoders' outputs are computed once per table
and shared between the variants of a benchmark through a :class:`mmagent.data.feature_store.FeatureCacheStore`
(also for the test table), so e.g. the three fusion types of ``av_digits`` encode each clip once.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from benchmarks.common import ROOT  # noqa: E402

THREADS_ENV = "MMAGENT_BENCH_THREADS"


class DataAbsent(FileNotFoundError):
    """A dataset folder the benchmark needs is not under the data root."""


def ensure_examples_importable() -> None:
    """``examples/`` lives at the repository root next to ``benchmarks/``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def require_data(data_root: Path, *folders: str) -> Path:
    data_root = Path(data_root).expanduser()
    missing = [str(data_root / f) for f in folders if not (data_root / f).is_dir()]
    if missing:
        raise DataAbsent(f"dataset folder(s) not found: {', '.join(missing)} (pass --data-root or set MMAGENT_DATA_ROOT)")
    return data_root


def quality_parser(description: str):
    from benchmarks.common import base_parser

    p = base_parser(description)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch CPU threads (default: ${THREADS_ENV}, else 1 when the machine is busier than its cores, else torch's default)",
    )
    p.add_argument("--progress", action="store_true", help="progress bars and per-epoch validation lines")
    return p


def set_threads(requested: int | None) -> dict[str, Any]:
    """Pick torch's thread count. On a shared machine whose load exceeds its cores, OpenMP threads
    that spin-wait on each other are several times slower than one thread, so 'auto' picks 1 then."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    env = os.environ.get(THREADS_ENV)
    if requested is not None:
        n, why = requested, "--threads"
    elif env:
        n, why = int(env), THREADS_ENV
    elif load >= cores:
        n, why = 1, f"auto: load {load:.1f} >= {cores} cores"
    else:
        n, why = torch.get_num_threads(), "auto: torch default"
    torch.set_num_threads(max(1, n))
    # mmagent's trainer has its own thread policy; OMP_NUM_THREADS is what it defers to, so the
    # benchmark's choice (the same for every variant) holds inside the trainer too
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    info = {"threads": torch.get_num_threads(), "threads_reason": why, "load_avg_1min_at_start": round(load, 2), "cpu_cores": cores}
    print(f"[bench] torch threads: {info['threads']} ({why})", flush=True)
    return info


def prepare_example(args: Any, name: str, example: str, train_subset: Callable[[Any, Any], Any] | None = None) -> tuple[Path, dict[str, Path]]:
    """The tables of ``examples/<example>.py`` under the benchmark's work folder (``data/``): the
    example's smoke subset with ``--smoke``, else all of its rows, the training frame passed
    through ``train_subset(example_module, frame)`` when given. Returns (work folder, table paths)."""
    import importlib

    ensure_examples_importable()
    from examples._common import write_tables

    ex = importlib.import_module(f"examples.{example}")
    data_root = require_data(Path(args.data_root), ex.DATA_DIR)
    folder = work_dir(args, name)
    if args.smoke or train_subset is None:
        return folder, ex.prepare(data_root, folder / "data", limit=ex.SMOKE_LIMIT if args.smoke else None)
    frames = ex.load(data_root)
    frames["train"] = train_subset(ex, frames["train"])
    return folder, write_tables(frames, folder / "data")


def work_dir(args: Any, name: str) -> Path:
    folder = Path(args.work_dir).expanduser().resolve() / (f"{name}-smoke" if args.smoke else name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _clear_run_dir(run_dir: Path) -> None:
    """Remove a previous run folder of ours (only one that mmagent wrote)."""
    if not run_dir.exists():
        return
    if not ((run_dir / "config.json").is_file() or (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file()):
        raise FileExistsError(f"{run_dir} exists and is not an mmagent run folder; refusing to delete it")
    shutil.rmtree(run_dir)


@dataclass
class Outcome:
    """One trained variant, evaluated on the test table."""

    test: dict[str, dict[str, Any]]  # per target: accuracy, macro_f1, auroc, ...
    predictions: Any  # mmagent.inference.evaluate.Predictions on test
    missing: dict[str, dict[str, dict[str, Any]]]  # input dropped at test time -> metrics
    best_validation: float
    best_epoch: int
    epochs_run: int
    steps: int
    n_train: int
    n_validation: int
    n_test: int
    loop_seconds: float  # the training loop only: epoch time minus the per-epoch validation pass
    train_seconds: float  # train(): model build, frozen-feature caching, epochs, validation
    wall_s: float  # train + test evaluation
    frozen: list[str] = field(default_factory=list)
    model: str = ""  # what was trained, from the config (describe_model)

    @property
    def train_samples_per_s(self) -> float:
        return self.n_train * self.epochs_run / self.loop_seconds if self.loop_seconds > 0 else float("nan")

    def metric(self, name: str, target: str | None = None) -> float:
        target = target or next(iter(self.test))
        return float(self.test[target][name])


class SharedStore:
    """A FeatureCacheStore that always keeps tokens, so concat / gated (pooled only) and
    cross-attention (tokens) runs share one encoder pass per table. Memory only: every full run
    computes its features itself, so the wall times include that work."""

    def __init__(self) -> None:
        from mmagent.data.feature_store import FeatureCacheStore

        self.inner = FeatureCacheStore()

    def get(self, model: Any, table: Any, names: list[str], keep_tokens: bool, *args: Any, **kwargs: Any) -> Any:
        return self.inner.get(model, table, names, True, *args, **kwargs)

    @property
    def builds(self) -> int:
        return self.inner.builds

    @property
    def hits(self) -> int:
        return self.inner.hits


SPLITS = ("train", "validation", "test")
SMOKE_TRAIN = {"epochs": 1, "batch_size": 16}  # plus max_steps: each benchmark's own


def experiment_config(
    paths: dict[str, Path],
    inputs: list[dict[str, Any]],
    target: str,
    train: dict[str, Any],
    fusion: dict[str, Any] | None = None,
    smoke_steps: int | None = None,
) -> dict[str, Any]:
    """A raw config over the three tables in ``paths`` (file names: :func:`fit` resolves them
    against their folder) with one classification ``target``, concat fusion unless ``fusion``
    says otherwise. ``smoke_steps``: a smoke run, one epoch of at most that many steps, batch 16."""
    train = dict(train)
    if smoke_steps:
        train.update(SMOKE_TRAIN, max_steps=smoke_steps)
    return {
        "data": {s: Path(paths[s]).name for s in SPLITS},
        "inputs": inputs,
        "targets": [{"column": target, "type": "classification"}],
        "fusion": fusion or {"type": "concat"},
        "train": train,
    }


def single_input_config(
    paths: dict[str, Path],
    column: str,
    modality: str,
    encoder: dict[str, Any],
    target: str,
    train: dict[str, Any],
    smoke_steps: int | None = None,
    freeze: bool = False,
) -> dict[str, Any]:
    """:func:`experiment_config` with one input column; ``freeze``: its encoder frozen whole (a probe)."""
    encoder = {**encoder, "freeze": "all"} if freeze else dict(encoder)
    return experiment_config(paths, [{"column": column, "modality": modality, "encoder": encoder}], target, train, smoke_steps=smoke_steps)


def fit(
    raw_config: dict[str, Any],
    base_dir: Path,
    run_dir: Path,
    store: SharedStore | None = None,
    drop_each: bool = False,
    progress: bool = False,
    label: str = "",
) -> Outcome:
    """Train ``raw_config`` (data paths relative to ``base_dir``) into ``run_dir``; evaluate the best
    model on the test table (and, with ``drop_each``, with each input missing in turn)."""

    import torch

    import mmagent.training.trainer as trainer_mod
    from mmagent.config import config_from_dict
    from mmagent.inference import make_loader
    from mmagent.inference.evaluate import evaluate
    from mmagent.model import MultimodalModel
    from mmagent.runs import read_metrics_log

    cfg = config_from_dict(raw_config, base_dir=base_dir)
    run_dir = Path(run_dir)
    _clear_run_dir(run_dir)
    print(f"[bench] {label or run_dir.name}: training ...", flush=True)

    start = time.perf_counter()
    result = trainer_mod.train(cfg, run_dir, progress=progress, feature_cache_store=store)
    train_seconds = time.perf_counter() - start
    # The trainer logs each epoch's loop time apart from its validation pass.
    history = read_metrics_log(run_dir, "epoch")
    loop_seconds = sum(h["train_seconds"] for h in history)

    splits = trainer_mod.load_splits(cfg)
    if splits.test is None:
        raise ValueError("the benchmark config has no test table")
    model = MultimodalModel.load(run_dir / "model")
    device = torch.device("cpu")
    frozen = [k for k, e in model.encoders.items() if e.is_frozen] if cfg.train.cache_frozen_encoders else []
    workers = cfg.loader_workers
    cache = None
    if frozen:
        own = store or SharedStore()
        cache = own.get(model, splits.test, frozen, True, cfg.train.batch_size, device, workers, progress)
    loader = make_loader(model, splits.test, cfg.train.batch_size, num_workers=workers, cache=cache)
    test, preds = evaluate(model, loader, device)
    missing = {}
    if drop_each and len(model.input_names) > 1:
        for name in model.input_names:
            missing[name], _ = evaluate(model, loader, device, drop=[name])
    wall = time.perf_counter() - start
    out = Outcome(
        test=test,
        predictions=preds,
        missing=missing,
        best_validation=float(result.best_score),
        best_epoch=result.best_epoch,
        epochs_run=len(history),
        steps=result.global_step,
        n_train=len(splits.train),
        n_validation=len(splits.validation),
        n_test=len(splits.test),
        loop_seconds=loop_seconds,
        train_seconds=train_seconds,
        wall_s=wall,
        frozen=frozen,
        model=describe_model(raw_config),
    )
    first = next(iter(test))
    summary = "  ".join(f"{k}={v:.4f}" for k, v in test[first].items() if isinstance(v, float))
    print(f"[bench] {label or run_dir.name}: {out.epochs_run} epochs, {out.steps} steps, wall {wall:.1f} s; test {summary}", flush=True)
    return out


def describe_model(raw_config: dict[str, Any]) -> str:
    """The model a config trains, for the result rows: each input's encoder (source, name, the
    options that change it, frozen or not), then the fusion when there are several inputs."""
    parts = []
    for inp in raw_config["inputs"]:
        enc = dict(inp.get("encoder") or {})
        options = ", ".join(f"{k} {v}" for k, v in enc.items() if k not in ("source", "name", "freeze", "config"))
        frozen = {"all": ", frozen", None: ""}.get(enc.get("freeze"), f", freeze {enc.get('freeze')}")
        name = f"{enc.get('source', 'default')} {enc.get('name', inp['modality'] + ' default')}"
        parts.append(f"{inp.get('name') or inp['column']}: {name}" + (f" ({options})" if options else "") + frozen)
    fusion = (raw_config.get("fusion") or {}).get("type", "concat")
    return "; ".join(parts) + (f"; {fusion} fusion" if len(parts) > 1 else "")


class Variant(NamedTuple):
    frozen: bool
    config: dict[str, Any]
    outcome: Outcome


def finetune_and_probe(config: Callable[[bool], dict[str, Any]], base: Path, folder: Path, progress: bool = False) -> Iterator[Variant]:
    """Fit ``config(False)`` (the encoder fine-tuned, run folder ``runs/finetune``), then
    ``config(True)`` (a frozen probe, ``runs/probe``); yield each as soon as it is evaluated."""
    for freeze in (False, True):
        cfg = config(freeze)
        yield Variant(
            freeze,
            cfg,
            fit(cfg, base, folder / "runs" / ("probe" if freeze else "finetune"), progress=progress, label="frozen probe" if freeze else "fine-tune"),
        )


def row(benchmark: str, variant: str, metric: str, value: float, wall_s: float, reference: Any = None, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"benchmark": benchmark, "variant": variant, "metric": metric, "value": _round(value), "wall_s": round(float(wall_s), 1)}
    if reference is not None:
        r["reference"] = reference
    r.update(extra)
    return r


def metric_rows(benchmark: str, variant: str, outcome: Outcome, metrics: Sequence[tuple[str, str, Any]]) -> list[dict[str, Any]]:
    """One row per ``(metric text, Outcome.metric name, reference or None)``, with ``n_test``."""
    return [
        row(benchmark, variant, text, outcome.metric(key), outcome.wall_s, reference, n_test=outcome.n_test, model=outcome.model)
        for text, key, reference in metrics
    ]


def _round(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return round(float(v), 4) if np.isfinite(v) else None
    return v


def mcc(outcome: Outcome, target: str | None = None) -> float:
    from sklearn.metrics import matthews_corrcoef

    target = target or next(iter(outcome.test))
    y = outcome.predictions.targets[target]
    keep = y >= 0
    return float(matthews_corrcoef(y[keep], outcome.predictions.outputs[target][keep].argmax(1)))


def main_guard(run: Callable[[Any], int], parser_factory: Callable[[], Any], argv: Sequence[str] | None = None) -> int:
    """Parse, set threads, run; a missing dataset fails (exit status 2) with a message naming it."""
    p = parser_factory()
    args = p.parse_args(argv)
    args.thread_info = set_threads(args.threads)
    ensure_examples_importable()
    from examples._common import DataMissing

    try:
        return run(args)
    except (DataAbsent, DataMissing) as e:
        print(f"[bench] error: {e}", file=sys.stderr, flush=True)
        return 2


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 1)


def write_quality_result(name: str, rows: list[dict[str, Any]], args: Any, start: float, prepare_s: float, **extra: Any) -> Path:
    """``benchmarks.common.write_result`` with what every quality result file carries: the
    preparation and total wall times, threads, load and peak memory."""
    from benchmarks.common import write_result

    return write_result(name, rows, args.smoke, extra={"prepare_s": prepare_s, **extra, "total_wall_s": elapsed(start), **run_info(args)})


def run_info(args: Any) -> dict[str, Any]:
    """What goes into every result file besides the rows: threads, load, peak memory."""
    from benchmarks.common import peak_rss_mb

    return {**args.thread_info, "peak_rss_mb": round(peak_rss_mb(), 1)}
