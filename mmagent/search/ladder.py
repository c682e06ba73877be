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

from pydantic import BaseModel, Field

Strategy = Literal["probe", "partial", "lora", "full"]
STRATEGIES: tuple[Strategy, ...] = ("probe", "partial", "lora", "full")
# Sources whose weights are pretrained and worth fine-tuning (built-ins train from scratch anyway).
PRETRAINED_SOURCES = {"zoo", "hf", "timm", "torchvision", "torchaudio"}
# Speech too: with the clip window read off the files (1 s for spoken digits), fine-tuning the
# top of Whisper's encoder costs about what an image encoder's does.
TUNABLE_MODALITIES = {"text", "image", "audio"}
# A pretrained speech encoder's alternative: a small log-mel CNN trained from scratch, which wins
# on narrow vocabularies (spoken digits) where a frozen general model's features are not enough.
SCRATCH_AUDIO: dict[str, Any] = {"source": "builtin", "name": "mel-cnn"}
# Learning rates that work for each strategy on these encoders (the search moves around them).
ENCODER_LR: dict[str, float] = {"probe": 0.0, "partial": 1e-4, "lora": 5e-4, "full": 5e-5}
HEAD_LR: dict[str, float] = {"probe": 3e-3, "partial": 1e-3, "lora": 1e-3, "full": 1e-3}


class Preset(BaseModel):
    """How hard ``fit`` tries: default budget, rungs of the ladder, epochs, whether to search, and
    whether to average the best candidates when that wins on validation."""

    budget_seconds: float
    strategies: list[Strategy]
    probe_epochs: int
    finetune_epochs: int
    search: bool
    ensemble: bool = False
    larger_backbones: bool = True  # climb to a larger catalog backbone when the budget affords it
    serving_tolerance: float = Field(1.0, ge=0, description="standard errors of the top validation score within which a candidate cheaper to serve wins; 0: the top score whatever it costs")  # fmt: skip


PRESETS: dict[str, Preset] = {
    "fast": Preset(budget_seconds=300, strategies=["probe", "partial"], probe_epochs=15, finetune_epochs=2, search=False, larger_backbones=False),
    "balanced": Preset(budget_seconds=1800, strategies=["probe", "partial", "lora", "full"], probe_epochs=25, finetune_epochs=3, search=True, ensemble=True),
    "best": Preset(
        budget_seconds=7200,
        strategies=["probe", "partial", "lora", "full"],
        probe_epochs=40,
        finetune_epochs=5,
        search=True,
        ensemble=True,
        serving_tolerance=0.0,
    ),
}


class SampleCost(BaseModel):
    """Seconds per sample, measured on the real model and data. Per input: ``load`` (decoding +
    preprocessing) and ``encode`` (the encoder's forward). Per strategy: ``train`` (a whole training
    step, forward + backward with that strategy's layers frozen). ``forward``: the model's
    evaluation forward. An input whose encoder is frozen under a strategy is cached: it is loaded
    and encoded once for all epochs (and all candidates), not per step."""

    load: dict[str, float]
    encode: dict[str, float]
    train: dict[str, float]  # the step alone: cached encoders' outputs are given
    forward: float
    always_frozen: list[str]  # encoders frozen whatever the strategy (e.g. Whisper)
    tunable: list[str]

    def cached(self, strategy: str) -> set[str]:
        return set(self.always_frozen) | (set(self.tunable) if strategy == "probe" else set())

    def epoch_seconds(self, strategy: str, n_train: int, n_validation: int) -> float:
        """One epoch of ``strategy``: training on n_train rows plus evaluating n_validation."""
        cached = self.cached(strategy)
        load = sum(v for k, v in self.load.items() if k not in cached)
        step = self.train[strategy]
        evaluate = max(self.forward - sum(self.encode[k] for k in cached), 0.0)
        return n_train * (load + step) + n_validation * (load + evaluate)

    def setup_seconds(self, strategy: str, n_train: int, n_validation: int, done: set[str] = frozenset()) -> float:  # type: ignore[assignment]
        """One-off work before the first epoch: caching the frozen encoders' outputs (those in
        ``done`` are cached already: the cache is shared across candidates)."""
        return sum(self.load[k] + self.encode[k] for k in self.cached(strategy) - set(done)) * (n_train + n_validation)

    def affordable_epochs(self, strategy: str, wanted: int, seconds_left: float, n_train: int, n_validation: int, done: set[str] = frozenset()) -> int:  # type: ignore[assignment]
        """As many of ``wanted`` epochs as fit in ``seconds_left`` (0: not even one)."""
        per_epoch = max(self.epoch_seconds(strategy, n_train, n_validation), 1e-6)
        left = seconds_left - self.setup_seconds(strategy, n_train, n_validation, done)
        return max(0, min(wanted, math.floor(left / per_epoch)))


