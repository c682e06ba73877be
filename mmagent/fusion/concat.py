"""``concat``: project each input's pooled vector, concatenate with the presence flags, then an MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmagent.fusion.base import Fusion, FusionOutput, PooledProjection, register_fusion
from mmagent.specs import EncoderOutput, FusionSpec


@register_fusion("concat")
class ConcatFusion(Fusion):
    def __init__(self, input_dims: dict[str, int], spec: FusionSpec) -> None:
        super().__init__(input_dims, spec)
        h, m = spec.hidden_dim, len(input_dims)
        self.project = PooledProjection(input_dims, h)
        self.mlp = nn.Sequential(nn.Linear(m * h + m, h), nn.GELU(), nn.Dropout(spec.dropout), nn.Linear(h, h), nn.GELU())

    def forward(self, features: dict[str, EncoderOutput], present: Tensor) -> FusionOutput:
        present = self.drop_modalities(present)
        x = self.project(features, present).flatten(1)
        return FusionOutput(self.mlp(torch.cat([x, present.to(x.dtype)], 1)))
