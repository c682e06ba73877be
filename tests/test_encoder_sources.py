"""Every encoder source, built tiny and offline: shapes, masks, padding independence, freezing,
saved assets. Real raw inputs: numpy images and PNG files; stereo audio at another rate and WAV files."""

from __future__ import annotations

import copy
import functools
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmagent.encoders import build_encoder
from mmagent.encoders.base import Encoder
from mmagent.specs import EncoderSpec

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37, "vocab_size": 300, "max_position_embeddings": 64}
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37, "image_size": 32, "patch_size": 8}
TINY_CONVNEXT = {"num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1], "image_size": 32}
TINY_W2V = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37,
    "conv_dim": [16, 16, 16], "conv_stride": [5, 4, 4], "conv_kernel": [10, 4, 4],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
}  # fmt: skip
TINY_WHISPER = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 37, "num_mel_bins": 16}
TINY_AST = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37, "max_length": 64, "num_mel_bins": 32}
TINY_TIMM_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
TINY_TORCHAUDIO = {
    "extractor_conv_layer_config": [(16, 10, 5), (16, 4, 4), (16, 4, 4)],
    "encoder_embed_dim": 32, "encoder_num_layers": 2, "encoder_num_heads": 2, "encoder_ff_interm_features": 37,
    "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 2,
}  # fmt: skip

AUDIO = {"max_seconds": 1.0}
SPECS: dict[str, tuple[dict[str, Any], str]] = {
    "hf-bert": ({"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 32}, "text"),
    "hf-vit": ({"source": "hf", "name": "vit", "pretrained": False, "config": TINY_VIT}, "image"),
    "hf-convnext": ({"source": "hf", "name": "convnext", "pretrained": False, "config": TINY_CONVNEXT}, "image"),
    "hf-wav2vec2": ({"source": "hf", "name": "wav2vec2", "pretrained": False, "config": TINY_W2V, **AUDIO}, "audio"),
    "hf-wav2vec2-layernorm": (
        {"source": "hf", "name": "wav2vec2", "pretrained": False, "config": {**TINY_W2V, "feat_extract_norm": "layer", "do_stable_layer_norm": True}, **AUDIO},
        "audio",
    ),
    "hf-hubert": ({"source": "hf", "name": "hubert", "pretrained": False, "config": TINY_W2V, **AUDIO}, "audio"),
    "hf-whisper": ({"source": "hf", "name": "whisper", "pretrained": False, "config": TINY_WHISPER, **AUDIO}, "audio"),
    "hf-ast": ({"source": "hf", "name": "audio-spectrogram-transformer", "pretrained": False, "config": TINY_AST, **AUDIO}, "audio"),
    "timm-resnet18": ({"source": "timm", "name": "resnet18", "pretrained": False, "image_size": 32}, "image"),
    "timm-vit": ({"source": "timm", "name": "vit_tiny_patch16_224", "pretrained": False, "config": TINY_TIMM_VIT}, "image"),
    "torchvision-resnet18": ({"source": "torchvision", "name": "resnet18", "pretrained": False, "image_size": 32}, "image"),
    "torchvision-mobilenet": ({"source": "torchvision", "name": "mobilenet_v3_small", "pretrained": False, "image_size": 32}, "image"),
    "torchaudio-wav2vec2": ({"source": "torchaudio", "name": "WAV2VEC2_BASE", "pretrained": False, "config": TINY_TORCHAUDIO, **AUDIO}, "audio"),
    "torchaudio-hubert-asr": (
        {"source": "torchaudio", "name": "HUBERT_ASR_LARGE", "pretrained": False, "config": {**TINY_TORCHAUDIO, "encoder_layer_norm_first": True}, **AUDIO},
        "audio",
    ),
    "torchaudio-wavlm": ({"source": "torchaudio", "name": "WAVLM_BASE", "pretrained": False, "config": TINY_TORCHAUDIO, **AUDIO}, "audio"),
    "builtin-mel-cnn": ({"source": "builtin", "name": "mel-cnn", "config": {"n_mels": 16, "width": 32, "channels": 4}, **AUDIO}, "audio"),
    "builtin-mlp": ({"source": "builtin", "name": "mlp", "config": {"num_features": 3, "width": 16}}, "numeric"),
}
VARIABLE_LENGTH = {
    "hf-bert",
    "hf-wav2vec2",
    "hf-wav2vec2-layernorm",
    "hf-hubert",
    "hf-whisper",
    "torchaudio-wav2vec2",
    "torchaudio-hubert-asr",
    "torchaudio-wavlm",
    "builtin-mel-cnn",
}
PADDING_SENSITIVE: dict[str, str] = {}


def build(key: str, **changes: Any) -> Encoder:
    spec, modality = SPECS[key]
    return build_encoder({**spec, **changes}, modality)


@functools.cache
def built(key: str) -> Encoder:
    """One shared encoder per source, in eval mode, for the tests that do not change it."""
    torch.manual_seed(0)
    return build(key).eval()


def raw_inputs(modality: str, folder: Path) -> list[Any]:
    """Two raw samples per modality; the first is the shorter one."""
    rng = np.random.default_rng(0)
    if modality == "text":
        return ["short", "a much longer sentence, with many more words in it"]
    if modality == "image":
        from PIL import Image

        png = folder / "picture.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(png)
        return [rng.integers(0, 255, (40, 30, 3), dtype=np.uint8), png]
    if modality == "audio":
        import soundfile as sf

        wav = folder / "clip.wav"
        t = np.arange(int(22050 * 0.8)) / 22050
        sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32), 22050)
        stereo = (0.2 * rng.normal(size=(int(8000 * 0.3), 2))).astype(np.float32)  # (frames, channels)
        return [(stereo, 8000), wav]
    return [[1.0, 2.0, None], [0.5, -1.0, 3.0]]


