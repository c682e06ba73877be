"""The experiment config: one YAML file, validated by pydantic before any work starts.

Public contract (see README)::

    recipe: customer_service            # optional: defaults for encoders, fusion, policy
    data: {train: FILE, validation: FILE, test: FILE}
    inputs:
      - {column: NAME, modality: text|image|audio|numeric, encoder: {source: ..., name: ...}}
    targets:
      - {column: NAME, type: classification|multilabel|regression}
    fusion: {type: concat|gated|cross_attention}
    train: {epochs: N, batch_size: N, lr: X, seed: N}

Errors name the key (``inputs.0.encoder.source``) and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmagent.agent.spec import AgentSpec
from mmagent.metrics import MetricRef
from mmagent.specs import FusionSpec, InputSpec, ModelSpec, TargetSpec


class ConfigError(ValueError):
    """A config that cannot be used; the message lists every problem with its key."""


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: str
    validation: str | None = None
    test: str | None = None
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.9, description="split of train when no validation file is given")
    validation_rows: int | None = Field(
        None,
        ge=1,
        description="score at most this many validation rows (a seeded, stratified sample): fit sets it when scoring them all would not fit the budget",
    )
    on_bad_row: Literal["error", "skip"] = "error"
    num_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes that decode media; auto: up to 4 when there are image/audio inputs and cores to spare, else 0"
    )


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    sample_rows: int | None = Field(
        None,
        ge=1,
        description="train on a seeded, stratified sample of this many training rows: fit sets it when a pass over all of them does not fit the budget",
    )
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(5e-5, gt=0, description="learning rate of the encoders")
    head_lr: float = Field(1e-3, gt=0, description="learning rate of fusion + heads")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="auto: bf16 on a GPU that has it, else fp32")
    seed: int = 42
    metric: str | None = Field(
        None, description="validation metric for early stopping / best checkpoint, e.g. 'intent/macro_f1'; default: first target's main metric"
    )
    early_stopping_patience: int | None = Field(None, ge=1, description="epochs without improvement before stopping")
    checkpoint_every_steps: int | None = Field(None, ge=1)
    cache_frozen_encoders: bool = Field(True, description="compute frozen encoders' outputs once and reuse them")
    cpu: bool = Field(False, description="force CPU even when a GPU is present")
    init_from: str | None = Field(
        None,
        description="warm start: a finished run folder whose weights, vocabularies and scales this run starts from (relative paths: from the config's folder)",
    )
    log_with: Literal["none", "tensorboard", "mlflow"] = Field("none", description="experiment tracker (through Accelerate): params, per-epoch metrics, report")
    tracking_uri: str | None = Field(None, description="mlflow: any MLflow tracking URI; default sqlite:///<the run's parent folder>/mlflow.db")
    experiment: str = Field("mmagent", min_length=1, description="mlflow: experiment name")
    # speed (README "Speed"): none of these changes what is learned, except group_by_length (batch make-up)
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: the thread policy (OMP_NUM_THREADS is respected)")
    group_by_length: bool = Field(True, description="batches of similar length (text, variable-length audio), in random order")
    fused_optimizer: bool | Literal["auto"] = Field("auto", description="fused AdamW kernel; auto: wherever torch has one (CPU and GPU)")
    compile: bool = Field(False, description="torch.compile the trainable encoders (off: on a CPU the compile time was not earned back; README Speed)")

    @model_validator(mode="after")
    def _check_tracking(self) -> TrainSpec:
        if self.tracking_uri is not None and self.log_with != "mlflow":
            raise ValueError(f"train.tracking_uri is only used with train.log_with: mlflow (log_with is {self.log_with!r})")
        # the tracker's package is checked here, before any work, not when the first epoch ends
        needs = {"tensorboard": "tensorboard", "mlflow": "mlflow"}.get(self.log_with)
        if needs is not None:
            import importlib.util

            if importlib.util.find_spec(needs) is None:
                raise ValueError(f"train.log_with: {self.log_with} needs the {needs} package, which is not installed: pip install 'mmagent[track]'")
        return self


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: str | None = None
    data: DataSpec
    inputs: list[InputSpec] = Field(..., min_length=1)
    targets: list[TargetSpec] = Field(..., min_length=1)
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    train: TrainSpec = Field(default_factory=TrainSpec)
    agent: AgentSpec = Field(default_factory=AgentSpec, description="agent: target, escalation, speech_to_text and the policy ({type: ..., ...})")
    tune: dict[str, Any] = Field(default_factory=dict, description="search space for `mmagent tune`")
    base_dir: str = Field(".", description="folder that relative data paths refer to (set to the config's folder)")

    @model_validator(mode="after")
    def _check_metric(self) -> ExperimentConfig:
        if self.train.metric and "/" not in self.train.metric:  # MetricRef.parse's rule, with this config's example
            raise ValueError(f"train.metric must look like TARGET/METRIC (e.g. {self.targets[0].column}/accuracy), got {self.train.metric!r}")
        names = [t.column for t in self.targets]
        if self.agent.target is not None and self.agent.target not in names:
            raise ValueError(f"agent.target {self.agent.target!r} is not a target; targets: {names}")
        return self

    @property
    def loader_workers(self) -> int:
        """Worker processes for DataLoaders: media decoding benefits; tokenizing short text does
        not pay for the process start-up."""
        if self.data.num_workers != "auto":
            return int(self.data.num_workers)
        import os

        media = any(i.modality in ("image", "audio") for i in self.inputs)
        spare = (os.cpu_count() or 1) - 1
        return min(4, spare) if media and spare >= 2 else 0

    def model_spec(self) -> ModelSpec:
        return ModelSpec(inputs=self.inputs, targets=self.targets, fusion=self.fusion, head_dropout=self.head_dropout)

    def selection_metric(self) -> MetricRef:
        """What picks the best epoch and candidate: ``train.metric``, else the first target's main metric."""
        return MetricRef.parse(self.train.metric) if self.train.metric else MetricRef.main(self.targets[0])

    def with_params(self, params: dict[str, Any]) -> ExperimentConfig:
        """This config with values set at dotted paths (``{"train.lr": 1e-4, "inputs.0.encoder":
        {...}, "inputs.0.encoder.freeze": "all"}``; shorter paths first, so a whole block is
        replaced before one of its keys is set), validated again: a search's candidate, an override."""
        raw = self.model_dump(mode="json")
        for key in sorted(params, key=lambda k: k.count(".")):
            try:
                set_dotted(raw, key, copy.deepcopy(params[key]))
            except (IndexError, ValueError, TypeError, KeyError, AttributeError) as e:
                raise ConfigError(f"{key}: no such key path ({e})") from None
        try:
            return type(self).model_validate(raw)
        except ValidationError as e:
            raise ConfigError("invalid config with " + ", ".join(sorted(params)) + ":\n" + format_validation_error(e)) from None

    def resolve(self, path: str | None) -> Path | None:
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in a raw (YAML-like) config mapping, creating the mappings / lists on the way."""
    keys = dotted.split(".")
    node: Any = raw
    for i, key in enumerate(keys[:-1]):
        nxt = keys[i + 1]
        if isinstance(node, list):
            node = node[int(key)]
            continue
        if key not in node or node[key] is None:
            node[key] = [] if nxt.isdigit() else {}
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (value parsed as YAML: numbers, booleans, lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        try:
            set_dotted(raw, key.strip(), yaml.safe_load(value))
        except (IndexError, ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"override {item!r}: no such key path ({e})") from e
    return raw


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], base_dir: str | Path = ".") -> ExperimentConfig:
    """Apply the recipe's defaults (if any), then validate."""
    raw = dict(raw)
    raw.setdefault("base_dir", str(base_dir))
    if raw.get("recipe"):
        from mmagent.tasks.recipes import apply_recipe

        raw = apply_recipe(raw)
    try:
        # the context tells the agent block where relative policy files (playbooks) are
        return ExperimentConfig.model_validate(raw, context={"base_dir": str(raw["base_dir"])})
    except ValidationError as e:
        raise ConfigError("invalid config:\n" + format_validation_error(e)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply ``--set`` overrides and validate it. Relative data paths are
    taken from the config file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:  # an image, a zip, a Latin-1 file: say which file, not the codec's words
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start}); a config is YAML text") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (data, inputs, targets, ...)")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, base_dir=path.parent.resolve())
