"""The training loop's pieces, nanoGPT-style: the state a checkpoint saves, one epoch of optimizer
steps, and the validation that keeps the best model. :func:`mmagent.training.trainer.train` builds
a :class:`Run` (setup) and calls these in a loop that fits on a screen."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mmagent.config import ExperimentConfig
from mmagent.inference import to_device
from mmagent.inference.evaluate import evaluate
from mmagent.metrics import is_better
from mmagent.model import MultimodalModel
from mmagent.training.checkpoint import save_checkpoint
from mmagent.training.distributed import any_process
from mmagent.training.metrics_log import MetricsLog, compact_metrics, record_shard


@dataclass
class TrainState:
    """Where training stands; a checkpoint saves it (``asdict``) and ``--resume`` restores it."""

    epoch: int = 0  # epochs finished
    batches_done: int = 0  # micro-batches of the current epoch (a run stopped mid-epoch resumes there)
    global_step: int = 0  # optimizer steps
    best_score: float | None = None
    best_loss: float | None = None  # validation log-loss at the best epoch: breaks ties
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validated epoch
    threads: int | None = None  # torch threads it trained with (a resume keeps them)
    log_bytes: int | None = None  # size of metrics.jsonl at the checkpoint (later lines are dropped on resume)

    @classmethod
    def restored(cls, progress: dict[str, Any]) -> TrainState:
        """From a checkpoint's progress mapping (keys this version does not know are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in progress.items() if k in known})


@dataclass
class Run:
    """Everything the loop needs, built once by the trainer's setup."""

    config: ExperimentConfig
    run_dir: Path
    ckpt_dir: Path
    config_json: dict[str, Any]
    accelerator: Any
    model: MultimodalModel  # the bare model (saved, evaluated)
    wrapped: Any  # what the optimizer steps through (DDP-wrapped when distributed)
    optimizer: Any
    scheduler: Any
    train_loader: Any  # prepared by Accelerate
    train_items: Any  # its dataset, told the epoch (augmentation seeds)
    val_loader: Any
    micro_per_epoch: int
    total_steps: int
    metric: tuple[str, str, bool]  # (target, metric name, larger is better)
    log: MetricsLog
    progress: bool

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)


def train_one_epoch(run: Run, state: TrainState, stop_requested: Any = None) -> bool:
    """Optimizer steps over one epoch (or what is left of it after a resume); True when
    ``stop_requested`` ended it early (a time budget), with the position kept in ``state``."""
    from tqdm.auto import tqdm

    acc, t, epoch = run.accelerator, run.config.train, state.epoch
    # Accelerate's loader re-sets the sampler's epoch from its own counter on every pass;
    # setting it here keeps data order a function of (seed, epoch) even after --resume.
    run.train_loader.set_epoch(epoch)
    run.train_items.epoch = epoch
    run.wrapped.train()
    batches = acc.skip_first_batches(run.train_loader, state.batches_done) if state.batches_done else run.train_loader
    bar = tqdm(
        batches,
        total=run.micro_per_epoch,
        initial=state.batches_done,
        desc=f"epoch {epoch + 1}/{t.epochs}",
        disable=not (run.progress and run.main),
        leave=False,
    )
    seen: list[int] | None = [] if os.environ.get("MMAGENT_RECORD_SHARDS") == "1" else None
    stopped = False
    for batch in bar:
        if seen is not None:
            seen.extend(batch["index"].tolist())
        with acc.accumulate(run.wrapped):
            loss = run.wrapped(to_device(batch, acc.device))
            acc.backward(loss)
            if acc.sync_gradients and t.max_grad_norm:
                acc.clip_grad_norm_(run.wrapped.parameters(), t.max_grad_norm)
            run.optimizer.step()
            if acc.sync_gradients and not acc.optimizer_step_was_skipped:  # one schedule step per optimizer step, whatever the processes
                run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        state.batches_done += 1
        if not acc.sync_gradients:
            continue
        state.global_step += 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
        run.log.write({"step": state.global_step, "epoch": epoch + 1, "loss": loss.item(), "lr": run.scheduler.get_last_lr()[0]})
        if t.checkpoint_every_steps and state.global_step % t.checkpoint_every_steps == 0:
            checkpoint(run, state)
        if state.global_step >= run.total_steps:
            break
        if stop_requested is not None and any_process(acc, stop_requested()):
            stopped = True
            break
    bar.close()
    if seen is not None:
        record_shard(run.run_dir, acc.process_index, acc.num_processes, epoch + 1, seen)
    return stopped


def validate_and_select(run: Run, state: TrainState, started: float, train_seconds: float, partial: bool) -> float:
    """Score the epoch on validation (every process: the same decision everywhere), save the model
    when it is the best so far, log the epoch; returns the score."""
    target, name, larger_better = run.metric
    metrics, _ = evaluate(run.model, run.val_loader, run.accelerator.device)
    if name not in metrics[target]:
        why = "AUROC needs rows of every class" if name == "auroc" else "no usable rows"
        raise ValueError(
            f"validation cannot score {target}/{name}: {why} (n={metrics[target].get('n')}, labels unseen in training: {metrics[target].get('unseen_labels')}); give a larger validation set or data.validation_fraction"
        )
    score, loss = metrics[target][name], metrics[target].get("log_loss")
    improved = is_better(score, loss, state.best_score, state.best_loss, larger_better)
    if improved:
        state.best_score, state.best_loss, state.best_epoch, state.bad_epochs = score, loss, state.epoch + 1, 0
        if run.main:
            run.model.save(run.run_dir / "model")
    else:
        state.bad_epochs += 1
    entry = {
        "epoch": state.epoch + 1,
        "step": state.global_step,
        "seconds": round(time.perf_counter() - started, 2),
        "train_seconds": round(train_seconds, 2),
        "validation": compact_metrics(metrics),
    }
    if partial:  # the checkpoint keeps the position in the epoch: --resume finishes it
        entry["partial"] = True
    state.history.append(entry)
    run.log.write(entry)
    if run.main and run.progress:
        print(f"epoch {state.epoch + 1}{' (stopped)' if partial else ''}: validation {target}/{name} = {score:.4f}" + (" (best)" if improved else ""))
    return float(score)


def checkpoint(run: Run, state: TrainState) -> None:
    """Save weights, optimizer, scheduler, RNG and ``state`` (main process), then wait for all."""
    from dataclasses import asdict

    if run.main:
        state.log_bytes = run.log.size()
        optimizer = run.optimizer.optimizer if hasattr(run.optimizer, "optimizer") else run.optimizer
        save_checkpoint(run.ckpt_dir, run.model, optimizer, run.scheduler, asdict(state), run.accelerator.scaler, run.config_json)
    run.accelerator.wait_for_everyone()


def should_stop(run: Run, state: TrainState) -> bool:
    """Early stopping: ``train.early_stopping_patience`` epochs without a better validation score."""
    patience = run.config.train.early_stopping_patience
    return bool(patience) and state.bad_epochs >= patience
