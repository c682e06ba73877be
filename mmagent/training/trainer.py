"""Joint fine-tuning of encoders + fusion + heads on HF Accelerate. Read it top to bottom:

1. data: read and check every table, split validation off train if needed;
2. model: fit label vocabularies / numeric scales on train, build, optionally resume;
3. frozen encoders: compute their outputs once (cache) so epochs skip their forward pass;
4. the loop: AdamW with separate encoder / head learning rates, warmup + decay, gradient
   accumulation and clipping, mixed precision, checkpoints every N steps and each epoch;
5. each epoch: validation, best-model selection, early stopping;
6. the end: the best model is in ``RUN_DIR/model``. Finishing the run (evaluation on validation and
   test, calibration, the unknown-input score, the report) is the caller's next step
   (:func:`mmagent.finishing.finish_run`; :func:`mmagent.workflow.train` does both).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmagent import tracking
from mmagent.agent.spec import check_agent_labels, resolve_agent_config
from mmagent.config import ExperimentConfig
from mmagent.data.dataset import Collator, FeatureCache, MultimodalDataset, fit_targets
from mmagent.data.tables import Table
from mmagent.inference import make_loader
from mmagent.io import write_text
from mmagent.model import MultimodalModel
from mmagent.runs import CHECKPOINTS_DIR, CONFIG_FILE, METRICS_LOG, SKIPPED_ROWS_FILE, check_run_dir, create_run_dir
from mmagent.specs import ModelSpec
from mmagent.training.checkpoint import checkpoint_spec, load_checkpoint, prepare_resume, truncate_log
from mmagent.training.distributed import fresh_accelerate_state, multiprocess_without_accelerator
from mmagent.training.loop import Run, TrainState, checkpoint, should_stop, train_one_epoch, validate_and_select
from mmagent.training.metrics_log import MetricsLog
from mmagent.training.sampling import LengthGroupedSampler, SeededItems, train_sampler
from mmagent.training.speedups import compile_encoders, make_optimizer, use_fused
from mmagent.training.splits import Splits, load_splits, write_skipped
from mmagent.training.threads import apply_thread_policy
from mmagent.training.warm_start import check_init_from, warm_start_model

# Called after each epoch with (epoch, validation score); returning True stops training (Optuna pruning).
EpochCallback = Callable[[int, float], bool]
# Asked after every optimizer step; returning True ends the run cleanly (validation, best model, report).
StopHook = Callable[[], bool]


@dataclass
class TrainResult:
    run_dir: Path
    best_score: float
    best_epoch: int
    global_step: int
    stopped_early: bool
    metrics: dict[str, Any] = field(default_factory=dict)  # filled by finishing (mmagent.finishing.finish_run)
    stopped_by_request: bool = False  # ``stop_requested`` ended the run
    # what finishing the run needs: the config as run (a resumed run's), its checked tables, where
    # it ran, whether this process is the one that writes (several processes: only the main one),
    # and the experiment tracker's run (MLflow: the report goes there as artifacts)
    config: ExperimentConfig | None = None
    splits: Splits | None = None
    device: str = "cpu"
    main: bool = True
    tracker_run_id: str | None = None


# -- 2. model -----------------------------------------------------------------------------------
def build_model(config: ExperimentConfig, train: Table, fitted_spec: dict[str, Any] | None = None) -> MultimodalModel:
    """Fit targets and numeric scales on the training table (or reuse a checkpoint's fitted spec,
    or, with ``train.init_from``, the parent run's: ``warm_start.py``)."""
    if fitted_spec is not None:
        return MultimodalModel(ModelSpec.model_validate(fitted_spec))
    if config.train.init_from:
        return warm_start_model(config, train)
    spec = config.model_spec()
    spec = spec.model_copy(update={"targets": fit_targets(train, spec.targets)})
    model = MultimodalModel(spec)
    ds = MultimodalDataset(train, model, with_targets=False)
    for inp in spec.inputs:
        enc = model.encoders[inp.key]
        if hasattr(enc, "fit"):
            values = [v for v in (ds.raw_value(i, inp) for i in range(len(ds))) if v is not None]
            enc.fit(values)
    return model


def param_groups(model: MultimodalModel, config: ExperimentConfig) -> list[dict[str, Any]]:
    """Encoders at ``train.lr``, fusion + heads at ``train.head_lr``; no weight decay on biases,
    norms and other 1-D parameters."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("encoders."), p.ndim >= 2), []).append(p)
    t = config.train
    return [{"params": ps, "lr": t.lr if is_enc else t.head_lr, "weight_decay": t.weight_decay if decays else 0.0} for (is_enc, decays), ps in groups.items()]


def mixed_precision(config: ExperimentConfig) -> str:
    choice = config.train.mixed_precision
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and not config.train.cpu and torch.cuda.is_bf16_supported() else "no"


# -- 3..6. the loop -----------------------------------------------------------------------------
def train(
    config: ExperimentConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
    splits: Splits | None = None,
    feature_cache_store: Any = None,
    stop_requested: StopHook | None = None,
) -> TrainResult:
    """Train, select the best epoch on validation, save the best model. See module docstring; the
    run is finished (evaluated, calibrated, reported) by the caller: :func:`mmagent.finishing.finish_run`.

    ``resume``: continue from ``RUN_DIR/checkpoints/last`` (the config must match the checkpoint's,
    see ``checkpoint.RESUME_MAY_CHANGE``); a run stopped before its first checkpoint starts over.
    ``stop_requested``: asked after every optimizer step (e.g. a time budget); True stops the run
    mid-epoch: it is validated, the best model kept, a checkpoint written (``--resume`` continues
    from there).

    ``feature_cache_store``: optional object whose ``get(model, table, names, keep_tokens, batch_size,
    device, num_workers, progress) -> FeatureCache`` returns frozen encoders' outputs, computed once
    and shared across trainings (``mmagent.data.feature_store.FeatureCacheStore``).
    ``stop_requested``: checked after each optimizer step; when it returns True the current
    (partial) epoch is validated and training ends as after its last epoch (a time budget)."""
    run, state, splits = setup(config, run_dir, resume, progress, splits, feature_cache_store)
    accelerator, t = run.accelerator, run.config.train

    # 4-5. the loop: an epoch of steps, validation and the best model, a checkpoint, stop or go on
    stopped_early = stopped_by_request = False
    while state.epoch < t.epochs and state.global_step < run.total_steps:
        started = time.perf_counter()
        stopped_by_request = train_one_epoch(run, state, stop_requested)
        partial = stopped_by_request and state.batches_done < run.micro_per_epoch
        score = validate_and_select(run, state, started, time.perf_counter() - started, partial)
        if not partial:
            state.epoch, state.batches_done = state.epoch + 1, 0
        checkpoint(run, state)
        if stopped_by_request:
            break
        if should_stop(run, state) or (on_epoch_end is not None and on_epoch_end(state.epoch, score)):
            stopped_early = True
            break

    result = TrainResult(run.run_dir, float(state.best_score), state.best_epoch, state.global_step, stopped_early, stopped_by_request=stopped_by_request)  # type: ignore[arg-type]
    result.config, result.splits, result.device, result.main = run.config, splits, str(accelerator.device), run.main
    result.tracker_run_id = tracking.run_id(accelerator, run.config)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def setup(
    config: ExperimentConfig, run_dir: str | Path, resume: bool, progress: bool, splits: Splits | None, feature_cache_store: Any
) -> tuple[Run, TrainState, Splits]:
    """Steps 1-3 of a run: check everything before writing anything, build the model (or restore a
    checkpoint), cache frozen encoders' outputs, make the loaders, optimizer and schedule."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed

    run_dir = Path(run_dir)
    t = config.train
    ckpt_dir = check_run_dir(run_dir, resume)

    fresh_accelerate_state()
    accelerator = Accelerator(
        mixed_precision=mixed_precision(config),
        gradient_accumulation_steps=t.grad_accum,
        cpu=t.cpu or multiprocess_without_accelerator(),
        # frozen / cached encoders and dropped modalities leave parameters unused in some steps
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **tracking.accelerator_kwargs(config, run_dir),
    )
    set_seed(t.seed)
    main = accelerator.is_main_process

    # Everything is checked before anything is written: policy, then every row of every table.
    config = config.model_copy(update={"agent": resolve_agent_config(config.agent, config.base_dir)})
    config_json = config.model_dump(mode="json")
    load_from, changed = prepare_resume(run_dir, ckpt_dir, config_json, main, accelerator.wait_for_everyone) if resume else (None, {})
    if t.init_from and load_from is None:
        check_init_from(config)  # the parent run describes this model: refused before reading any data
    # threads before any work; a resumed run keeps the count it was trained with unless told
    # otherwise (sums, and so the weights, can differ in their last bits with another count)
    threads = apply_thread_policy(t.threads, config.loader_workers, previous=_checkpoint_threads(load_from))
    splits = (splits if splits is not None else load_splits(config)).sampled(config)  # a search passes the splits it checked once
    model = build_model(config, splits.train, checkpoint_spec(load_from) if load_from else None)
    check_agent_labels(config.agent, model.spec.targets)
    if main:
        create_run_dir(run_dir, resume)
        (run_dir / CHECKPOINTS_DIR).mkdir(exist_ok=True)  # from now on the folder is a run --resume can take
        write_text(run_dir / CONFIG_FILE, config.model_dump_json(indent=2))
        if splits.skipped:
            write_skipped(run_dir / SKIPPED_ROWS_FILE, splits.skipped)
    tracking.start(accelerator, config, run_dir, config_json)  # params: the flattened config
    device = accelerator.device
    model.to(device)

    # 3. cache frozen encoders' outputs; the loaders read them instead of running those encoders
    frozen = [k for k, e in model.encoders.items() if e.is_frozen] if t.cache_frozen_encoders else []
    caches = _frozen_caches(model, splits, config, frozen, feature_cache_store, device, progress and main)
    train_ds, sampler, train_items, train_loader, drop_last = _train_loader(model, splits.train, config, frozen, caches["train"], accelerator.num_processes)
    val_loader = make_loader(model, splits.validation, t.batch_size, num_workers=config.loader_workers, cache=caches["validation"], by_length=True)

    optimizer, scheduler, fused, compiled, micro_per_epoch, total_steps = _optimization(
        model, config, len(train_ds), drop_last, accelerator.num_processes, device
    )

    state = TrainState()
    if load_from is not None:
        state = TrainState.restored(load_checkpoint(load_from, model, optimizer, scheduler, accelerator.scaler))
        if main:
            truncate_log(run_dir / METRICS_LOG, state.log_bytes)  # drop lines logged after the checkpoint
            print(f"resuming from {ckpt_dir}: epoch {state.epoch + 1}, step {state.global_step}")
    # DDP wraps a module whose forward returns only the loss (see _LossOnly); ``model`` stays the bare
    # model. The scheduler is not prepared: Accelerate would step it once per process per step.
    wrapped, optimizer, prepared_loader = accelerator.prepare(_LossOnly(model), optimizer, train_loader)
    log = MetricsLog(run_dir / METRICS_LOG, enabled=main, track=accelerator.log)  # also to the tracker
    if changed:
        log.write({"event": "resume", "step": state.global_step, "changed": {k: list(v) for k, v in changed.items()}})
    state.threads = threads.threads
    _log_speed(log, threads, sampler, fused, compiled, accelerator.mixed_precision, main and progress)
    run = Run(
        config, run_dir, ckpt_dir, config_json, accelerator, model, wrapped, optimizer, scheduler, prepared_loader, train_items, val_loader,
        micro_per_epoch, total_steps, _selection_metric(config, model), log, progress,
    )  # fmt: skip
    return run, state, splits


def _frozen_caches(
    model: MultimodalModel, splits: Splits, config: ExperimentConfig, frozen: list[str], store: Any, device: torch.device, show: bool
) -> dict[str, FeatureCache | None]:
    """Frozen encoders' outputs on train and validation, computed once (or taken from a ``store``
    shared by a search's candidates)."""
    t, keep_tokens = config.train, config.fusion.type == "cross_attention"
    caches: dict[str, FeatureCache | None] = {"train": None, "validation": None}
    for split in caches if frozen else ():
        if store is not None:
            caches[split] = store.get(model, getattr(splits, split), frozen, keep_tokens, t.batch_size, device, config.loader_workers, show)
            continue
        caches[split] = FeatureCache()
        caches[split].build(model, getattr(splits, split), frozen, keep_tokens, t.batch_size, device, config.loader_workers, show)  # type: ignore[union-attr]
    return caches


def _train_loader(
    model: MultimodalModel, table: Table, config: ExperimentConfig, frozen: list[str], cache: FeatureCache | None, processes: int
) -> tuple[MultimodalDataset, Any, SeededItems, DataLoader, bool]:
    """The training set, its sampler (shuffled or length-grouped, seeded by epoch) and loader."""
    t = config.train
    train_ds = MultimodalDataset(table, model, training=True, skip=set(frozen))
    sampler = train_sampler(train_ds, t.batch_size, t.seed, t.group_by_length)
    # Its own generator: starting an iterator must not draw from the global RNG, or a resumed run's
    # dropout masks would differ from the uninterrupted run's.
    loader_rng = torch.Generator().manual_seed(t.seed)
    train_items = SeededItems(train_ds, t.seed)
    # A last batch of one row breaks BatchNorm in training ("more than 1 value per channel"): drop
    # it (one row an epoch; the epoch order changes every epoch, so no row is always left out).
    drop_last = processes == 1 and len(train_ds) % t.batch_size == 1 and len(train_ds) > 1
    loader = DataLoader(
        train_items,
        batch_size=t.batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=config.loader_workers,
        collate_fn=Collator(model, cache),
        generator=loader_rng,
    )
    return train_ds, sampler, train_items, loader, drop_last


def _optimization(model: MultimodalModel, config: ExperimentConfig, rows: int, drop_last: bool, processes: int, device: torch.device) -> tuple[Any, ...]:
    """AdamW over the two learning-rate groups, the warmup + decay schedule over the run's optimizer
    steps, and the step counts: ``(optimizer, scheduler, fused, compiled, micro_per_epoch, total_steps)``."""
    from transformers import get_scheduler

    t = config.train
    fused = use_fused(t.fused_optimizer, device)
    optimizer = make_optimizer(param_groups(model, config), fused)
    compiled = compile_encoders(model) if t.compile else []
    micro_per_epoch = rows // t.batch_size if drop_last else math.ceil(rows / t.batch_size / processes)
    steps_per_epoch = math.ceil(micro_per_epoch / t.grad_accum)
    total_steps = min(t.max_steps or 10**12, t.epochs * steps_per_epoch)
    scheduler = get_scheduler(
        t.scheduler if t.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(t.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return optimizer, scheduler, fused, compiled, micro_per_epoch, total_steps


def _log_speed(log: MetricsLog, threads: Any, sampler: Any, fused: bool, compiled: list[str], precision: str, show: bool) -> None:
    """What makes this run fast or slow, in the log (and on screen)."""
    speed = {
        "threads": threads.threads,
        "threads_reason": f"{threads.source}: {threads.reason}",
        "batches": type(sampler).__name__,
        "fused_optimizer": fused,
        "compiled": compiled,
        "mixed_precision": precision,
    }
    log.write({"event": "speed", **speed})
    if show:
        print(
            f"speed: {threads.threads} torch thread(s) ({speed['threads_reason']}); "
            + f"{'length-grouped' if isinstance(sampler, LengthGroupedSampler) else 'shuffled'} batches; AdamW {'fused' if fused else 'foreach'}"
            + (f"; compiled {', '.join(compiled)}" if compiled else "")
            + f"; precision {precision}"
        )


class _LossOnly(torch.nn.Module):
    """The module DDP wraps in training: its forward returns only the loss. DDP counts every
    parameter reachable from the forward's outputs as used, and ``ModelOutput`` also carries encoder
    tokens that a pooled-only fusion never turns into loss (e.g. the numeric MLP's per-feature
    weights): with them in the output, DDP waits forever for their gradients."""

    def __init__(self, model: MultimodalModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.model(batch["inputs"], batch["present"], batch.get("cached"))
        return self.model.loss(out, batch["targets"])[0]


def _checkpoint_threads(folder: Path | None) -> int | None:
    """The thread count a checkpoint was trained with (None: no checkpoint, or one from before threads were recorded)."""
    path = folder / "progress.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    import json

    value = json.loads(path.read_text()).get("threads")
    return int(value) if isinstance(value, int) and value > 0 else None


def _selection_metric(config: ExperimentConfig, model: MultimodalModel) -> tuple[str, str, bool]:
    ref = config.selection_metric()
    if ref.target not in model.heads:
        raise ValueError(f"train.metric: unknown target {ref.target!r}; targets: {list(model.heads)}")
    return ref.target, ref.name, ref.larger_better
