"""Automatic fine-tuning: an Optuna search over the experiment config (``mmagent tune``).

The config's ``tune:`` block declares the search space as dotted config paths (the same paths as
``--set``)::

    tune:
      metric: label/accuracy          # optional; default: train.metric, else the first target's main metric
      space:
        train.lr: {type: float, low: 1e-5, high: 1e-3, log: true}
        train.batch_size: {type: categorical, choices: [8, 16, 32]}
        fusion.type: {type: categorical, choices: [concat, gated, cross_attention]}
        inputs.0.encoder.freeze: {type: categorical, choices: [all, none, 2]}
        inputs.0.encoder.lora.r: {type: int, low: 4, high: 16}
        inputs.0.encoder: {type: categorical, choices: [{source: zoo, name: minilm-l6}, {source: hf, name: bert-base-uncased}]}
      pruner: {type: median, n_startup_trials: 3, n_warmup_steps: 1}   # or percentile / threshold / none
      cache: disk                     # frozen-encoder outputs shared across trials: disk | memory | off

Without ``space``, :func:`default_space` derives one from the config (learning rates, weight decay,
epochs, dropouts, fusion type and modality dropout with several inputs, freezing of pretrained
encoders). Each trial applies its parameters to the config, validates it, and trains into
``TUNE_DIR/trials/<n>`` without the final report (fast); per-epoch validation scores feed Optuna's
pruner through the trainer's ``on_epoch_end``. TPE (seeded) picks the parameters.

Storage defaults to ``sqlite:///TUNE_DIR/study.db``: running ``mmagent tune`` again resumes the study
(``--trials N`` is the total number of finished trials wanted). Any SQLAlchemy URL works, so several
machines can work on one study; trials left RUNNING by a killed process are failed and re-queued with
the same parameters (at once when the process ran on this host and is gone, otherwise once its
heartbeat is stale).

At the end the best trial's run folder is finalized (evaluation, calibration, report) into
``TUNE_DIR/best``, the artifact to serve; ``TUNE_DIR/tune_report.md`` lists every trial, the best
parameters and parameter importances, with a plot.

Frozen encoders' outputs (the trainer's FeatureCache) are shared across trials by
:class:`FeatureCacheStore`, keyed by the encoder (spec + weights digest) and the rows' content, so a
search over heads, fusion and learning rates on top of frozen encoders computes them once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import socket
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmagent.config import ConfigError, ExperimentConfig, _set_dotted, config_from_dict, format_validation_error, load_config
from mmagent.data.dataset import FeatureCache, MultimodalDataset
from mmagent.data.tables import Table
from mmagent.io import atomic_dir, atomic_path, write_json, write_text
from mmagent.runs import read_metrics_log

if TYPE_CHECKING:
    import optuna

    from mmagent.model import MultimodalModel

DEFAULT_STUDY = "mmagent"
# Scalar validation metrics per target type (mmagent.training.metrics) that a study can optimize.
METRIC_NAMES = {"classification": {"accuracy", "macro_f1", "auroc"}, "multilabel": {"subset_accuracy", "micro_f1", "macro_f1", "auroc"}, "regression": {"mae", "rmse", "r2"}}
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 180


class TuneError(ValueError):
    """The search could not produce a result (e.g. every trial failed); the message says why."""


# -- the ``tune:`` block ------------------------------------------------------------------------
class FloatParam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "FloatParam":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class IntParam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "IntParam":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log: true needs low >= 1 and step 1")
        return self


class CategoricalParam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["categorical"]
    choices: list[Any] = Field(..., min_length=1)


ParamSpec = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


class PrunerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["median", "percentile", "threshold", "none"] = "median"
    n_startup_trials: int = Field(3, ge=0, description="finished trials before pruning starts (median / percentile)")
    n_warmup_steps: int = Field(1, ge=0, description="first epoch at which a trial can be pruned")
    percentile: float = Field(25.0, gt=0, lt=100, description="percentile: keep trials in the best P percent")
    lower: float | None = Field(None, description="threshold: prune when the score falls below")
    upper: float | None = Field(None, description="threshold: prune when the score rises above")


class TuneSpec(BaseModel):
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
    def _check_metric(self) -> "TuneSpec":
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


def parse_tune_spec(config: ExperimentConfig, base_raw: dict[str, Any] | None = None) -> TuneSpec:
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
    base_raw = base_raw if base_raw is not None else base_config_dict(config)
    problems = []
    for key, param in spec.space.items():
        candidates = param.choices if isinstance(param, CategoricalParam) else [param.low, param.high]
        for value in candidates:
            try:
                raw = copy.deepcopy(base_raw)
                _set_dotted(raw, key, copy.deepcopy(value))
                ExperimentConfig.model_validate(raw)
            except (IndexError, ValueError, TypeError, KeyError, AttributeError) as e:
                detail = format_validation_error(e).strip() if isinstance(e, ValidationError) else f"no such key path ({e})"
                problems.append(f"  tune.space.{key} = {value!r} does not give a valid config: {detail}")
                break
    if spec.metric:
        target, name = spec.metric.split("/", 1)
        types = {t.column: t.type for t in config.targets}
        if target not in types:
            problems.append(f"  tune.metric: unknown target {target!r}; targets: {list(types)}")
        elif name not in METRIC_NAMES[types[target]]:
            problems.append(f"  tune.metric: {types[target]} target {target!r} has no metric {name!r}; choose one of {sorted(METRIC_NAMES[types[target]])}")
    if problems:
        raise ConfigError("invalid tune block:\n" + "\n".join(problems))
    return spec


def base_config_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The validated config as a plain dict (recipe already applied), without the tune block."""
    raw = config.model_dump(mode="json")
    raw["tune"] = {}
    return raw


