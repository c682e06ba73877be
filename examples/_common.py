"""What every example shares: where the data and outputs go, the command line, subsets, training.

An example module defines ``NAME``, ``DATA_DIR`` (its folder under the data root), ``REQUIRED``
(files that must exist there), ``SMOKE_LIMIT``, ``prepare(data_root, out_dir, limit)`` and
``make_config(paths, args)``; :func:`run_example` does the rest (argparse, prepare, write
``config.yaml`` next to the tables, train through the mmagent API, print the test metrics).

Nothing here copies the shared data into the repository: prepared tables go to ``prepared/<name>/``
(git-ignored) or ``--out``; runs go to ``runs/<name>/`` (git-ignored) or ``--run-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_DATA_ROOT = "MMAGENT_DATA_ROOT"
SEED = 42


class DataMissing(FileNotFoundError):
    """The dataset folder (or one of its files) is not under the data root."""


def default_data_root() -> Path:
    """``$MMAGENT_DATA_ROOT``, else ``../shared/data`` next to the repository root."""
    env = os.environ.get(ENV_DATA_ROOT)
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def missing_files(data_root: Path, data_dir: str, required: Sequence[str]) -> list[str]:
    folder = Path(data_root) / data_dir
    if not folder.is_dir():
        return [str(folder)]
    return [str(folder / r) for r in required if not (folder / r).exists()]


def require(data_root: Path, data_dir: str, required: Sequence[str]) -> Path:
    """The dataset folder; :class:`DataMissing` naming what is absent otherwise."""
    missing = missing_files(data_root, data_dir, required)
    if missing:
        raise DataMissing(f"{data_dir}: not found: {', '.join(missing)} (pass --data-root or set {ENV_DATA_ROOT})")
    return Path(data_root) / data_dir


# -- subsets ----------------------------------------------------------------------------------
def balanced_head(frame: pd.DataFrame, label: str, n: int | None, seed: int = SEED) -> pd.DataFrame:
    """At most ``n`` rows, as class-balanced as possible (round-robin over the classes in a seeded
    random order), so a small subset still has every class. ``n=None``: the frame unchanged."""
    if n is None or n >= len(frame):
        return frame.reset_index(drop=True)
    shuffled = frame.sample(frac=1.0, random_state=seed)
    rank = shuffled.groupby(label, sort=False).cumcount()
    picked = shuffled.assign(_rank=rank.values).sort_values("_rank", kind="stable").head(n)
    return picked.drop(columns="_rank").sort_index().reset_index(drop=True)


def stratified_split(frame: pd.DataFrame, label: str, test_size: float, seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split stratified on ``label`` (both parts keep the original row order)."""
    from sklearn.model_selection import train_test_split

    a, b = train_test_split(frame.index.to_numpy(), test_size=test_size, random_state=seed, stratify=frame[label])
    return frame.loc[sorted(a)].reset_index(drop=True), frame.loc[sorted(b)].reset_index(drop=True)


def split_limits(limit: int | None, ratios: tuple[float, float, float] = (1.0, 0.25, 0.25)) -> dict[str, int | None]:
    """``limit`` caps the training rows; validation and test get a proportional (smaller) cap."""
    if limit is None:
        return {"train": None, "validation": None, "test": None}
    return {s: max(1, int(round(limit * r))) for s, r in zip(("train", "validation", "test"), ratios)}