# A sample smaller than this says too little about a table to rank candidates on: a rung that
# cannot afford it on a sample is skipped (the first one still runs, cut by the deadline).
MIN_SAMPLE_ROWS = 1000
# Epochs a rung on a sample is planned for: on a table too large for one pass, more rows pay more
# than more passes over fewer (each epoch of a large sample is already many steps).
SAMPLED_EPOCHS: dict[str, int] = {"probe": 3, "partial": 1, "lora": 1, "full": 1}


class RungPlan(BaseModel):
    """One rung of the ladder: its strategy, epochs and training rows (None: all; else a seeded
    sample, when one pass over all of them does not fit), or (epochs 0) why it is skipped."""

    strategy: Strategy
    epochs: int
    skipped: str = ""
    seconds: float = 0.0  # what it is expected to take (caching included)
    rows: int | None = None


def plan_rungs(
    cost: SampleCost, strategies: list[Strategy], plan: Preset, seconds: float, n_train: int, n_validation: int, must_run: bool = True
) -> list[RungPlan]:
    """How many epochs, on how many training rows, each rung gets out of ``seconds``, cheapest
    first. The probe gets at most a quarter of the training time, counted *after* caching the
    frozen encoders' outputs: that one-off pass is paid whatever the probe's epochs, and with a
    slow encoder (Whisper over 3,000 clips: ~5 min) charging it to the probe's quarter left the
    probe a single epoch on features that make an epoch take seconds. A rung that cannot afford
    its planned epochs over every row trains on a seeded sample that fits (:func:`rows_that_fit`;
    a million rows: caching them all took 4x a 3-minute budget), the fine-tuning rungs then
    sharing the time left evenly. A rung that cannot finish one epoch on even
    :data:`MIN_SAMPLE_ROWS` is skipped with the reason; with ``must_run`` the cheapest always runs
    (the deadline cuts it mid-epoch if need be)."""
    rungs: list[RungPlan] = []
    cached: set[str] = set()
    for k, strategy in enumerate(strategies):
        wanted = plan.probe_epochs if strategy == "probe" else plan.finetune_epochs
        setup = cost.setup_seconds(strategy, n_train, n_validation, done=cached)
        share = seconds
        if strategy == "probe" and len(strategies) > 1:
            share = min(seconds, setup + 0.25 * max(0.0, seconds - setup))
        rows, epochs = n_train, cost.affordable_epochs(strategy, wanted, share, n_train, n_validation, done=cached)
        if epochs < min(wanted, SAMPLED_EPOCHS[strategy]):  # not even a short pass over every row: a sample
            if strategy == "probe" and len(strategies) > 1:
                share = 0.25 * seconds
            elif strategy != "probe":
                share = seconds / (len(strategies) - k)  # the fine-tuning rungs left share the time
            rows = min(n_train, rows_that_fit(cost, strategy, SAMPLED_EPOCHS[strategy], share, n_validation, cached))
            if rows < min(n_train, MIN_SAMPLE_ROWS):
                rows = min(n_train, MIN_SAMPLE_ROWS)
            epochs = cost.affordable_epochs(strategy, wanted, share, rows, n_validation, done=cached)
        if epochs == 0 and (rungs or not must_run):
            need = cost.setup_seconds(strategy, rows, n_validation, done=cached) + cost.epoch_seconds(strategy, rows, n_validation)
            on = "" if rows == n_train else f" on a sample of {rows} rows"
            rungs.append(
                RungPlan(
                    strategy=strategy,
                    epochs=0,
                    skipped=f"one epoch{on} needs ~{need:.0f} s, its share of the ~{max(0.0, seconds):.0f} s left is ~{max(0.0, share):.0f} s",
                )
            )
            continue
        epochs = max(epochs, 1)
        spent = cost.setup_seconds(strategy, rows, n_validation, done=cached) + epochs * cost.epoch_seconds(strategy, rows, n_validation)
        rungs.append(RungPlan(strategy=strategy, epochs=epochs, seconds=spent, rows=None if rows == n_train else rows))
        seconds -= spent
        cached |= cost.cached(strategy)
    return rungs


