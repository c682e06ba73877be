"""Joint fine-tuning of encoders + fusion + heads on HF Accelerate. Read it top to bottom:

1. data: read and check every table, split validation off train if needed;
2. model: fit label vocabularies / numeric scales on train, build, optionally resume;
3. frozen encoders: compute their outputs once (cache) so epochs skip their forward pass;
4. the loop: AdamW with separate encoder / head learning rates, warmup + decay, gradient
   accumulation and clipping, mixed precision, checkpoints every N steps and each epoch;
5. each epoch: validation, best-model selection, early stopping;
6. the end: the best model is saved to ``RUN_DIR/model`` and evaluated (``finalize_run``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmagent.agent.spec import check_agent_labels, resolve_agent_config
from mmagent.config import ExperimentConfig
from mmagent.data.dataset import Collator, FeatureCache, MultimodalDataset, fit_targets
from mmagent.data.tables import Table
from mmagent.inference import make_loader, to_device
from mmagent.io import write_text
from mmagent.model import MultimodalModel
from mmagent.runs import CHECKPOINTS_DIR, CONFIG_FILE, METRICS_LOG, SKIPPED_ROWS_FILE, check_run_dir, create_run_dir
from mmagent.specs import ModelSpec
from mmagent.training import tracking
from mmagent.training.checkpoint import checkpoint_spec, load_checkpoint, prepare_resume, save_checkpoint, truncate_log
from mmagent.training.distributed import any_process, fresh_accelerate_state, multiprocess_without_accelerator
from mmagent.training.evaluate import evaluate
from mmagent.training.metrics import LOWER_IS_BETTER, is_better, main_metric
from mmagent.training.metrics_log import MetricsLog, compact_metrics, record_shard
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
    metrics: dict[str, Any] = field(default_factory=dict)
    stopped_by_request: bool = False  # ``stop_requested`` ended the run


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
    finalize: bool = True,
    feature_cache_store: Any = None,
    stop_requested: StopHook | None = None,
) -> TrainResult:
    """Train, select the best epoch on validation, write the run folder. See module docstring.

    ``resume``: continue from ``RUN_DIR/checkpoints/last`` (the config must match the checkpoint's,
    see ``checkpoint.RESUME_MAY_CHANGE``); a run stopped before its first checkpoint starts over.
    ``stop_requested``: asked after every optimizer step (e.g. a time budget); True stops the run
    mid-epoch: it is validated, the best model kept, a checkpoint written (``--resume`` continues
    from there) and the run folder finalized as usual.

    ``feature_cache_store``: optional object whose ``get(model, table, names, keep_tokens, batch_size,
    device, num_workers, progress) -> FeatureCache`` returns frozen encoders' outputs, computed once
    and shared across trainings (``mmagent.data.feature_store.FeatureCacheStore``).
    ``stop_requested``: checked after each optimizer step; when it returns True the current
    (partial) epoch is validated and training ends as after its last epoch (a time budget)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

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
    splits = splits if splits is not None else load_splits(config)  # a search passes the splits it checked once
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

    # 3. cache frozen encoders' outputs
    frozen = [k for k, e in model.encoders.items() if e.is_frozen] if t.cache_frozen_encoders else []
    keep_tokens = config.fusion.type == "cross_attention"
    caches: dict[str, FeatureCache | None] = {"train": None, "validation": None}
    for split in caches if frozen else ():
        if feature_cache_store is not None:
            caches[split] = feature_cache_store.get(
                model, getattr(splits, split), frozen, keep_tokens, t.batch_size, device, config.loader_workers, progress and main
            )
            continue
        caches[split] = FeatureCache()
        caches[split].build(model, getattr(splits, split), frozen, keep_tokens, t.batch_size, device, config.loader_workers, progress and main)  # type: ignore[union-attr]

    train_ds = MultimodalDataset(splits.train, model, training=True, skip=set(frozen))
    sampler = train_sampler(train_ds, t.batch_size, t.seed, t.group_by_length)
    # Its own generator: starting an iterator must not draw from the global RNG, or a resumed run's
    # dropout masks would differ from the uninterrupted run's.
    loader_rng = torch.Generator().manual_seed(t.seed)
    train_items = SeededItems(train_ds, t.seed)
    # A last batch of one row breaks BatchNorm in training ("more than 1 value per channel"): drop
    # it (one row an epoch; the epoch order changes every epoch, so no row is always left out).
    drop_last = accelerator.num_processes == 1 and len(train_ds) % t.batch_size == 1 and len(train_ds) > 1
    train_loader = DataLoader(
        train_items,
        batch_size=t.batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=config.loader_workers,
        collate_fn=Collator(model, caches["train"]),
        generator=loader_rng,
    )
    val_loader = make_loader(model, splits.validation, t.batch_size, num_workers=config.loader_workers, cache=caches["validation"], by_length=True)

    fused = use_fused(t.fused_optimizer, device)
    optimizer = make_optimizer(param_groups(model, config), fused)
    compiled = compile_encoders(model) if t.compile else []
    micro_per_epoch = len(train_ds) // t.batch_size if drop_last else math.ceil(len(train_ds) / t.batch_size / accelerator.num_processes)
    steps_per_epoch = math.ceil(micro_per_epoch / t.grad_accum)
    total_steps = min(t.max_steps or 10**12, t.epochs * steps_per_epoch)
    scheduler = get_scheduler(
        t.scheduler if t.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(t.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )

    state = {"epoch": 0, "batches_done": 0, "global_step": 0, "best_score": None, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if load_from is not None:
        state = load_checkpoint(load_from, model, optimizer, scheduler, accelerator.scaler)
        if main:
            truncate_log(run_dir / METRICS_LOG, state.get("log_bytes"))  # drop lines logged after the checkpoint
            print(f"resuming from {ckpt_dir}: epoch {state['epoch'] + 1}, step {state['global_step']}")
    # DDP wraps a module whose forward returns only the loss (see _LossOnly); ``model`` stays the bare
    # model. The scheduler is not prepared: Accelerate would step it once per process per step.
    wrapped, optimizer, prepared_loader = accelerator.prepare(_LossOnly(model), optimizer, train_loader)

    metric_target, metric_name, larger_better = _selection_metric(config, model)
    log = MetricsLog(run_dir / METRICS_LOG, enabled=main, track=accelerator.log)  # also to the tracker
    if changed:
        log.write({"event": "resume", "step": state["global_step"], "changed": {k: list(v) for k, v in changed.items()}})
    speed = {
        "threads": threads.threads,
        "threads_reason": f"{threads.source}: {threads.reason}",
        "batches": type(sampler).__name__,
        "fused_optimizer": fused,
        "compiled": compiled,
        "mixed_precision": accelerator.mixed_precision,
    }
    state["threads"] = threads.threads
    log.write({"event": "speed", **speed})
    if main and progress:
        print(
            f"speed: {threads.threads} torch thread(s) ({speed['threads_reason']}); "
            + f"{'length-grouped' if isinstance(sampler, LengthGroupedSampler) else 'shuffled'} batches; AdamW {'fused' if fused else 'foreach'}"
            + (f"; compiled {', '.join(compiled)}" if compiled else "")
            + f"; precision {accelerator.mixed_precision}"
        )
    stopped_early = stopped_by_request = False

    def checkpoint() -> None:
        if main:
            state["log_bytes"] = log.size()
            save_checkpoint(
                ckpt_dir, model, optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, scheduler, state, accelerator.scaler, config_json
            )
        accelerator.wait_for_everyone()

    while state["epoch"] < t.epochs and state["global_step"] < total_steps:
        epoch = state["epoch"]
        # Accelerate's loader re-sets the sampler's epoch from its own counter on every pass;
        # setting it here keeps data order a function of (seed, epoch) even after --resume.
        prepared_loader.set_epoch(epoch)
        train_items.epoch = epoch
        wrapped.train()
        batches = accelerator.skip_first_batches(prepared_loader, state["batches_done"]) if state["batches_done"] else prepared_loader
        bar = tqdm(
            batches, total=micro_per_epoch, initial=state["batches_done"], desc=f"epoch {epoch + 1}/{t.epochs}", disable=not (progress and main), leave=False
        )
        start = time.perf_counter()
        seen: list[int] | None = [] if os.environ.get("MMAGENT_RECORD_SHARDS") == "1" else None
        for batch in bar:
            if seen is not None:
                seen.extend(batch["index"].tolist())
            with accelerator.accumulate(wrapped):
                batch = to_device(batch, device)
                loss = wrapped(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.max_grad_norm:
                    accelerator.clip_grad_norm_(wrapped.parameters(), t.max_grad_norm)
                optimizer.step()
                # one schedule step per optimizer step, whatever the number of processes
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state["batches_done"] += 1
            if accelerator.sync_gradients:
                state["global_step"] += 1
                bar.set_postfix(loss=f"{loss.item():.4f}")
                log.write({"step": state["global_step"], "epoch": epoch + 1, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]})
                if t.checkpoint_every_steps and state["global_step"] % t.checkpoint_every_steps == 0:
                    checkpoint()
                if state["global_step"] >= total_steps:
                    break
                if stop_requested is not None and any_process(accelerator, stop_requested()):
                    stopped_by_request = True
                    break
        bar.close()
        if seen is not None:
            record_shard(run_dir, accelerator.process_index, accelerator.num_processes, epoch + 1, seen)

        # 5. validation, best model, early stopping (every process evaluates: same decision everywhere)
        train_seconds = time.perf_counter() - start  # the loop alone: throughput figures use it
        metrics, _ = evaluate(model, val_loader, device)
        if metric_name not in metrics[metric_target]:
            why = "AUROC needs rows of every class" if metric_name == "auroc" else "no usable rows"
            raise ValueError(
                f"validation cannot score {metric_target}/{metric_name}: {why} (n={metrics[metric_target].get('n')}, labels unseen in training: {metrics[metric_target].get('unseen_labels')}); give a larger validation set or data.validation_fraction"
            )
        score = metrics[metric_target][metric_name]
        loss = metrics[metric_target].get("log_loss")
        improved = is_better(score, loss, state["best_score"], state.get("best_loss"), larger_better)
        if improved:
            state.update(best_score=score, best_loss=loss, best_epoch=epoch + 1, bad_epochs=0)
            if main:
                model.save(run_dir / "model")
        else:
            state["bad_epochs"] += 1
        entry = {
            "epoch": epoch + 1,
            "step": state["global_step"],
            "seconds": round(time.perf_counter() - start, 2),
            "train_seconds": round(train_seconds, 2),
            "validation": compact_metrics(metrics),
        }
        partial = stopped_by_request and state["batches_done"] < micro_per_epoch
        if partial:  # the checkpoint keeps the position in the epoch: --resume finishes it
            entry["partial"] = True
        state["history"].append(entry)
        log.write(entry)
        if main and progress:
            print(
                f"epoch {epoch + 1}{' (stopped)' if partial else ''}: validation {metric_target}/{metric_name} = {score:.4f}" + (" (best)" if improved else "")
            )
        if not partial:
            state.update(epoch=epoch + 1, batches_done=0)
        checkpoint()
        if stopped_by_request:
            break
        if t.early_stopping_patience and state["bad_epochs"] >= t.early_stopping_patience:
            stopped_early = True
            break
        if on_epoch_end is not None and on_epoch_end(epoch + 1, score):
            stopped_early = True
            break

    result = TrainResult(run_dir, float(state["best_score"]), state["best_epoch"], state["global_step"], stopped_early, stopped_by_request=stopped_by_request)
    accelerator.wait_for_everyone()
    if main and finalize:
        from mmagent.training.report import finalize_run

        result.metrics = finalize_run(run_dir, config, splits, device, progress)
        tracking.log_artifacts(accelerator, config, run_dir)
    accelerator.end_training()
    return result


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
    if config.train.metric:
        target, name = config.train.metric.split("/", 1)
        if target not in model.heads:
            raise ValueError(f"train.metric: unknown target {target!r}; targets: {list(model.heads)}")
        larger = name not in LOWER_IS_BETTER
        return target, name, larger
    first = next(iter(model.heads))
    name, larger = main_metric(model.heads[first].spec)
    return first, name, larger
