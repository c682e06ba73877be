"""The customer-service demo's requests: varied enough that the numbers on screen mean something.

Phrasings come from ``customer_service.yaml`` (written by this project). Whole templates are held
out for validation and test, so the test score measures how the model copes with phrasings it never
saw; typos, greetings and sign-offs vary the surface; ambiguous requests that mix two intents are
labelled with either one, as a real inbox would be, so even a perfect model cannot reach 100 %.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

DATA_FILE = Path(__file__).with_name("customer_service.yaml")
HELD_OUT_TEMPLATES = {"validation": 2, "test": 3}  # per intent, never seen in training


@functools.lru_cache(maxsize=1)
def request_data() -> dict[str, Any]:
    """The YAML file: intents with their templates, ambiguous requests, fillers, playbook."""
    return yaml.safe_load(DATA_FILE.read_text())


def playbook() -> dict[str, Any]:
    """The customer-service agent's playbook (replies per intent, hand-off rules)."""
    return request_data()["playbook"]


def add_typo(text: str, rng: np.random.Generator) -> str:
    """One keyboard slip in a random word of 4+ letters: a swap, a dropped or a doubled letter."""
    words = text.split()
    long_words = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not long_words:
        return text
    i = long_words[rng.integers(len(long_words))]
    w = words[i]
    j = int(rng.integers(1, len(w) - 1))
    kind = rng.integers(3)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :] if kind == 0 else (w[:j] + w[j + 1 :] if kind == 1 else w[:j] + w[j] + w[j:])
    return " ".join(words)


def _fill(template: str, rng: np.random.Generator) -> str:
    fillers = request_data()["fillers"]
    return template.format(**{k: v[rng.integers(len(v))] for k, v in fillers.items()})


def _vary(text: str, rng: np.random.Generator) -> str:
    data = request_data()
    if rng.random() < 0.3:
        text = data["openers"][rng.integers(len(data["openers"]))] + text
    if rng.random() < 0.2:
        text = text + data["closers"][rng.integers(len(data["closers"]))]
    for _ in range(int(rng.random() < 0.35) + int(rng.random() < 0.1)):
        text = add_typo(text, rng)
    return text


def customer_requests(per_template: int, seed: int, keep_template: bool = False) -> pd.DataFrame:
    """Requests with columns ``ticket_id``, ``text``, ``intent`` and ``split`` (train / validation /
    test, by held-out template). ``per_template`` filled variants are drawn from each template;
    ``keep_template`` adds the template each row came from (for checks, never as a feature)."""
    rng = np.random.default_rng(seed)
    data = request_data()
    rows: list[dict[str, Any]] = []
    for intent, templates in data["intents"].items():
        order = rng.permutation(len(templates))
        split_of = {}
        start = 0
        for split, count in HELD_OUT_TEMPLATES.items():
            split_of.update({int(t): split for t in order[start : start + count]})
            start += count
        for t, template in enumerate(templates):
            for _ in range(per_template):
                rows.append({"text": _vary(_fill(template, rng), rng), "intent": intent, "split": split_of.get(t, "train"), "template": template})
    splits = list(HELD_OUT_TEMPLATES) + ["train"] * 3
    for first, second, template in data["ambiguous"]:
        for _ in range(per_template):
            rows.append(
                {
                    "text": _vary(_fill(template, rng), rng),
                    "intent": [first, second][rng.integers(2)],
                    "split": splits[rng.integers(len(splits))],
                    "template": "ambiguous: " + template,
                }
            )
    frame = pd.DataFrame(rows).drop_duplicates("text").sample(frac=1.0, random_state=seed).reset_index(drop=True)
    frame.insert(0, "ticket_id", [f"T{100000 + 7 * i}" for i in range(len(frame))])
    return frame if keep_template else frame.drop(columns="template")


VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp"]


def add_speech(frame: pd.DataFrame, folder: Path, seed: int, fraction: float = 1.0) -> pd.DataFrame:
    """Render a fraction of the rows' ``text`` to WAV files under ``folder`` (a random voice, speed
    and pitch each, with the bundled espeak-ng); the new ``audio`` column holds their paths
    relative to the folder's parent, other rows stay text-only."""
    from mmagent.demo import tts

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    audio: list[str | None] = []
    for i, text in enumerate(frame["text"]):
        if rng.random() >= fraction:
            audio.append(None)
            continue
        path = folder / f"utt_{seed}_{i}.wav"
        tts.speak(text, path, rate=int(rng.integers(130, 190)), voice=VOICES[rng.integers(len(VOICES))], pitch=int(rng.integers(30, 70)))
        audio.append(f"{folder.name}/{path.name}")
    frame = frame.copy()
    frame["audio"] = audio
    return frame
