"""``gated``: a gated multimodal unit (GMU) generalised to N inputs.

Each input i gives a candidate ``h_i = tanh(W_i x_i)``; a gate network looks at all (projected)
inputs and produces, per hidden unit, softmax weights over the inputs; the output is
``sum_i z_i * h_i``. Missing inputs are masked out of the softmax. The per-input gate values
(averaged over hidden units) are returned: they say how much each input drove a prediction.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmagent.fusion.base import Fusion, FusionOutput, PooledProjection, register_fusion
from mmagent.specs import EncoderOutput, FusionSpec


@register_fusion("gated")
class GatedFusion(Fusion):
    def __init__(self, input_dims: dict[str, int], spec: FusionSpec) -> None:
        super().__init__(input_dims, spec)
        h, m = spec.hidden_dim, len(input_dims)
        self.project = PooledProjection(input_dims, h)
        self.candidate = nn.Sequential(nn.Linear(h, h), nn.Tanh())
        self.gate = nn.Linear(m * h, m * h)
        self.out = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(h, h), nn.GELU())

    def forward(self, features: dict[str, EncoderOutput], present: Tensor) -> FusionOutput:
        present = self.drop_modalities(present)
        x = self.project(features, present)  # (B, M, H); placeholders where missing
        b, m, h = x.shape
        logits = self.gate(x.flatten(1)).view(b, m, h)
        # A large finite negative (not -inf) keeps a sample with no inputs at all well-defined.
        logits = logits.masked_fill(~present.unsqueeze(-1), -1e4)
        z = logits.softmax(1)
        fused = (z * self.candidate(x)).sum(1)
        return FusionOutput(self.out(fused), gates=z.mean(-1))
