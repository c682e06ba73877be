"""``mmagent fit`` against AutoGluon's MultiModalPredictor: the same rows, the same MiniLM weights,
the same time budgets, one tool after the other on this machine.

    python -m benchmarks.vs_autogluon                          # Financial PhraseBank and Banking77, 2/5/10/30 min
    python -m benchmarks.vs_autogluon financial_phrasebank --budgets 5m --draft
    python -m benchmarks.vs_autogluon --setup-only             # build AutoGluon's environment and stop
    python -m benchmarks.vs_autogluon --smoke                  # tiny tables, 60 s (see below)

Each tool runs as a whole process per budget (a fresh fit; the **anytime curve** is the test score
each tool holds at each budget), timed with its peak resident memory (children included), then
predicts the test table again in a fresh process (rows/s as a user's service would see them).

**AutoGluon's environment.** AutoGluon 1.6.3 lives in its own virtual environment, built here on
first use (:func:`ensure_autogluon_env`, ``$MMAGENT_AUTOGLUON_ENV`` or ``~/.cache/mmagent/bench/``).
It pins ``torch<2.14`` and ``torchvision<0.29``; on this machine the only torch builds on disk are
2.14.1 with torchvision 0.29.1 (what mmagent runs on) and a CPU 2.13.0 whose PyPI torchvision
fails to import beside it, and anything else is a multi-gigabyte download. So the environment takes
torch 2.14.1 / torchvision 0.29.1 from the local disk and AutoGluon's own packages with
``--no-deps`` (their other requirements installed as pinned); the import is checked before any
timing. Both tools therefore run on the same torch. AutoGluon's text backbone is pointed at the
local folder of the MiniLM-L6 weights that mmagent's zoo loads (``model.hf_text.checkpoint_name``).

**Smoke** (``make bench-smoke``, CI): mmagent's side runs for real on a tiny table; AutoGluon's
side runs only when its environment is already built (CI never builds it: hundreds of MB of
packages and minutes of install for a smoke), otherwise its rows say ``not installed`` and carry
no value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks._quality import ensure_examples_importable, require_data
from benchmarks.common import base_parser, write_result
from benchmarks.fit_scale import run_timed

AUTOGLUON = "1.6.3"
AUTOGLUON_PACKAGES = [
    f"autogluon.common=={AUTOGLUON}",
    f"autogluon.core=={AUTOGLUON}",
    f"autogluon.features=={AUTOGLUON}",
    f"autogluon.multimodal=={AUTOGLUON}",
]
LOCAL_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]  # on this disk; AutoGluon asks for torch<2.14
# AutoGluon's other requirements (from the four packages' metadata; ray, for its HPO only, left out).
AUTOGLUON_REQUIREMENTS = [
    "Pillow<13,>=10.0.1", "accelerate<2.0,>=1.1.0", "boto3<2,>=1.10", "defusedxml<0.7.2,>=0.7.1", "evaluate<0.5.0,>=0.4.0",
    "fsspec[http]<2027.0", "jinja2<3.2,>=3.0.3", "joblib<1.7,>=1.2", "jsonschema<4.24,>=4.18", "lightning<2.7,>=2.5.1",
    "matplotlib<3.12,>=3.7.0", "networkx<4,>=3.0", "nlpaug<1.2.0,>=1.1.10", "nltk<3.11,>=3.10.3", "numpy<2.6.0,>=1.25.0",
    "omegaconf<2.4.0,>=2.1.1", "pandas<2.4.0,>=2.0.0", "pdf2image<1.19,>=1.17.0", "psutil<7.3.0,>=5.7.3",
    "pyarrow<25.0.0,>=23.0.1", "pytesseract<0.4,>=0.3.9", "pytorch-metric-learning<2.9,>=1.3.0", "pyyaml>=5.4", "requests<3,>=2.30",
    "scikit-image<0.26.0,>=0.19.1", "scikit-learn<1.10.0,>=1.4.0", "scipy<1.19,>=1.5.4", "seqeval<1.3.0,>=1.2.2", "tensorboard<3,>=2.9",
    "text-unidecode<1.4,>=1.3", "timm<1.0.7,>=0.9.5", "torchmetrics<1.8,>=1.2.0", "tqdm<5,>=4.38", "transformers[sentencepiece]<5.15,>=5.3",
    "typing-extensions<5,>=4.14.0", "openmim<0.4.0,>=0.3.7", "nvidia-ml-py3<8.0,>=7.352.0",
    "setuptools<81",  # autogluon.multimodal imports pkg_resources, gone from setuptools 81
]  # fmt: skip
RUNNER = Path(__file__).with_name("_autogluon_runner.py")
DATA_SETS = {"financial_phrasebank": "sentiment", "banking77": "intent"}
BUDGETS = ["2m", "5m", "10m", "30m"]


def autogluon_env() -> Path:
    return Path(os.environ.get("MMAGENT_AUTOGLUON_ENV", Path.home() / ".cache" / "mmagent" / "bench" / f"autogluon-{AUTOGLUON}"))


def ensure_autogluon_env(env: Path, build: bool = True) -> Path | None:
    """AutoGluon's Python (see the module doc), built once and stamped; None when it is not built
    and ``build`` is False."""
    python, stamp = env / "bin" / "python", env / ".complete"
    if stamp.is_file():
        return python
    if not build:
        return None
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *LOCAL_TORCH], check=True)
    subprocess.run([*pip, *AUTOGLUON_REQUIREMENTS, *LOCAL_TORCH], check=True)  # torch named again: nothing may replace it
    subprocess.run([*pip, "--no-deps", *AUTOGLUON_PACKAGES], check=True)
    subprocess.run(
        [str(python), "-c", "import autogluon.multimodal, torch; print('autogluon', autogluon.multimodal.__version__, 'torch', torch.__version__)"], check=True
    )
    stamp.write_text(AUTOGLUON + "\n")
    return python


def minilm_folder() -> Path:
    """The local HF folder of the MiniLM-L6 weights mmagent's zoo loads (checksum verified)."""
    from mmagent.encoders.zoo.cache import verified_weight_path

    return verified_weight_path("minilm-l6").parent


