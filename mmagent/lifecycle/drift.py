"""Drift scores: how far a batch of observations (a table, or the server's recent traffic) is from
a run's profile, and whether that calls for retraining. One function, :func:`score`, serves both
``mmagent drift`` and the server's ``/metrics``.

Scores (each row of :func:`score`'s ``scores`` names its input and feature):

- ``psi``: population stability index of each input feature over the profile's bins,
  ``sum((q - p) * ln(q / p))`` with shares clipped at :data:`EPSILON`; the embedding distance is
  one of these features. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant.
- ``embedding_shift``: mean distance to the nearest training centroid, relative to validation's
  (``mean_new / mean_reference - 1``): 0.5 means half as far again from anything seen in training.
- ``confidence_shift``: mean confidence on validation minus mean confidence now (positive: less sure).
- ``label_shift``: total variation distance between predicted-label shares (0 same, 1 disjoint),
  less the distance that sampling alone gives for samples of these sizes from the reference shares:
  with many labels and a few hundred rows, two samples of the *same* distribution differ by 0.2-0.3
  (Banking77's 67 intents, 300 rows), which would otherwise call for retraining on every batch.
- ``escalation_share``: the share of decisions escalated now (the rule looks at its rise over
  validation's share).
- ``unknown_share``: the share of inputs the unknown-input score flags now (new intents, another
  topic, the wrong kind of scan); the rule looks at its rise over validation's share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mmagent.lifecycle import observe
from mmagent.lifecycle.profile import bin_shares, centroid_arrays, read_profile

EPSILON = 1e-4


class DriftThresholds(BaseModel):
    """When retraining is due: any rule that fires (each compares one score with its threshold)."""

    model_config = ConfigDict(extra="forbid")
    psi: float = Field(0.25, gt=0, description="PSI of any input feature above this (0.25: the usual 'significant shift')")
    embedding_shift: float = Field(0.25, gt=0, description="relative rise of the mean distance to the training centroids")
    confidence_drop: float = Field(0.10, gt=0, description="fall of the mean confidence")
    label_shift: float = Field(0.25, gt=0, description="total variation distance of predicted-label shares")
    escalation_rise: float = Field(0.10, gt=0, description="rise of the share of escalated decisions")
    unknown_rise: float = Field(0.10, gt=0, description="rise of the share of inputs flagged unknown (unlike the training data)")
    min_rows: int = Field(50, ge=1, description="fewer observations than this: scores shown, no verdict")


def psi(reference: Sequence[float], current: Sequence[float], eps: float = EPSILON) -> float:
    """Population stability index of two share vectors over the same bins."""
    p = np.clip(np.asarray(reference, dtype=np.float64), eps, None)
    q = np.clip(np.asarray(current, dtype=np.float64), eps, None)
    return float(np.sum((q - p) * np.log(q / p)))


def score(profile: Mapping[str, Any], observations: Mapping[str, Sequence[Any]], thresholds: DriftThresholds | None = None) -> dict[str, Any]:
    """Scores of ``observations`` (``{INPUT/FEATURE: values}``, see :mod:`~mmagent.lifecycle.observe`)
    against ``profile``, each with its threshold and whether its rule fired; ``retrain`` and the
    ``reasons`` (the rules that fired) once there are ``min_rows`` answers or input rows."""
    t = thresholds or DriftThresholds()
    rows: list[dict[str, Any]] = []
    means: dict[str, float] = {}

    def add(name: str, inp: str | None, feature: str | None, value: float | None, threshold: float, n: int, fired: bool) -> None:
        rows.append({"score": name, "input": inp, "feature": feature, "value": value, "threshold": threshold, "rows": n, "fired": bool(fired)})

    for key, ref in profile["features"].items():
        values = observations.get(key) or []
        inp, _, feature = key.partition("/")
        value = psi(ref["shares"], bin_shares(ref, values)) if values else None
        add("psi", inp, feature, value, t.psi, len(values), value is not None and len(values) >= t.min_rows and value > t.psi)
        if feature == "embedding_distance" and values and ref.get("mean"):
            means[inp] = float(np.mean(values)) / ref["mean"] - 1.0
    for inp, shift in means.items():
        n = len(observations[f"{inp}/embedding_distance"])
        add("embedding_shift", inp, "embedding_distance", shift, t.embedding_shift, n, n >= t.min_rows and shift > t.embedding_shift)

    answers = profile["predictions"]
    conf = observations.get(f"{observe.PREDICTION}/confidence") or []
    if conf and answers["confidence"].get("mean") is not None:
        drop = answers["confidence"]["mean"] - float(np.mean(conf))
        add("confidence_shift", observe.PREDICTION, "confidence", drop, t.confidence_drop, len(conf), len(conf) >= t.min_rows and drop > t.confidence_drop)
    labels = observations.get(f"{observe.PREDICTION}/label") or []
    if labels and answers["label"].get("all_shares"):
        tvd = label_shift(answers["label"]["all_shares"], labels, answers["label"]["n"])
        add("label_shift", observe.PREDICTION, "label", tvd, t.label_shift, len(labels), len(labels) >= t.min_rows and tvd > t.label_shift)
    for name, feature, limit in (("escalation_share", "escalated", t.escalation_rise), ("unknown_share", "unknown", t.unknown_rise)):
        flags = observations.get(f"{observe.PREDICTION}/{feature}") or []
        if flags:
            share = float(np.mean(flags))
            rise = share - answers.get(name, 0.0)
            add(name, observe.PREDICTION, feature, share, limit, len(flags), len(flags) >= t.min_rows and rise > limit)

    n = max((r["rows"] for r in rows), default=0)
    reasons = [_reason(r, answers) for r in rows if r["fired"]]
    return {"rows": n, "enough_rows": n >= t.min_rows, "min_rows": t.min_rows, "retrain": bool(reasons), "reasons": reasons, "scores": rows}


def label_shift(reference_shares: Mapping[str, float], labels: Sequence[str], reference_rows: int, draws: int = 200) -> float:
    """Total variation distance between the reference label shares (measured on
    ``reference_rows`` rows) and those of ``labels``, beyond its expected value when both were
    sampled from the reference shares (seeded Monte Carlo); never below 0."""
    names, counts = np.unique(np.asarray([str(x) for x in labels], dtype=object), return_counts=True)
    now = {str(k): c / len(labels) for k, c in zip(names, counts)}
    tvd = 0.5 * sum(abs(now.get(k, 0.0) - reference_shares.get(k, 0.0)) for k in set(now) | set(reference_shares))
    p = np.asarray(list(reference_shares.values()), dtype=np.float64)
    p = p / p.sum()
    rng = np.random.default_rng(0)
    a = rng.multinomial(len(labels), p, size=draws) / len(labels)
    b = rng.multinomial(max(1, reference_rows), p, size=draws) / max(1, reference_rows)
    noise = float(0.5 * np.abs(a - b).sum(axis=1).mean())
    return max(0.0, tvd - noise)


def _reason(row: Mapping[str, Any], answers: Mapping[str, Any]) -> str:
    v, th = row["value"], row["threshold"]
    if row["score"] == "psi":
        return f"input {row['input']!r}: PSI of {row['feature']} is {v:.3f} > {th:g}"
    if row["score"] == "embedding_shift":
        return f"input {row['input']!r}: mean distance to the training centroids rose by {v:.0%} (> {th:.0%})"
    if row["score"] == "confidence_shift":
        return f"predictions: mean confidence fell by {v:.3f} (> {th:g})"
    if row["score"] == "label_shift":
        return f"predictions: label shares moved by {v:.3f} total variation beyond sampling noise (> {th:g})"
    if row["score"] == "unknown_share":
        return f"predictions: {v:.1%} of inputs unlike the training data vs {answers.get('unknown_share', 0.0):.1%} on validation (rise > {th:.0%}): new kinds of request?"
    return f"predictions: {v:.1%} escalated vs {answers.get('escalation_share', 0.0):.1%} on validation (rise > {th:.0%})"


# -- offline ---------------------------------------------------------------------------------------
def observe_table(agent: Any, table: Any, profile: Mapping[str, Any]) -> observe.Observations:
    """Observations of a table: its inputs, and the agent's decisions with their embeddings
    (the same summaries the server keeps for its traffic)."""
    from mmagent.data.tables import as_table

    table = as_table(table)
    inputs = list(agent.model.spec.inputs)
    tap = observe.EmbeddingTap(agent.model, inputs)
    try:
        tap.clear()
        decisions = [d.model_dump(mode="json") for d in agent.act_many(table, explain=False)]
        pooled = tap.take(len(table))
    finally:
        tap.close()
    return observe.merge(
        observe.summarize_inputs(inputs, table.records, table.base_dir, profile.get("vocabulary")),
        observe.embedding_observations(inputs, table.records, pooled, centroid_arrays(profile)),
        observe.summarize_results(decisions, agent.target),
    )


def drift_scores(run_dir: str | Path, table: Any, thresholds: DriftThresholds | None = None, device: str = "cpu", agent: Any = None) -> dict[str, Any]:
    """Drift of ``table`` (a path, :class:`~mmagent.data.tables.Table`, DataFrame or records)
    against the run's profile: :func:`score`'s result. Pass a loaded ``agent`` to skip loading."""
    import warnings

    from mmagent.agent import Agent
    from mmagent.data.tables import read_table

    profile = read_profile(run_dir)
    if agent is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            agent = Agent.load(run_dir, device=device)
    if isinstance(table, (str, Path)):
        table = read_table(table)
    return score(profile, observe_table(agent, table, profile), thresholds)


def format_scores(result: Mapping[str, Any]) -> str:
    """A plain-text table of the scores and the verdict, as ``mmagent drift`` prints it."""
    lines = [f"{'score':<17} {'input':<14} {'feature':<19} {'value':>8} {'threshold':>9} {'rows':>6}  fired", "-" * 84]
    for r in result["scores"]:
        value = "-" if r["value"] is None or not math.isfinite(r["value"]) else f"{r['value']:.3f}"
        lines.append(
            f"{r['score']:<17} {str(r['input']):<14} {str(r['feature']):<19} {value:>8} {r['threshold']:>9g} {r['rows']:>6}  {'YES' if r['fired'] else ''}"
        )
    lines.append("")
    if not result["enough_rows"]:
        lines.append(f"too few rows to judge ({result['rows']} < {result['min_rows']}): no verdict")
    elif result["retrain"]:
        lines.append("retraining is due:")
        lines += [f"  - {reason}" for reason in result["reasons"]]
    else:
        lines.append("no retraining is due: every score is within its threshold")
    return "\n".join(lines)
