"""The config ``mmagent fit`` starts from: what the inferred schema implies (one input per used
column, encoders from the recipe or the offline zoo), with the audio windows read off the files,
the ranking metric checked against the task, and the recipe's alert rules kept where they apply."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from mmagent import catalog
from mmagent.data.tables import Table, as_table
from mmagent.search.columns import Schema, audio_window
from mmagent.search.leaderboard import Progress

# What each kind of column starts on when no recipe names encoders: the catalog's smallest offline
# backbone (fit climbs to larger ones when the budget affords them), built-ins for the rest.
DEFAULT_ENCODERS: dict[str, dict[str, Any]] = {
    **{m: catalog.default_encoder(m) for m in ("text", "image", "audio")},
    "numeric": {"source": "builtin", "name": "mlp"},
    "categorical": {"source": "builtin", "name": "hash-embedding"},
}

# Every candidate stops after this many epochs without a better validation score: a probe's 25
# epochs on Financial PhraseBank peaked at epoch 4 and ran on for ~50 s of a 10-minute budget.
# Fine-tuning rungs run 2-6 epochs, so it rarely ends them.
PATIENCE = 5


def base_config(
    schema: Schema, data: dict[str, str | None], recipe: str | None = None, encoders: dict[str, dict[str, Any]] | None = None, seed: int = 0
) -> dict[str, Any]:
    """The raw config the schema implies (before any strategy): one input per used column, numeric
    columns together in one input, encoders from ``encoders`` / the recipe / the zoo."""
    from mmagent.tasks.recipes import get_recipe

    chosen = {**DEFAULT_ENCODERS, **(get_recipe(recipe).encoders if recipe else {}), **(encoders or {})}
    inputs: list[dict[str, Any]] = []
    for kind in ("text", "image", "audio", "categorical"):
        inputs += [{"column": c, "modality": kind, "encoder": copy.deepcopy(chosen[kind])} for c in schema.of_kind(kind)]
    numeric = schema.of_kind("numeric")
    if numeric:
        inputs.append({"column": numeric, "modality": "numeric", "encoder": copy.deepcopy(chosen["numeric"])})
    if not inputs:
        raise ValueError(f"no usable input column: every column but {schema.label!r} was ignored (see the schema above); set kinds with --column-type")
    several = len(inputs) > 1
    raw: dict[str, Any] = {
        "data": {k: v for k, v in data.items() if v},
        "inputs": inputs,
        "targets": [{"column": schema.label, "type": schema.task}],
        "fusion": {"type": "gated" if several else "concat", "hidden_dim": 256, "modality_dropout": 0.2 if several else 0.0},
        "train": {"batch_size": 32, "seed": seed, "early_stopping_patience": PATIENCE},
    }
    if recipe:
        raw["recipe"] = recipe
    return raw


def selection_metric(schema: Schema, metric: str) -> str:
    """``train.metric`` for ranking candidates on ``metric``; refused, with the choices, when the
    task does not have it (before any work)."""
    from mmagent.metrics import SELECTABLE_METRICS

    choices = SELECTABLE_METRICS[schema.task]
    if metric not in choices:
        raise ValueError(f"--metric {metric!r}: a {schema.task} label ({schema.label!r}) is ranked on one of {', '.join(choices)}")
    return f"{schema.label}/{metric}"


def fit_audio_windows(raw: dict[str, Any], table: Table, clock: Progress) -> None:
    """Each audio input's clip length, from its files (see :func:`audio_window`)."""
    for inp in raw["inputs"]:
        if inp["modality"] == "audio":
            inp["encoder"]["max_seconds"], why = audio_window(table, inp["column"])
            clock.say(f"audio {inp['column']!r}: {why}")


def fit_recipe_alerts(raw: dict[str, Any], recipe: str, table: Table, label: str, clock: Progress) -> None:
    """Keep the recipe's default alert rules whose label this table has (the finance recipe's
    ``negative`` means nothing on an up/down task); the user's own rules are checked, not dropped."""
    from mmagent.data.tables import is_empty, label_text
    from mmagent.tasks.recipes import get_recipe

    rules = get_recipe(recipe).agent.get("alerts")
    if not rules or raw["targets"][0]["type"] != "classification":
        return
    labels = {label_text(v) for v in table.frame[label].tolist() if not is_empty(v)}
    kept = [r for r in rules if r.get("label") is None or r["label"] in labels]
    if len(kept) < len(rules):
        dropped = sorted({r["label"] for r in rules if r not in kept})
        clock.say(f"recipe {recipe}: alert rule(s) on {dropped} dropped: {label!r} has labels {sorted(labels)[:10]}")
        raw["agent"] = {**raw.get("agent", {}), "alerts": kept}


#: The smallest budget fit accepts: the cost measurement, one probe epoch on a small table and the
#: final evaluation need about this on 2 CPU cores (less is refused, never silently stretched).
MIN_BUDGET_SECONDS = 20.0


def parse_duration(value: str | float | int | None) -> float | None:
    """``"30m"``, ``"1h30m"``, ``"90s"``, ``"2h"`` or a number of seconds -> seconds (None: not
    given). A budget under :data:`MIN_BUDGET_SECONDS` (0 included) is refused with that minimum."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"time budget {value!r}: use e.g. 90s, 20m, 1h30m or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|s)", text)
        if re.fullmatch(r"[-+]?\d+(\.\d+)?", text):  # a negative number is a number, refused below
            seconds = float(text)
        elif parts and "".join(f"{n}{u}" for n, u in parts) == re.sub(r"\s+", "", text):
            seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
        else:
            raise ValueError(f"time budget {value!r}: use e.g. 90s, 20m, 1h30m or a number of seconds")
    if not seconds >= MIN_BUDGET_SECONDS or seconds == float("inf"):
        raise ValueError(
            f"time budget {value!r}: fit needs at least {MIN_BUDGET_SECONDS:g}s (measuring costs, one probe and the final evaluation); give 20s or more"
        )
    return seconds


def materialize_table(train: Any, run_dir: Path) -> str:
    """A file path for the training table: DataFrames are written into the run folder, so the
    config that reproduces the run can name them."""
    if isinstance(train, (str, Path)):
        return absolute_path(train)  # type: ignore[return-value]
    table = train if isinstance(train, Table) else as_table(train)
    _refuse_mixed_columns(table)  # before Arrow, whose error names neither the row nor the value
    path = run_dir / "data" / "train.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.frame.to_parquet(path, index=False)
    return str(path)


def absolute_path(path: str | Path | None) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return str(p)


def _refuse_mixed_columns(table: Table) -> None:
    """A column of an in-memory table holds one kind of value: strings, numbers, lists or mappings.
    A mix (a number or a list in a text column) is named by row and column, like a bad file row."""
    from mmagent.data.errors import DataError, Problem
    from mmagent.data.tables import is_empty, show_cell

    def kind(v: Any) -> str:
        return "text" if isinstance(v, str) else "number" if isinstance(v, (int, float)) else type(v).__name__

    problems = []
    import pandas as pd

    for column in [c for c in table.frame.columns if pd.api.types.is_object_dtype(table.frame[c])]:
        values = [(i, v) for i, v in enumerate(table.frame[column].tolist()) if not is_empty(v)]
        kinds = [kind(v) for _, v in values]
        if len(set(kinds)) > 1:
            usual = max(set(kinds), key=kinds.count)
            row, value = next((i, v) for (i, v), k in zip(values, kinds) if k != usual)
            problems.append(
                Problem(table.source, row, str(column), f"holds {kind(value)} {show_cell(value)} where its other rows hold {usual}", table.where(row))
            )
    if problems:
        raise DataError(problems)