def objective_metric(config: ExperimentConfig, spec: TuneSpec) -> tuple[str, str]:
    """(TARGET/METRIC, direction) the study optimizes."""
    from mmagent.training.metrics import MAIN_METRIC

    metric = spec.metric or config.train.metric
    if metric is None:
        first = config.targets[0]
        metric = f"{first.column}/{MAIN_METRIC[first.type][0]}"
    direction = spec.direction or ("minimize" if metric.split("/", 1)[1] in ("rmse", "mae", "loss") else "maximize")
    return metric, direction


# -- cross-trial frozen-encoder cache -----------------------------------------------------------
class FeatureCacheStore:
    """Frozen encoders' outputs shared across trainings (``trainer.train(feature_cache_store=...)``).

    One entry per (encoder, rows, keep_tokens): the encoder is identified by its spec and a digest of
    its weights and buffers (so a randomly initialised frozen encoder matches only when its weights
    do), the rows by the content of the input's cells (media files by path, size and mtime). Entries
    live in memory and, with ``folder``, as safetensors files there (reused by later processes).
    ``builds`` counts encoder passes over a table, ``hits`` entries served without one.
    """

    FORMAT = "mmagent-feature-cache-1"

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.memory: dict[str, tuple[torch.Tensor, list[torch.Tensor] | None]] = {}
        self.builds = 0
        self.hits = 0
        self._digests: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()  # one weights pass per encoder

    def get(self, model: "MultimodalModel", table: Table, names: list[str], keep_tokens: bool, batch_size: int, device: torch.device, num_workers: int = 0, progress: bool = False) -> FeatureCache:
        cache = FeatureCache()
        missing: dict[str, str | None] = {}
        for name in names:
            key = self.key(model, name, table, keep_tokens)
            entry = None if key is None else (self.memory.get(key) or self._load(key))
            if entry is None:
                missing[name] = key
                continue
            self.hits += 1
            self.memory[key] = entry  # type: ignore[index]
            self._put(cache, name, entry)
        if missing:
            built = FeatureCache()
            built.build(model, table, list(missing), keep_tokens, batch_size, device, num_workers, progress)
            self.builds += 1
            for name, key in missing.items():
                entry = (built.pooled[name], built.tokens.get(name))
                if key is not None:
                    self.memory[key] = entry
                    self._save(key, entry)
                self._put(cache, name, entry)
        return cache

    @staticmethod
    def _put(cache: FeatureCache, name: str, entry: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
        cache.pooled[name] = entry[0]
        if entry[1] is not None:
            cache.tokens[name] = entry[1]

    def key(self, model: "MultimodalModel", name: str, table: Table, keep_tokens: bool) -> str | None:
        """The entry key, or None when the rows cannot be fingerprinted (then nothing is shared)."""
        rows = _rows_digest(model, name, table)
        if rows is None:
            return None
        inp = next(i for i in model.spec.inputs if i.key == name)
        h = hashlib.sha256()
        h.update(json.dumps([self.FORMAT, inp.modality, inp.encoder.model_dump(mode="json"), keep_tokens], sort_keys=True, default=str).encode())
        encoder = model.encoders[name]
        if encoder not in self._digests:
            self._digests[encoder] = _weights_digest(encoder)
        h.update(self._digests[encoder].encode())
        h.update(rows.encode())
        return h.hexdigest()[:40]

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.safetensors"

    def _load(self, key: str) -> tuple[torch.Tensor, list[torch.Tensor] | None] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
        except Exception:  # a damaged file: rebuild it
            return None
        tokens = None
        if "tokens" in data:
            tokens = list(torch.split(data["tokens"], data["lengths"].tolist()))
        return data["pooled"], tokens

    def _save(self, key: str, entry: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
        path = self._path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        pooled, tokens = entry
        tensors = {"pooled": pooled.contiguous()}
        if tokens is not None:
            tensors["tokens"] = torch.cat(tokens).contiguous() if tokens else torch.zeros(0, pooled.shape[1], dtype=torch.float16)
            tensors["lengths"] = torch.tensor([len(t) for t in tokens], dtype=torch.int64)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": self.FORMAT})


def _weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=20)
    for name, t in list(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _rows_digest(model: "MultimodalModel", name: str, table: Table) -> str | None:
    import numpy as np

    inp = next(i for i in model.spec.inputs if i.key == name)
    ds = MultimodalDataset(table, model, with_targets=False, skip=set(model.encoders))
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{len(table)};".encode())
    for row in range(len(table)):
        v = ds.raw_value(row, inp)
        if isinstance(v, Path):
            try:
                st = v.stat()
                h.update(f"P{v.resolve()}|{st.st_size}|{st.st_mtime_ns};".encode())
            except OSError:
                h.update(f"P{v}|missing;".encode())
        elif v is None or isinstance(v, (str, int, float, bool)):
            h.update(f"V{v!r};".encode())
        elif isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            h.update(f"L{v!r};".encode())
        elif isinstance(v, (bytes, bytearray)):
            h.update(b"B" + hashlib.sha1(v).digest())
        elif isinstance(v, (np.ndarray, torch.Tensor)):
            arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            h.update(f"A{arr.dtype}{arr.shape}".encode() + hashlib.sha1(np.ascontiguousarray(arr).tobytes()).digest())
        else:  # e.g. an in-memory PIL image: not fingerprinted, so not shared
            return None
    return h.hexdigest()


# -- the study ----------------------------------------------------------------------------------
@dataclass
class TuneResult:
    tune_dir: Path
    study_name: str
    storage: str  # password masked
    metric: str
    direction: str
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_dir: Path | None
    counts: dict[str, int] = field(default_factory=dict)  # trials per state
    cache: dict[str, int] = field(default_factory=dict)  # this process: builds / hits
    report: Path | None = None


def tune(config: ExperimentConfig | str | Path | dict[str, Any], tune_dir: str | Path, trials: int, timeout: float | None = None, storage: str | None = None, study_name: str | None = None, progress: bool = False) -> TuneResult:
    """Run (or resume) the search until ``trials`` trials have finished (complete or pruned) or
    ``timeout`` seconds have passed in this call; finalize the best trial into ``TUNE_DIR/best``
    and write ``TUNE_DIR/tune_report.md``."""
    import optuna

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    tune_dir = Path(tune_dir)
    base_raw = base_config_dict(config)
    spec = parse_tune_spec(config, base_raw)
    metric, direction = objective_metric(config, spec)
    tune_dir.mkdir(parents=True, exist_ok=True)
    study_name = study_name or DEFAULT_STUDY
    if storage and "://" not in storage:  # a plain file path: an SQLite database there
        storage = f"sqlite:///{Path(storage).expanduser().resolve()}"
    url = storage or f"sqlite:///{(tune_dir / 'study.db').resolve()}"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress lines come from _Watcher
    try:
        return _tune(config, spec, base_raw, metric, direction, tune_dir, trials, timeout, url, study_name, progress)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _tune(config: ExperimentConfig, spec: TuneSpec, base_raw: dict[str, Any], metric: str, direction: str, tune_dir: Path, trials: int, timeout: float | None, url: str, study_name: str, progress: bool) -> TuneResult:
    import optuna
    from optuna.trial import TrialState

    study = _open_study(url, study_name, direction, metric)
    _recover_dead_local_trials(study)
    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=done_states))
    seed = spec.seed if spec.seed is not None else config.train.seed
    n_startup = spec.n_startup_trials if spec.n_startup_trials is not None else min(10, max(2, trials // 4))
    # A resumed search must not replay the first call's random draws: offset the seed by the trials so far.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), n_startup_trials=n_startup)
    study.pruner = _pruner(spec.pruner)

    store = None if spec.cache == "off" else FeatureCacheStore(tune_dir / "cache" if spec.cache == "disk" else None)
    objective = _Objective(base_raw, spec, metric, tune_dir, study_name, store)
    watcher = _Watcher(trials, spec.keep_models, tune_dir, progress)
    interrupted = False
    try:
        if done < trials:
            if progress:
                print(f"study {study_name!r}: {done} trial(s) finished, running up to {trials - done} more" + (f" (timeout {timeout:g}s)" if timeout else ""))
            study.optimize(objective, n_trials=trials - done, timeout=timeout, catch=(Exception,), callbacks=[watcher], gc_after_trial=True)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        best = _best_trial(study)
        best_dir = None
        if best is not None and not interrupted:
            best_dir = finalize_best(study, best, base_raw, spec, tune_dir, metric, store, progress)
        watcher.cleanup(study)
        report = write_tune_report(study, tune_dir, metric, direction, _mask(url), best_dir, store)
    counts = _counts(study)
    if best is None:
        errors = [t.user_attrs.get("error") for t in study.trials if t.state == TrialState.FAIL and t.user_attrs.get("error")]
        raise TuneError(f"no trial completed ({counts}); " + (f"last error: {errors[-1]}" if errors else f"see {report}"))
    return TuneResult(tune_dir, study_name, _mask(url), metric, direction, best.number, best.value, dict(best.params), best_dir, counts, {"builds": store.builds, "hits": store.hits} if store else {}, report)


def _open_study(url: str, name: str, direction: str, metric: str) -> "optuna.Study":
    import optuna
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        rdb = optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
        study = optuna.create_study(storage=rdb, study_name=name, direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} in this storage {study.direction.name.lower()}s; this config {direction}s {metric}: use another --study name")
    existing = study.user_attrs.get("metric")
    if existing is None:
        study.set_user_attr("metric", metric)
    elif existing != metric:
        raise ConfigError(f"study {name!r} in this storage optimizes {existing}, not {metric}: use another --study name or storage")
    return study


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover_dead_local_trials(study: "optuna.Study") -> list[int]:
    """Trials left RUNNING by a process of this host that no longer exists (killed, crashed): fail
    them and queue a retry with the same parameters. Trials of other hosts are handled by the
    storage heartbeat (failed and re-queued once stale)."""
    import optuna
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    host, recovered = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != host or not isinstance(worker.get("pid"), int) or _pid_alive(worker["pid"]) or worker["pid"] == os.getpid():
            continue
        storage = study._storage  # what optuna.storages.fail_stale_trials does for heartbeat-stale trials
        try:
            storage.set_trial_user_attr(t._trial_id, "error", f"worker process {worker['pid']} on {host} ended while the trial ran")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, storage.get_trial(t._trial_id))
        recovered.append(t.number)
    return recovered


def _pruner(spec: PrunerSpec) -> "optuna.pruners.BasePruner":
    import optuna

    if spec.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.type == "percentile":
        return optuna.pruners.PercentilePruner(spec.percentile, n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.type == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.lower, upper=spec.upper, n_warmup_steps=spec.n_warmup_steps)
    return optuna.pruners.NopPruner()


def trial_dir(tune_dir: Path, study_name: str, number: int) -> Path:
    name = str(number) if study_name == DEFAULT_STUDY else f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in study_name)}-{number}"
    return tune_dir / "trials" / name


