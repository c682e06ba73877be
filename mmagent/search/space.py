"""The search space: the ``tune:`` block's schema (parameters, pruner, metric), the default space
derived from a config, and its validation against the config it will be applied to.

Parameters are dotted config paths (the same paths as ``--set``)::

    tune:
      metric: label/accuracy          # optional; default: train.metric, else the first target's main metric
      space:
        train.lr: {type: float, low: 1e-5, high: 1e-3, log: true}
        train.batch_size: {type: categorical, choices: [8, 16, 32]}
        fusion.type: {type: categorical, choices: [concat, gated, cross_attention]}
        inputs.0.encoder.freeze: {type: categorical, choices: [all, none, 2]}
        inputs.0.encoder: {type: categorical, choices: [{source: zoo, name: minilm-l6}, {source: hf, name: bert-base-uncased}]}
      pruner: {type: median, n_startup_trials: 3, n_warmup_steps: 1}   # percentile / threshold / successive_halving / hyperband / none
      cache: disk                     # frozen-encoder outputs shared across trials: disk | memory | off
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmagent.config import ConfigError, ExperimentConfig
from mmagent.metrics import MetricRef

if TYPE_CHECKING:
    import optuna

# Scalar validation metrics per target type (mmagent.metrics) that a study can optimize.
METRIC_NAMES = {
    "classification": {"accuracy", "macro_f1", "auroc"},
    "multilabel": {"subset_accuracy", "micro_f1", "macro_f1", "auroc"},
    "regression": {"mae", "rmse", "r2"},
}


class FloatParam(BaseModel):
    """A float drawn from [low, high] (log scale or in steps)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class IntParam(BaseModel):
    """An integer drawn from [low, high]."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log: true needs low >= 1 and step 1")
        return self


class CategoricalParam(BaseModel):
    """One of ``choices`` (scalars, or mappings such as whole encoder specs)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["categorical"]
    choices: list[Any] = Field(..., min_length=1)


ParamSpec = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