def rows_that_fit(cost: SampleCost, strategy: str, epochs: int, seconds: float, n_validation: int, done: set[str] = frozenset()) -> int:  # type: ignore[assignment]
    """The most training rows on which caching (what is not in ``done``) and ``epochs`` epochs of
    ``strategy`` fit in ``seconds``: every cost is linear in the rows, validation's fixed."""
    fixed = cost.setup_seconds(strategy, 0, n_validation, done) + epochs * cost.epoch_seconds(strategy, 0, n_validation)
    per_row = cost.setup_seconds(strategy, 1, 0, done) + epochs * cost.epoch_seconds(strategy, 1, 0)
    return int(max(0.0, seconds - fixed) / max(per_row, 1e-9))


def tunable_inputs(raw: dict[str, Any]) -> list[int]:
    """Indexes of inputs whose pretrained encoder the strategies act on."""
    return [
        i for i, inp in enumerate(raw["inputs"]) if inp.get("modality") in TUNABLE_MODALITIES and (inp.get("encoder") or {}).get("source") in PRETRAINED_SOURCES
    ]


def strategy_encoder(encoder: dict[str, Any], strategy: Strategy, blocks: int) -> dict[str, Any]:
    """A copy of an encoder spec set up for ``strategy`` (``blocks``: its blocks above the
    embeddings, negative when the encoder has no attention layers for LoRA; ``partial`` freezes
    the lower half, and stands in for ``lora`` on such encoders)."""
    encoder = copy.deepcopy(encoder)
    if strategy == "lora" and blocks < 0:
        strategy = "partial"
    blocks = abs(blocks)
    encoder.pop("lora", None)
    encoder["freeze"] = {"probe": "all", "partial": max(1, blocks // 2), "lora": "none", "full": "none"}[strategy]
    if strategy == "lora":
        encoder["lora"] = {"r": 8, "alpha": 16}
    return encoder


def strategy_of(encoder: dict[str, Any]) -> str:
    """The strategy an encoder spec stands for (the inverse of :func:`strategy_encoder`);
    ``scratch`` for a built-in encoder trained from nothing."""
    if encoder.get("source") == "builtin":
        return "scratch"
    if encoder.get("lora"):
        return "lora"
    freeze = encoder.get("freeze", "none")
    return "probe" if freeze == "all" else "full" if freeze in ("none", 0) else "partial"


def rung_inputs(raw: dict[str, Any]) -> list[int]:
    """The inputs the ladder's rungs fine-tune: every tunable one, but a speech encoder stays
    frozen beside other tunable encoders (AV-digits: fine-tuning Whisper and EfficientNet together
    left the partial rung 3 slow epochs at 81 % on validation, where the image alone reached 94 %
    on test). The search after the ladder still tries every combination."""
    tunable, speech = tunable_inputs(raw), set(speech_inputs(raw))
    others = [i for i in tunable if i not in speech]
    return others or tunable


def speech_inputs(raw: dict[str, Any]) -> list[int]:
    """Indexes of audio inputs on a pretrained encoder (for which a scratch CNN is an alternative)."""
    return [i for i, inp in enumerate(raw["inputs"]) if inp.get("modality") == "audio" and (inp.get("encoder") or {}).get("source") in PRETRAINED_SOURCES]


def scratch_audio(encoder: dict[str, Any]) -> dict[str, Any]:
    """The scratch CNN standing in for a pretrained speech encoder (same clip length)."""
    return {**SCRATCH_AUDIO, "max_seconds": encoder.get("max_seconds", 10.0)}


def search_space(
    raw: dict[str, Any],
    strategies: list[Strategy],
    blocks: dict[int, int],
    max_epochs: int,
    larger: list[tuple[dict[str, Any], dict[int, int], list[Strategy]]] = (),  # type: ignore[assignment]
    sample_rows: list[int] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """The ``tune.space`` ``fit`` searches: each tunable encoder's strategy, the learning rates,
    epochs and, with several inputs, the fusion and its modality dropout. ``larger``: other
    backbones (a base config carrying them, their block counts, the strategies affordable on
    them), added to each input's choices: the backbone is a dimension of the search.
    ``sample_rows``: the training-sample sizes the ladder's rungs used on a table too large for
    a full pass; the search chooses among them (more rows, or more epochs on fewer)."""
    space: dict[str, Any] = {
        f"inputs.{i}.encoder": {"type": "categorical", "choices": [strategy_encoder(raw["inputs"][i]["encoder"], s, blocks.get(i, 2)) for s in strategies]}
        for i in tunable_inputs(raw)
    }
    for other, other_blocks, affordable in larger:
        for i in tunable_inputs(raw):
            if other["inputs"][i]["encoder"] != raw["inputs"][i]["encoder"]:
                space[f"inputs.{i}.encoder"]["choices"] += [strategy_encoder(other["inputs"][i]["encoder"], s, other_blocks.get(i, 2)) for s in affordable]
    for i in speech_inputs(raw):  # the pretrained speech encoder's strategies, or the scratch CNN
        space[f"inputs.{i}.encoder"]["choices"].append(scratch_audio(raw["inputs"][i]["encoder"]))
    space["train.lr"] = {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}
    space["train.head_lr"] = {"type": "float", "low": 3e-4, "high": 1e-2, "log": True}
    space["train.epochs"] = {"type": "int", "low": 1, "high": max_epochs}
    if sample_rows:
        space["train.sample_rows"] = {"type": "categorical", "choices": sorted(set(sample_rows))}
    if len(raw["inputs"]) > 1:
        space["fusion.type"] = {"type": "categorical", "choices": ["concat", "gated", "cross_attention"]}
        space["fusion.modality_dropout"] = {"type": "float", "low": 0.0, "high": 0.4}
    return space


def rung_params(raw: dict[str, Any], strategy: Strategy, blocks: dict[int, int], epochs: int, scratch: bool = False, rows: int | None = None) -> dict[str, Any]:
    """One rung of the ladder as search parameters: every tunable encoder on ``strategy``, the
    strategy's usual learning rates, the base fusion; with ``scratch``, speech inputs on the
    scratch CNN instead; ``rows``: train on a seeded sample of that many rows."""
    climbing = rung_inputs(raw)
    params: dict[str, Any] = {
        f"inputs.{i}.encoder": strategy_encoder(raw["inputs"][i]["encoder"], strategy if i in climbing else "probe", blocks.get(i, 2))
        for i in tunable_inputs(raw)
    }
    for i in speech_inputs(raw) if scratch else []:
        params[f"inputs.{i}.encoder"] = scratch_audio(raw["inputs"][i]["encoder"])
    params |= {"train.lr": ENCODER_LR[strategy] or 1e-4, "train.head_lr": HEAD_LR[strategy], "train.epochs": int(epochs)}
    if rows is not None:
        params["train.sample_rows"] = int(rows)
    if len(raw["inputs"]) > 1:
        params |= {"fusion.type": raw["fusion"]["type"], "fusion.modality_dropout": raw["fusion"]["modality_dropout"]}
    return params


def encoder_blocks(model: Any, raw: dict[str, Any]) -> dict[int, int]:
    """Blocks above the embeddings of each tunable input's encoder, read off the built model;
    negative for an encoder without attention projections (no LoRA there: a CNN)."""
    from torch import nn

    from mmagent.encoders.lora import DEFAULT_TARGETS

    keys = list(model.encoders)
    out = {}
    for i in tunable_inputs(raw):
        encoder = model.encoders[keys[i]]
        blocks = max(1, len(encoder.layer_groups()) - 1)
        lora_ok = any(isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in DEFAULT_TARGETS for name, m in encoder.named_modules())
        out[i] = blocks if lora_ok else -blocks
    return out


def measure_cost(model: Any, loader: Any, raw: dict[str, Any], blocks: dict[int, int], device: Any = "cpu") -> SampleCost:
    """Time, on one real batch after a warm-up batch (tokenizer start, allocations): each input's
    loading and encoding, the evaluation forward, and a training step of each strategy. Small
    batches keep this to seconds; per-sample costs hardly depend on the batch size on a CPU."""
    import torch

    from mmagent.inference import to_device

    dataset = loader.dataset
    keys = list(model.encoders)
    rows = list(range(len(dataset)))
    warm, timed = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    if not warm or not timed:
        raise ValueError("too few training rows to measure the cost of a sample (need at least two)")
    load: dict[str, float] = {}
    for inp in dataset.inputs:
        pre = dataset.preprocessors[inp.key]
        for part in (warm, timed):
            start = time.perf_counter()
            for i in part:
                value = dataset.raw_value(i, inp)
                if value is not None:
                    pre(value)
        load[inp.key] = (time.perf_counter() - start) / len(timed)
    batches = [to_device(loader.collate_fn([dataset[i] for i in part]), device) for part in (warm, timed)]
    tunable = [keys[i] for i in rung_inputs(raw)]  # the others stay frozen (cached) in every rung
    always = [keys[i] for i, inp in enumerate(raw["inputs"]) if (inp.get("encoder") or {}).get("freeze") == "all" and keys[i] not in tunable]
    saved = {id(p): p.requires_grad for p in model.parameters()}

    def seconds(fn: Any) -> float:
        fn(batches[0])  # warm-up
        t = time.perf_counter()
        fn(batches[1])
        return (time.perf_counter() - t) / len(timed)

    def encoded(b: dict[str, Any], names: list[str]) -> dict[str, Any]:
        model.eval()
        with torch.no_grad():
            return {k: model.encoders[k](b["inputs"][k]) for k in names}

    def step_with(cached: dict[int, dict[str, Any]]) -> Any:
        """A training step whose frozen, cached encoders come from ``cached`` (as in training)."""

        def run(b: dict[str, Any]) -> None:
            model.train()
            out = model(b["inputs"], b["present"], cached[id(b)])
            loss, _ = model.loss(out, b["targets"])
            loss.backward()
            model.zero_grad(set_to_none=True)

        return run

    def evaluate(b: dict[str, Any]) -> None:
        model.eval()
        with torch.no_grad():
            model(b["inputs"], b["present"])

    def encoder(key: str) -> Any:
        def run(b: dict[str, Any]) -> None:
            with torch.no_grad():
                model.encoders[key](b["inputs"][key])

        return run

    try:
        train = {}
        for strategy in ("probe", "partial", "full"):
            for k in tunable:
                groups = model.encoders[k].layer_groups()
                frozen = {"probe": len(groups), "partial": 1 + max(1, abs(blocks.get(keys.index(k), 2)) // 2), "full": 0}[strategy]
                for n, group in enumerate(groups):
                    for p in group.parameters():
                        p.requires_grad_(n >= frozen)
            names = always + (tunable if strategy == "probe" else [])
            outputs = {id(b): encoded(b, names) for b in batches}
            train[strategy] = seconds(step_with(outputs))
        # LoRA's backward still runs through every layer, without the frozen weights' gradients.
        train["lora"] = 0.5 * (train["partial"] + train["full"])
        forward = seconds(evaluate)
        encode = {k: seconds(encoder(k)) if k in tunable or k in always else 0.0 for k in keys}
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
        model.eval()
    return SampleCost(load=load, encode=encode, train=train, forward=forward, always_frozen=always, tunable=tunable)


def max_trials(n_rungs: int, n_validation: int) -> int:
    """How many candidates a validation set of ``n_validation`` rows can rank. Each extra candidate
    is one more draw at a noisy score: with 78 validation images, the best of 250 candidates is the
    luckiest, not the best (BreastMNIST: validation AUC 0.95, test 0.88). One candidate per four
    validation rows keeps that selection bias small; the ladder's rungs always run."""
    return max(n_rungs + 4, n_validation // 4)
