"""Core model: fusion contracts (missing inputs, modality dropout), XOR, gradients, save/load."""

from __future__ import annotations

import pytest
import torch

from mmagent.encoders import EncoderOutput
from mmagent.fusion import available_fusions, build_fusion
from mmagent.model import MultimodalModel
from mmagent.specs import FusionSpec, InputSpec, ModelSpec, TargetSpec
from tests.conftest import TINY_BERT

FUSIONS = ["concat", "gated", "cross_attention"]


def test_all_fusions_registered() -> None:
    assert set(FUSIONS) <= set(available_fusions())


def _features(b: int, seed: int) -> dict[str, EncoderOutput]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (t, d) in {"a": (5, 8), "b": (3, 6), "c": (4, 10)}.items():
        tokens = torch.randn(b, t, d, generator=g)
        out[name] = EncoderOutput(tokens, torch.ones(b, t, dtype=torch.bool), tokens.mean(1))
    return out


@pytest.mark.parametrize("kind", FUSIONS)
def test_missing_input_has_no_influence(kind: str) -> None:
    torch.manual_seed(0)
    fusion = build_fusion(FusionSpec(type=kind, hidden_dim=16, num_heads=2), {"a": 8, "b": 6, "c": 10}).eval()
    feats = _features(4, 0)
    present = torch.tensor([[True, False, True], [True, True, True], [False, True, False], [True, True, False]])
    reference = fusion(feats, present).vector
    garbage = _features(4, 1)
    for name in ("a", "b", "c"):  # NaN and huge values in missing slots must not leak in
        garbage[name].tokens[:, 0] = float("nan")
        garbage[name].pooled[:, 0] = 1e9
    for i, name in enumerate(["a", "b", "c"]):
        swapped = dict(feats)
        rows = ~present[:, i]
        tokens = torch.where(rows[:, None, None], garbage[name].tokens, feats[name].tokens)
        pooled = torch.where(rows[:, None], garbage[name].pooled, feats[name].pooled)
        swapped[name] = EncoderOutput(tokens, feats[name].mask, pooled)
        out = fusion(swapped, present).vector
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, reference)
    # Sanity: a *present* input does influence the output.
    changed = dict(feats)
    changed["a"] = EncoderOutput(feats["a"].tokens * 3, feats["a"].mask, feats["a"].pooled * 3)
    assert not torch.allclose(fusion(changed, present).vector[1], reference[1])


def test_modality_dropout_hides_inputs_but_never_all() -> None:
    fusion = build_fusion(FusionSpec(type="concat", hidden_dim=8, modality_dropout=0.7), {"a": 4, "b": 4, "c": 4})
    present = torch.ones(2000, 3, dtype=torch.bool)
    present[:500, 2] = False
    fusion.train()
    dropped = fusion.drop_modalities(present)
    assert dropped.any(1).all(), "every sample keeps at least one input"
    assert not (dropped & ~present).any(), "never resurrects a missing input"
    rate = 1 - dropped[:, 0].float().mean().item()
    assert 0.5 < rate < 0.8
    fusion.eval()
    assert torch.equal(fusion.drop_modalities(present), present)


def _xor_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=g)
    b = torch.randint(0, 2, (n,), generator=g)
    # Each modality: its bit (with noise) in one coordinate plus distractor coordinates.
    xa = torch.randn(n, 4, generator=g) * 0.3
    xb = torch.randn(n, 4, generator=g) * 0.3
    xa[:, 0] += a * 2 - 1
    xb[:, 2] += b * 2 - 1
    return xa, xb, (a ^ b)


def _xor_model(kind: str, inputs: list[str]) -> MultimodalModel:
    spec = ModelSpec(
        inputs=[
            InputSpec(column=[f"{n}{j}" for j in range(4)], name=n, modality="numeric", encoder={"source": "builtin", "name": "mlp", "config": {"width": 32}})
            for n in inputs
        ],
        targets=[TargetSpec(column="y", labels=["0", "1"])],
        fusion=FusionSpec(type=kind, hidden_dim=32, num_heads=2, dropout=0.0),
        head_dropout=0.0,
    )
    return MultimodalModel(spec)


def _fit_and_score(kind: str, inputs: list[str]) -> float:
    torch.manual_seed(0)
    xa, xb, y = _xor_data(2000, 0)
    ta, tb, ty = _xor_data(1000, 1)
    model = _xor_model(kind, inputs)
    data = {"a": xa, "b": xb}
    test = {"a": ta, "b": tb}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    present = torch.ones(128, len(inputs), dtype=torch.bool)
    for _ in range(12):
        model.train()
        perm = torch.randperm(len(y))
        for i in range(0, len(y) - 127, 128):
            idx = perm[i : i + 128]
            out = model({n: {"values": data[n][idx]} for n in inputs}, present)
            loss, _ = model.loss(out, {"y": y[idx]})
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = model({n: {"values": test[n]} for n in inputs}, torch.ones(len(ty), len(inputs), dtype=torch.bool))
    return (out.logits["y"].argmax(-1) == ty).float().mean().item()


@pytest.mark.parametrize("kind", FUSIONS)
def test_xor_needs_both_inputs_and_every_fusion_learns_it(kind: str) -> None:
    assert _fit_and_score(kind, ["a", "b"]) >= 0.95
    for single in (["a"], ["b"]):
        assert _fit_and_score(kind, single) < 0.6


