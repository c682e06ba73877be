"""Two agents scored on the same evaluation table: ``compare(run_a, run_b, data)``.

Both agents answer every row of the table through :meth:`Agent.probabilities` (calibrated
probabilities, as served). Reported per agent: the overall metrics of the agent's target
(classification: accuracy, macro-F1; multilabel: macro-F1, micro-F1; regression: MAE, RMSE), per
class precision / recall / F1 with support, ECE of the calibrated probabilities *on this
evaluation table*, and latency: the median time of one single-record call and the throughput of
a whole-table call, timed alternately (A, B, B, A, ...) on this machine so that load on the
machine hits both alike. Labels are compared as text, so two agents whose label sets differ are
still scored on the same rows (a label an agent does not know is a wrong answer for it).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm

from mmagent.agent.calibration import expected_calibration_error, expected_calibration_error_binary
from mmagent.data.tables import Table, is_empty, label_text, read_table, split_labels
from mmagent.specs import UNSEEN_INDEX

# Overall metrics per task, and whether larger is better.
OVERALL = {
    "classification": {"accuracy": True, "macro_f1": True},
    "multilabel": {"macro_f1": True, "micro_f1": True},
    "regression": {"mae": False, "rmse": False},
}


@dataclass
class AgentScore:
    """One agent on the evaluation table."""

    run: str
    overall: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> precision, recall, f1, support
    ece: float | None = None
    latency_p50_ms: float = float("nan")
    throughput_per_s: float = float("nan")


@dataclass
class Comparison:
    """A (champion / baseline) against B (challenger) on ``data``."""

    data: str
    target: str
    task: str
    n: int
    a: AgentScore
    b: AgentScore
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        return cls(**{**d, "a": AgentScore(**d["a"]), "b": AgentScore(**d["b"])})

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(what, A, B, B - A) rows of the comparison table."""
        out = []
        for name in OVERALL[self.task]:
            a, b = self.a.overall.get(name, float("nan")), self.b.overall.get(name, float("nan"))
            out.append((name, _f(a), _f(b), _f(b - a, sign=True)))
        for label in sorted(set(self.a.per_class) | set(self.b.per_class)):
            a_c, b_c = self.a.per_class.get(label, {}), self.b.per_class.get(label, {})
            support = int(a_c.get("support", b_c.get("support", 0)))
            key = "f1" if self.task == "multilabel" else "recall"
            a, b = a_c.get(key, 0.0), b_c.get(key, 0.0)
            out.append((f"{key} {label} (n={support})", _f(a), _f(b), _f(b - a, sign=True)))
        if self.a.ece is not None or self.b.ece is not None:
            out.append(("ECE on this table (calibrated)", _f(self.a.ece), _f(self.b.ece), _f(_minus(self.b.ece, self.a.ece), sign=True)))
        out.append(
            (
                "latency p50 per record (ms)",
                _f(self.a.latency_p50_ms, 1),
                _f(self.b.latency_p50_ms, 1),
                _f(self.b.latency_p50_ms - self.a.latency_p50_ms, 1, True),
            )
        )
        out.append(
            (
                "throughput (records/s)",
                _f(self.a.throughput_per_s, 1),
                _f(self.b.throughput_per_s, 1),
                _f(self.b.throughput_per_s - self.a.throughput_per_s, 1, True),
            )
        )
        return out

    def markdown(self, a_name: str = "A", b_name: str = "B") -> str:
        lines = [
            f"Target `{self.target}` ({self.task}) on `{self.data}` ({self.n} labelled rows).",
            f"A = `{self.a.run}`; B = `{self.b.run}`.",
            "",
            f"| | {a_name} | {b_name} | {b_name} - {a_name} |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {w} | {a} | {b} | {d} |" for w, a, b, d in self.rows()]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def text(self, a_name: str = "A", b_name: str = "B") -> str:
        """A plain aligned table for the terminal."""
        rows = [("", a_name, b_name, f"{b_name} - {a_name}"), *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        body = ["  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]
        head = [f"target {self.target} ({self.task}) on {self.data}: {self.n} labelled rows", f"A: {self.a.run}", f"B: {self.b.run}"]
        return "\n".join(head + body + [f"note: {n}" for n in self.notes])


def compare(run_a: str | Path, run_b: str | Path, data: str | Path, latency_records: int = 32, rounds: int = 2, device: str = "cpu") -> Comparison:
    """Score the agents of ``run_a`` and ``run_b`` on the labelled table ``data`` (see the module
    docstring). ``latency_records`` single-record calls per agent; ``rounds`` whole-table calls."""
    from mmagent.agent import Agent

    agents = [Agent.load(run_a, device=device), Agent.load(run_b, device=device)]
    targets = {a.target for a in agents}
    if len(targets) != 1:
        raise ValueError(f"the two agents decide different targets ({sorted(targets)}); compare agents of the same task")
    target = agents[0].target
    specs = [a.model.heads[target].spec for a in agents]
    if specs[0].type != specs[1].type:
        raise ValueError(f"target {target!r} is {specs[0].type} in {run_a} but {specs[1].type} in {run_b}")
    table = read_table(data)
    if target not in table.columns:
        raise ValueError(f"{data}: no column {target!r} (the agents' target); columns: {list(table.columns)}")
    keep = [i for i, v in enumerate(table.frame[target].tolist()) if not is_empty(v)]
    if not keep:
        raise ValueError(f"{data}: column {target!r} has no label in any row")
    table = Table(table.frame.iloc[keep].reset_index(drop=True), table.source, table.base_dir)
    for agent in agents:
        agent.prepare(table)  # every row checked against both models before anything is timed

    outputs: list[Any] = [None, None]
    seconds: list[list[float]] = [[], []]
    for r in range(max(1, rounds)):
        for i in (0, 1) if r % 2 == 0 else (1, 0):  # alternate, so drifting load hits both alike
            start = time.perf_counter()
            outputs[i] = agents[i].probabilities(table)[target]
            seconds[i].append(time.perf_counter() - start)
    per_record = _single_record_latency(agents, table, latency_records)

    task, truth = specs[0].type, table.frame[target].tolist()
    scores = []
    for i, (run, spec) in enumerate(zip((run_a, run_b), specs)):
        score = _score(task, spec, outputs[i], truth)
        score.run = str(run)
        score.latency_p50_ms = 1000 * statistics.median(per_record[i]) if per_record[i] else float("nan")
        score.throughput_per_s = len(table) / statistics.median(seconds[i])
        scores.append(score)
    notes = [
        "ECE is measured on this evaluation table, from the calibrated probabilities the agents serve.",
        f"Latency: median of {len(per_record[0])} single-record calls and {max(1, rounds)} whole-table calls per agent, alternated, on this machine ({device}).",
    ]
    if task != "regression" and specs[0].labels != specs[1].labels:
        notes.append(f"The label sets differ: A knows {specs[0].labels}, B knows {specs[1].labels}.")
    return Comparison(str(data), target, task, len(table), scores[0], scores[1], notes)


def _single_record_latency(agents: list[Any], table: Table, n: int) -> list[list[float]]:
    # A request holds the model's inputs only (the label column and the rest would be refused).
    columns = {c for agent in agents for inp in agent.model.spec.inputs for c in inp.columns}
    records = [{c: v for c, v in r.items() if c in columns} for r in table.records[: max(0, n)]]
    out: list[list[float]] = [[], []]
    if records:
        for agent in agents:  # warm-up: first-call costs (lazy init, allocator) are not latency
            agent.predict(_own(agent, records[0]), table.base_dir)
    for k, record in enumerate(records):
        for i in (0, 1) if k % 2 == 0 else (1, 0):
            start = time.perf_counter()
            agents[i].predict(_own(agents[i], record), table.base_dir)
            out[i].append(time.perf_counter() - start)
    return out


def _score(task: str, spec: Any, outputs: np.ndarray, truth: list[Any]) -> AgentScore:
    if task == "regression":
        y, pred = np.asarray([float(v) for v in truth]), np.asarray(outputs, dtype=float).reshape(-1)
        return AgentScore("", {"mae": float(skm.mean_absolute_error(y, pred)), "rmse": float(np.sqrt(skm.mean_squared_error(y, pred)))})
    labels = list(spec.labels)
    probs = np.asarray(outputs, dtype=float)
    if task == "multilabel":
        return _score_multilabel(labels, probs, [split_labels(v, spec.separator) for v in truth])
    y = [label_text(v) for v in truth]
    pred = [labels[k] for k in probs.argmax(1)]
    occurring, every = sorted(set(y) | set(pred)), sorted(set(y) | set(labels))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=every, zero_division=0)
    per_class = {lab: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])} for k, lab in enumerate(every)}
    overall = {
        "accuracy": float(np.mean([a == b for a, b in zip(y, pred)])),
        "macro_f1": float(skm.f1_score(y, pred, labels=occurring, average="macro", zero_division=0)),
    }
    index = torch.as_tensor([labels.index(v) if v in labels else UNSEEN_INDEX for v in y])  # unknown: always wrong
    return AgentScore("", overall, per_class, expected_calibration_error(torch.as_tensor(probs), index))


def _score_multilabel(labels: list[str], probs: np.ndarray, truth: list[list[str]]) -> AgentScore:
    y = np.asarray([[lab in t for lab in labels] for t in truth], dtype=int)
    pred = (probs >= 0.5).astype(int)
    overall = {
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        "micro_f1": float(skm.f1_score(y, pred, average="micro", zero_division=0)),
    }
    per_class = {lab: {"f1": float(skm.f1_score(y[:, j], pred[:, j], zero_division=0)), "support": int(y[:, j].sum())} for j, lab in enumerate(labels)}
    return AgentScore("", overall, per_class, expected_calibration_error_binary(torch.as_tensor(probs), torch.as_tensor(y, dtype=torch.float64)))


def _minus(b: float | None, a: float | None) -> float:
    return float("nan") if a is None or b is None else b - a


def _f(x: float | None, digits: int = 4, sign: bool = False) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _own(agent: Any, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` restricted to ``agent``'s input columns (two agents may read different ones)."""
    mine = {c for inp in agent.model.spec.inputs for c in inp.columns}
    return {c: v for c, v in record.items() if c in mine}
