"""Unknown inputs: does the agent escalate what it was never trained on, and keep its error promise?

    python -m benchmarks.unknown_inputs                       # all three parts, 10 min budget each
    python -m benchmarks.unknown_inputs banking77_oos --budget 20m --draft
    python -m benchmarks.unknown_inputs --smoke               # tiny subsets, 40 s budget each

Parts (positional arguments; default all), each an ``mmagent fit`` then ``Agent.act_many`` on test:

* ``banking77_oos``: Banking77-OOS in the spirit of Zhang et al. 2021: 26 of the 77 intents (a fixed
  draw, ``numpy.random.default_rng(0)`` over the sorted names) are out of scope: their rows leave
  train and validation; the full test set is kept, its rows of those intents are out-of-scope
  requests. Fit with ``agent: {escalation: {max_error}}``. Goals: out-of-scope recall (escalated)
  >= 0.80, in-scope answered correctly >= 0.90, unknown-score AUROC >= 0.95, error among the
  answered (an answered out-of-scope request is an error) <= max_error + 0.01.
* ``banking77_promise``: all 77 intents with the same agent block: error among the answered test
  rows and coverage, with the one-sided 95 % Clopper-Pearson bounds: the promise
  ``error <= max_error`` is kept within sampling slack when the lower bound does not exceed it.
* ``breastmnist_foreign``: BreastMNIST (recipe ``medical_imaging``), then foreign 28 px images
  (FSDD spectrograms, scikit-learn digits, Financial PhraseBank sentences rendered as text,
  scikit-image photos when installed, blanks, noise; written under the work folder). Goal: >= 95 %
  of them referred as unknown, the in-distribution test AUC unchanged (vs ``fit_quality``).

The decision fields ``unknown`` / ``unknown_score`` are read where the agent sets them (absent:
not flagged / no AUROC). Pure parts: ``benchmarks/_unknown_data.py`` (tested in ``tests/test_unknown_bench.py``).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _unknown_data as U
from benchmarks._quality import elapsed, main_guard, quality_parser, require_data, row, work_dir, write_quality_result

NAME = "unknown_inputs"
PARTS = ("banking77_oos", "banking77_promise", "breastmnist_foreign")
CHUNK = 256  # records per act_many call
FOREIGN_PER_KIND, SMOKE_PER_KIND = 50, 6
FOREIGN_GOAL = 0.95
AUC_REFERENCE = "unchanged: fit_quality breastmnist (MedMNIST v2 ResNet-18 (28): 0.901)"


def parser() -> Any:
    p = quality_parser(__doc__.strip().splitlines()[0])
    p.add_argument("parts", nargs="*", help=f"parts: {', '.join(PARTS)} (default: all)")
    p.add_argument("--budget", default=None, help="time budget of each fit (default 10m; 40s with --smoke)")
    p.add_argument("--preset", default="balanced", help="fast | balanced | best")
    p.add_argument("--max-error", type=float, default=0.05, help="the agent's promised error among the answered requests")
    return p


# -- fit, act ----------------------------------------------------------------------------------------
def fit_run(
    args: Any, run_dir: Path, train: Path, label: str, validation: Path, test: Path, recipe: str, agent: dict[str, Any] | None, metric: str | None = None
) -> dict[str, Any]:
    """``mmagent fit`` into ``run_dir`` (a previous run of ours there is removed); what it chose.
    ``metric``: the validation metric candidates are ranked on (as in ``fit_quality``)."""
    from mmagent.runs import MARKER_FILE
    from mmagent.search.fit import fit

    if run_dir.exists():
        if not (run_dir / MARKER_FILE).is_file():
            raise FileExistsError(f"{run_dir} exists and is not an mmagent run folder; refusing to delete it")
        shutil.rmtree(run_dir)
    budget = args.budget or ("40s" if args.smoke else "10m")
    t0 = time.perf_counter()
    result = fit(
        train,
        label,
        run_dir,
        validation=validation,
        test=test,
        time_budget=budget,
        preset=args.preset,
        recipe=recipe,
        agent=agent,
        metric=metric,
        progress=args.progress,
    )
    best = result.leaderboard.best()
    chosen = json.loads((run_dir / "config.json").read_text())
    encoders = ", ".join(f"{i['column']}: {i['encoder']['source']}:{i['encoder']['name']}" for i in chosen["inputs"] if isinstance(i["column"], str))
    return {
        "budget": budget,
        "fit_s": elapsed(t0),
        "model": f"{encoders}; chosen {best.name} ({best.describe()})" if best else "none",
        "run_metrics": _scalars(json.loads((run_dir / "metrics.json").read_text())),
        "calibration_escalation": _escalation(run_dir),
        "unknown_json": _optional_json(run_dir / "unknown.json"),
    }


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The run's validation / test metrics per target, numbers only (no per-class tables)."""
    keep = lambda m: {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}  # noqa: E731
    return {split: {t: keep(m) for t, m in metrics.get(split, {}).items() if isinstance(m, dict)} for split in ("validation", "test")}


