"""Hugging Face transformers encoders (``source: hf``), for text, image and audio.

``name`` is a hub id, a local model folder, or — with ``pretrained: false`` — a bare model type
(``bert``, ``vit``, ``wav2vec2``, ``whisper``...) built from ``config`` overrides; that is how the
tests build tiny random models offline. ``trust_remote_code`` is never set.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.encoders.audio import MaskedGroupNorm, WhisperFeaturesPreprocessor, conv_output_lengths, trim_whisper_positions, use_masked_group_norm
from mmagent.encoders.base import Encoder, EncoderOutput, pool, register_source
from mmagent.encoders.hf_backbone import hf_layer_groups, hf_output_dim, is_model_type, load_hf_backbone
from mmagent.encoders.preprocessors import ByteTokenizer, ImagePreprocessor, TextPreprocessor, WaveformPreprocessor
from mmagent.specs import EncoderSpec

ASSETS = "{assets}"  # placeholder the model loader replaces with the saved assets folder


class HFEncoderBase(Encoder):
    """Shared by the HF text/image/audio encoders: backbone, freezing groups, assets."""

    def __init__(self, spec: EncoderSpec, backbone: nn.Module | None = None) -> None:
        super().__init__(spec)
        self.backbone = backbone if backbone is not None else load_hf_backbone(spec)
        self.output_dim = hf_output_dim(self.backbone.config)

    def layer_groups(self) -> list[nn.Module]:
        return hf_layer_groups(self.backbone)

    def save_assets(self, folder: Path) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.config.save_pretrained(str(folder))
        self.preprocessor.save(folder)
        return {"name": ASSETS, "pretrained": False}


class HFTextEncoder(HFEncoderBase):
    modality = "text"

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        self.preprocessor = TextPreprocessor(self._tokenizer(spec), spec.max_length)

    def _tokenizer(self, spec: EncoderSpec) -> Any:
        folder = Path(spec.name)
        no_saved_tokenizer = folder.is_dir() and not (folder / "tokenizer_config.json").exists()
        if not spec.pretrained and (is_model_type(spec.name) or no_saved_tokenizer):
            vocab = getattr(self.backbone.config, "vocab_size", 0)
            if vocab < ByteTokenizer.vocab_size:
                raise ValueError(f"hf:{spec.name} built from config needs vocab_size >= {ByteTokenizer.vocab_size} for the byte tokenizer")
            return ByteTokenizer()
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(spec.name, trust_remote_code=False)

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        mask = batch["attention_mask"]
        out = self.backbone(input_ids=batch["input_ids"], attention_mask=mask)
        tokens = out.last_hidden_state
        mask = mask.bool()
        return EncoderOutput(tokens, mask, pool(tokens, mask, self.spec.pooling))


_HF_BY_MODALITY: dict[str, type[Encoder]] = {"text": HFTextEncoder}


def register_hf_modality(modality: str, cls: type[Encoder]) -> None:
    _HF_BY_MODALITY[modality] = cls


@register_source("hf")
def build_hf(spec: EncoderSpec) -> Encoder:
    if spec.modality is None:
        raise ValueError(f"hf:{spec.name}: set the modality (text, image or audio)")
    if spec.modality not in _HF_BY_MODALITY:
        raise ValueError(f"source hf does not serve {spec.modality!r}; it serves {sorted(_HF_BY_MODALITY)}")
    return _HF_BY_MODALITY[spec.modality](spec)


# -- image ----------------------------------------------------------------------------------
def _side(size: Any) -> int | None:
    """An image processor's ``size`` / ``crop_size`` (int, dict or SizeDict) -> one side in pixels."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    for key in ("height", "shortest_edge", "width", "longest_edge"):
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def image_processor_geometry(processor: Any) -> tuple[int | None, tuple[float, ...] | None, tuple[float, ...] | None]:
    """(side, mean, std) an HF image processor feeds its model (crop size when it center-crops)."""
    side = _side(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else None
    side = side or _side(getattr(processor, "size", None))
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    as_rgb = lambda v: None if v is None else tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))  # noqa: E731
    return side, as_rgb(mean), as_rgb(std)


def _has_saved(name: str, filename: str) -> bool:
    return Path(name).is_dir() and (Path(name) / filename).exists()