class PrunerSpec(BaseModel):
    """Which Optuna pruner stops unpromising trials, judged on per-epoch validation scores."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["median", "percentile", "threshold", "successive_halving", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(3, ge=0, description="finished trials before pruning starts (median / percentile)")
    n_warmup_steps: int = Field(1, ge=0, description="first epoch at which a trial can be pruned (median / percentile / threshold)")
    percentile: float = Field(25.0, gt=0, lt=100, description="percentile: keep trials in the best P percent")
    lower: float | None = Field(None, description="threshold: prune when the score falls below")
    upper: float | None = Field(None, description="threshold: prune when the score rises above")
    min_resource: int = Field(1, ge=1, description="successive_halving / hyperband: epochs every trial gets before its first rung")
    reduction_factor: int = Field(3, ge=2, description="successive_halving / hyperband: keep the best 1/N at each rung")
    max_resource: int | None = Field(None, ge=1, description="hyperband: the most epochs of a trial; default the largest epochs in the space")


class TuneSpec(BaseModel):
    """The ``tune:`` block."""

    model_config = ConfigDict(extra="forbid")
    metric: str | None = Field(None, description="TARGET/METRIC to optimize; default: train.metric or the first target's main metric")
    direction: Literal["maximize", "minimize"] | None = Field(None, description="default: minimize for rmse / mae / loss, else maximize")
    space: dict[str, ParamSpec] | None = Field(None, description="dotted config path -> distribution; default: default_space(config)")
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    seed: int | None = Field(None, description="sampler seed; default train.seed")
    n_startup_trials: int | None = Field(None, ge=0, description="random trials before TPE models the results; default min(10, max(2, trials // 4))")
    cache: Literal["disk", "memory", "off"] = Field("disk", description="share frozen-encoder outputs across trials (disk: TUNE_DIR/cache)")
    keep_models: Literal["best", "all"] = Field("best", description="model folders kept in TUNE_DIR/trials")

    @model_validator(mode="after")
    def _check_metric(self) -> TuneSpec:
        if self.metric is not None and "/" not in self.metric:
            raise ValueError(f"metric must look like TARGET/METRIC (e.g. label/accuracy), got {self.metric!r}")
        if self.pruner.type == "threshold" and self.pruner.lower is None and self.pruner.upper is None:
            raise ValueError("pruner type threshold needs lower and/or upper")
        return self


def _fmt_errors(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("float", "int", "categorical"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown type {e.get('input', {}).get('type')!r}; use float, int or categorical" if isinstance(e.get("input"), dict) else msg
        elif e["type"] == "union_tag_not_found":
            msg = "missing 'type' (float, int or categorical)"
        lines.append(f"  {prefix}.{loc}: {msg}" if loc else f"  {prefix}: {msg}")
    return "\n".join(lines)


def default_space(config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """The search space used when ``tune.space`` is absent: head and encoder learning rates,
    weight decay, epochs, dropouts; with several inputs the fusion type and modality dropout; for
    pretrained encoders, whether to freeze them (frozen ones then cost one cached pass)."""
    e = config.train.epochs
    space: dict[str, dict[str, Any]] = {
        "train.head_lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "train.epochs": {"type": "int", "low": max(1, e // 2), "high": max(2, e)},
        "head_dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "fusion.dropout": {"type": "float", "low": 0.0, "high": 0.3},
    }
    if len(config.inputs) > 1:
        space["fusion.type"] = {"type": "categorical", "choices": ["concat", "gated", "cross_attention"]}
        space["fusion.modality_dropout"] = {"type": "float", "low": 0.0, "high": 0.3}
    pretrained_trainable, other_trainable = False, False
    for i, inp in enumerate(config.inputs):
        enc = inp.encoder
        if enc.pretrained and enc.source != "builtin":
            space[f"inputs.{i}.encoder.freeze"] = {"type": "categorical", "choices": ["all", "none"]}
            pretrained_trainable = True
        elif enc.freeze != "all":
            other_trainable = True
    if pretrained_trainable:
        space["train.lr"] = {"type": "float", "low": 1e-5, "high": 3e-4, "log": True}
    elif other_trainable:  # encoders trained from scratch take head-like learning rates
        space["train.lr"] = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    return space


def parse_space(space: dict[str, Any], base: ExperimentConfig) -> dict[str, FloatParam | IntParam | CategoricalParam]:
    """Validate a space given as a plain dict (``{"train.lr": {"type": "float", ...}}``) and check
    that every parameter, at its bounds and for every choice, gives a valid config when applied to
    ``base``. Errors name the key (``tune.space.train.lr.low: ...``)."""
    try:
        spec = TuneSpec.model_validate({"space": space})
    except ValidationError as e:
        raise ConfigError("invalid tune block:\n" + _fmt_errors(e, "tune")) from None
    if not spec.space:
        raise ConfigError("tune.space is empty: declare at least one parameter")
    problems = _space_problems(spec.space, base)
    if problems:
        raise ConfigError("invalid tune block:\n" + "\n".join(problems))
    return spec.space


def _space_problems(space: dict[str, FloatParam | IntParam | CategoricalParam], base: ExperimentConfig) -> list[str]:
    problems = []
    for key, param in space.items():
        candidates = param.choices if isinstance(param, CategoricalParam) else [param.low, param.high]
        for value in candidates:
            try:
                base.with_params({key: value})
            except ConfigError as e:
                detail = str(e).split("\n", 1)[-1].strip()
                problems.append(f"  tune.space.{key} = {value!r} does not give a valid config: {detail}")
                break
    return problems


def parse_tune_spec(config: ExperimentConfig, base: ExperimentConfig | None = None) -> TuneSpec:
    """Validate ``config.tune`` and check that every parameter path, at its bounds and for every
    choice, still gives a valid config. Errors name the key (``tune.space.train.lr.low: ...``)."""
    try:
        spec = TuneSpec.model_validate(config.tune or {})
    except ValidationError as e:
        raise ConfigError("invalid tune block:\n" + _fmt_errors(e, "tune")) from None
    if spec.space is None:
        spec.space = TuneSpec.model_validate({"space": default_space(config)}).space
    if not spec.space:
        raise ConfigError("tune.space is empty: declare at least one parameter")
    problems = _space_problems(spec.space, base if base is not None else search_base(config))
    if spec.metric:
        ref = MetricRef.parse(spec.metric)
        target, name = ref.target, ref.name
        types = {t.column: t.type for t in config.targets}
        if target not in types:
            problems.append(f"  tune.metric: unknown target {target!r}; targets: {list(types)}")
        elif name not in METRIC_NAMES[types[target]]:
            problems.append(f"  tune.metric: {types[target]} target {target!r} has no metric {name!r}; choose one of {sorted(METRIC_NAMES[types[target]])}")
    if problems:
        raise ConfigError("invalid tune block:\n" + "\n".join(problems))
    return spec


def search_base(config: ExperimentConfig) -> ExperimentConfig:
    """The validated config (recipe already applied) without its tune block: what every trial's
    parameters are set on (:meth:`ExperimentConfig.with_params`)."""
    return config.with_params({"tune": {}})


def objective_metric(config: ExperimentConfig, spec: TuneSpec) -> tuple[str, str]:
    """(TARGET/METRIC, direction) the study optimizes."""
    ref = MetricRef.parse(spec.metric) if spec.metric else config.selection_metric()
    return str(ref), spec.direction or ("maximize" if ref.larger_better else "minimize")


def _primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def choice_label(choice: Any) -> Any:
    """How Optuna records a categorical choice: scalars as themselves, mappings as their JSON text."""
    return choice if _primitive(choice) else json.dumps(choice, sort_keys=True)


def suggest(trial: optuna.Trial, key: str, param: FloatParam | IntParam | CategoricalParam) -> tuple[Any, Any]:
    """(value for the config, value as Optuna records it). Non-scalar choices (encoder specs) are
    recorded as their JSON text."""
    if isinstance(param, FloatParam):
        v = trial.suggest_float(key, param.low, param.high, log=param.log, step=param.step)
        return v, v
    if isinstance(param, IntParam):
        v = trial.suggest_int(key, param.low, param.high, log=param.log, step=param.step)
        return v, v
    labels = {choice_label(c): c for c in param.choices}
    label = trial.suggest_categorical(key, list(labels))
    return copy.deepcopy(labels[label]), label


def params_from_recorded(recorded: dict[str, Any], space: dict[str, FloatParam | IntParam | CategoricalParam]) -> dict[str, Any]:
    """A trial's recorded parameters -> values for the config (JSON labels -> the choices themselves)."""
    params = {}
    for key, value in recorded.items():
        param = space.get(key)
        if isinstance(param, CategoricalParam):
            value = next((copy.deepcopy(c) for c in param.choices if choice_label(c) == value), value)
        params[key] = value
    return params
