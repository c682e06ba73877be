"""Loading a Hugging Face backbone for ``source: hf`` encoders (hub id, local folder, or a bare
model type built from ``config``), with SDPA attention where the model has it, and reading its
layer stack and output width."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from mmagent.encoders.base import EncoderError, unknown_name
from mmagent.specs import EncoderSpec


def is_model_type(name: str) -> bool:
    from transformers import CONFIG_MAPPING

    return name in CONFIG_MAPPING


def not_found(spec: EncoderSpec, error: Exception) -> EncoderError:
    """The name is no local folder, model type or reachable hub model: say so, with close model types."""
    from transformers import CONFIG_MAPPING

    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    base = unknown_name("hf model", spec.name, CONFIG_MAPPING.keys(), listing="not a local folder, a model type or a hub model that can be loaded")
    return EncoderError(f"{base}: {cause}")


def load_hf_backbone(spec: EncoderSpec) -> nn.Module:
    """AutoModel from the hub/folder (pretrained) or from a config (random init)."""
    from transformers import AutoConfig, AutoModel

    try:
        if spec.pretrained:
            model = _with_sdpa(spec, lambda **kw: AutoModel.from_pretrained(spec.name, trust_remote_code=False, **spec.config, **kw))
        else:
            if is_model_type(spec.name):
                config = AutoConfig.for_model(spec.name, **spec.config)
            else:
                config = AutoConfig.from_pretrained(spec.name, trust_remote_code=False, **spec.config)
            # a fresh copy per attempt: a refused request leaves its choice in the config it was given
            model = _with_sdpa(spec, lambda **kw: AutoModel.from_config(copy.deepcopy(config), **kw))
    except OSError as e:  # transformers' "not a local folder and not a valid model identifier"
        raise not_found(spec, e) from e
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()  # T5 / Whisper / BART: the encoder half is what we need
    return model


def _with_sdpa(spec: EncoderSpec, load: Any) -> nn.Module:
    """``load`` asking for PyTorch's fused scaled-dot-product attention (``attn_implementation=
    "sdpa"``: one kernel instead of matmul + softmax + matmul, less memory in training); a model
    without it loads with its own attention. ``encoder.config.attn_implementation`` chooses another."""
    if "attn_implementation" in spec.config:
        return load()
    try:
        return load(attn_implementation="sdpa")
    except (ValueError, ImportError, TypeError):  # "does not support an attention implementation through ..."
        return load()


def hf_layer_groups(model: nn.Module) -> list[nn.Module]:
    """[embeddings..., block 0, block 1, ...]: the largest ModuleList is taken as the block stack;
    top-level modules named like embeddings / feature extractors / stem convs go first."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return [model]
    blocks = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    stem_words = ("embed", "feature_extractor", "feature_projection", "conv1", "conv2", "patch", "stem", "masked_spec")
    stem = [m for n, m in model.named_children() if any(w in n for w in stem_words) and m is not blocks]
    for _, m in model.named_children():  # embeddings nested one level down (e.g. ViT's .embeddings)
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
