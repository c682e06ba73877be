"""Task heads: classification, multi-label and regression, one per target; several at once.

A target's vocabulary (labels) or scale (regression mean/std) is learned from the training data
and stored in its spec, so a saved model carries it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

TaskType = Literal["classification", "multilabel", "regression"]
IGNORE_INDEX = -100  # classification label of a sample without this target


class TargetSpec(BaseModel):
    """One prediction target (a table column)."""

    model_config = ConfigDict(extra="forbid")
    column: str
    type: TaskType = "classification"
    loss_weight: float = Field(1.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    separator: str = Field("|", description="multilabel: separator between labels in a cell")
    # Learned from the training data (leave empty in a config):
    labels: list[str] = Field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    @property
    def name(self) -> str:
        return self.column

    @property
    def num_outputs(self) -> int:
        return 1 if self.type == "regression" else len(self.labels)

    @model_validator(mode="after")
    def _check(self) -> "TargetSpec":
        if self.type != "regression" and len(self.labels) == 1:
            raise ValueError(f"target {self.column!r} has a single label {self.labels}; a classifier needs at least 2")
        return self


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
