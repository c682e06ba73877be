"""Fusion interface, spec and registry.

A fusion module takes every input's :class:`EncoderOutput` plus a per-sample presence mask
``present`` (B, M) — False where an input is missing — and returns one vector per sample.
Contract shared by all fusions: a missing input must not influence the output (its features are
replaced by a learned placeholder or masked out of attention), and in training
``modality_dropout`` hides whole inputs at random so the model learns to cope without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmagent.specs import EncoderOutput, FusionSpec


@dataclass
class FusionOutput:
    vector: Tensor  # (B, hidden_dim)
    gates: Tensor | None = None  # (B, M): per-input weight, where the fusion has one (gated)


class Fusion(nn.Module):
    """Base class: holds the input names (their order defines columns of ``present``)."""

    def __init__(self, input_dims: dict[str, int], spec: FusionSpec) -> None:
        super().__init__()
        self.names = list(input_dims)
        self.input_dims = dict(input_dims)
        self.spec = spec
        self.output_dim = spec.hidden_dim

    def drop_modalities(self, present: Tensor) -> Tensor:
        """Training only: hide each present input with probability ``modality_dropout``, keeping at
        least one present input per sample that had one."""
        p = self.spec.modality_dropout
        if not self.training or p <= 0 or present.shape[1] < 2:
            return present
        keep = torch.rand(present.shape, device=present.device) >= p
        dropped = present & keep
        emptied = ~dropped.any(1) & present.any(1)
        if emptied.any():  # restore one random originally-present input for those samples
            scores = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0)
            pick = torch.zeros_like(present).scatter_(1, scores.argmax(1, keepdim=True), True)
            dropped = torch.where(emptied.unsqueeze(1), pick, dropped)
        return dropped

    def forward(self, features: dict[str, EncoderOutput], present: Tensor) -> FusionOutput:  # pragma: no cover
        raise NotImplementedError


class PooledProjection(nn.Module):
    """Project each input's pooled vector to ``hidden``; missing inputs get a learned placeholder.

    ``torch.where`` (not multiplication) keeps NaN/inf garbage in a missing input out of the result."""

    def __init__(self, input_dims: dict[str, int], hidden: int) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({n: nn.Sequential(nn.Linear(d, hidden), nn.LayerNorm(hidden)) for n, d in input_dims.items()})
        self.placeholder = nn.Parameter(torch.zeros(len(input_dims), hidden))
        nn.init.normal_(self.placeholder, std=0.02)

    def forward(self, features: dict[str, EncoderOutput], present: Tensor) -> Tensor:
        out = []
        for i, name in enumerate(self.proj):
            x = self.proj[name](features[name].pooled.float())
            out.append(torch.where(present[:, i : i + 1], x, self.placeholder[i].expand_as(x)))
        return torch.stack(out, 1)  # (B, M, hidden)


FusionBuilder = Callable[[dict[str, int], FusionSpec], Fusion]
_FUSIONS: dict[str, FusionBuilder] = {}


def register_fusion(name: str) -> Callable[[FusionBuilder], FusionBuilder]:
    def deco(cls: FusionBuilder) -> FusionBuilder:
        _FUSIONS[name] = cls
        return cls

    return deco


def available_fusions() -> list[str]:
    return sorted(_FUSIONS)


def build_fusion(spec: FusionSpec | dict, input_dims: dict[str, int]) -> Fusion:
    """Build a fusion module by name (``spec.type``) for inputs of the given widths."""
    spec = spec if isinstance(spec, FusionSpec) else FusionSpec.model_validate(spec)
    if spec.type not in _FUSIONS:
        raise ValueError(f"unknown fusion {spec.type!r}; available: {available_fusions()}")
    return _FUSIONS[spec.type](input_dims, spec)
