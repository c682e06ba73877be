"""The ladder's pieces: strategies as encoder specs, the search space, rungs, and the cost model."""

from __future__ import annotations

import re

import pytest

from mmagent.search.ladder import PRESETS, SampleCost, plan_rungs, rung_params, search_space, strategy_encoder, strategy_of

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
    speech = space["inputs.2.encoder"]["choices"]  # Whisper frozen or its top half fine-tuned, or the scratch CNN
    assert [(c["name"], c.get("freeze")) for c in speech[:2]] == [("whisper-tiny.en", "all"), ("whisper-tiny.en", 1)]
    assert speech[2] == {"source": "builtin", "name": "mel-cnn", "max_seconds": 4.0}
    rung = rung_params(RAW, "partial", BLOCKS, epochs=3)  # beside text and image, the rungs keep Whisper frozen
    assert rung["inputs.2.encoder"]["name"] == "whisper-tiny.en" and strategy_of(rung["inputs.2.encoder"]) == "probe"
    assert strategy_of(rung["inputs.0.encoder"]) == "partial" and rung["train.epochs"] == 3 and rung["fusion.type"] == "gated"
    speech_only = {"inputs": [RAW["inputs"][2], RAW["inputs"][3]], "fusion": RAW["fusion"]}
    alone = rung_params(speech_only, "lora", {}, epochs=3)  # the only pretrained encoder: the rungs fine-tune it
    assert strategy_of(alone["inputs.0.encoder"]) == "lora"
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


def test_probe_epochs_are_not_eaten_by_the_feature_cache():
    """A slow frozen encoder (Whisper over thousands of clips) makes caching take most of the
    probe's quarter; the probe must still get its epochs, which take seconds on cached features."""
    cost = SampleCost(
        load={"image": 0.002, "voice": 0.01},
        encode={"image": 0.01, "voice": 0.1},
        train={"probe": 0.0005, "partial": 0.05, "lora": 0.1, "full": 0.15},
        forward=0.12,
        always_frozen=["voice"],
        tunable=["image"],
    )
    plan = PRESETS["balanced"]
    rungs = plan_rungs(cost, list(plan.strategies), plan, 900.0, 2400, 300)
    assert cost.setup_seconds("probe", 2400, 300) > 0.25 * 900  # the case that left the probe 1 epoch
    assert rungs[0].strategy == "probe" and rungs[0].epochs == plan.probe_epochs
    # what is left after the probe decides the fine-tuning rungs: partial fits, the rest is skipped with its reason
    assert [(r.strategy, r.epochs > 0) for r in rungs] == [("probe", True), ("partial", True), ("lora", False), ("full", False)]
    assert all(r.skipped.startswith("one epoch") and "needs" in r.skipped for r in rungs[2:])
    for r in rungs[2:]:  # what it needs is more than its share of the time left, as it says
        need, left, share = map(float, re.findall(r"~(\d+) s", r.skipped))
        assert need > share and share <= left, r.skipped
    assert all(r.rows is None for r in rungs)  # a table this size is trained on whole
    spent = cost.setup_seconds("probe", 2400, 300) + sum(r.epochs * cost.epoch_seconds(r.strategy, 2400, 300) for r in rungs)
    assert spent <= 900.0


def test_cheapest_rung_runs_even_when_nothing_fits():
    cost = SampleCost(
        load={"t": 1.0}, encode={"t": 1.0}, train={"probe": 1.0, "partial": 1.0, "lora": 1.0, "full": 1.0}, forward=1.0, always_frozen=[], tunable=["t"]
    )
    plan = PRESETS["balanced"]
    rungs = plan_rungs(cost, list(plan.strategies), plan, 10.0, 1000, 100)
    assert (rungs[0].strategy, rungs[0].epochs) == ("probe", 1) and all(r.epochs == 0 for r in rungs[1:])


def _million_row_cost() -> SampleCost:
    """MiniLM-like costs per row (measured on a 1M-row support-ticket table, 2 cores)."""
    return SampleCost(
        load={"text": 0.0},
        encode={"text": 0.0016},
        train={"probe": 0.0005, "partial": 0.004, "lora": 0.005, "full": 0.006},
        forward=0.0017,
        always_frozen=[],
        tunable=["text"],
    )


def test_a_table_too_large_for_one_pass_is_planned_on_samples():
    """900,000 training rows and three minutes: caching them all alone would take 24 minutes, so
    every rung trains on a sample that fits, the probe with several epochs, within the time."""
    from mmagent.search.ladder import MIN_SAMPLE_ROWS, SAMPLED_EPOCHS

    cost, plan = _million_row_cost(), PRESETS["balanced"]
    rungs = plan_rungs(cost, list(plan.strategies), plan, 180.0, 900_000, 5000)
    planned = [r for r in rungs if r.epochs]
    assert [r.strategy for r in planned] == ["probe", "partial", "lora", "full"]
    assert all(r.rows is not None and MIN_SAMPLE_ROWS <= r.rows < 900_000 for r in planned)
    assert planned[0].epochs >= SAMPLED_EPOCHS["probe"]
    for r in planned:  # each rung's time is what its rows and epochs cost
        done = set() if r.strategy == "probe" else cost.cached("probe")
        expected = cost.setup_seconds(r.strategy, r.rows, 5000, done) + r.epochs * cost.epoch_seconds(r.strategy, r.rows, 5000)
        assert r.seconds == pytest.approx(expected)
    assert sum(r.seconds for r in planned) <= 180.0
    # four times the budget buys larger samples, not just more epochs
    more = plan_rungs(cost, list(plan.strategies), plan, 720.0, 900_000, 5000)
    assert all(m.rows > r.rows for m, r in zip(more, rungs))


def test_sampled_rungs_are_search_parameters_and_the_search_chooses_the_size():
    from mmagent.search.ladder import rung_params

    raw = {"inputs": [{"name": "text", "modality": "text", "columns": ["text"], "encoder": {"source": "zoo", "name": "minilm"}}], "fusion": {"type": "concat"}}
    assert rung_params(raw, "probe", {0: 6}, 3, rows=4000)["train.sample_rows"] == 4000
    assert "train.sample_rows" not in rung_params(raw, "probe", {0: 6}, 3)
    space = search_space(raw, ["probe", "partial"], {0: 6}, 5, sample_rows=[4000, 2500, 4000])
    assert space["train.sample_rows"] == {"type": "categorical", "choices": [2500, 4000]}
    assert "train.sample_rows" not in search_space(raw, ["probe", "partial"], {0: 6}, 5)


def test_unknown_selection_metric_is_refused_before_any_work(tmp_path):
    from mmagent.search.fit import fit

    table = tmp_path / "t.csv"
    table.write_text("text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(20)))
    with pytest.raises(ValueError, match="--metric 'r2'.*accuracy, macro_f1, mcc, auroc"):
        fit(table, "label", tmp_path / "run", metric="r2", progress=False)
    assert not (tmp_path / "run").exists()


def test_candidate_cap_follows_the_validation_size():
    """One candidate per four validation rows (a small validation set cannot rank more without
    picking a lucky one), never fewer than the ladder's rungs plus a few searched ones."""
    from mmagent.search.ladder import max_trials

    assert max_trials(4, 78) == 19  # BreastMNIST: 78 validation images
    assert max_trials(4, 1001) == 250  # Banking77
    assert max_trials(5, 12) == 9  # tiny validation: the rungs and 4 more