def _primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def suggest(trial: "optuna.Trial", key: str, param: FloatParam | IntParam | CategoricalParam) -> tuple[Any, Any]:
    """(value for the config, value as Optuna records it). Non-scalar choices (encoder specs) are
    recorded as their JSON text."""
    if isinstance(param, FloatParam):
        v = trial.suggest_float(key, param.low, param.high, log=param.log, step=param.step)
        return v, v
    if isinstance(param, IntParam):
        v = trial.suggest_int(key, param.low, param.high, log=param.log, step=param.step)
        return v, v
    labels = {(c if _primitive(c) else json.dumps(c, sort_keys=True)): c for c in param.choices}
    label = trial.suggest_categorical(key, list(labels))
    return copy.deepcopy(labels[label]), label


def trial_config(base_raw: dict[str, Any], params: dict[str, Any], metric: str) -> ExperimentConfig:
    """The base config with the parameters applied (shorter paths first, so ``inputs.0.encoder``
    is replaced before ``inputs.0.encoder.freeze`` is set) and the tuning metric as train.metric."""
    raw = copy.deepcopy(base_raw)
    for key in sorted(params, key=lambda k: k.count(".")):
        _set_dotted(raw, key, params[key])
    raw.setdefault("train", {})["metric"] = metric
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("invalid trial config:\n" + format_validation_error(e)) from None