def check_output(enc: Encoder, out: Any, batch_size: int) -> None:
    b, t, d = out.tokens.shape
    assert (b, d) == (batch_size, enc.output_dim) and t >= 1
    assert out.mask.shape == (b, t) and out.mask.dtype == torch.bool
    assert out.mask.any(1).all()
    assert out.pooled.shape == (b, enc.output_dim)
    assert torch.isfinite(out.tokens[out.mask]).all() and torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("key", list(SPECS))
def test_shapes_masks_and_padding(key: str, tmp_path: Path) -> None:
    enc = built(key)
    modality = SPECS[key][1]
    assert enc.modality == modality
    pre = enc.preprocessor
    samples = [pre(x) for x in raw_inputs(modality, tmp_path)]
    with torch.no_grad():
        both = enc(pre.collate(samples))
        alone = enc(pre.collate(samples[:1]))
        with_placeholder = enc(pre.collate([samples[1], pre.placeholder()]))
    check_output(enc, both, 2)
    check_output(enc, alone, 1)
    check_output(enc, with_placeholder, 2)
    if key in VARIABLE_LENGTH:
        assert both.mask[0].sum() < both.mask[1].sum(), "the shorter input should have fewer valid tokens"
    if modality in ("text", "audio") and key not in PADDING_SENSITIVE:
        torch.testing.assert_close(alone.pooled[0], both.pooled[0], atol=1e-4, rtol=1e-4)
        n = int(alone.mask[0].sum())
        torch.testing.assert_close(alone.tokens[0, :n], both.tokens[0, :n], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("key", list(SPECS))
def test_preprocessor_pickles(key: str, tmp_path: Path) -> None:
    enc = built(key)
    item = raw_inputs(SPECS[key][1], tmp_path)[1]
    clone = pickle.loads(pickle.dumps(enc.preprocessor))
    a, b = enc.preprocessor(item), clone(item)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize("key", list(SPECS))
def test_freeze_all(key: str) -> None:
    enc = build(key, freeze="all")
    assert enc.is_frozen and not any(p.requires_grad for p in enc.parameters())


@pytest.mark.parametrize("key", [k for k in SPECS if k != "builtin-mlp"])
def test_freeze_one_block(key: str) -> None:
    enc = build(key, freeze=1)
    groups = enc.layer_groups()
    assert len(groups) >= 3, "expected [stem, block 0, block 1, ...]"
    frozen = {id(p) for g in groups[:2] for p in g.parameters()}
    assert frozen and all(not p.requires_grad for g in groups[:2] for p in g.parameters())
    later = [p for g in groups[2:] for p in g.parameters() if id(p) not in frozen]
    assert later and all(p.requires_grad for p in later)
    # Nothing outside the first two groups is frozen (HF freezes some buffers-as-params itself,
    # e.g. Whisper's sinusoidal position table, which sits in the stem).
    assert all(p.requires_grad for p in enc.parameters() if id(p) not in frozen)
    assert not enc.is_frozen


@pytest.mark.parametrize("key", list(SPECS))
def test_save_assets_and_rebuild(key: str, tmp_path: Path) -> None:
    enc = built(key)
    folder = tmp_path / "assets"
    overrides = enc.save_assets(folder)
    spec, modality = SPECS[key]
    new_spec = {**spec, **overrides}
    new_spec["name"] = str(new_spec["name"]).replace("{assets}", str(folder))
    EncoderSpec.model_validate(new_spec)
    rebuilt = build_encoder(new_spec, modality).eval()
    sd_a, sd_b = enc.state_dict(), rebuilt.state_dict()
    assert list(sd_a) == list(sd_b)
    assert all(sd_a[k].shape == sd_b[k].shape for k in sd_a)
    assert rebuilt.output_dim == enc.output_dim
    rebuilt.load_state_dict(sd_a)
    items = raw_inputs(modality, tmp_path)
    batch_a = enc.preprocessor.collate([enc.preprocessor(x) for x in items])
    batch_b = rebuilt.preprocessor.collate([rebuilt.preprocessor(x) for x in items])
    assert batch_a.keys() == batch_b.keys()
    for k in batch_a:
        torch.testing.assert_close(batch_a[k], batch_b[k], equal_nan=True)
    with torch.no_grad():
        torch.testing.assert_close(enc(batch_a).pooled, rebuilt(batch_b).pooled)


# -- source-specific ----------------------------------------------------------------------------
def test_whisper_window_is_trimmed(tmp_path: Path) -> None:
    from mmagent.encoders.audio import trim_whisper_positions

    enc = build("hf-whisper", max_seconds=1.0)
    assert enc.backbone.embed_positions.num_embeddings == 50 == enc.backbone.config.max_source_positions
    sample = enc.preprocessor(raw_inputs("audio", tmp_path)[1])  # 0.8 s
    assert sample["input_features"].shape == (TINY_WHISPER["num_mel_bins"], 100)
    assert int(sample["num_frames"]) == 40
    assert trim_whisper_positions(enc.backbone, 5.0) == 50  # never lengthens
    assert trim_whisper_positions(enc.backbone, 0.5) == 25
    assert enc.backbone.embed_positions.weight.shape == (25, TINY_WHISPER["d_model"])


def test_masked_group_norm_matches_plain_model_without_padding(tmp_path: Path) -> None:
    enc = build("hf-wav2vec2").eval()
    from mmagent.encoders.audio import MaskedGroupNorm

    assert isinstance(enc.backbone.feature_extractor.conv_layers[0].layer_norm, MaskedGroupNorm)
    assert not any("_group_norm" in k for k in enc.state_dict())
    batch = enc.preprocessor.collate([enc.preprocessor(raw_inputs("audio", tmp_path)[1])])
    with torch.no_grad():
        ours = enc(batch).tokens
        plain = enc.backbone(input_values=batch["input_values"]).last_hidden_state
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)


