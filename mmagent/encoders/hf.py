"""Hugging Face transformers encoders (``source: hf``), for text, image and audio.

``name`` is a hub id, a local model folder, or — with ``pretrained: false`` — a bare model type
(``bert``, ``vit``, ``wav2vec2``, ``whisper``...) built from ``config`` overrides; that is how the
tests build tiny random models offline. ``trust_remote_code`` is never set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.encoders.base import Encoder, EncoderOutput, EncoderSpec, pool, register_source
from mmagent.encoders.preprocessors import ByteTokenizer, TextPreprocessor

ASSETS = "{assets}"  # placeholder the model loader replaces with the saved assets folder


def is_model_type(name: str) -> bool:
    from transformers import CONFIG_MAPPING

    return name in CONFIG_MAPPING


def load_hf_backbone(spec: EncoderSpec) -> nn.Module:
    """AutoModel from the hub/folder (pretrained) or from a config (random init)."""
    from transformers import AutoConfig, AutoModel

    if spec.pretrained:
        model = AutoModel.from_pretrained(spec.name, trust_remote_code=False, **spec.config)
    else:
        if is_model_type(spec.name):
            config = AutoConfig.for_model(spec.name, **spec.config)
        else:
            config = AutoConfig.from_pretrained(spec.name, trust_remote_code=False, **spec.config)
        model = AutoModel.from_config(config)
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()  # T5 / Whisper / BART: the encoder half is what we need
    return model


def hf_layer_groups(model: nn.Module) -> list[nn.Module]:
    """[embeddings..., block 0, block 1, ...]: the largest ModuleList is taken as the block stack;
    top-level modules named like embeddings / feature extractors / stem convs go first."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return [model]
    blocks = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    stem_words = ("embed", "feature_extractor", "feature_projection", "conv1", "conv2", "patch", "stem", "masked_spec")
    stem = [m for n, m in model.named_children() if any(w in n for w in stem_words) and m is not blocks]
    for n, m in model.named_children():  # embeddings nested one level down (e.g. ViT's .embeddings)
        if hasattr(m, "embeddings") and m is not blocks:
            stem.append(m.embeddings)
    return [nn.ModuleList(stem), *blocks]


def hf_output_dim(config: Any) -> int:
    for key in ("hidden_size", "d_model"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise ValueError(f"cannot tell the output width of {type(config).__name__}")


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
