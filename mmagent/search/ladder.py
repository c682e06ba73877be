"""The candidates ``mmagent fit`` tries, cheapest first, and what each is expected to cost.

A *strategy* says how much of the pretrained encoders trains:

``probe``    every pretrained encoder frozen; their outputs are computed once and cached, so only
             fusion + heads train (seconds per epoch, many epochs);
``partial``  the lower half of each pretrained encoder frozen (embeddings + first blocks);
``lora``     LoRA adapters on transformer encoders (peft), the rest frozen;
``full``     everything trains.

The ladder climbs them in that order while the budget allows; the cost of one training sample is
measured once on the real model first (forward alone, forward + backward), so a candidate that
cannot finish even one epoch in the time left is skipped with the reason, not started.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Literal

from pydantic import BaseModel

Strategy = Literal["probe", "partial", "lora", "full"]
STRATEGIES: tuple[Strategy, ...] = ("probe", "partial", "lora", "full")
# Sources whose weights are pretrained and worth fine-tuning (built-ins train from scratch anyway).
PRETRAINED_SOURCES = {"zoo", "hf", "timm", "torchvision", "torchaudio"}
TUNABLE_MODALITIES = {"text", "image"}  # speech encoders stay as configured (Whisper: frozen)
# Learning rates that work for each strategy on these encoders (the search moves around them).
ENCODER_LR: dict[str, float] = {"probe": 0.0, "partial": 1e-4, "lora": 5e-4, "full": 5e-5}
HEAD_LR: dict[str, float] = {"probe": 3e-3, "partial": 1e-3, "lora": 1e-3, "full": 1e-3}
# Share of the full backward pass each strategy pays (frozen layers need no weight gradients).
BACKWARD_SHARE: dict[str, float] = {"probe": 0.0, "partial": 0.5, "lora": 0.7, "full": 1.0}


class Preset(BaseModel):
    """How hard ``fit`` tries: default budget, rungs of the ladder, epochs, whether to search."""

    budget_seconds: float
    strategies: list[Strategy]
    probe_epochs: int
    finetune_epochs: int
    search: bool


PRESETS: dict[str, Preset] = {
    "fast": Preset(budget_seconds=300, strategies=["probe", "partial"], probe_epochs=15, finetune_epochs=2, search=False),
    "balanced": Preset(budget_seconds=1800, strategies=["probe", "partial", "lora", "full"], probe_epochs=25, finetune_epochs=3, search=True),
    "best": Preset(budget_seconds=7200, strategies=["probe", "partial", "lora", "full"], probe_epochs=40, finetune_epochs=5, search=True),
}


class SampleCost(BaseModel):
    """Seconds per training sample, measured on the real model: forward only (frozen encoders,
    evaluation) and forward + backward with every encoder training."""

    forward: float
    forward_backward: float

    def epoch_seconds(self, strategy: str, n_train: int, n_validation: int) -> float:
        """One epoch of ``strategy``: training on n_train rows plus evaluating n_validation."""
        if strategy == "probe":
            return 0.02 * self.forward * (n_train + n_validation)  # cached features: heads only
        backward = self.forward_backward - self.forward
        return n_train * (self.forward + BACKWARD_SHARE[strategy] * backward) + n_validation * self.forward

    def setup_seconds(self, strategy: str, n_train: int, n_validation: int) -> float:
        """One-off work before the first epoch: the probe's feature cache."""
        return self.forward * (n_train + n_validation) if strategy == "probe" else 0.0

    def affordable_epochs(self, strategy: str, wanted: int, seconds_left: float, n_train: int, n_validation: int) -> int:
        """As many of ``wanted`` epochs as fit in ``seconds_left`` (0: not even one)."""
        per_epoch = max(self.epoch_seconds(strategy, n_train, n_validation), 1e-6)
        left = seconds_left - self.setup_seconds(strategy, n_train, n_validation)
        return max(0, min(wanted, math.floor(left / per_epoch)))


def tunable_inputs(raw: dict[str, Any]) -> list[int]:
    """Indexes of inputs whose pretrained encoder the strategies act on."""
    return [
        i for i, inp in enumerate(raw["inputs"])
        if inp.get("modality") in TUNABLE_MODALITIES and (inp.get("encoder") or {}).get("source") in PRETRAINED_SOURCES
    ]


def apply_strategy(raw: dict[str, Any], strategy: Strategy, blocks: dict[int, int], epochs: int, lr: float | None = None, head_lr: float | None = None) -> dict[str, Any]:
    """A copy of ``raw`` set up for ``strategy``. ``blocks[i]``: trainable blocks of input i's
    encoder (for ``partial``, which freezes the lower half)."""
    raw = copy.deepcopy(raw)
    for i in tunable_inputs(raw):
        encoder = raw["inputs"][i]["encoder"]
        encoder.pop("lora", None)
        if strategy == "probe":
            encoder["freeze"] = "all"
        elif strategy == "partial":
            encoder["freeze"] = max(1, blocks.get(i, 2) // 2)
        elif strategy == "lora":
            encoder["freeze"] = "none"
            encoder["lora"] = {"r": 8, "alpha": 16}
        else:
            encoder["freeze"] = "none"
    train = raw.setdefault("train", {})
    train["epochs"] = int(epochs)
    train["lr"] = float(lr if lr is not None else ENCODER_LR[strategy] or 1e-4)
    train["head_lr"] = float(head_lr if head_lr is not None else HEAD_LR[strategy])
    train["early_stopping_patience"] = 3 if strategy == "probe" else 2
    return raw


def encoder_blocks(model: Any, raw: dict[str, Any]) -> dict[int, int]:
    """Blocks above the embeddings of each tunable input's encoder, read off the built model."""
    keys = list(model.encoders)
    return {i: max(1, len(model.encoders[keys[i]].layer_groups()) - 1) for i in tunable_inputs(raw)}


def measure_cost(model: Any, loader: Any, device: Any = "cpu", batches: int = 2) -> SampleCost:
    """Time forward and forward + backward on a few real batches (the first one warms up)."""
    import torch

    from mmagent.inference import to_device

    samples = {"forward": 0, "forward_backward": 0}
    seconds = {"forward": 0.0, "forward_backward": 0.0}
    params = [p for p in model.parameters()]
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)  # the full-fine-tuning cost, whatever the candidate freezes
    try:
        for i, batch in enumerate(loader):
            if i > batches:
                break
            batch = to_device(batch, device)
            n = int(batch["present"].shape[0])
            for kind in ("forward", "forward_backward"):
                start = time.perf_counter()
                if kind == "forward":
                    model.eval()
                    with torch.no_grad():
                        model(batch["inputs"], batch["present"])
                else:
                    model.train()
                    loss, _ = model.loss(model(batch["inputs"], batch["present"]), batch["targets"])
                    loss.backward()
                    model.zero_grad(set_to_none=True)
                if i > 0:  # batch 0 pays one-off costs (tokenizer warm-up, allocations)
                    seconds[kind] += time.perf_counter() - start
                    samples[kind] += n
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)
        model.eval()
    if not samples["forward"]:
        raise ValueError("too few training rows to measure the cost of a sample (need at least two batches)")
    return SampleCost(forward=seconds["forward"] / samples["forward"], forward_backward=seconds["forward_backward"] / samples["forward_backward"])