def test_hf_vit_at_another_resolution(tmp_path: Path) -> None:
    enc = build("hf-vit", image_size=48).eval()
    batch = enc.preprocessor.collate([enc.preprocessor(x) for x in raw_inputs("image", tmp_path)])
    assert batch["pixel_values"].shape == (2, 3, 48, 48)
    with torch.no_grad():
        out = enc(batch)
    assert out.tokens.shape == (2, 1 + (48 // 8) ** 2, 32)


def test_image_preprocessing_follows_the_model(tmp_path: Path) -> None:
    timm_vit = build("timm-vit")
    assert timm_vit.preprocessor.size == 32 and timm_vit.preprocessor.mean == (0.5, 0.5, 0.5)
    tv = build("torchvision-resnet18")
    assert tv.preprocessor.size == 32 and tv.preprocessor.mean == (0.485, 0.456, 0.406)
    hf_vit = build("hf-vit")
    assert hf_vit.preprocessor.size == 32 and hf_vit.preprocessor.std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        out = timm_vit.eval()(timm_vit.preprocessor.collate([timm_vit.preprocessor(raw_inputs("image", tmp_path)[0])]))
    assert out.tokens.shape == (1, (32 // 8) ** 2, 32)  # patch tokens, CLS left out


def test_audio_sample_rates() -> None:
    assert build("hf-wav2vec2").preprocessor.sample_rate == 16000
    assert build("torchaudio-wav2vec2").preprocessor.sample_rate == 16000
    with pytest.raises(ValueError, match="16000 Hz"):
        build("hf-hubert", sample_rate=8000)
    with pytest.raises(ValueError, match="unknown config"):
        build("torchaudio-wav2vec2", config={"nope": 1})
    with pytest.raises(ValueError, match="not a wav2vec2-family bundle"):
        build_encoder({"source": "torchaudio", "name": "NOPE", "pretrained": False}, "audio")


def test_encoders_survive_deepcopy() -> None:
    enc = build("torchaudio-wav2vec2")
    clone = copy.deepcopy(enc)
    assert clone._group_norms[0] is clone.model.feature_extractor.conv_layers[0].layer_norm


# -- the pretrained code paths, fed from local files -------------------------------------------
def test_hf_pretrained_image_and_audio_from_local_folders(tmp_path: Path) -> None:
    """``pretrained: true`` with a local folder runs ``from_pretrained`` + the model's own
    image processor / feature extractor, exactly as with a hub id."""
    from transformers import AutoConfig, AutoModel, ViTImageProcessor, Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

    vit = tmp_path / "vit"
    AutoModel.from_config(AutoConfig.for_model("vit", **TINY_VIT)).save_pretrained(vit)
    ViTImageProcessor(size={"height": 40, "width": 40}, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(vit)
    enc = build_encoder({"source": "hf", "name": str(vit)}, "image").eval()
    assert enc.preprocessor.size == 40 and enc.preprocessor.mean == (0.1, 0.2, 0.3) and enc.preprocessor.std == (0.4, 0.5, 0.6)
    with torch.no_grad():  # 40 px on a 32 px ViT: position embeddings interpolated
        out = enc(enc.preprocessor.collate([enc.preprocessor(raw_inputs("image", tmp_path)[1])]))
    assert out.tokens.shape == (1, 1 + 5 * 5, 32)
    assets = tmp_path / "vit-assets"
    overrides = enc.save_assets(assets)
    again = build_encoder({"source": "hf", "name": overrides["name"].replace("{assets}", str(assets)), "pretrained": False}, "image")
    assert (again.preprocessor.size, again.preprocessor.mean, again.preprocessor.std) == (40, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))

    w2v = tmp_path / "w2v"
    AutoModel.from_config(AutoConfig.for_model("wav2vec2", **TINY_W2V)).save_pretrained(w2v)
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(w2v)
    enc = build_encoder({"source": "hf", "name": str(w2v), "max_seconds": 1.0}, "audio")
    assert enc.preprocessor.sample_rate == 16000 and enc.preprocessor.normalize is False

    whisper = tmp_path / "whisper"
    decoder = {"decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 37, "vocab_size": 64, "max_target_positions": 16}
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1}
    full = AutoModel.from_config(AutoConfig.for_model("whisper", **TINY_WHISPER, **decoder, **ids))
    full.save_pretrained(whisper)
    WhisperFeatureExtractor(feature_size=TINY_WHISPER["num_mel_bins"]).save_pretrained(whisper)
    enc = build_encoder({"source": "hf", "name": str(whisper), "max_seconds": 0.5}, "audio").eval()
    assert enc.backbone.embed_positions.num_embeddings == 25
    torch.testing.assert_close(enc.backbone.embed_positions.weight, full.encoder.embed_positions.weight[:25])
    torch.testing.assert_close(enc.backbone.layers[0].fc1.weight, full.encoder.layers[0].fc1.weight)
    with torch.no_grad():
        out = enc(enc.preprocessor.collate([enc.preprocessor(x) for x in raw_inputs("audio", tmp_path)]))
    assert out.mask.sum(1).tolist() == [15, 25]  # 0.3 s -> 15 frames; 0.8 s cropped to the 0.5 s window


def test_timm_pretrained_from_a_local_file(tmp_path: Path) -> None:
    """``pretrained: true`` through timm's loader (classifier dropped), weights from a local file."""
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_TIMM_VIT)  # with its classifier
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    spec = {"source": "timm", "name": "vit_tiny_patch16_224", "pretrained": True, "config": {**TINY_TIMM_VIT, "pretrained_cfg_overlay": {"file": str(weights)}}}
    enc = build_encoder(spec, "image")
    torch.testing.assert_close(enc.model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert not any(k.startswith("head.") for k in enc.state_dict() if enc.state_dict()[k].numel() > 0)


TINY_HF_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"}
CNNS = {
    "timm": {"source": "timm", "name": "resnet18", "pretrained": False, "image_size": 32},
    "torchvision": {"source": "torchvision", "name": "resnet18", "pretrained": False, "image_size": 32},
    "hf": {"source": "hf", "name": "resnet", "pretrained": False, "config": TINY_HF_RESNET, "image_size": 32},
}


@pytest.mark.parametrize("source", list(CNNS))
def test_freeze_n_freezes_batchnorm_statistics(source: str) -> None:
    """``freeze: 1``: BatchNorm layers of the stem keep their running statistics through a training
    step (even after ``train()`` on a parent module); those of the last stage keep learning them."""
    torch.manual_seed(0)
    enc = build_encoder({**CNNS[source], "freeze": 1}, "image")
    norms = [(n, m) for n, m in enc.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    (stem_name, stem), (last_name, last) = norms[0], norms[-1]
    assert not any(p.requires_grad for p in stem.parameters()) and all(p.requires_grad for p in last.parameters())
    torch.nn.ModuleDict({"encoder": enc}).train()  # as the trainer does, through the whole model
    assert enc.training and not stem.training and last.training, (stem_name, last_name)
    before = {n: copy.deepcopy(m.state_dict()) for n, m in ((stem_name, stem), (last_name, last))}
    optimizer = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.1)
    out = enc({"pixel_values": torch.randn(4, 3, 32, 32)})
    out.pooled.pow(2).mean().backward()
    optimizer.step()
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(stem.state_dict()[key], before[stem_name][key]), (stem_name, key)
        assert not torch.equal(last.state_dict()[key], before[last_name][key]), (last_name, key)
    enc.eval()
    enc.train()  # still frozen after a round trip
    assert not stem.training and last.training


def test_freeze_none_keeps_batchnorm_training() -> None:
    enc = build_encoder(CNNS["torchvision"], "image").train()
    assert all(m.training for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize(
    ("spec", "modality", "match"),
    [
        ({"source": "timm", "name": "resnet19", "pretrained": False}, "image", r"encoder\.name: unknown timm model name 'resnet19'; did you mean 'resnet18'"),
        (
            {"source": "torchvision", "name": "resnet181", "pretrained": False},
            "image",
            r"encoder\.name: unknown torchvision model name 'resnet181'; did you mean 'resnet18'",
        ),
        ({"source": "hf", "name": "bertt", "pretrained": False}, "text", r"encoder\.name: unknown hf model 'bertt'; did you mean 'bert'"),
        ({"source": "tim", "name": "resnet18"}, "image", r"encoder\.source: unknown encoder source 'tim'; did you mean 'timm'\? \(available: builtin, hf"),
        (
            {"source": "builtin", "name": "mlpp"},
            "numeric",
            r"encoder\.name: unknown builtin encoder name 'mlpp'; did you mean 'mlp'\? \(available: hash-embedding, mel-cnn, mlp\)",
        ),
    ],
)
def test_unknown_names_are_clear_errors(spec: dict[str, Any], modality: str, match: str) -> None:
    from mmagent.encoders import EncoderError

    with pytest.raises(EncoderError, match=match) as info:
        build_encoder(spec, modality)
    assert isinstance(info.value, ValueError)  # the CLI reports ValueErrors without a traceback


def test_saved_model_naming_an_unknown_encoder_is_a_clear_error(tmp_path: Path) -> None:
    import json

    from mmagent.encoders import EncoderError
    from mmagent.model import MultimodalModel
    from mmagent.runs import write_checksums
    from mmagent.specs import ModelSpec

    spec = ModelSpec.model_validate({
        "inputs": [{"column": ["x1", "x2"], "modality": "numeric", "encoder": {"source": "builtin", "name": "mlp", "config": {"num_features": 2}}}],
        "targets": [{"column": "y", "labels": ["a", "b"]}],
    })  # fmt: skip
    MultimodalModel(spec).save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "model.json").read_text())
    saved["inputs"][0]["encoder"]["name"] = "mpl"
    (tmp_path / "model" / "model.json").write_text(json.dumps(saved))
    write_checksums(tmp_path / "model")  # as saved by an install that had this encoder: intact files
    with pytest.raises(EncoderError, match=r"unknown builtin encoder name 'mpl'; did you mean 'mlp'"):
        MultimodalModel.load(tmp_path / "model")
    saved["inputs"][0]["encoder"].update(source="no-such-source", name="mlp")
    (tmp_path / "model" / "model.json").write_text(json.dumps(saved))
    write_checksums(tmp_path / "model")
    with pytest.raises(EncoderError, match=r"unknown encoder source 'no-such-source'"):
        MultimodalModel.load(tmp_path / "model")