def _escalation(run_dir: Path) -> Any:
    from mmagent import runs

    return runs.read_calibration(run_dir).get(runs.ESCALATION_KEY)


def _optional_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def act_all(agent: Any, records: list[dict[str, Any]], base_dir: Path | str = ".") -> tuple[list[Any], float]:
    """``agent.act_many`` over ``records`` in chunks of :data:`CHUNK`; (decisions, seconds)."""
    t0 = time.perf_counter()
    out: list[Any] = []
    for i in range(0, len(records), CHUNK):
        out += agent.act_many(records[i : i + CHUNK], base_dir=base_dir, explain=False)
    return out, time.perf_counter() - t0


def _detector_attribute(agent: Any) -> str | None:
    """The agent attribute holding its :class:`mmagent.agent.unknown.UnknownDetector`, if any."""
    try:
        from mmagent.agent.unknown import UnknownDetector
    except ImportError:
        return None
    return next((k for k, v in vars(agent).items() if isinstance(v, UnknownDetector)), None)


def serving_cost(agent: Any, records: list[dict[str, Any]], base_dir: Path | str = ".", repeats: int = 3) -> dict[str, float]:
    """Milliseconds per request of ``act_many`` on at most :data:`CHUNK` records, and without the
    unknown score where the agent holds an ``UnknownDetector`` (set to None, what a run from before
    unknown scores loads as); the two timed in turn, best of ``repeats`` each. Only the first
    when the agent holds none."""
    records = records[:CHUNK]
    name = _detector_attribute(agent)
    detector = getattr(agent, name) if name else None
    times: dict[str, list[float]] = {"act_ms_per_request": [], "act_ms_per_request_without_unknown": []}
    for _ in range(repeats):
        times["act_ms_per_request"].append(act_all(agent, records, base_dir)[1])
        if name is not None:
            setattr(agent, name, None)
            try:
                times["act_ms_per_request_without_unknown"].append(act_all(agent, records, base_dir)[1])
            finally:
                setattr(agent, name, detector)
    out = {k: 1000 * min(v) / max(1, len(records)) for k, v in times.items() if v}
    if name is not None:
        out["unknown_score_ms_per_request"] = out["act_ms_per_request"] - out["act_ms_per_request_without_unknown"]
    return out


def _has_unknown(decisions: Sequence[Any]) -> bool:
    return bool(decisions) and all(hasattr(d, "unknown") and hasattr(d, "unknown_score") for d in decisions)


def cost_rows(part: str, variant: str, cost: dict[str, float], model: str) -> list[dict[str, Any]]:
    return [row(part, variant, f"serving: {k.replace('_', ' ')}", v, 0.0, model=model) for k, v in cost.items()]


