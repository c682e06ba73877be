"""``Agent``: a trained run folder plus a policy. Predict, explain, act.

agent = Agent.load("runs/cs")
agent.predict({"text": "my card has not arrived"})   # labels + calibrated probabilities
agent.act({"text": "...", "audio": "call.wav"})       # a Decision: reply / escalate / ...
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmagent import runs
from mmagent.agent.conformal import prediction_sets
from mmagent.agent.policies import Decision, Policy, build_policy
from mmagent.agent.policy_base import Assessment
from mmagent.agent.spec import split_agent_config
from mmagent.agent.unknown import UnknownDetector
from mmagent.data.tables import Table, as_table, is_empty, resolve_media
from mmagent.data.validation import DataError, Problem, check_rows
from mmagent.ensemble import load_model
from mmagent.inference import ModelRunner, Predictions, TorchRunner, make_loader, run_model
from mmagent.model import MultimodalModel

if TYPE_CHECKING:
    from mmagent.agent.explain import Explanation

BACKENDS = ("torch", "onnx")  # what runs the model's forward pass (see mmagent.inference)


class Agent:
    def __init__(
        self,
        model: MultimodalModel,
        policy: Policy,
        temperatures: dict[str, float] | None = None,
        target: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        speech_to_text: dict[str, str] | str | None = None,
        runner: ModelRunner | None = None,
        unknown: UnknownDetector | None = None,
        escalation: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.policy = policy
        self.temperatures = temperatures or {}
        self.target = target or next(iter(model.heads))
        if self.target not in model.heads:
            raise ValueError(f"agent target {self.target!r} is not a model target; targets: {list(model.heads)}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.speech_to_text = self._speech_columns(speech_to_text)
        self.version: str | None = None  # set by whoever loaded it as a version (the server, the registry); stamped on decisions
        self.runner: ModelRunner = runner or TorchRunner(self.model, self.device)  # the forward pass; all else is shared
        # What makes "escalate when unsure" true (fitted with the run, see mmagent.agent.escalation):
        # the unknown-input score, and the prediction sets' quantile and rules from calibration.json.
        self.unknown = unknown if unknown is not None and unknown.target == self.target else None
        self.escalation = escalation if escalation and escalation.get("target") == self.target else None
        self.blocked: str | None = None  # why every input is escalated (a run that does not beat its baseline)

    def _speech_columns(self, setting: dict[str, str] | str | None) -> dict[str, str] | None:
        """``{audio: COLUMN, text: COLUMN}``: a record with audio but no text gets a transcript.
        ``auto``: the model's single audio and single text input, when it has both."""
        if not setting:
            return None
        by_modality: dict[str, list[str]] = {}
        for inp in self.model.spec.inputs:
            by_modality.setdefault(inp.modality, []).append(inp.columns[0])
        if setting == "auto":
            if len(by_modality.get("audio", [])) == 1 and len(by_modality.get("text", [])) == 1:
                return {"audio": by_modality["audio"][0], "text": by_modality["text"][0]}
            return None
        if not isinstance(setting, dict) or set(setting) != {"audio", "text"}:
            raise ValueError("agent.speech_to_text must be 'auto' or {audio: COLUMN, text: COLUMN}")
        return dict(setting)

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        device: str | torch.device = "cpu",
        policy: dict[str, Any] | str | Path | None = None,
        backend: str = "torch",
        threads: int | None = None,
    ) -> Agent:
        """Load ``RUN_DIR/model``, its calibration and the policy from the run's config (or the
        ``policy`` given here: a spec mapping, a policy name or a YAML file).

        ``backend``: ``torch`` runs the PyTorch model on ``device``; ``onnx`` runs the model's ONNX
        export with ONNX Runtime on the CPU (exported into the run folder on first use, see
        :mod:`mmagent.inference.onnx`), with ``threads`` intra-op threads (default: its choice)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if backend == "onnx" and torch.device(device).type != "cpu":
            raise ValueError(f"the onnx backend runs on the CPU (onnxruntime's CPU provider); use device='cpu', not {str(device)!r}")
        run_dir = runs.verify_run(run_dir, model=False)  # the sealed files; loading the model checks its own
        model = load_model(runs.model_dir(run_dir))  # one model, or an ensemble of them
        calibration = runs.read_calibration(run_dir)
        agent_cfg = dict(runs.read_config(run_dir).get("agent") or {})
        chosen = calibration.get(runs.ESCALATION_KEY)
        if policy is not None:  # the caller's policy is used as given: no threshold from the run
            spec: Any = policy
        else:
            spec = split_agent_config(agent_cfg)[1] or None
            if chosen is not None and isinstance(spec, dict) and "threshold" in chosen:
                key = "refer_below" if spec.get("type") == "medical" else "threshold"
                if chosen.get("reached", True) or "max_error" not in chosen:  # an uncertified promise escalates all (see assess)
                    spec = {**spec, key: min(float(chosen["threshold"]), 1.0)}
                if not chosen.get("reached", True):
                    what = "" if "max_error" in chosen else f"; the agent escalates below {chosen['threshold']:.3f}, the threshold with the best precision"
                    warnings.warn(
                        f"{run_dir}: the escalation target was not reached on validation: {chosen.get('note') or chosen.get('guarantee')}{what}",
                        UserWarning,
                        stacklevel=2,
                    )
        runner = None
        if backend == "onnx":
            from mmagent.inference.onnx import load_onnx_runner

            runner = load_onnx_runner(run_dir, model, threads)
        detector = UnknownDetector.load(run_dir)
        if detector is not None and not math.isfinite(detector.threshold):
            warnings.warn(f"{run_dir}: the unknown-input score flags nothing: {detector.info.get('guarantee')}", UserWarning, stacklevel=2)
        baseline = calibration.get(runs.BASELINE_KEY) or {}
        if baseline.get("beats") is False:
            warnings.warn(f"{run_dir}: {baseline.get('note')}", UserWarning, stacklevel=2)
        agent = cls(
            model,
            build_policy(spec, base_dir=run_dir),
            runs.temperatures(calibration, str(run_dir / runs.CALIBRATION_FILE)),
            agent_cfg.get("target"),
            device,
            speech_to_text=agent_cfg.get("speech_to_text"),
            runner=runner,
            unknown=detector,
            escalation=chosen if policy is None else None,
        )
        agent.blocked = baseline.get("note") if baseline.get("beats") is False else None
        return agent

    # -- predict ------------------------------------------------------------------------------
    def prepare(self, data: Any, base_dir: str | Path = ".") -> tuple[Table, dict[int, str]]:
        """Records / table -> a checked :class:`Table`, plus transcripts of spoken requests that
        came without text (row -> transcript)."""
        records = [data] if isinstance(data, dict) else data
        if records is None or isinstance(records, (int, float, bool, bytes)) or (isinstance(records, list) and not all(isinstance(r, dict) for r in records)):
            raise DataError([Problem("<records>", -1, "records", f"records must be a dict, a list of dicts or a table, got {type(data).__name__}")])
        if isinstance(records, list):  # records as the server gets them: the same verdict for an unknown column
            columns = [c for inp in self.model.spec.inputs for c in inp.columns]
            unknown = [
                Problem("<records>", i, str(c), f"unknown column {c!r}; this model's input columns are {columns}")
                for i, r in enumerate(records)
                for c in r
                if c not in columns
            ]
            if unknown:
                raise DataError(unknown)
        if isinstance(records, list) and any(isinstance(r, dict) and not r for r in records):
            columns = ", ".join(c for inp in self.model.spec.inputs for c in inp.columns)
            raise DataError(
                [
                    Problem("<records>", i, columns, f"the record is empty: it has none of the model's inputs ({columns})")
                    for i, r in enumerate(records)
                    if isinstance(r, dict) and not r
                ]
            )
        table = as_table(records, base_dir)
        if len(table) == 0:
            raise ValueError("no records given: pass at least one record")
        absent = [c for inp in self.model.spec.inputs for c in inp.columns if c not in table.columns]
        if absent:  # a record that leaves an input out simply lacks that modality
            frame = table.frame.copy()
            for c in absent:
                frame[c] = None
            table = Table(frame, table.source, table.base_dir)
        problems = check_rows(table, self.model.spec.inputs, [], need_targets=False) + self._empty_records(table)
        if problems:
            raise DataError(problems)
        transcripts = self._transcribe_missing_text(table)
        if transcripts:
            frame = table.frame.copy()
            for row, text in transcripts.items():
                frame.loc[frame.index[row], self.speech_to_text["text"]] = text  # type: ignore[index]
            table = Table(frame, table.source, table.base_dir)
        return table, transcripts

    def _empty_records(self, table: Table) -> list[Problem]:
        """A record with none of the model's inputs has nothing to predict from."""
        columns = [c for inp in self.model.spec.inputs for c in inp.columns]
        return [
            Problem(table.source, i, ", ".join(columns), f"the record has none of the model's inputs ({', '.join(columns)})", table.where(i))
            for i, r in enumerate(table.records)
            if all(is_empty(r.get(c)) for c in columns)
        ]

    def _transcribe_missing_text(self, table: Table) -> dict[int, str]:
        if self.speech_to_text is None:
            return {}
        audio_col, text_col = self.speech_to_text["audio"], self.speech_to_text["text"]
        rows = [i for i, r in enumerate(table.records) if is_empty(r.get(text_col)) and not is_empty(r.get(audio_col))]
        if not rows:
            return {}
        from mmagent.speech import get_transcriber

        items = [resolve_media(table.records[i][audio_col], table.base_dir) for i in rows]
        texts = get_transcriber(self.device).transcribe(items)
        return {i: t for i, t in zip(rows, texts) if t}

    def _run(self, table: Table, drop: Iterable[str] = ()) -> Predictions:
        loader = make_loader(self.model, table, self.batch_size, with_targets=False, by_length=True)
        return run_model(self.model, loader, self.device, drop, runner=self.runner)

    def _probabilities(self, table: Table, drop: Iterable[str] = (), preds: Predictions | None = None) -> dict[str, np.ndarray]:
        preds = preds if preds is not None else self._run(table, drop)
        out = {}
        for name, head in self.model.heads.items():
            t = self.temperatures.get(name, 1.0)
            out[name] = head.predict(torch.from_numpy(preds.logits[name]) / t).numpy() if head.spec.type != "regression" else preds.outputs[name]
        if preds.gates is not None:
            out["_gates"] = preds.gates
        return out

    def probabilities(self, data: Any, base_dir: str | Path = ".", drop: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """Calibrated probabilities (or regression values) per target, one row per record."""
        return self._probabilities(self.prepare(data, base_dir)[0], drop)

    def assess(self, preds: Predictions, probs: np.ndarray) -> list[Assessment]:
        """Per row, for the agent's target: the unknown-input score and verdict and the conformal
        prediction set (``probs``: its calibrated probabilities), with the run's escalation rules."""
        n = len(probs)
        out = [Assessment() for _ in range(n)]
        if self.unknown is not None:
            scores = self.unknown.score(preds.fused, preds.logits[self.target])
            escalates = bool(self.unknown.info.get("escalates", True))  # agent.unknown.enabled
            for a, score, flag in zip(out, scores, self.unknown.is_unknown(scores)):
                a.unknown_score, a.unknown_threshold, a.unknown, a.unknown_escalates = float(score), self.unknown.threshold, bool(flag), escalates
        esc = self.escalation
        spec = self.model.heads[self.target].spec
        if esc is not None and spec.type == "classification" and "set_quantile" in esc:
            members = prediction_sets(probs, float(esc["set_quantile"]))
            uncertified = None if esc.get("reached", True) or "max_error" not in esc else esc.get("guarantee")
            for a, row, p in zip(out, members, probs):
                order = np.argsort(-p, kind="stable")
                a.prediction_set = [spec.labels[j] for j in order if row[j]]
                a.set_level, a.set_escalates, a.uncertified = float(esc["set_alpha"]), bool(esc.get("set_escalates")), uncertified
        if self.blocked:
            for a in out:
                a.uncertified = self.blocked
        return out

    def predict(self, data: Any, base_dir: str | Path = ".") -> list[dict[str, Any]]:
        """For each record: ``{target: {"label": ..., "probabilities": {label: p}}}`` (multilabel:
        ``labels``; regression: ``value``); the agent's target adds ``unknown``, ``unknown_score``
        and ``prediction_set`` when the run has them."""
        table = self.prepare(data, base_dir)[0]
        preds = self._run(table)
        probs = self._probabilities(table, preds=preds)
        out = [{name: self._describe(name, probs[name][i]) for name in self.model.heads} for i in range(len(table))]
        for row, a in zip(out, self.assess(preds, probs[self.target])):
            if a.unknown_score is not None:
                row[self.target].update(unknown=a.unknown, unknown_score=a.unknown_score)
            if a.prediction_set is not None:
                row[self.target]["prediction_set"] = a.prediction_set
        return out

    def _describe(self, name: str, row: np.ndarray) -> dict[str, Any]:
        spec = self.model.heads[name].spec
        if spec.type == "regression":
            return {"value": float(row)}
        p = {lab: float(v) for lab, v in zip(spec.labels, row)}
        if spec.type == "multilabel":
            return {"labels": [lab for lab, v in p.items() if v >= 0.5], "probabilities": p}
        return {"label": max(p, key=p.get), "probabilities": p}  # type: ignore[arg-type]

    # -- act ----------------------------------------------------------------------------------
    def act(self, record: dict[str, Any], base_dir: str | Path = ".", explain: bool = True) -> Decision:
        """Decide for one record: the policy's action on the calibrated prediction of the agent's
        target, with per-input contributions (gate values for gated fusion; otherwise how much
        the top label's probability drops when that input is removed)."""
        return self.act_many([record], base_dir, explain)[0]

    def act_many(self, records: list[dict[str, Any]], base_dir: str | Path = ".", explain: bool = True) -> list[Decision]:
        table, transcripts = self.prepare(records, base_dir)
        return self.decide(table, transcripts, explain)

    def decide(self, table: Table, transcripts: dict[int, str] | None = None, explain: bool = True) -> list[Decision]:
        """Decisions for a table :meth:`prepare` returned (with its transcripts)."""
        transcripts = transcripts or {}
        preds = self._run(table)
        probs = self._probabilities(table, preds=preds)
        spec = self.model.heads[self.target].spec
        contributions = self._contributions(table, probs) if explain else [{}] * len(table)
        assessments = self.assess(preds, probs[self.target])
        decisions = []
        for i in range(len(table)):
            row = probs[self.target][i]
            given = {"value": float(row)} if spec.type == "regression" else {lab: float(v) for lab, v in zip(spec.labels, row)}
            decision = self.policy.decide(self.target, given, spec.type, contributions=contributions[i], assessment=assessments[i])
            decision.transcript = transcripts.get(i)
            decision.model_version = self.version
            decisions.append(decision)
        return decisions

    # -- explain ------------------------------------------------------------------------------
    def explain(self, record: dict[str, Any], base_dir: str | Path = ".") -> Explanation:
        """Why the agent decided as it did for one record: the decision, per-input contributions
        and, per input, attributions of the explained label's probability (word scores for text,
        a heatmap for images, importance over time for audio; see :mod:`mmagent.agent.explain`)."""
        from mmagent.agent.explain import explain_record

        return explain_record(self, record, base_dir)

    def _contributions(self, table: Table, probs: dict[str, np.ndarray]) -> list[dict[str, float]]:
        names = self.model.input_names
        if "_gates" in probs:
            return [{n: round(float(g), 4) for n, g in zip(names, row)} for row in probs["_gates"]]
        if len(names) < 2 or self.model.heads[self.target].spec.type == "regression":
            return [{} for _ in range(len(table))]
        full = probs[self.target]
        top = full.argmax(1)
        out: list[dict[str, float]] = [{} for _ in range(len(table))]
        for name in names:
            without = self._probabilities(table, drop=[name])[self.target]
            for i in range(len(table)):
                out[i][name] = round(float(full[i, top[i]] - without[i, top[i]]), 4)
        return out
