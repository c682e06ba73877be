"""Banking77 subsets for the speed benchmarks, prepared by ``examples.banking77`` (not duplicated here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

LABEL, TEXT = "intent", "text"


def available(data_root: Path) -> bool:
    from examples import banking77
    from examples._common import missing_files

    return not missing_files(data_root, banking77.DATA_DIR, banking77.REQUIRED)


def require(data_root: Path) -> None:
    """Banking77 absent: the benchmark fails (exit status 2) with a message naming the folder; a run
    that measured nothing must never look like a pass."""
    if not available(data_root):
        print(
            f"[bench] error: Banking77 not found under {Path(data_root) / 'banking77'} (pass --data-root or set MMAGENT_DATA_ROOT)", file=sys.stderr, flush=True
        )
        raise SystemExit(2)


def prepare(data_root: Path, out_dir: Path, limit: int | None, test_limit: int | None = None) -> dict[str, Path]:
    """``examples.banking77.prepare`` (class-balanced ``limit`` training rows, a quarter of that for
    validation and test); ``test_limit`` replaces the test table by a larger class-balanced subset
    of the official test split (``None``: keep the example's)."""
    from examples import banking77
    from examples._common import balanced_head

    paths = banking77.prepare(Path(data_root), Path(out_dir), limit=limit)
    if test_limit is not None:
        test = banking77.load(Path(data_root))["test"]
        balanced_head(test, LABEL, test_limit).to_csv(paths["test"], index=False)
    return paths


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)
