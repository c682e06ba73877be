"""The README's config block runs as written; the demo datasets and recipes behave."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _readme_config() -> dict:
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "recipe: finance" in b)
    return yaml.safe_load(block)


def test_readme_config_trains_on_finance_demo_data(tmp_path: Path) -> None:
    from mmagent import Agent, load_config, train
    from mmagent.demo import datasets as ds
    from mmagent.demo.runner import _write_splits

    _write_splits(ds.finance_news(120, seed=0), tmp_path)
    raw = _readme_config()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "config.yaml", ["train.max_steps=3", "train.epochs=1"])
    assert cfg.recipe == "finance" and cfg.fusion.type == "gated"
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.global_step == 3
    assert {"validation", "test"} <= set(result.metrics)
    decision = Agent.load(tmp_path / "run").act({"headline": "Globex shares slump after profit warning", "return_1d": -2.0})
    assert decision.policy == "finance" and decision.label in {"positive", "negative", "neutral"}


def test_recipe_fills_gaps_but_never_overrides() -> None:
    from mmagent.config import config_from_dict

    raw = {
        "recipe": "customer_service",
        "data": {"train": "x.csv"},
        "inputs": [{"column": "text", "modality": "text"}, {"column": "audio", "modality": "audio", "encoder": {"source": "builtin", "name": "mel-cnn"}}],
        "targets": [{"column": "intent"}],
        "fusion": {"type": "concat"},
        "train": {"epochs": 9},
    }
    cfg = config_from_dict(raw)
    assert cfg.inputs[0].encoder.source == "zoo" and cfg.inputs[0].encoder.name == "minilm-l6"  # filled
    assert cfg.inputs[1].encoder.name == "mel-cnn"  # kept
    assert cfg.fusion.type == "concat" and cfg.fusion.modality_dropout == 0.3  # kept + filled
    assert cfg.train.epochs == 9 and cfg.train.early_stopping_patience == 2
    assert cfg.agent.policy["type"] == "customer_service"
    with pytest.raises(ValueError, match="unknown recipe 'retail'"):
        config_from_dict({**raw, "recipe": "retail"})


def test_demo_datasets_are_seeded_and_labelled(tmp_path: Path) -> None:
    from mmagent.demo import datasets as ds
    from mmagent.demo.requests import customer_requests, playbook, request_data

    a, b = customer_requests(2, seed=3), customer_requests(2, seed=3)
    assert a.equals(b)
    assert set(a["intent"]) == set(request_data()["intents"]) == set(playbook()["intents"])
    med = ds.medical_cases(20, seed=1, folder=tmp_path / "img")
    assert set(med["finding"]) == {"malignant", "benign"}
    assert all((tmp_path / p).is_file() for p in med["image"])
    # malignant lesions are irregular: their dark area's outline is longer relative to its area
    import numpy as np

    rng = np.random.default_rng(0)

    def roughness(img: np.ndarray) -> float:
        dark = img < 90
        edges = (dark[1:, :] != dark[:-1, :]).sum() + (dark[:, 1:] != dark[:, :-1]).sum()
        return edges / max(dark.sum(), 1) ** 0.5

    mal = np.mean([roughness(ds.lesion_image(True, rng)) for _ in range(20)])
    ben = np.mean([roughness(ds.lesion_image(False, rng)) for _ in range(20)])
    assert mal > ben


def test_speech_rendering(tmp_path: Path) -> None:
    import soundfile as sf

    from mmagent.demo import tts

    tts.speak("i lost my card", tmp_path / "x.wav")
    wave, sr = sf.read(tmp_path / "x.wav")
    assert sr > 8000 and len(wave) / sr > 0.5


def test_customer_requests_hold_out_whole_templates_and_vary_the_surface() -> None:
    """No phrasing of the test split occurs in training (its score measures generalisation), and
    typos, greetings and ambiguous two-intent requests (labelled either way) are present."""
    import numpy as np

    from mmagent.demo.requests import add_typo, customer_requests

    frame = customer_requests(3, seed=0, keep_template=True)
    plain = frame[~frame["template"].str.startswith("ambiguous")]
    by_split = {name: set(zip(part["intent"], part["template"])) for name, part in plain.groupby("split")}
    assert by_split["test"] and by_split["validation"]
    assert not by_split["test"] & by_split["train"] and not by_split["validation"] & by_split["train"]
    ambiguous = frame[frame["template"].str.startswith("ambiguous")]
    assert ambiguous.groupby("template")["intent"].nunique().max() == 2  # the same request, either intent
    assert (frame["text"] != frame["text"].str.strip()).sum() == 0
    assert frame["text"].str.match(r"^(hi|hello|hey there|good morning|um|please|excuse me|quick question)\b").any()
    assert add_typo("please block my card", np.random.default_rng(0)) != "please block my card"
    assert "template" not in customer_requests(1, seed=0).columns
