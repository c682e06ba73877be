"""``Agent.explain``: why the agent decided as it did for one record.

The explained score is the calibrated probability of the predicted label of the agent's target
(the first target unless the agent block names another). Per input present in the record:

- text: a signed score per word of the text (token attributions merged over word pieces, mapped
  back to character offsets with the tokenizer's offsets), max |score| = 1;
- image: a heatmap in [0, 1] over the image the encoder saw (at most 64 x 64 cells) and a PNG of
  it over the image;
- audio: importance in [0, 1] per time window (and the transcript when the agent transcribed);
- numeric: a signed score per feature; categorical: the drop of the score when it is hidden.

Methods are in :mod:`mmagent.agent.attributions`; ``method`` in each entry says which one ran.
The JSON shape (``Explanation.to_dict``) is what ``POST /v1/explain`` returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmagent.agent import attributions as attr
from mmagent.agent.explain_render import data_url, overlay_png, shown_image
from mmagent.agent.policies import Decision
from mmagent.data.tables import is_empty, resolve_media
from mmagent.encoders.preprocessors import ByteTokenizer
from mmagent.inference import make_loader, to_device

WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class Explanation:
    """One record's decision and what each input contributed to it."""

    decision: Decision
    target: str
    explained_label: str | None  # None for a regression target (its value is explained)
    contributions: dict[str, float]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # text input -> the text explained (for rendering)

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of ``POST /v1/explain``."""
        return {
            "decision": self.decision.model_dump(mode="json"),
            "target": self.target,
            "explained_label": self.explained_label,
            "contributions": dict(self.contributions),
            "inputs": self.inputs,
        }


def explain_record(agent: Any, record: dict[str, Any], base_dir: str | Path = ".") -> Explanation:
    """See :meth:`mmagent.agent.Agent.explain`. ``agent``: a loaded Agent (typed ``Any``: naming the
    class here would make agent.py and this module import each other)."""
    if not isinstance(record, dict):
        raise ValueError(f"explain takes one record (a mapping of column -> value), got {type(record).__name__}")
    table, transcripts = agent.prepare([record], base_dir)
    decision = agent.decide(table, transcripts)[0]
    model, target = agent.model, agent.target
    spec = model.heads[target].spec
    if spec.type == "regression":
        label, index = None, 0
    else:
        label = max(decision.probabilities, key=decision.probabilities.get)  # type: ignore[arg-type]
        index = list(spec.labels).index(label)
    batch = to_device(next(iter(make_loader(model, table, 1, with_targets=False))), agent.device)
    scorer = attr.Scorer(model, batch, target, index, agent.temperatures.get(target, 1.0))
    row = table.records[0]
    out = Explanation(decision, target, label, dict(decision.contributions))
    model.eval()
    with torch.enable_grad():  # the serving thread may run under no_grad; attributions need gradients
        for inp in model.spec.inputs:
            values = [row.get(c) for c in inp.columns]
            if all(is_empty(v) for v in values):
                continue  # a missing input has nothing to attribute
            name = inp.key
            if inp.modality == "text":
                out.texts[name] = str(values[0])
                out.inputs[name] = _text(scorer, name, str(values[0]))
            elif inp.modality == "image":
                out.inputs[name] = _image(scorer, name)
            elif inp.modality == "audio":
                scores, window = attr.audio_importance(scorer, name, resolve_media(values[0], table.base_dir))
                info = {"modality": "audio", "method": "occlusion", "window_seconds": round(window, 4), "scores": _round(scores)}
                out.inputs[name] = {**info, "transcript": decision.transcript}
            elif inp.modality == "numeric":
                scores = attr.numeric_scores(scorer, name)
                names = inp.columns if len(inp.columns) == len(scores) else [f"{name}[{i}]" for i in range(len(scores))]
                features = [{"name": n, "score": round(float(s), 4)} for n, s in zip(names, scores)]
                out.inputs[name] = {"modality": "numeric", "method": "integrated_gradients", "features": features}
            else:
                out.inputs[name] = {"modality": inp.modality, "method": "occlusion", "score": round(attr.occlusion_score(scorer, name), 4)}
    return out


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


# -- text -----------------------------------------------------------------------------------------
def _text(scorer: attr.Scorer, name: str, text: str) -> dict[str, Any]:
    ids = scorer.batch["inputs"][name]["input_ids"][0].tolist()
    offsets = token_offsets(scorer.model.encoders[name].preprocessor, text, ids)
    scores, method = attr.text_token_scores(scorer, name, [o is None for o in offsets])
    return {"modality": "text", "method": method, "tokens": word_scores(text, offsets, scores)}


def token_offsets(preprocessor: Any, text: str, ids: list[int]) -> list[tuple[int, int] | None]:
    """Character span in ``text`` of each token (``None`` for special tokens and padding)."""
    tokenizer = preprocessor.tokenizer
    if isinstance(tokenizer, ByteTokenizer):  # [CLS] byte... [SEP]: one token per UTF-8 byte
        char_of_byte = [i for i, ch in enumerate(text) for _ in ch.encode("utf-8")]
        spans: list[tuple[int, int] | None] = [None]
        spans += [(char_of_byte[b], char_of_byte[b] + 1) for b in range(len(ids) - 2)]
        return [*spans, None][: len(ids)]
    try:
        enc = tokenizer(text, truncation=True, max_length=preprocessor.max_length, return_offsets_mapping=True)
        found = [(int(s), int(e)) if e > s else None for s, e in enc["offset_mapping"]]
        if list(enc["input_ids"]) == ids:
            return found
    except (NotImplementedError, ValueError, TypeError, KeyError):  # slow (Python) tokenizers have no offsets
        pass
    return _search_offsets(tokenizer, text, ids)


def _search_offsets(tokenizer: Any, text: str, ids: list[int]) -> list[tuple[int, int] | None]:
    """Offsets without the tokenizer's help: find each token's text in order (word-piece markers
    ``##``, ``Ġ`` and ``▁`` stripped, case-insensitive)."""
    special = set(getattr(tokenizer, "all_special_ids", []))
    lowered, at, out = text.lower(), 0, []
    for tid, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        clean = piece.lstrip("#").replace("Ġ", "").replace("▁", "").lower() if tid not in special else ""
        where = lowered.find(clean, at) if clean else -1
        out.append((where, where + len(clean)) if where >= 0 else None)
        at = where + len(clean) if where >= 0 else at
    return out


def word_scores(text: str, offsets: list[tuple[int, int] | None], scores: np.ndarray) -> list[dict[str, Any]]:
    """Token scores summed into the words (and punctuation marks) of ``text`` they fall in; words
    no token reached (cut by ``max_length``) are left out. Signed, max |score| = 1."""
    words = [(m.start(), m.end()) for m in WORD.finditer(text)]
    totals: dict[int, float] = {}
    for span, score in zip(offsets, scores):
        if span is None:
            continue
        for w, (start, end) in enumerate(words):
            if start <= span[0] < end:
                totals[w] = totals.get(w, 0.0) + float(score)
                break
    kept = sorted(totals)
    normal = attr.normalise_signed(np.array([totals[w] for w in kept]))
    return [{"token": text[words[w][0] : words[w][1]], "start": words[w][0], "end": words[w][1], "score": round(float(s), 4)} for w, s in zip(kept, normal)]


# -- image ----------------------------------------------------------------------------------------
def _image(scorer: attr.Scorer, name: str) -> dict[str, Any]:
    heat, method = attr.image_heat(scorer, name)
    pre = scorer.model.encoders[name].preprocessor
    pixels = scorer.batch["inputs"][name]["pixel_values"][0].detach().cpu().numpy()
    picture = shown_image(pixels, getattr(pre, "mean", None), getattr(pre, "std", None))
    cells = attr.grid(heat)
    return {"modality": "image", "method": method, "heatmap": [_round(r) for r in cells], "overlay_png": data_url(overlay_png(picture, heat))}