class _Objective:
    def __init__(self, base_raw: dict[str, Any], spec: TuneSpec, metric: str, tune_dir: Path, study_name: str, store: FeatureCacheStore | None) -> None:
        self.base_raw, self.spec, self.metric, self.tune_dir, self.study_name, self.store = base_raw, spec, metric, tune_dir, study_name, store

    def __call__(self, trial: "optuna.Trial") -> float:
        import optuna

        from mmagent.training.trainer import train

        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        run_dir = trial_dir(self.tune_dir, self.study_name, trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        pruned_at: list[int] = []
        last_epoch = [0]

        def on_epoch_end(epoch: int, score: float) -> bool:
            if math.isfinite(score):
                trial.report(score, epoch)
            if epoch < last_epoch[0] and trial.should_prune():  # after the last epoch there is nothing left to save
                pruned_at.append(epoch)
                return True
            return False

        start = time.perf_counter()
        try:
            params = {}
            assert self.spec.space is not None
            for key, param in self.spec.space.items():
                params[key], _ = suggest(trial, key, param)
            cfg = trial_config(self.base_raw, params, self.metric)
            last_epoch[0] = cfg.train.epochs
            if run_dir.exists():  # left by an earlier study of the same name whose storage is gone
                shutil.rmtree(run_dir)
            result = train(cfg, run_dir, progress=False, on_epoch_end=on_epoch_end, finalize=False, feature_cache_store=self.store)
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            raise
        finally:
            trial.set_user_attr("train_seconds", round(time.perf_counter() - start, 3))
            trial.set_user_attr("epochs_run", len(read_metrics_log(run_dir, "epoch")) if run_dir.exists() else 0)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # trials are never resumed
        trial.set_user_attr("best_epoch", result.best_epoch)
        if pruned_at:
            trial.set_user_attr("best_value_before_pruning", result.best_score)
            raise optuna.TrialPruned(f"pruned after epoch {pruned_at[0]}")
        return result.best_score


class _Watcher:
    """Per-trial callback: a progress line, model cleanup, and stop after repeated failures."""

    def __init__(self, trials: int, keep_models: str, tune_dir: Path, progress: bool) -> None:
        self.trials, self.keep_models, self.tune_dir, self.progress = trials, keep_models, tune_dir, progress
        self.failures = 0

    def __call__(self, study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
        from optuna.trial import TrialState

        if self.progress:
            value = "" if trial.value is None else f" value {trial.value:.4f}"
            extra = f" ({trial.user_attrs['error']})" if trial.state == TrialState.FAIL and "error" in trial.user_attrs else ""
            print(f"trial {trial.number}: {trial.state.name.lower()}{value} in {_seconds(trial):.1f}s{extra}", flush=True)
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        if self.failures >= 3 and _best_trial(study) is None:
            study.stop()  # the same error every time (bad data, missing files): no point going on
        self.cleanup(study)

    def cleanup(self, study: "optuna.Study") -> None:
        """With keep_models: best, drop the model folders of finished trials other than the best."""
        from optuna.trial import TrialState

        if self.keep_models != "best":
            return
        best = _best_trial(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            run_dir = t.user_attrs.get("run_dir")
            if run_dir and (best is None or t.number != best.number) and Path(run_dir).resolve().parent == (self.tune_dir / "trials").resolve():
                shutil.rmtree(Path(run_dir) / "model", ignore_errors=True)
                shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)


def _best_trial(study: "optuna.Study") -> "optuna.trial.FrozenTrial | None":
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def _seconds(t: "optuna.trial.FrozenTrial") -> float:
    if t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return float(t.user_attrs.get("train_seconds", float("nan")))


def _counts(study: "optuna.Study") -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def _mask(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# -- the final artifact -------------------------------------------------------------------------
def finalize_best(study: "optuna.Study", best: "optuna.trial.FrozenTrial", base_raw: dict[str, Any], spec: TuneSpec, tune_dir: Path, metric: str, store: FeatureCacheStore | None = None, progress: bool = False) -> Path:
    """Make ``TUNE_DIR/best`` the best trial's finalized run folder (model, metrics.json,
    calibration, report.md). The trial's folder is copied when it is on this machine; otherwise (a
    trial run by another worker) the best parameters are trained again here."""
    from mmagent.training.report import finalize_run
    from mmagent.training.trainer import load_splits, train

    best_dir = tune_dir / "best"
    marker = {"study": study.study_name, "trial": best.number, "value": best.value, "params": best.params}
    marker_path = best_dir / "tune_trial.json"
    if marker_path.is_file() and json.loads(marker_path.read_text()) == json.loads(json.dumps(marker)) and (best_dir / "model").is_dir():
        return best_dir
    src = Path(best.user_attrs.get("run_dir", trial_dir(tune_dir, study.study_name, best.number)))
    with atomic_dir(best_dir) as tmp:
        if (src / "model" / "model.json").is_file() and (src / "config.json").is_file():
            cfg = ExperimentConfig.model_validate_json((src / "config.json").read_text())
            for item in src.iterdir():
                if item.name in ("checkpoints",) or item.name.startswith("shards_rank"):
                    continue
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            device = torch.device("cuda" if torch.cuda.is_available() and not cfg.train.cpu else "cpu")
            finalize_run(tmp, cfg, load_splits(cfg), read_metrics_log(tmp, "epoch"), device, progress=False)
        else:
            params = {}
            for key, value in best.params.items():
                param = (spec.space or {}).get(key)
                if isinstance(param, CategoricalParam):  # recorded label -> the choice itself
                    value = next((copy.deepcopy(c) for c in param.choices if (c if _primitive(c) else json.dumps(c, sort_keys=True)) == value), value)
                params[key] = value
            cfg = trial_config(base_raw, params, metric)
            train(cfg, tmp, progress=False, finalize=True, feature_cache_store=store)
            shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
        write_json(tmp / "tune_trial.json", marker)
    if progress:
        print(f"best trial {best.number} ({metric} = {best.value:.4f}) finalized in {best_dir}")
    return best_dir


# -- the report ---------------------------------------------------------------------------------
def write_tune_report(study: "optuna.Study", tune_dir: Path, metric: str, direction: str, storage: str, best_dir: Path | None, store: FeatureCacheStore | None = None) -> Path:
    """``tune_report.md`` (+ ``tune_plot.png`` and ``tune_results.json``)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    best = _best_trial(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    importances: dict[str, float] = {}
    importance_note = "needs at least 2 completed trials"
    if len(complete) >= 2:
        try:
            import optuna

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study)
            importance_note = "" if importances else "no parameter varied across completed trials"
        except Exception as e:  # too few distinct values, a single parameter value, ...
            importance_note = f"not computable ({type(e).__name__}: {e})"
    plot = _plot(trials, importances, direction, tune_dir / "tune_plot.png")
    counts = _counts(study)

    lines = ["# mmagent tuning report", ""]
    lines += [f"- study: `{study.study_name}` in `{storage}`", f"- objective: {direction} `{metric}` (validation; a trial's value is its best epoch)"]
    lines += ["- trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "- trials: none"]
    if best is not None:
        lines += [f"- best: trial {best.number}, {metric} = {best.value:.4f}" + (f"; finalized run folder: `{best_dir.name}/` (model, metrics.json, report.md)" if best_dir else ""), ""]
        lines += ["## Best parameters", "", "| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | {_cell(v)} |" for k, v in best.params.items()]
    lines += ["", "## Trials", "", "| # | state | value | seconds | epochs | parameters |", "|---|---|---|---|---|---|"]
    for t in trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        if t.state == TrialState.PRUNED and t.intermediate_values:
            step = max(t.intermediate_values)
            value = f"({t.intermediate_values[step]:.4f} at epoch {step})"
        note = f" — {t.user_attrs['error']}" if t.state == TrialState.FAIL and t.user_attrs.get("error") else ""
        params = "; ".join(f"{k}={_cell(v)}" for k, v in t.params.items())
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | {_seconds(t):.1f} | {t.user_attrs.get('epochs_run', '')} | {params}{_cell(note)} |")
    lines += ["", "## Parameter importances", ""]
    if importances:
        lines += ["Share of the objective's variation explained by each parameter (Optuna's default evaluator), over completed trials."
                  + (f" Only {len(complete)} completed trials: a rough indication." if len(complete) < 10 else ""), ""]
        lines += ["| parameter | importance |", "|---|---|"] + [f"| `{k}` | {v:.3f} |" for k, v in importances.items()]
    else:
        lines.append(f"Not available: {importance_note}.")
    if plot:
        lines += ["", f"![trials and importances]({plot})"]
    if store is not None:
        lines += ["", "## Frozen-encoder cache", "", f"This run: {store.builds} encoder pass(es) over a table, {store.hits} reuse(s) of cached outputs" + (f" (stored in `{store.folder.name}/`)." if store.folder else ".")]
    path = tune_dir / "tune_report.md"
    write_text(path, "\n".join(lines) + "\n")
    write_json(tune_dir / "tune_results.json", {
        "study": study.study_name, "metric": metric, "direction": direction, "counts": counts,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params, "dir": str(best_dir) if best_dir else None},
        "importances": importances,
        "trials": [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params, "seconds": _seconds(t), "epochs_run": t.user_attrs.get("epochs_run"), "intermediate": {str(k): v for k, v in t.intermediate_values.items()}} for t in trials],
    })
    return path


def _cell(v: Any) -> str:
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def _plot(trials: list["optuna.trial.FrozenTrial"], importances: dict[str, float], direction: str, path: Path) -> str | None:
    from optuna.trial import TrialState

    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if importances else 1, figsize=(11 if importances else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    comp = [t for t in done if t.state == TrialState.COMPLETE]
    ax.scatter([t.number for t in comp], [t.value for t in comp], label="complete", zorder=3)
    pruned = [t for t in done if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned], marker="x", color="tab:red", label="pruned (last score)", zorder=3)
    best_so_far, xs, ys = None, [], []
    for t in sorted(comp, key=lambda t: t.number):
        if best_so_far is None or (t.value > best_so_far if direction == "maximize" else t.value < best_so_far):
            best_so_far = t.value
        xs.append(t.number)
        ys.append(best_so_far)
    if xs:
        ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    ax.set(title="trials", xlabel="trial", ylabel="validation score")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    if importances:
        ax2 = axes[0][1]
        names = list(importances)[::-1]
        ax2.barh(names, [importances[n] for n in names])
        ax2.set(title="parameter importance", xlabel="importance")
        ax2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name
