"""torchvision image encoders (``source: torchvision``).

``name`` is a ``torchvision.models.list_models()`` name (``resnet50``, ``mobilenet_v3_small``,
``efficientnet_b0``, ``convnext_tiny``, ``swin_t``, ``vit_b_16``...); ``config`` goes to
``torchvision.models.get_model``. Pretrained weights are the ``DEFAULT`` weights enum, and
size / mean / std come from its transforms; without weights: 224 px (``spec.image_size`` wins)
and ImageNet statistics.

The classifier is stripped (replaced by ``nn.Identity``). Tokens: the last feature map, i.e. the
model's children run in order up to the pooling / classifier (ResNet: everything before
``avgpool``; MobileNet / EfficientNet / ConvNeXt: ``.features``), flattened to H*W tokens;
torchvision ViTs give their encoder's token sequence. Pooled: ``spec.pooling`` over the tokens
(mean by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.encoders.base import Encoder, EncoderOutput, pool, register_source, unknown_name
from mmagent.encoders.preprocessors import ImagePreprocessor
from mmagent.specs import EncoderSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Children where the trunk ends: pooling and classification heads.
HEAD_NAMES = ("avgpool", "global_pool", "flatten", "dropout", "fc", "classifier", "head", "heads")
AUX_PREFIXES = ("aux", "Aux")  # GoogLeNet / Inception auxiliary classifiers


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_leaf(module: nn.Module) -> bool:
    return not any(True for _ in module.children())


class TorchvisionEncoder(Encoder):
    modality = "image"

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        from torchvision.models import VisionTransformer, get_model, get_model_weights, list_models

        if spec.name not in list_models():
            raise unknown_name("torchvision model name", spec.name, list_models(), listing="all names: torchvision.models.list_models()")
        config = dict(spec.config)
        mean, std, side = IMAGENET_MEAN, IMAGENET_STD, None
        if spec.pretrained:
            transforms = get_model_weights(spec.name).DEFAULT.transforms()
            mean, std = tuple(transforms.mean), tuple(transforms.std)
            side = int(transforms.crop_size[0])
        elif spec.image_size and spec.name.startswith("vit_") and "image_size" not in config:
            config["image_size"] = spec.image_size  # torchvision ViTs are built for one resolution
        model = get_model(spec.name, weights="DEFAULT" if spec.pretrained else None, **config)
        self.is_vit = isinstance(model, VisionTransformer)
        if self.is_vit:
            side = side or int(model.image_size)
        self.image_size = int(spec.image_size or side or 224)
        self.preprocessor = ImagePreprocessor(self.image_size, mean, std)

        self.trunk_names: list[str] = []
        if self.is_vit:
            model.heads = nn.Identity()
        else:
            names = [n for n, _ in model.named_children()]
            end = next((i for i, n in enumerate(names) if n in HEAD_NAMES), len(names))
            self.trunk_names = [n for n in names[:end] if not n.startswith(AUX_PREFIXES)]
            for n in names:  # strip classifier and auxiliary heads
                if (n not in self.trunk_names) and _has_params(getattr(model, n)):
                    setattr(model, n, nn.Identity())
            if hasattr(model, "aux_logits"):
                model.aux_logits = False
        self.model = model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            probe = self._tokens(torch.zeros(1, 3, self.image_size, self.image_size))
        model.train(was_training)
        self.output_dim = int(probe.shape[-1])

    def _tokens(self, x: Tensor) -> Tensor:
        model = self.model
        if self.is_vit:
            x = model._process_input(x)
            x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            return model.encoder(x)
        if getattr(model, "transform_input", False) and hasattr(model, "_transform_input"):
            x = model._transform_input(x)  # Inception / GoogLeNet re-normalisation
        for name in self.trunk_names:
            x = getattr(model, name)(x)
        if type(model).__name__ == "DenseNet":
            x = torch.relu(x)  # DenseNet applies it in forward(), after .features
        if x.dim() != 4:
            raise ValueError(f"torchvision:{self.spec.name}: expected a (B, C, H, W) feature map, got {tuple(x.shape)}")
        return x.flatten(2).transpose(1, 2)

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        tokens = self._tokens(batch["pixel_values"])
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        how = self.spec.pooling if (self.is_vit or self.spec.pooling != "cls") else "mean"
        return EncoderOutput(tokens, mask, pool(tokens, mask, how))

    def layer_groups(self) -> list[nn.Module]:
        model = self.model
        if self.is_vit:
            stem = nn.ModuleList([model.conv_proj, nn.ParameterList([model.class_token, model.encoder.pos_embedding])])
            return [stem, *model.encoder.layers, model.encoder.ln]
        units: list[nn.Module] = []
        for name in self.trunk_names:
            module = getattr(model, name)
            if name in ("features", "trunk_output", "layers") and isinstance(module, nn.Sequential):
                units.extend(module.children())
            else:
                units.append(module)
        units = [u for u in units if _has_params(u)] or [model]
        if all(_is_leaf(u) for u in units):  # VGG / AlexNet: plain conv stacks; stem = first conv
            return units
        n_stem = next((i for i, u in enumerate(units) if not _is_leaf(u)), 0) or 1
        return [nn.ModuleList(units[:n_stem]), *units[n_stem:]]

    def save_assets(self, folder: Path) -> dict[str, Any]:
        # The architecture is known offline and the weights file holds the rest; keep the input size
        # the pretrained weights' transforms chose (e.g. 299 for Inception, 518 for ViT-H SWAG).
        return {"pretrained": False, "image_size": self.image_size}


@register_source("torchvision")
def build_torchvision(spec: EncoderSpec) -> Encoder:
    if spec.modality not in (None, "image"):
        raise ValueError(f"torchvision:{spec.name} encodes images, not {spec.modality}")
    return TorchvisionEncoder(spec)
