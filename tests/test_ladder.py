"""The ladder's pieces: strategies as encoder specs, the search space, rungs, and the cost model."""

from __future__ import annotations

import pytest

from mmagent.search.ladder import SampleCost, rung_params, search_space, strategy_encoder, strategy_of

RAW = {
    "inputs": [
        {"column": "text", "modality": "text", "encoder": {"source": "zoo", "name": "minilm-l6"}},
        {"column": "scan", "modality": "image", "encoder": {"source": "timm", "name": "resnet18"}},
        {"column": "voice", "modality": "audio", "encoder": {"source": "zoo", "name": "whisper-tiny.en", "freeze": "all", "max_seconds": 4.0}},
        {"column": ["x"], "modality": "numeric", "encoder": {"source": "builtin", "name": "mlp"}},
    ],
    "fusion": {"type": "gated", "modality_dropout": 0.2},
}
BLOCKS = {0: 6, 1: -4}  # the text encoder has attention (LoRA works), the CNN has not


@pytest.mark.parametrize(("strategy", "freeze", "lora"), [("probe", "all", False), ("partial", 3, False), ("lora", "none", True), ("full", "none", False)])
def test_strategies_become_encoder_specs_and_back(strategy, freeze, lora):
    spec = strategy_encoder(RAW["inputs"][0]["encoder"], strategy, BLOCKS[0])
    assert spec["freeze"] == freeze and bool(spec.get("lora")) == lora
    assert strategy_of(spec) == strategy


def test_lora_falls_back_to_partial_on_a_cnn():
    spec = strategy_encoder(RAW["inputs"][1]["encoder"], "lora", BLOCKS[1])
    assert "lora" not in spec and spec["freeze"] == 2 and strategy_of(spec) == "partial"


def test_space_and_rungs_cover_speech_and_fusion():
    space = search_space(RAW, ["probe", "partial"], BLOCKS, max_epochs=8)
    assert set(space) == {
        "inputs.0.encoder",
        "inputs.1.encoder",
        "inputs.2.encoder",
        "train.lr",
        "train.head_lr",
        "train.epochs",
        "fusion.type",
        "fusion.modality_dropout",
    }
    speech = space["inputs.2.encoder"]["choices"]
    assert speech[0]["name"] == "whisper-tiny.en" and speech[1] == {"source": "builtin", "name": "mel-cnn", "max_seconds": 4.0}
    rung = rung_params(RAW, "partial", BLOCKS, epochs=3)
    assert rung["inputs.2.encoder"]["name"] == "whisper-tiny.en" and rung["train.epochs"] == 3 and rung["fusion.type"] == "gated"
    scratch = rung_params(RAW, "probe", BLOCKS, epochs=9, scratch=True)
    assert strategy_of(scratch["inputs.2.encoder"]) == "scratch" and scratch["inputs.0.encoder"]["freeze"] == "all"
    for key, value in rung.items():  # every rung is a point of the space (Optuna replays it exactly)
        param = space[key]
        assert value in param["choices"] if param["type"] == "categorical" else param["low"] <= value <= param["high"]


def test_cost_model_charges_cached_encoders_once():
    cost = SampleCost(
        load={"text": 0.001, "voice": 0.01},
        encode={"text": 0.004, "voice": 0.05},
        train={"probe": 0.0002, "partial": 0.01, "lora": 0.012, "full": 0.015},
        forward=0.06,
        always_frozen=["voice"],
        tunable=["text"],
    )
    # probe: both encoders cached, so an epoch is the heads alone; the cache costs load + encode once
    assert cost.epoch_seconds("probe", 1000, 100) == pytest.approx(1000 * 0.0002 + 100 * (0.06 - 0.054))
    assert cost.setup_seconds("probe", 1000, 100) == pytest.approx(1100 * (0.011 + 0.054))
    # partial: the text loads and encodes every step; the speech cache is already there after the probe
    assert cost.setup_seconds("partial", 1000, 100, done={"voice", "text"}) == 0.0
    assert cost.epoch_seconds("partial", 1000, 100) == pytest.approx(1000 * (0.001 + 0.01) + 100 * (0.001 + 0.06 - 0.05))
    assert cost.affordable_epochs("full", 10, 10.0, 1000, 100, done={"voice"}) == 0
    assert cost.affordable_epochs("full", 10, 100.0, 1000, 100, done={"voice"}) == 5
