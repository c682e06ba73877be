"""Torch-free schemas of a model: its inputs, encoders, fusion and targets (pydantic).

The split follows Hugging Face's configuration/modeling cut: everything a config file, the data
layer or a server's request schema needs to know about a model lives here and imports no torch;
:mod:`mmagent.model` builds modules from these specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from torch import Tensor

Modality = Literal["text", "image", "audio", "numeric", "categorical"]
MODALITIES: tuple[str, ...] = ("text", "image", "audio", "numeric", "categorical")
TaskType = Literal["classification", "multilabel", "regression"]
IGNORE_INDEX = -100  # classification label of a sample without this target
UNSEEN_INDEX = -1  # classification label the model does not know (absent from training): always wrong
FORMAT_VERSION = 1

# Used when an input names no encoder (and no recipe supplies one): real pretrained weights that
# load offline from the `zoo` extra, and the built-in numeric MLP.
DEFAULT_ENCODERS: dict[str, dict[str, Any]] = {
    "text": {"source": "zoo", "name": "minilm-l6"},
    "image": {"source": "zoo", "name": "efficientnet-lite0"},
    "audio": {"source": "zoo", "name": "whisper-tiny.en"},
    "numeric": {"source": "builtin", "name": "mlp"},
    "categorical": {"source": "builtin", "name": "hash-embedding"},
}


class LoraSpec(BaseModel):
    """LoRA adapters (via peft) for transformer encoders."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None  # None: the encoder's own sensible default


class EncoderSpec(BaseModel):
    """How to build one encoder. Validated up front; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(..., description="hf | timm | torchvision | torchaudio | builtin | zoo | an entry-point source")
    name: str = Field(..., description="model id, builder name or local folder")
    modality: Modality | None = None  # filled from the input when the encoder is built for one
    pretrained: bool = True
    config: dict[str, Any] = Field(default_factory=dict, description="architecture overrides (tiny test models)")
    freeze: Literal["all", "none"] | int = "none"
    lora: LoraSpec | None = None
    # Preprocessing knobs; each encoder uses the ones of its modality.
    max_length: int = Field(128, ge=1, description="text: maximum tokens")
    image_size: int | None = Field(None, ge=8, description="image: side in pixels (default: the model's)")
    sample_rate: int | None = Field(None, ge=1000, description="audio: rate the model expects (default: the model's)")
    max_seconds: float = Field(10.0, gt=0, description="audio: crop / pad to this duration")
    pooling: Literal["mean", "cls", "max"] = "mean"

    @field_validator("freeze")
    @classmethod
    def _freeze_non_negative(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError("freeze must be 'all', 'none' or a number of layers >= 0")
        return v


class FusionSpec(BaseModel):
    """Which fusion module joins the inputs, and its size."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["concat", "gated", "cross_attention"] = "concat"
    hidden_dim: int = Field(256, ge=4)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="chance of hiding each input per training sample")
    num_layers: int = Field(2, ge=1, description="cross_attention: transformer layers")
    num_heads: int = Field(4, ge=1, description="cross_attention: attention heads")


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
    def _check(self) -> TargetSpec:
        if self.type != "regression" and len(self.labels) == 1:
            raise ValueError(f"target {self.column!r} has a single label {self.labels}; a classifier needs at least 2")
        return self


class InputSpec(BaseModel):
    """One model input: a table column (or, for numeric inputs, a list of columns) and its encoder."""

    model_config = ConfigDict(extra="forbid")
    column: str | list[str]
    modality: Modality
    encoder: EncoderSpec
    name: str | None = Field(None, description="defaults to the column name (joined with '+' for several)")
    required: bool = Field(False, description="an empty cell is an error (otherwise: the input is missing for that row)")

    @model_validator(mode="before")
    @classmethod
    def _default_encoder(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("encoder") is None and raw.get("modality") in DEFAULT_ENCODERS:
            raw = {**raw, "encoder": dict(DEFAULT_ENCODERS[raw["modality"]])}
        return raw

    @model_validator(mode="after")
    def _fill(self) -> InputSpec:
        if isinstance(self.column, list):
            if self.modality != "numeric":
                raise ValueError(f"a list of columns is only allowed for numeric inputs, not {self.modality}")
            if not self.column:
                raise ValueError("numeric input: column list is empty")
        if self.name is None:
            self.name = "+".join(self.column) if isinstance(self.column, list) else self.column
        if self.encoder.modality is None:
            self.encoder.modality = self.modality
        if self.modality == "numeric" and "num_features" not in self.encoder.config:
            self.encoder.config["num_features"] = len(self.columns)
        return self

    @property
    def columns(self) -> list[str]:
        return list(self.column) if isinstance(self.column, list) else [self.column]

    @property
    def key(self) -> str:
        assert self.name is not None
        return self.name


class ModelSpec(BaseModel):
    """A whole model: inputs, targets, fusion. Saved as ``model.json`` next to the weights."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[InputSpec]
    targets: list[TargetSpec]
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    format_version: int = FORMAT_VERSION

    @model_validator(mode="after")
    def _unique(self) -> ModelSpec:
        for what, names in (("input", [i.key for i in self.inputs]), ("target", [t.column for t in self.targets])):
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ValueError(f"duplicate {what} name(s): {sorted(dupes)}")
        if not self.inputs or not self.targets:
            raise ValueError("a model needs at least one input and one target")
        return self


@dataclass
class EncoderOutput:
    """What every encoder returns for a batch of B samples, and what fusion reads: the one type
    encoders and fusion share, so neither imports the other (torch tensors; torch-free to import)."""

    tokens: Tensor  # (B, T, D) float
    mask: Tensor  # (B, T) bool, True where a token is real
    pooled: Tensor  # (B, D)