class HFImageEncoder(HFEncoderBase):
    """ViT, DeiT, BEiT, Swin, ConvNeXt, ResNet, ... through ``AutoModel``.

    Tokens: ViT-style models give their token sequence (CLS first where the model has one);
    CNN-style models give a (B, C, H, W) map, flattened to H*W tokens. Pooled: ``spec.pooling``
    over the tokens; for CNN maps ``mean``/``cls`` use the model's own pooler when it has one
    (e.g. ConvNeXt's final layer norm over the averaged map).
    Preprocessing: size / mean / std from the model's ``AutoImageProcessor`` when pretrained (or
    when the folder holds one), else ``spec.image_size`` / ``config.image_size`` with mean = std = 0.5.
    """

    modality = "image"

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        self.image_processor = None
        side, mean, std = None, None, None
        if spec.pretrained or _has_saved(spec.name, "preprocessor_config.json"):
            from transformers import AutoImageProcessor

            try:
                self.image_processor = AutoImageProcessor.from_pretrained(spec.name, trust_remote_code=False)
            except OSError:  # a checkpoint without preprocessor_config.json: fall back to the defaults below
                self.image_processor = None
            if self.image_processor is not None:
                side, mean, std = image_processor_geometry(self.image_processor)
        config = self.backbone.config
        config_side = getattr(config, "image_size", None)
        if isinstance(config_side, (list, tuple)):
            config_side = int(config_side[-1]) if config_side else None
        elif not isinstance(config_side, int):
            config_side = _side(config_side) if isinstance(config_side, dict) else None
        self.image_size = int(spec.image_size or side or config_side or 224)
        self.preprocessor = ImagePreprocessor(self.image_size, mean or (0.5, 0.5, 0.5), std or (0.5, 0.5, 0.5))
        # ViT-style models with fixed position tables need interpolation at another resolution.
        accepts = "interpolate_pos_encoding" in inspect.signature(self.backbone.forward).parameters
        self._interpolate = bool(accepts and config_side is not None and config_side != self.image_size)

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        out = self.backbone(pixel_values=batch["pixel_values"], **kwargs)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # (B, C, H, W) feature map -> H*W tokens
            tokens = hidden.flatten(2).transpose(1, 2)
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            pooler = getattr(out, "pooler_output", None)
            if self.spec.pooling != "max" and pooler is not None and pooler.flatten(1).shape[-1] == tokens.shape[-1]:
                return EncoderOutput(tokens, mask, pooler.flatten(1))
            how = "mean" if self.spec.pooling == "cls" else self.spec.pooling
            return EncoderOutput(tokens, mask, pool(tokens, mask, how))
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return EncoderOutput(hidden, mask, pool(hidden, mask, self.spec.pooling))

    def save_assets(self, folder: Path) -> dict[str, Any]:
        overrides = super().save_assets(folder)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(str(folder))
        return overrides


# -- audio ----------------------------------------------------------------------------------
class HFWaveformPreprocessor(WaveformPreprocessor):
    """Raw waveform (``input_values``, padded in ``collate``), as wav2vec2 / HuBERT / WavLM take it.
    Keeps the HF feature extractor only to save it with the model."""

    def __init__(self, feature_extractor: Any, sample_rate: int, max_seconds: float) -> None:
        super().__init__(sample_rate, max_seconds, normalize=bool(getattr(feature_extractor, "do_normalize", True)))
        self.feature_extractor = feature_extractor

    def save(self, folder: Any) -> None:
        self.feature_extractor.save_pretrained(str(folder))