def prepare(name: str, data_root: Path, folder: Path, smoke: bool) -> dict[str, Path]:
    """The project's own preparer of each data set: train / validation / test CSVs."""
    import importlib

    ensure_examples_importable()
    module = importlib.import_module(f"examples.{name}")
    return module.prepare(data_root, folder, module.SMOKE_LIMIT if smoke else None)


THREADS: dict[str, str] = {}  # OMP_NUM_THREADS for both tools when --threads is given


def _timed(command: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    return run_timed(command, {**(env or os.environ), **THREADS})


def _seconds(budget: str) -> float:
    from mmagent.search.fit_config import parse_duration

    return float(parse_duration(budget) or 0.0)


def run_mmagent(tables: dict[str, Path], label: str, budget: str, out: Path) -> dict[str, Any]:
    """``mmagent fit`` as a process, then ``mmagent evaluate``'s numbers and rows/s in a fresh one."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "mmagent", "fit", str(tables["train"]), "--label", label, "--validation", str(tables["validation"])]
    command += ["--test", str(tables["test"]), "--time-budget", budget, "-o", str(out), "--quiet"]
    _, wall, peak = _timed(command)
    metrics = json.loads((out / "metrics.json").read_text())["test"][label]
    predict = [sys.executable, "-c", _MMAGENT_PREDICT, str(out), str(tables["test"]), label]
    output, _, _ = _timed(predict)
    speed = json.loads(output.split("RESULT ", 1)[1])
    return {"fit_s": wall, "peak_rss_mb": peak, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], **speed}


# Prediction in a fresh process, as a service would: load the agent, predict the test table in batches.
_MMAGENT_PREDICT = """
import json, sys, time
start = time.perf_counter()
from mmagent.agent import Agent
from mmagent.data.tables import read_table
agent = Agent.load(sys.argv[1]); load_s = time.perf_counter() - start
records = [{k: v for k, v in r.items() if k != sys.argv[3]} for r in read_table(sys.argv[2]).records]  # the label is not an input
start = time.perf_counter()
for i in range(0, len(records), 256):
    agent.predict(records[i : i + 256])
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"load_s": load_s, "predict_s": seconds, "rows_per_s": len(records) / seconds}))
"""


def run_autogluon(python: Path, tables: dict[str, Path], label: str, budget: str, out: Path) -> dict[str, Any]:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        str(python),
        str(RUNNER),
        "fit",
        *(str(tables[s]) for s in ("train", "validation", "test")),
        label,
        str(_seconds(budget)),
        str(minilm_folder()),
        str(out),
    ]
    output, wall, peak = _timed(command, env)
    fitted = json.loads(output.split("RESULT ", 1)[1])
    output, _, _ = _timed([str(python), str(RUNNER), "predict", str(out), str(tables["test"]), label], env)
    speed = json.loads(output.split("RESULT ", 1)[1])
    test = fitted["test"]
    return {
        "fit_s": wall,
        "peak_rss_mb": peak,
        "accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "load_s": speed["load_s"],
        "rows_per_s": speed["rows_per_s"],
    }


TOOLS = ("mmagent", "autogluon")
METRICS = [
    ("accuracy", "test accuracy"),
    ("macro_f1", "test macro-F1"),
    ("fit_s", "fit wall s"),
    ("peak_rss_mb", "peak RSS MB"),
    ("rows_per_s", "prediction rows/s (fresh process)"),
]


def main(argv: list[str] | None = None) -> int:
    p = base_parser("mmagent fit against AutoGluon MultiModalPredictor, same rows, weights and budgets")
    p.add_argument("data_sets", nargs="*", help=f"of {list(DATA_SETS)} (default: all)")
    p.add_argument("--budgets", nargs="+", default=None, help="time budgets (default 2m 5m 10m 30m; 60s with --smoke)")
    p.add_argument("--setup-only", action="store_true", help="build AutoGluon's environment and stop")
    p.add_argument("--threads", type=int, default=None, help="threads for both tools' processes (default: each tool's own choice)")
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="run only these tools (e.g. a --draft of mmagent's side)")
    args = p.parse_args(argv)
    if unknown := set(args.data_sets) - set(DATA_SETS):
        p.error(f"unknown data sets {sorted(unknown)}; choose from {list(DATA_SETS)}")
    if args.threads:
        THREADS["OMP_NUM_THREADS"] = str(args.threads)
    if args.setup_only:
        print(f"AutoGluon environment: {ensure_autogluon_env(autogluon_env())}")
        return 0
    python = ensure_autogluon_env(autogluon_env(), build=not args.smoke) if "autogluon" in args.tools else None
    budgets = args.budgets or (["60s"] if args.smoke else BUDGETS)
    rows: list[dict[str, Any]] = []
    for name in args.data_sets or list(DATA_SETS):
        label = DATA_SETS[name]
        tables = prepare(name, require_data(args.data_root, name), args.work_dir / "vs_autogluon" / name / "tables", args.smoke)
        for budget in budgets:
            results: dict[str, dict[str, Any] | None] = {}
            if "mmagent" in args.tools:
                results["mmagent fit"] = run_mmagent(tables, label, budget, args.work_dir / "vs_autogluon" / name / f"mmagent-{budget}")
            if "autogluon" in args.tools:
                folder = args.work_dir / "vs_autogluon" / name / f"autogluon-{budget}"
                results["AutoGluon"] = run_autogluon(python, tables, label, budget, folder) if python else None
            for tool, got in results.items():
                for key, metric in METRICS:
                    value = None if got is None else round(float(got[key]), 4)
                    variant = f"{name}, {budget}, {tool}" + (
                        "" if got is not None else " (not installed: its environment is built by a full run or --setup-only)"
                    )
                    rows.append(
                        {"benchmark": "vs_autogluon", "variant": variant, "metric": metric, "value": value, "model": "MiniLM-L6 (zoo weights, both tools)"}
                    )
                    print(f"{variant:60s} | {metric:34s} | {value}", flush=True)
    write_result("vs_autogluon", rows, args.smoke, extra={"autogluon": AUTOGLUON, "torch_for_autogluon": LOCAL_TORCH, "budgets": budgets})
    return 0


if __name__ == "__main__":
    sys.exit(main())
