"""Task heads: classification, multi-label and regression, one per target; several at once.

A target's vocabulary (labels) or scale (regression mean/std) is learned from the training data
and stored in its spec, so a saved model carries it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmagent.specs import IGNORE_INDEX, UNSEEN_INDEX, TargetSpec


class Head(nn.Module):
    """Dropout + linear layer on the fused vector; knows its loss and how to read its logits."""

    def __init__(self, spec: TargetSpec, in_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        if spec.num_outputs < 1:
            raise ValueError(f"target {spec.column!r}: no labels known (was it fitted on training data?)")
        self.spec = spec
        self.layer = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, spec.num_outputs))

    def forward(self, fused: Tensor) -> Tensor:
        return self.layer(fused)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean loss over samples that have this target (missing: -100 / NaN rows)."""
        logits = logits.float()
        if self.spec.type == "classification":
            # a label the model does not know cannot be learned: the loss ignores it too
            target = target.masked_fill(target == UNSEEN_INDEX, IGNORE_INDEX)
            if (target != IGNORE_INDEX).sum() == 0:
                return logits.sum() * 0.0
            return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, label_smoothing=self.spec.label_smoothing)
        known = ~torch.isnan(target).view(target.shape[0], -1).any(1)
        if known.sum() == 0:
            return logits.sum() * 0.0
        if self.spec.type == "multilabel":
            return F.binary_cross_entropy_with_logits(logits[known], target[known])
        scaled = (target[known] - self.spec.mean) / self.spec.std
        return F.mse_loss(logits[known].squeeze(-1), scaled)

    def predict(self, logits: Tensor) -> Tensor:
        """Probabilities (classification: softmax; multilabel: sigmoid) or values (regression)."""
        logits = logits.float()
        if self.spec.type == "classification":
            return logits.softmax(-1)
        if self.spec.type == "multilabel":
            return logits.sigmoid()
        return logits.squeeze(-1) * self.spec.std + self.spec.mean
