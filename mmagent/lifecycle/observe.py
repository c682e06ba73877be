"""Observations: cheap per-record summaries that drift is measured on, never the raw inputs.

One record becomes a few numbers or category names, keyed ``INPUT/FEATURE``:

- text: ``length`` (characters) and ``coverage`` (the share of the text's words, lower-cased
  ``\\w+`` runs, that occur in the *training vocabulary*: the words of that column in the training
  rows, the most frequent :data:`VOCABULARY_SIZE` kept; a text without words has no coverage);
- image: ``size`` (the side of a square with as many pixels, in px) and ``brightness`` (mean
  luma, 0..255, on a 64 px thumbnail);
- audio: ``duration`` (seconds) and ``loudness`` (RMS level in dBFS, floored at -120);
- numeric: one feature per column (the value); categorical: ``category`` (the value as text);
- text / image / audio: ``embedding_distance``, the cosine distance of the encoder's pooled output
  to the nearest training centroid (see :func:`distances`);
- the agent's answer: ``prediction/label``, ``prediction/confidence``, ``prediction/escalated`` and
  ``prediction/unknown`` (the input was flagged unlike the training data).

The same functions summarise the training data (the profile), a table (``mmagent drift``) and the
server's traffic (the live monitor), so the three can never measure different things.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmagent.data.tables import is_empty, parse_number, resolve_media
from mmagent.specs import InputSpec

VOCABULARY_SIZE = 20_000
EMBEDDED = ("text", "image", "audio")  # modalities whose pooled embedding is watched
PREDICTION = "prediction"
_WORD = re.compile(r"\w+")

Observations = dict[str, list[Any]]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def vocabulary(texts: Iterable[Any]) -> list[str]:
    """The training vocabulary of one text column: its most frequent words."""
    counts = Counter(w for t in texts if isinstance(t, str) for w in words(t))
    return [w for w, _ in counts.most_common(VOCABULARY_SIZE)]


def feature_names(inp: InputSpec) -> list[str]:
    """The summary features of one input (embedding distance aside)."""
    if inp.modality == "text":
        return ["length", "coverage"]
    if inp.modality == "image":
        return ["size", "brightness"]
    if inp.modality == "audio":
        return ["duration", "loudness"]
    if inp.modality == "numeric":
        return list(inp.columns)
    return ["category"]


def summarize_inputs(
    inputs: Sequence[InputSpec], records: Sequence[Mapping[str, Any]], base_dir: Any = ".", vocabularies: Mapping[str, Iterable[str]] | None = None
) -> Observations:
    """``{INPUT/FEATURE: [value, ...]}`` over ``records``; a missing input adds nothing. Media
    cells may be paths (relative to ``base_dir``) or decoded values (PIL image, ``(wave, rate)``)."""
    known = {k: set(v) for k, v in (vocabularies or {}).items()}
    base = Path(base_dir)
    out: Observations = {}
    for inp in inputs:
        for rec in records:
            for name, value in _summaries(inp, rec, base, known.get(inp.key)):
                if value is not None:
                    out.setdefault(f"{inp.key}/{name}", []).append(value)
    return out


def _summaries(inp: InputSpec, rec: Mapping[str, Any], base_dir: Path, known: set[str] | None) -> list[tuple[str, Any]]:
    if inp.modality == "numeric":
        return [(c, _number(rec.get(c))) for c in inp.columns]
    value = rec.get(inp.columns[0])
    if is_empty(value):
        return []
    if inp.modality == "text":
        text = str(value)
        found = words(text)
        coverage = sum(w in known for w in found) / len(found) if found and known is not None else None
        return [("length", float(len(text))), ("coverage", coverage)]
    if inp.modality == "categorical":
        return [("category", str(value).strip())]
    media = resolve_media(value.strip() if isinstance(value, str) else value, base_dir)
    return _image(media) if inp.modality == "image" else _audio(media)


def _number(value: Any) -> float | None:
    if is_empty(value):
        return None
    try:
        x = parse_number(value)
    except (ValueError, TypeError):
        return None
    return x if math.isfinite(x) else None


def _image(item: Any) -> list[tuple[str, Any]]:
    from mmagent.encoders.media import load_image

    img = load_image(item)
    width, height = img.size
    thumb = img.copy()
    thumb.thumbnail((64, 64))  # brightness of a thumbnail: the mean barely changes, the cost does
    luma = float(np.asarray(thumb.convert("L"), dtype=np.float32).mean())
    return [("size", math.sqrt(width * height)), ("brightness", luma)]


def _audio(item: Any) -> list[tuple[str, Any]]:
    from mmagent.encoders.media import load_audio

    rate = 16_000
    wave = load_audio(item, rate).numpy().astype(np.float64)
    rms = math.sqrt(float(np.mean(wave**2))) if wave.size else 0.0
    return [("duration", wave.size / rate), ("loudness", max(-120.0, 20 * math.log10(rms)) if rms > 0 else -120.0)]


# -- embeddings ------------------------------------------------------------------------------------
class EmbeddingTap:
    """Forward hooks that copy each watched encoder's pooled output as the model runs, so the
    server's own forward pass yields the embeddings (no second pass). Rows arrive in call order:
    after a call over ``n`` records, the first ``n`` rows are that call's main pass (later passes,
    such as the explainer's, see the same rows again)."""

    def __init__(self, model: Any, inputs: Sequence[InputSpec]) -> None:
        self.keys = [i.key for i in inputs if i.modality in EMBEDDED]
        self._rows: dict[str, list[np.ndarray]] = {k: [] for k in self.keys}
        self._handles = [model.encoders[k].register_forward_hook(self._hook(k)) for k in self.keys]

    def _hook(self, key: str) -> Any:
        def keep(module: Any, args: Any, output: Any) -> None:
            self._rows[key].append(output.pooled.detach().float().cpu().numpy())

        return keep

    def clear(self) -> None:
        for rows in self._rows.values():
            rows.clear()

    def take(self, n: int) -> dict[str, np.ndarray]:
        """The first ``n`` pooled rows per input since the last :meth:`clear`, then clear."""
        out = {k: np.concatenate(v)[:n] for k, v in self._rows.items() if v and sum(len(a) for a in v) >= n}
        self.clear()
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def distances(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine distance of each row to its nearest centroid (one centroid per training label, or one
    for the whole input): a row unlike every class seen in training is far from all of them."""
    sims = normalized(embeddings) @ normalized(centroids).T
    return 1.0 - sims.max(axis=1)


def embedding_observations(
    inputs: Sequence[InputSpec], records: Sequence[Mapping[str, Any]], pooled: Mapping[str, np.ndarray], centroids: Mapping[str, np.ndarray]
) -> Observations:
    """``INPUT/embedding_distance`` for the records that have that input."""
    out: Observations = {}
    for inp in inputs:
        if inp.key not in pooled or inp.key not in centroids:
            continue
        present = [i for i, r in enumerate(records) if not is_empty(r.get(inp.columns[0]))]
        if present:
            out[f"{inp.key}/embedding_distance"] = [float(d) for d in distances(pooled[inp.key][present], centroids[inp.key])]
    return out


# -- the agent's answers ---------------------------------------------------------------------------
def summarize_results(results: Sequence[Mapping[str, Any]], target: str) -> Observations:
    """Label, confidence, unknown-input verdict and escalation from decisions (``/v1/act``,
    ``Decision`` dumps) or predictions (``{target: {label, probabilities}}``); escalation only
    from decisions."""
    out: Observations = {}
    for res in results:
        decision = "action" in res
        answer = res if decision else res.get(target, {})
        label = answer.get("label")
        confidence = answer.get("confidence")
        if confidence is None and answer.get("probabilities") and label is not None:
            confidence = answer["probabilities"].get(label)
        if label is not None:
            out.setdefault(f"{PREDICTION}/label", []).append(str(label))
        if confidence is not None:
            out.setdefault(f"{PREDICTION}/confidence", []).append(float(confidence))
        if decision:
            out.setdefault(f"{PREDICTION}/escalated", []).append(1.0 if res.get("escalated") else 0.0)
        if answer.get("unknown") is not None:  # a run with an unknown-input score
            out.setdefault(f"{PREDICTION}/unknown", []).append(1.0 if answer.get("unknown") else 0.0)
    return out


def merge(*parts: Mapping[str, list[Any]]) -> Observations:
    out: Observations = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out
