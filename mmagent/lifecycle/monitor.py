"""Live drift watch for the server: a bounded window of recent observations and the drift
gauges on ``/metrics``.

Each answered batch adds cheap summaries of its records and answers (see
:mod:`~mmagent.lifecycle.observe`; the embeddings come from the model's own forward pass through
forward hooks) to fixed-size ring buffers (``deque(maxlen=window)`` per feature), so memory stays
bounded however long the server runs. Scores are computed by :func:`mmagent.lifecycle.drift.score`
only when ``/metrics`` is scraped, and only when something was observed since the last scrape.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mmagent.lifecycle import observe
from mmagent.lifecycle.drift import DriftThresholds, score
from mmagent.lifecycle.profile import PROFILE_FILE, centroid_arrays, read_profile

log = logging.getLogger("mmagent.serving")


class DriftMonitor:
    """Ring buffers of observations plus a Prometheus collector of their drift scores."""

    def __init__(self, profile: dict[str, Any], agent: Any, window: int = 1000, thresholds: DriftThresholds | None = None) -> None:
        if window < 1:
            raise ValueError("the drift window must hold at least one record")
        self.profile, self.window = profile, window
        self.thresholds = thresholds or DriftThresholds()
        self.inputs = list(agent.model.spec.inputs)
        self.target = agent.target
        self.centroids = centroid_arrays(profile)
        self.tap = observe.EmbeddingTap(agent.model, self.inputs)
        self.buffers: dict[str, deque] = {}
        self._lock = threading.Lock()
        self._version = 0  # bumped by every observation: a scrape recomputes only after a change
        self._cached: tuple[int, dict[str, Any]] | None = None

    # -- observing ---------------------------------------------------------------------------------
    def wrap(self, fn: Callable[[list[Any]], Sequence[Any]]) -> Callable[[list[Any]], Sequence[Any]]:
        """``fn`` (a batch of records -> answers), observed. Watching never fails a request."""

        def observed(records: list[Any]) -> Sequence[Any]:
            self.tap.clear()
            results = fn(records)
            try:
                self.observe(records, results, self.tap.take(len(records)))
            except Exception:  # noqa: BLE001 - a summary that fails must not cost the client its answer
                log.exception("drift watch: could not observe a batch")
            return results

        return observed

    def observe(self, records: Sequence[Any], results: Sequence[Any], pooled: dict[str, Any] | None = None) -> None:
        """Add a batch's summaries to the window."""
        found = observe.merge(
            observe.summarize_inputs(self.inputs, records, ".", self.profile.get("vocabulary")),
            observe.embedding_observations(self.inputs, records, pooled or {}, self.centroids),
            observe.summarize_results(results, self.target),
        )
        self.add(found)

    def add(self, observations: dict[str, list[Any]]) -> None:
        with self._lock:
            for key, values in observations.items():
                self.buffers.setdefault(key, deque(maxlen=self.window)).extend(values)
            self._version += 1

    # -- scoring -----------------------------------------------------------------------------------
    def scores(self) -> dict[str, Any]:
        """:func:`~mmagent.lifecycle.drift.score` of the current window (cached until it changes)."""
        with self._lock:
            if self._cached is not None and self._cached[0] == self._version:
                return self._cached[1]
            version, snapshot = self._version, {k: list(v) for k, v in self.buffers.items()}
        result = score(self.profile, snapshot, self.thresholds)
        with self._lock:
            self._cached = (version, result)
        return result

    def describe(self) -> list[Any]:
        return []  # computed on scrape only: nothing to score at registration

    def collect(self) -> Iterator[Any]:
        """Prometheus collector protocol: the drift gauges of the current window."""
        from prometheus_client.core import GaugeMetricFamily

        result = self.scores()
        families = {
            "psi": GaugeMetricFamily("mmagent_drift_psi", "PSI of an input feature over the recent window vs training", labels=["input", "feature"]),
            "embedding_shift": GaugeMetricFamily(
                "mmagent_drift_embedding_shift", "relative rise of the mean distance to the training embedding centroids", labels=["input"]
            ),
            "confidence_shift": GaugeMetricFamily("mmagent_drift_confidence_shift", "mean confidence on validation minus over the recent window"),
            "label_shift": GaugeMetricFamily("mmagent_drift_label_shift", "total variation distance of predicted-label shares vs validation"),
            "escalation_share": GaugeMetricFamily("mmagent_escalation_share", "share of /v1/act decisions escalated in the recent window"),
            "unknown_share": GaugeMetricFamily("mmagent_unknown_share", "share of inputs flagged unknown (unlike the training data) in the recent window"),
        }
        for row in result["scores"]:
            value = math.nan if row["value"] is None else float(row["value"])
            family = families[row["score"]]
            if row["score"] == "psi":
                family.add_metric([row["input"], row["feature"]], value)
            elif row["score"] == "embedding_shift":
                family.add_metric([row["input"]], value)
            else:
                family.add_metric([], value)
        yield from families.values()
        yield GaugeMetricFamily("mmagent_drift_window_records", "records in the drift window", value=result["rows"])
        yield GaugeMetricFamily(
            "mmagent_drift_retraining_due", "1 when a drift rule fires over a full enough window (see mmagent drift)", value=1.0 if result["retrain"] else 0.0
        )


def drift_monitor(run_dir: str | Path | None, agent: Any, window: int) -> DriftMonitor | None:
    """The server's monitor, or None: no run folder, ``window`` 0, or a run without a usable
    profile (logged: ``mmagent profile RUN`` builds one)."""
    if run_dir is None or window <= 0:
        return None
    if not (Path(run_dir) / PROFILE_FILE).is_file():
        log.info("drift watch off: %s has no %s (build it with `mmagent profile %s`)", run_dir, PROFILE_FILE, run_dir)
        return None
    try:
        return DriftMonitor(read_profile(run_dir), agent, window)
    except Exception as e:  # noqa: BLE001 - a damaged profile must not stop the server from answering
        log.warning("drift watch off: %s", e)
        return None
