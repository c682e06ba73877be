"""timm image encoders (``source: timm``).

``name`` is any ``timm.list_models()`` name; ``config`` goes to ``timm.create_model`` (e.g.
``img_size``, ``depth``, ``embed_dim`` for tiny test ViTs). The classifier is removed
(``num_classes=0``).

Tokens come from ``forward_features``: a CNN's (B, C, H, W) map becomes H*W tokens; a ViT's
sequence gives its patch tokens (the first ``num_prefix_tokens`` — CLS / register tokens — are
left out; the pooled vector carries the global summary). Pooled: ``forward_head(pre_logits=True)``,
i.e. the model's own pooling (avg, CLS, attention pooling...). Mean / std / size come from
``timm.data.resolve_data_config``; ``image_size`` in the spec, or ``img_size`` in ``config``,
wins. For ViTs at another resolution than 224 set ``config.img_size`` (timm resamples the
pretrained position table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.encoders.base import Encoder, EncoderOutput, pool, register_source, unknown_name
from mmagent.encoders.preprocessors import ImagePreprocessor
from mmagent.specs import EncoderSpec


def _as_side(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[-1], int):
        return int(value[-1])
    return None


class TimmEncoder(Encoder):
    modality = "image"

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        import timm

        # "hf-hub:..." / "local-dir:..." name a checkpoint timm resolves itself; a plain name must exist
        if ":" not in spec.name and not timm.is_model(spec.name):
            raise unknown_name("timm model name", spec.name, timm.list_models(), listing="all names: timm.list_models()")
        self.model = timm.create_model(spec.name, pretrained=spec.pretrained, num_classes=0, **spec.config)
        data = timm.data.resolve_data_config({}, model=self.model)
        side = spec.image_size or _as_side(spec.config.get("img_size")) or _as_side(data.get("input_size")) or 224
        self.image_size = int(side)
        self.preprocessor = ImagePreprocessor(self.image_size, data.get("mean", (0.485, 0.456, 0.406)), data.get("std", (0.229, 0.224, 0.225)))
        self.output_dim = int(self.model.num_features)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        self.channels_last_output = str(getattr(self.model, "output_fmt", "NCHW")) == "NHWC"
        # forward_head may widen the vector (e.g. MobileNetV3's conv head): then pool the tokens instead.
        head_dim = getattr(self.model, "head_hidden_size", None)
        self._use_head = head_dim is None or int(head_dim) == self.output_dim

    def _tokens(self, features: Tensor) -> Tensor:
        if features.dim() == 4:  # feature map
            if self.channels_last_output:
                return features.flatten(1, 2)
            return features.flatten(2).transpose(1, 2)
        if features.dim() == 3:  # token sequence
            if 0 < self.num_prefix_tokens < features.shape[1]:
                return features[:, self.num_prefix_tokens :]
            return features
        raise ValueError(f"timm:{self.spec.name}: unexpected forward_features shape {tuple(features.shape)}")

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        features = self.model.forward_features(batch["pixel_values"])
        tokens = self._tokens(features)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if self._use_head and self.spec.pooling != "max":
            pooled = self.model.forward_head(features, pre_logits=True)
            if pooled.dim() > 2:
                pooled = pooled.flatten(1)
        else:
            pooled = pool(tokens, mask, "max" if self.spec.pooling == "max" else "mean")
        return EncoderOutput(tokens, mask, pooled)

    def layer_groups(self) -> list[nn.Module]:
        """timm's own coarse grouping (``group_matcher``: stem, stages / blocks, final norm), else
        the children before ``blocks`` / ``stages`` / ``layers`` as the stem, then its entries."""
        matcher = getattr(self.model, "group_matcher", None)
        if matcher is not None:
            from timm.models import group_parameters

            try:
                groups = group_parameters(self.model, matcher(coarse=True))
            except NotImplementedError:
                groups = {}
            if len(groups) > 1:
                params = dict(self.model.named_parameters())
                return [nn.ParameterList([params[n] for n in groups[k]]) for k in sorted(groups)]
        children = list(self.model.named_children())
        for i, (name, module) in enumerate(children):
            if name in ("blocks", "stages", "layers") and isinstance(module, (nn.Sequential, nn.ModuleList)):
                stem: list[nn.Module] = [m for _, m in children[:i]]
                own = [p for _, p in self.model.named_parameters(recurse=False)]  # cls_token, pos_embed...
                if own:
                    stem.append(nn.ParameterList(own))
                return [nn.ModuleList(stem), *module]
        return [self.model]

    def save_assets(self, folder: Path) -> dict[str, Any]:
        # Architecture known offline (same name + config); the weights file holds the rest.
        return {"pretrained": False, "image_size": self.image_size}


@register_source("timm")
def build_timm(spec: EncoderSpec) -> Encoder:
    if spec.modality not in (None, "image"):
        raise ValueError(f"timm:{spec.name} encodes images, not {spec.modality}")
    return TimmEncoder(spec)