# -- the three parts ---------------------------------------------------------------------------------
def banking_frames(args: Any) -> dict[str, pd.DataFrame]:
    """Banking77's train / validation / test frames; smoke: 4 / 2 / 2 rows per intent."""
    from examples import banking77
    from examples._common import balanced_head

    frames = banking77.load(require_data(Path(args.data_root), banking77.DATA_DIR))
    if args.smoke:
        n = frames["train"][U.LABEL].nunique()
        frames = {s: balanced_head(f, U.LABEL, k * n) for (s, f), k in zip(frames.items(), (4, 2, 2))}
    return frames


def _write(frames: dict[str, pd.DataFrame], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in frames.items():
        paths[name] = folder / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def banking77_oos(args: Any, folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from mmagent.agent import Agent

    frames = banking_frames(args)
    oos = U.choose_oos_intents(frames["train"][U.LABEL])
    tables = _write(U.oos_split(frames, oos), folder / "data")
    agent_block = {"escalation": {"max_error": args.max_error}}
    info = fit_run(args, folder / "run", tables["train"], U.LABEL, tables["validation"], tables["test_in_scope"], "customer_service", agent_block)
    test = pd.read_csv(tables["test"], dtype=str, keep_default_na=False)
    agent = Agent.load(folder / "run")
    records = test[[U.TEXT]].to_dict("records")
    decisions, act_s = act_all(agent, records)
    m = U.oos_metrics(decisions, test[U.LABEL].tolist(), oos)
    goals = U.oos_goals(m, args.max_error)
    subset = "smoke subset" if args.smoke else "official test split"
    n_intents = frames["train"][U.LABEL].nunique()
    v = f"{n_intents - len(oos)} in-scope intents, {len(oos)} held out (seed {U.OOS_SEED}); fit {args.preset} {info['budget']}, max_error {args.max_error:g}, {subset}"
    model, n = info["model"], {"n_in_scope": int(m["n_in_scope"]), "n_oos": int(m["n_oos"])}
    shown = [
        ("in-scope accuracy", "in_scope_accuracy"),
        ("in-scope answered correctly", "in_scope_answered_correctly"),
        ("in-scope coverage (answered)", "coverage"),
        ("out-of-scope recall (escalated)", "oos_recall"),
        ("out-of-scope flagged unknown", "oos_flagged_unknown"),
        ("in-scope flagged unknown (false alarms)", "in_scope_flagged_unknown"),
        ("unknown-score AUROC, out-of-scope vs in-scope", "unknown_auroc"),
        ("error among answered (answered OOS = error)", "error_among_answered"),
    ]
    rows = [row("banking77_oos", v, text, m[key], act_s, reference=goals[key][0] if key in goals else None, model=model, **n) for text, key in shown]
    rows.append(row("banking77_oos", v, "goals met (of 4)", float(sum(ok for _, ok in goals.values())), info["fit_s"], reference="4", model=model))
    cost = serving_cost(agent, records, repeats=1 if args.smoke else 3)
    rows += cost_rows("banking77_oos", v, cost, model)
    extra = {
        **info,
        "oos_intents": oos,
        "metrics": m,
        "prediction_sets": U.set_stats(decisions),
        "goals": {k: {"goal": g, "met": ok} for k, (g, ok) in goals.items()},
    }
    return rows, {**extra, "decision_fields": _has_unknown(decisions), "act_s": round(act_s, 2), "serving": cost}


def banking77_promise(args: Any, folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from mmagent.agent import Agent

    tables = _write(banking_frames(args), folder / "data")
    info = fit_run(
        args, folder / "run", tables["train"], U.LABEL, tables["validation"], tables["test"], "customer_service", {"escalation": {"max_error": args.max_error}}
    )
    test = pd.read_csv(tables["test"], dtype=str, keep_default_na=False)
    agent = Agent.load(folder / "run")
    records = test[[U.TEXT]].to_dict("records")
    decisions, act_s = act_all(agent, records)
    m = U.promise_metrics(decisions, test[U.LABEL].tolist(), args.max_error)
    subset = "smoke subset" if args.smoke else "official test split"
    v = f"{test[U.LABEL].nunique()} intents; fit {args.preset} {info['budget']}, max_error {args.max_error:g}, {subset}"
    model, n = info["model"], {"n_answered": int(m["n_answered"]), "n_test": int(m["n"])}
    guarantee = (info["calibration_escalation"] or {}).get("guarantee")
    rows = [
        row(
            "banking77_promise",
            v,
            "error among answered",
            m["error_among_answered"],
            act_s,
            reference=f"<= {args.max_error:g}",
            model=model,
            guarantee=guarantee,
            **n,
        ),
        row("banking77_promise", v, "coverage (answered)", m["coverage"], act_s, model=model, **n),
        row("banking77_promise", v, "test accuracy (all rows)", m["accuracy"], act_s, model=model, **n),
        row("banking77_promise", v, "error 95% Clopper-Pearson upper bound", m["cp_upper"], act_s, model=model, **n),
        row("banking77_promise", v, "error <= max_error within sampling slack (1 = yes)", m["within_slack"], act_s, reference="1", model=model, **n),
    ]
    cost = serving_cost(agent, records, repeats=1 if args.smoke else 3)
    rows += cost_rows("banking77_promise", v, cost, model)
    return rows, {**info, "metrics": m, "prediction_sets": U.set_stats(decisions), "act_s": round(act_s, 2), "serving": cost}


def foreign_sources(data_root: Path, size: int, seed: int = 0) -> dict[str, U.Source]:
    """The foreign kinds that need data: FSDD spectrograms, rendered sentences, photo crops."""
    import soundfile as sf

    from examples import financial_phrasebank, fsdd_speech

    wavs = sorted(fsdd_speech.recordings(data_root)["audio"])
    sentences = financial_phrasebank.read_sentences(data_root / financial_phrasebank.DATA_DIR / financial_phrasebank.FILE)[financial_phrasebank.TEXT].tolist()

    def spectrograms(n: int) -> list[np.ndarray]:
        pick = np.random.default_rng(seed).choice(len(wavs), n, replace=False)
        return [U.to_grey(U.spectrogram(sf.read(wavs[i], dtype="float64")[0]), size) for i in pick]

    def texts(n: int) -> list[np.ndarray]:
        pick = np.random.default_rng(seed).choice(len(sentences), n, replace=False)
        return U.text_images([sentences[i] for i in pick], size)

    return {"spectrogram": spectrograms, "text": texts, "photo": lambda n: U.photo_crops(n, size, seed)}


def breastmnist_foreign(args: Any, folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from PIL import Image

    from examples import breastmnist, financial_phrasebank, fsdd_speech
    from mmagent.agent import Agent

    data_root = require_data(Path(args.data_root), breastmnist.DATA_DIR, fsdd_speech.DATA_DIR, financial_phrasebank.DATA_DIR)
    tables = breastmnist.prepare(data_root, folder / "data", limit=breastmnist.SMOKE_LIMIT if args.smoke else None)
    info = fit_run(args, folder / "run", tables["train"], breastmnist.LABEL, tables["validation"], tables["test"], "medical_imaging", None, metric="auroc")
    test = pd.read_csv(tables["test"], dtype=str, keep_default_na=False)
    base = Path(tables["test"]).parent
    size = Image.open(base / test[breastmnist.IMAGE].iloc[0]).size[0]
    images, skipped = U.foreign_images(size, SMOKE_PER_KIND if args.smoke else FOREIGN_PER_KIND, foreign_sources(data_root, size))
    shutil.rmtree(folder / "foreign", ignore_errors=True)
    foreign = U.write_images(images, folder / "foreign", breastmnist.IMAGE)
    agent = Agent.load(folder / "run")
    test_records = [{breastmnist.IMAGE: str((base / p).resolve())} for p in test[breastmnist.IMAGE]]
    in_dist, in_s = act_all(agent, test_records)
    foreign_records = foreign[[breastmnist.IMAGE]].to_dict("records")
    outside, out_s = act_all(agent, foreign_records)
    fm = U.foreign_metrics(outside, foreign["kind"].tolist())
    im = U.foreign_metrics(in_dist, ["test"] * len(in_dist))
    auc = info["run_metrics"]["test"].get(breastmnist.LABEL, {}).get("auroc")
    subset = "smoke subset" if args.smoke else "official split"
    v = f"{size} px grey, {len(foreign)} foreign images; fit {args.preset} {info['budget']}, medical_imaging, {subset}"
    model, goal = info["model"], f">= {FOREIGN_GOAL:g}"
    nf, ni = {"n_foreign": len(foreign)}, {"n_test": len(in_dist)}
    rows = [
        row("breastmnist_foreign", v, "foreign images referred as unknown", fm["referred_as_unknown"], out_s, reference=goal, model=model, **nf),
        row("breastmnist_foreign", v, "foreign images flagged unknown", fm["flagged_unknown"], out_s, reference=goal, model=model, **nf),
        row("breastmnist_foreign", v, "foreign images referred (escalated)", fm["referred"], out_s, model=model, **nf),
        row("breastmnist_foreign", v, "unknown-score AUROC, foreign vs test", U.separation_auroc(in_dist, outside), out_s, model=model, **nf, **ni),
    ]
    for kind in sorted(set(foreign["kind"])):
        count = int((foreign["kind"] == kind).sum())
        rows.append(row("breastmnist_foreign", v, f"foreign flagged unknown: {kind}", fm[f"flagged_unknown:{kind}"], out_s, model=model, n=count))
    for kind, why in skipped.items():
        note = "skipped: scikit-image is not installed" if kind == "photo" else f"skipped: {why}"
        rows.append(row("breastmnist_foreign", v, f"foreign flagged unknown: {kind} ({note})", math.nan, 0.0, model=model, n=0, note=note))
    rows += [
        row(
            "breastmnist_foreign",
            v,
            "in-distribution test AUC",
            auc if auc is not None else math.nan,
            info["fit_s"],
            reference=AUC_REFERENCE,
            model=model,
            **ni,
        ),
        row("breastmnist_foreign", v, "in-distribution test flagged unknown (false alarms)", im["flagged_unknown"], in_s, model=model, **ni),
        row("breastmnist_foreign", v, "in-distribution test referred", im["referred"], in_s, model=model, **ni),
    ]
    cost = serving_cost(agent, test_records, repeats=1 if args.smoke else 3)
    rows += cost_rows("breastmnist_foreign", v, cost, model)
    extra = {
        **info,
        "foreign": fm,
        "in_distribution": im,
        "skipped_kinds": skipped,
        "foreign_folder": str(folder / "foreign"),
        "act_s": {"test": round(in_s, 2), "foreign": round(out_s, 2)},
    }
    return rows, {**extra, "decision_fields": _has_unknown(outside), "serving": cost}


RUNNERS = {"banking77_oos": banking77_oos, "banking77_promise": banking77_promise, "breastmnist_foreign": breastmnist_foreign}


def run(args: Any) -> int:
    bad = [p for p in args.parts if p not in PARTS]
    if bad:
        print(f"[bench] error: unknown part(s) {bad}; choose from {', '.join(PARTS)}", file=sys.stderr, flush=True)
        return 2
    start = time.perf_counter()
    folder = work_dir(args, NAME)
    rows: list[dict[str, Any]] = []
    parts: dict[str, Any] = {}
    for part in args.parts or PARTS:
        print(f"[bench] {NAME}: {part} ...", flush=True)
        t0 = time.perf_counter()
        part_rows, parts[part] = RUNNERS[part](args, folder / part)
        parts[part]["wall_s"] = elapsed(t0)
        rows += part_rows
    suffix = f"_{args.parts[0]}" if len(args.parts) == 1 else ""
    write_quality_result(NAME + suffix, rows, args, start, 0.0, parts=_jsonable(parts))
    return 0


def _jsonable(value: Any) -> Any:
    """NaN -> None, numpy scalars -> Python, recursively (the result file is strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    return main_guard(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