def write_tables(frames: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """``train.csv`` / ``validation.csv`` / ``test.csv`` in ``out_dir``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, frame in frames.items():
        path = out_dir / f"{split}.csv"
        frame.to_csv(path, index=False)
        paths[split] = path
    return paths


# -- config -----------------------------------------------------------------------------------
def zoo(name: str, **options: Any) -> dict[str, Any]:
    return {"source": "zoo", "name": name, **options}


def base_config(paths: dict[str, Path], inputs: list[dict], targets: list[dict], fusion: dict, train: dict, **extra: Any) -> dict[str, Any]:
    """A config whose data paths are relative to the folder of the tables (where it is written)."""
    return {
        "data": {s: paths[s].name for s in ("train", "validation", "test")},
        "inputs": inputs,
        "targets": targets,
        "fusion": fusion,
        "train": train,
        **extra,
    }


def apply_run_options(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """--epochs / --steps / --batch-size / --cpu from the command line go into the written config."""
    train = config.setdefault("train", {})
    if args.epochs is not None:
        train["epochs"] = args.epochs
    if args.steps is not None:
        train["max_steps"] = args.steps
    if args.batch_size is not None:
        train["batch_size"] = args.batch_size
    return config


def with_recipe(config: dict[str, Any], recipe: str, base_dir: Path) -> dict[str, Any]:
    """Add ``recipe: NAME`` when this mmagent has that recipe and the config still validates with
    it (the explicit keys are kept either way, so the example works with or without recipes)."""
    from mmagent.config import ConfigError, config_from_dict

    try:
        from mmagent.tasks import recipes  # noqa: F401
    except ImportError:
        return config
    candidate = {"recipe": recipe, **config}
    try:
        config_from_dict(candidate, base_dir=base_dir)
    except (ConfigError, ImportError, KeyError, ValueError) as e:
        print(f"note: recipe {recipe!r} not used ({str(e).splitlines()[0]})", file=sys.stderr)
        return config
    return candidate


def write_config(config: dict[str, Any], out_dir: Path, header: str = "") -> Path:
    path = out_dir / "config.yaml"
    text = yaml.safe_dump(config, sort_keys=False, width=120)
    path.write_text((f"# {header}\n" if header else "") + text)
    return path


# -- command line -----------------------------------------------------------------------------
def parser(name: str, description: str, smoke_limit: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m examples.{name}", description=description)
    p.add_argument("--data-root", type=Path, default=None, help=f"folder holding the datasets (default: ${ENV_DATA_ROOT} or ../shared/data from the repo root)")
    p.add_argument("--out", type=Path, default=None, help=f"folder for the prepared tables and config.yaml (default: prepared/{name}[-smoke]/, git-ignored)")
    p.add_argument("--run-dir", type=Path, default=None, help=f"run folder to create (default: runs/{name}[-smoke]/, git-ignored)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the example's)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps (train.max_steps)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the example's)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many training rows (validation/test get a proportional cap)")
    p.add_argument("--smoke", action="store_true", help=f"tiny subset (--limit {smoke_limit}) and a few steps: checks that everything runs, not quality")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="extra config override, e.g. --set train.lr=1e-4 (repeatable)"
    )
    p.add_argument("--prepare-only", action="store_true", help="write the tables and config.yaml, do not train")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder (smoke runs always replace theirs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 is faster on a busy machine)")
    return p


def _replace_run_dir(run_dir: Path) -> None:
    """Remove a previous run folder, but only one that mmagent wrote."""
    if not run_dir.exists():
        return
    if not ((run_dir / "config.json").is_file() or (run_dir / "checkpoints").is_dir()):
        raise FileExistsError(f"{run_dir} exists and is not an mmagent run folder; refusing to delete it")
    shutil.rmtree(run_dir)


def headline(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The scalar metrics per target of one split."""
    return {t: {k: round(float(v), 4) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} for t, m in metrics.items()}


def run_example(
    module: ModuleType,
    argv: Sequence[str] | None = None,
    smoke_steps: int = 8,
    smoke_epochs: int = 1,
    smoke_options: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """The whole example: parse the command line, prepare, write config.yaml, train, print metrics.

    Exit status: 0 done, 2 data missing or training error."""
    name = module.NAME
    p = parser(name, (module.__doc__ or "").strip().splitlines()[0], module.SMOKE_LIMIT)
    if hasattr(module, "add_arguments"):
        module.add_arguments(p)
    args = p.parse_args(argv)
    data_root = (args.data_root or default_data_root()).expanduser().resolve()
    suffix = "-smoke" if args.smoke else ""
    out_dir = (args.out or REPO_ROOT / "prepared" / f"{name}{suffix}").expanduser().resolve()
    run_dir = (args.run_dir or REPO_ROOT / "runs" / f"{name}{suffix}").expanduser().resolve()
    limit = args.limit if args.limit is not None else (module.SMOKE_LIMIT if args.smoke else None)
    if args.smoke:
        args.steps = args.steps if args.steps is not None else smoke_steps
        args.epochs = args.epochs if args.epochs is not None else smoke_epochs
        if smoke_options is not None:
            smoke_options(args)

    start = time.perf_counter()
    try:
        paths = module.prepare(data_root, out_dir, limit=limit)
    except DataMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = {s: len(pd.read_csv(paths[s], dtype=str)) for s in ("train", "validation", "test")}
    print(f"[{name}] prepared {counts} rows in {out_dir} ({time.perf_counter() - start:.1f} s)")

    config = apply_run_options(module.make_config(paths, args), args)
    config_path = write_config(config, out_dir, header=f"written by `python -m examples.{name}`; data paths are relative to this file")
    cli = f"mmagent train {shlex.quote(str(config_path))} -o {shlex.quote(str(run_dir))}" + "".join(f" --set {shlex.quote(o)}" for o in args.overrides)
    print(f"[{name}] config: {config_path}\n[{name}] equivalent command: {cli}")
    if args.prepare_only:
        return 0

    from mmagent.config import ConfigError, load_config
    from mmagent.workflow import train

    if args.threads:  # as train.threads: mmagent's thread policy would otherwise choose
        cfg_threads = [f"train.threads={args.threads}"]
    else:
        cfg_threads = []
    try:
        cfg = load_config(config_path, [*args.overrides, *cfg_threads])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if run_dir.exists() and (args.smoke or args.overwrite):
        _replace_run_dir(run_dir)
    elif run_dir.exists():
        print(f"error: {run_dir} already exists; pass --overwrite or --run-dir", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = train(cfg, run_dir, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    test = headline(result.metrics.get("test", {}))
    print(f"[{name}] trained {result.global_step} steps in {seconds:.1f} s; run folder: {run_dir}")
    for target, values in test.items():
        print(f"[{name}] test {target}: " + "  ".join(f"{k}={v:g}" if k in ("n", "unseen_labels") else f"{k}={v:.4f}" for k, v in values.items()))
    summary = {"name": name, "smoke": bool(args.smoke), "run_dir": str(run_dir), "train_seconds": round(seconds, 1), "steps": result.global_step, "test": test}
    print("RESULT " + json.dumps(summary))
    return 0
