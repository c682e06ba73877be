"""torchaudio speech encoders (``source: torchaudio``).

``name`` is a ``torchaudio.pipelines`` wav2vec2-family bundle: ``WAV2VEC2_BASE``, ``HUBERT_BASE``,
``WAVLM_BASE_PLUS``, ``WAV2VEC2_XLSR53``, ASR bundles (their CTC head is dropped)... Pretrained:
``bundle.get_model()`` (downloads through ``torch.hub`` the first time). ``pretrained: false``
builds the same architecture from the bundle's parameters with ``config`` overrides applied (tiny
test models: ``encoder_num_layers``, ``encoder_embed_dim``, ``extractor_conv_layer_config``...);
with pretrained weights ``config`` may only change what leaves the weights' shapes alone (dropouts,
``encoder_layer_drop``).

Input: the padded waveform at ``bundle.sample_rate`` (normalised per clip when the bundle's model
was trained on normalised audio). Tokens: the transformer's final output (``encoder`` after the
conv feature extractor: ``extract_features``' last layer plus the transformer's closing layer
norm, which ``extract_features`` leaves out); the mask comes from the output lengths the model returns. GroupNorm feature
extractors (the ``*_BASE`` models) use :class:`~mmagent.encoders.audio.MaskedGroupNorm`, so a clip's
output does not depend on the clips padded next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.encoders.audio import MaskedGroupNorm, conv_output_lengths, use_masked_group_norm
from mmagent.encoders.base import Encoder, EncoderOutput, pool, register_source
from mmagent.encoders.preprocessors import WaveformPreprocessor
from mmagent.specs import EncoderSpec


def _bundle(name: str) -> Any:
    import torchaudio.pipelines as pipelines

    bundle = getattr(pipelines, name, None)
    if bundle is None or not hasattr(bundle, "_params") or not hasattr(bundle, "get_model"):
        names = sorted(n for n in dir(pipelines) if n.isupper() and hasattr(getattr(pipelines, n), "_params"))
        raise ValueError(f"torchaudio:{name} is not a wav2vec2-family bundle; available: {', '.join(names)}")
    return bundle


def _factory(bundle: Any) -> Any:
    from torchaudio.models import wav2vec2_model, wavlm_model

    return wavlm_model if getattr(bundle, "_model_type", "Wav2Vec2") == "WavLM" else wav2vec2_model


def _unwrap(model: nn.Module) -> nn.Module:
    """``bundle.get_model()`` may wrap the model (input layer norm over the whole padded batch,
    log-softmax); we normalise per clip in the preprocessor, so take the bare model."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "feature_extractor") else model


class TorchaudioEncoder(Encoder):
    modality = "audio"

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        bundle = _bundle(spec.name)
        params = dict(bundle._params)
        unknown = set(spec.config) - set(params)
        if unknown:
            raise ValueError(f"torchaudio:{spec.name}: unknown config key(s) {sorted(unknown)}; allowed: {sorted(params)}")
        factory = _factory(bundle)
        if spec.pretrained:
            model = _unwrap(bundle.get_model())
            if spec.config:  # e.g. other dropouts: rebuild, then load the pretrained weights
                rebuilt = factory(**{**params, **spec.config})
                rebuilt.load_state_dict(model.state_dict())
                model = rebuilt
        else:
            model = factory(**{**params, **spec.config})
        model.aux = None  # the ASR bundles' CTC head: not part of an encoder
        self.model = model
        self.is_wavlm = getattr(bundle, "_model_type", "Wav2Vec2") == "WavLM"
        rate = int(bundle.sample_rate)
        if spec.sample_rate is not None and spec.sample_rate != rate:
            raise ValueError(f"torchaudio:{spec.name} expects {rate} Hz audio; leave sample_rate unset or set it to {rate}")
        self.preprocessor = WaveformPreprocessor(rate, spec.max_seconds, normalize=bool(getattr(bundle, "_normalize_waveform", False)))
        self.output_dim = int(model.encoder.feature_projection.projection.out_features)
        first = model.feature_extractor.conv_layers[0]
        norm = use_masked_group_norm(first, "layer_norm")
        self._group_norms: list[MaskedGroupNorm] = [norm] if norm is not None else []  # plain list: not a submodule twice
        self._first_conv = (int(first.conv.kernel_size[0]), int(first.conv.stride[0]))

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        waves, sample_mask = batch["input_values"], batch["input_values_mask"]
        lengths = sample_mask.sum(-1).to(waves.device)
        for norm in self._group_norms:
            norm.valid_lengths = conv_output_lengths(lengths, *self._first_conv)
        try:
            features, out_lengths = self.model.feature_extractor(waves, lengths)
        finally:
            for norm in self._group_norms:
                norm.valid_lengths = None
        mask = torch.arange(features.shape[1], device=features.device)[None, :] < out_lengths[:, None]
        if self.is_wavlm:
            tokens = self._wavlm_encoder(features, mask)
        else:
            tokens = self.model.encoder(features, out_lengths)
        return EncoderOutput(tokens, mask, pool(tokens, mask, self.spec.pooling))

    def _wavlm_encoder(self, features: Tensor, mask: Tensor) -> Tensor:
        """``encoder(features, lengths)`` for WavLM, whose attention takes padding only as a
        ``key_padding_mask`` (torchaudio's ``Encoder.forward`` passes an attention mask it rejects)."""
        encoder, transformer = self.model.encoder, self.model.encoder.transformer
        padding = ~mask
        x = encoder.feature_projection(features).masked_fill(padding.unsqueeze(-1), 0.0)
        key_padding = torch.zeros(padding.shape, dtype=x.dtype, device=x.device).masked_fill(padding, float("-inf"))
        x = transformer._preprocess(x)
        position_bias = None
        for layer in transformer.layers:
            if not (self.training and torch.rand(1).item() <= transformer.layer_drop):
                x, position_bias = layer(x, None, position_bias=position_bias, key_padding_mask=key_padding)
        if not transformer.layer_norm_first:
            x = transformer.layer_norm(x)
        return x

    def layer_groups(self) -> list[nn.Module]:
        encoder, transformer = self.model.encoder, self.model.encoder.transformer
        stem: list[nn.Module] = [self.model.feature_extractor, encoder.feature_projection, transformer.pos_conv_embed]
        if getattr(transformer, "layer_norm_first", False):
            stem.append(transformer.layer_norm)  # torchaudio applies it before block 0 in this mode
        return [nn.ModuleList(stem), *transformer.layers]

    def save_assets(self, folder: Path) -> dict[str, Any]:
        # The bundle's parameters + spec.config rebuild the architecture offline.
        return {"pretrained": False}


@register_source("torchaudio")
def build_torchaudio(spec: EncoderSpec) -> Encoder:
    if spec.modality not in (None, "audio"):
        raise ValueError(f"torchaudio:{spec.name} encodes audio, not {spec.modality}")
    return TorchaudioEncoder(spec)