def _text_numeric_model(freeze: str | int) -> MultimodalModel:
    spec = ModelSpec(
        inputs=[
            InputSpec(column="t", modality="text", encoder={"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "freeze": freeze}),
            InputSpec(column=["x1", "x2"], modality="numeric", encoder={"source": "builtin", "name": "mlp"}),
        ],
        targets=[TargetSpec(column="y", labels=["a", "b", "c"]), TargetSpec(column="v", type="regression", mean=2.0, std=3.0)],
        fusion=FusionSpec(type="cross_attention", hidden_dim=16, num_heads=2),
    )
    return MultimodalModel(spec)


def _batch(model: MultimodalModel) -> tuple[dict, torch.Tensor]:
    text = model.encoders["t"].preprocessor
    num = model.encoders["x1+x2"].preprocessor
    inputs = {"t": text.collate([text("hello there"), text("a much longer sentence here")]), "x1+x2": num.collate([num([1.0, 2.0]), num([3.0, None])])}
    return inputs, torch.ones(2, 2, dtype=torch.bool)


@pytest.mark.parametrize("freeze", ["none", "all"])
def test_gradients_reach_trainable_encoders_only(freeze: str) -> None:
    torch.manual_seed(0)
    model = _text_numeric_model(freeze)
    inputs, present = _batch(model)
    out = model(inputs, present)
    loss, parts = model.loss(out, {"y": torch.tensor([0, 2]), "v": torch.tensor([1.0, float("nan")])})
    assert set(parts) == {"y", "v"}
    loss.backward()
    text_grads = [p.grad for p in model.encoders["t"].parameters()]
    if freeze == "all":
        assert all(g is None for g in text_grads)
        assert not any(p.requires_grad for p in model.encoders["t"].parameters())
    else:
        assert all(
            g is not None and g.abs().sum() > 0
            for g, p in zip(text_grads, model.encoders["t"].parameters())
            if p.requires_grad and "pooler" not in _name(model, p)
        )
    assert all(p.grad is not None for p in model.encoders["x1+x2"].parameters() if p.requires_grad)
    assert all(p.grad is not None for p in model.heads.parameters())


def _name(model: MultimodalModel, param: torch.nn.Parameter) -> str:
    return next(n for n, p in model.named_parameters() if p is param)


def test_partial_freeze_freezes_first_layers() -> None:
    model = _text_numeric_model(1)
    enc = model.encoders["t"]
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    assert any("embeddings" in n for n in frozen)
    assert any("layer.0." in n for n in frozen)
    assert not any("layer.1." in n for n in frozen)


def test_save_load_round_trip_identical(tmp_path) -> None:
    torch.manual_seed(0)
    model = _text_numeric_model("none")
    model.encoders["x1+x2"].fit([[1.0, 10.0], [3.0, 30.0]])
    model.eval()
    inputs, present = _batch(model)
    with torch.no_grad():
        before = model(inputs, present)
    model.save(tmp_path / "m")
    assert not list(tmp_path.glob("*.tmp")), "no temporary left behind"
    loaded = MultimodalModel.load(tmp_path / "m")
    inputs2, _ = _batch(loaded)
    with torch.no_grad():
        after = loaded(inputs2, present)
    for k in before.logits:
        torch.testing.assert_close(before.logits[k], after.logits[k], rtol=0, atol=0)
    assert loaded.spec.targets[0].labels == ["a", "b", "c"]
    assert loaded.heads["v"].spec.std == 3.0


def test_lora_trains_only_adapters_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(
        inputs=[InputSpec(column="t", modality="text", encoder={"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "lora": {"r": 4}})],
        targets=[TargetSpec(column="y", labels=["a", "b"])],
        fusion=FusionSpec(type="concat", hidden_dim=16),
    )
    model = MultimodalModel(spec)
    enc = model.encoders["t"]
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("query" in n for n in trainable) and any("value" in n for n in trainable)
    pre = enc.preprocessor
    out = model({"t": pre.collate([pre("hello"), pre("good morning")])}, torch.ones(2, 1, dtype=torch.bool))
    model.loss(out, {"y": torch.tensor([0, 1])})[0].backward()
    assert all(p.grad is not None for n, p in enc.named_parameters() if "lora_B" in n)
    assert all(p.grad is None for n, p in enc.named_parameters() if "lora_" not in n)
    model.eval()
    model.save(tmp_path / "m")
    loaded = MultimodalModel.load(tmp_path / "m")
    batch = {"t": loaded.encoders["t"].preprocessor.collate([pre("hello")])}
    with torch.no_grad():
        torch.testing.assert_close(model(batch, torch.ones(1, 1, dtype=torch.bool)).logits["y"], loaded(batch, torch.ones(1, 1, dtype=torch.bool)).logits["y"])


def test_third_party_encoder_via_entry_point(monkeypatch) -> None:
    """A package that declares `[project.entry-points."mmagent.encoders"] acme = ...` adds a source."""
    import importlib.metadata

    from mmagent.encoders import base
    from mmagent.encoders.builtin import NumericMLPEncoder

    def build_acme(spec):
        return NumericMLPEncoder(spec.model_copy(update={"config": {"num_features": 2, "width": 8}}))

    class FakeEntryPoint:
        name = "acme"

        def load(self):
            return build_acme

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [FakeEntryPoint()] if group == "mmagent.encoders" else [])
    monkeypatch.setattr(base, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.delitem(base._SOURCES, "acme", raising=False)
    enc = base.build_encoder({"source": "acme", "name": "anything"}, "numeric")
    assert enc.output_dim == 8 and "acme" in base.available_sources()
    base._SOURCES.pop("acme", None)


def test_atomic_writes_leave_normal_permissions(tmp_path) -> None:
    import os

    from mmagent.io import atomic_dir, write_json

    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("y")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