class HFFeaturesPreprocessor(WaveformPreprocessor):
    """Waveform -> the model's own feature extractor output of fixed shape (e.g. AST's
    (max_length, n_mels) filterbank): ``input_values`` stacked as is."""

    pad_values: dict[str, float] = {}

    def __init__(self, feature_extractor: Any, sample_rate: int, max_seconds: float, input_name: str = "input_values") -> None:
        super().__init__(sample_rate, max_seconds, normalize=False)
        self.pad_values = {}
        self.feature_extractor, self.input_name = feature_extractor, input_name

    def __call__(self, item: Any) -> dict[str, Tensor]:
        return self.features(self.waveform(item))

    def features(self, wave: Tensor) -> dict[str, Tensor]:
        out = self.feature_extractor(wave.numpy(), sampling_rate=self.sample_rate, return_tensors="np")
        return {"input_values": torch.from_numpy(out[self.input_name][0]).float()}

    def placeholder(self) -> dict[str, Tensor]:
        return self.features(torch.zeros(self.sample_rate // 10))

    def save(self, folder: Any) -> None:
        self.feature_extractor.save_pretrained(str(folder))


def _default_feature_extractor(config: Any) -> Any:
    """A feature extractor for a model built from a bare config (no hub files)."""
    model_type = getattr(config, "model_type", "")
    if model_type == "whisper":
        from transformers import WhisperFeatureExtractor

        return WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    if model_type == "audio-spectrogram-transformer":
        from transformers import ASTFeatureExtractor

        return ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length)
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor()  # 16 kHz, zero-mean unit-variance waveforms


def load_whisper_encoder(spec: EncoderSpec) -> nn.Module | None:
    """For ``pretrained: false`` Whisper, build only the encoder (no decoder to construct)."""
    if spec.pretrained:
        return None
    from transformers import AutoConfig

    if is_model_type(spec.name):
        config = AutoConfig.for_model(spec.name, **spec.config)
    elif _has_saved(spec.name, "config.json"):
        config = AutoConfig.from_pretrained(spec.name, trust_remote_code=False, **spec.config)
    else:
        return None
    if config.model_type != "whisper":
        return None
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoder(config)


class HFAudioEncoder(HFEncoderBase):
    """Speech / audio models through ``AutoModel``, in three families:

    - waveform models (wav2vec2, HuBERT, WavLM, data2vec-audio): padded raw waveform
      ``input_values`` + mask; the output frame mask comes from the model's own
      ``_get_feat_extract_output_lengths``. GroupNorm feature encoders (the ``-base`` models) get
      :class:`MaskedGroupNorm`, so a clip's output does not depend on what it is batched with;
    - Whisper: log-mel ``input_features`` computed in the preprocessor; the encoder is trimmed to
      ``max_seconds`` (see :func:`trim_whisper_positions`) instead of Whisper's fixed 30 s window;
      the mask marks frames of real audio;
    - other feature-extractor models with a fixed input shape (AST): all tokens are valid.

    The sample rate is the feature extractor's (16 kHz for all of the above).
    """

    modality = "audio"

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec, backbone=load_whisper_encoder(spec))
        config = self.backbone.config
        fe = None
        if spec.pretrained or _has_saved(spec.name, "preprocessor_config.json"):
            from transformers import AutoFeatureExtractor

            try:
                fe = AutoFeatureExtractor.from_pretrained(spec.name, trust_remote_code=False)
            except OSError:  # a checkpoint without preprocessor_config.json: the family's default
                fe = None
        if fe is None:
            fe = _default_feature_extractor(config)
        rate = int(getattr(fe, "sampling_rate", 16000))
        if spec.sample_rate is not None and spec.sample_rate != rate:
            raise ValueError(f"hf:{spec.name} expects {rate} Hz audio (its feature extractor's rate); leave sample_rate unset or set it to {rate}")
        self._group_norms: list[MaskedGroupNorm] = []  # a plain list: not registered twice as a submodule
        if getattr(config, "model_type", "") == "whisper":
            self.kind = "whisper"
            positions = trim_whisper_positions(self.backbone, spec.max_seconds, rate, int(fe.hop_length))
            self.preprocessor = WhisperFeaturesPreprocessor(fe, positions)
        elif hasattr(self.backbone, "_get_feat_extract_output_lengths") and hasattr(self.backbone, "feature_extractor"):
            self.kind = "waveform"
            self.preprocessor = HFWaveformPreprocessor(fe, rate, spec.max_seconds)
            conv_layers = getattr(self.backbone.feature_extractor, "conv_layers", None)
            if conv_layers is not None and len(conv_layers) > 0:
                norm = use_masked_group_norm(conv_layers[0], "layer_norm")
                self._group_norms = [norm] if norm is not None else []
                self._first_conv = (int(config.conv_kernel[0]), int(config.conv_stride[0]))
        else:
            self.kind = "features"
            input_name = getattr(self.backbone, "main_input_name", "input_values")
            self.preprocessor = HFFeaturesPreprocessor(fe, rate, spec.max_seconds, input_name)
            self._input_name = input_name

    def layer_groups(self) -> list[nn.Module]:
        model = self.backbone
        encoder = getattr(model, "encoder", None)
        if self.kind == "waveform" and encoder is not None and isinstance(getattr(encoder, "layers", None), nn.ModuleList):
            stem: list[nn.Module] = [model.feature_extractor]
            for owner, name in ((model, "feature_projection"), (encoder, "pos_conv_embed")):
                if isinstance(getattr(owner, name, None), nn.Module):
                    stem.append(getattr(owner, name))
            if not getattr(model.config, "do_stable_layer_norm", False) and isinstance(getattr(encoder, "layer_norm", None), nn.Module):
                stem.append(encoder.layer_norm)  # applied to the embeddings, before block 0
            if isinstance(getattr(model, "masked_spec_embed", None), nn.Parameter):
                stem.append(nn.ParameterList([model.masked_spec_embed]))
            return [nn.ModuleList(stem), *encoder.layers]
        return hf_layer_groups(model)

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        if self.kind == "whisper":
            hidden = self.backbone(input_features=batch["input_features"]).last_hidden_state
            frames = batch["num_frames"].to(hidden.device).clamp(1, hidden.shape[1])
            hidden = hidden[:, : int(frames.max())]  # drop positions that are padding in every sample
            mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]
        elif self.kind == "waveform":
            values, sample_mask = batch["input_values"], batch["input_values_mask"]
            lengths = sample_mask.sum(-1)
            for norm in self._group_norms:
                norm.valid_lengths = conv_output_lengths(lengths, *self._first_conv)
            try:
                hidden = self.backbone(input_values=values, attention_mask=sample_mask.long()).last_hidden_state
            finally:
                for norm in self._group_norms:
                    norm.valid_lengths = None
            frames = self.backbone._get_feat_extract_output_lengths(lengths).to(hidden.device)
            mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]
        else:
            hidden = self.backbone(**{self._input_name: batch["input_values"]}).last_hidden_state
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return EncoderOutput(hidden, mask, pool(hidden, mask, self.spec.pooling))


register_hf_modality("image", HFImageEncoder)
register_hf_modality("audio", HFAudioEncoder)
