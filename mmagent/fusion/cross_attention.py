"""``cross_attention``: every input's tokens, projected to a shared width and tagged with a learned
input embedding, attend to each other (and to a learned summary token) in a small transformer.
Each input contributes its pooled vector plus its tokens. The summary token's final state is the fused vector. Missing inputs and padding are masked out of
attention, so they cannot influence the result."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmagent.fusion.base import Fusion, FusionOutput, register_fusion
from mmagent.specs import EncoderOutput, FusionSpec


@register_fusion("cross_attention")
class CrossAttentionFusion(Fusion):
    def __init__(self, input_dims: dict[str, int], spec: FusionSpec) -> None:
        super().__init__(input_dims, spec)
        h = spec.hidden_dim
        if h % spec.num_heads:
            raise ValueError(f"fusion.hidden_dim ({h}) must be divisible by fusion.num_heads ({spec.num_heads})")
        self.proj = nn.ModuleDict({n: nn.Linear(d, h) for n, d in input_dims.items()})
        self.input_embedding = nn.Parameter(torch.randn(len(input_dims), h) * 0.02)
        self.summary = nn.Parameter(torch.randn(1, 1, h) * 0.02)
        layer = nn.TransformerEncoderLayer(h, spec.num_heads, 2 * h, spec.dropout, batch_first=True, norm_first=True, activation="gelu")
        self.transformer = nn.TransformerEncoder(layer, spec.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(h)

    def forward(self, features: dict[str, EncoderOutput], present: Tensor) -> FusionOutput:
        present = self.drop_modalities(present)
        b = present.shape[0]
        tokens, valid = [self.summary.expand(b, -1, -1)], [torch.ones(b, 1, dtype=torch.bool, device=present.device)]
        for i, name in enumerate(self.proj):
            f = features[name]
            # The pooled vector rides along as the input's first token: some encoders (numeric MLP)
            # put most of their capacity there.
            seq = torch.cat([f.pooled.unsqueeze(1), f.tokens], 1).float()
            seq_mask = torch.cat([torch.ones_like(f.mask[:, :1]), f.mask], 1).bool()
            keep = seq_mask & present[:, i : i + 1]
            x = self.proj[name](seq) + self.input_embedding[i]
            tokens.append(torch.where(keep.unsqueeze(-1), x, torch.zeros_like(x)))  # no garbage, even NaN
            valid.append(keep)
        out = self.transformer(torch.cat(tokens, 1), src_key_padding_mask=~torch.cat(valid, 1))
        return FusionOutput(self.norm(out[:, 0]))
