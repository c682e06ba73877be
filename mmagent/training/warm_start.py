"""Warm start (``train.init_from: RUN``): a new training run that starts from a finished run's model.

What the parent learned from its data is kept, not refitted: the encoders' and fusion's weights,
the numeric inputs' normalisation (buffers in the weights), the tokenizers and other encoder
assets, each target's label vocabulary (in the parent's order) and regression scale. Labels the new
training table adds are appended to the vocabulary: their head rows are new (the mean of the old
rows plus a little seeded noise, so a new class starts as a neutral guess, not as a copy of one old
class), while the old rows keep their weights. Settings that only say how to train (freezing,
dropout, learning rates, epochs) come from the new config.

The new config must describe the same model as the parent: the same inputs (column, modality,
encoder and its preprocessing), targets (column, type) and fusion shape. A difference is refused
before any work, naming the input, target or key. A parent that is an ensemble (from ``fit``)
gives its first model, the best single candidate (``mmagent update`` says so in lineage.json).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmagent.config import ConfigError, ExperimentConfig
from mmagent.data.dataset import fit_targets
from mmagent.data.tables import Table
from mmagent.model import MultimodalModel
from mmagent.runs import model_dir, read_config
from mmagent.specs import InputSpec, ModelSpec, TargetSpec

# Encoder fields that fix the architecture, the weights' meaning or the preprocessing: they must
# match the parent's. ``freeze`` and ``pretrained`` may differ (how to train, not what the model is).
ENCODER_KEYS = ("source", "name", "config", "lora", "pooling", "max_length", "image_size", "sample_rate", "max_seconds")
FUSION_KEYS = ("type", "hidden_dim", "num_layers", "num_heads")
NEW_ROW_NOISE = 0.01  # std of the new head rows' noise, relative to the old rows' spread


def parent_dir(config: ExperimentConfig) -> Path | None:
    """The run ``train.init_from`` names (relative paths from the config's folder), or None."""
    return config.resolve(config.train.init_from)


def check_init_from(config: ExperimentConfig) -> Path:
    """Refuse, before any work, a parent that is not a finished run or describes another model;
    return its folder. Errors name the input, target or fusion key that differs."""
    parent = parent_dir(config)
    if parent is None:
        raise ConfigError("train.init_from is not set")
    where = f"train.init_from {config.train.init_from!r}"
    if not (model_dir(parent) / "model.json").is_file():
        raise ConfigError(f"{where}: {parent} is not a finished run (no model/model.json)")
    saved = read_config(parent)
    spec = ModelSpec.model_validate_json((model_dir(parent) / "model.json").read_text())
    # The parent's own config says what it was built from; model.json has load-time names (assets).
    parent_inputs = [InputSpec.model_validate(i) for i in saved["inputs"]] if saved.get("inputs") else spec.inputs
    theirs = {i.key: i for i in parent_inputs}
    ours = {i.key: i for i in config.inputs}
    extra, missing = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    if extra:
        raise ConfigError(
            f"{where}: input {extra[0]!r} is not an input of the parent run (its inputs: {sorted(theirs)}); a warm start keeps the parent's inputs"
        )
    if missing:
        raise ConfigError(
            f"{where}: the parent run's input {missing[0]!r} is missing here (its inputs: {sorted(theirs)}); a warm start keeps the parent's inputs"
        )
    for key, inp in ours.items():
        old = theirs[key]
        diffs = [(f, getattr(old, f), getattr(inp, f)) for f in ("modality", "columns") if getattr(old, f) != getattr(inp, f)]
        diffs += [
            (f"encoder.{f}", getattr(old.encoder, f), getattr(inp.encoder, f)) for f in ENCODER_KEYS if getattr(old.encoder, f) != getattr(inp.encoder, f)
        ]
        if diffs:
            what = "; ".join(f"{f}: {b!r} here, {a!r} in the parent" for f, a, b in diffs)
            raise ConfigError(f"{where}: input {key!r} differs from the parent run's ({what}); a warm start keeps the parent's inputs")
    old_targets = {t.column: t.type for t in spec.targets}
    new_targets = {t.column: t.type for t in config.targets}
    if old_targets != new_targets:
        raise ConfigError(f"{where}: targets {new_targets} differ from the parent run's {old_targets}")
    for f in FUSION_KEYS:
        if getattr(spec.fusion, f) != getattr(config.fusion, f):
            raise ConfigError(f"{where}: fusion.{f} is {getattr(config.fusion, f)!r} here, {getattr(spec.fusion, f)!r} in the parent run")
    return parent


def added_labels(parent: list[TargetSpec], fitted: list[TargetSpec]) -> dict[str, list[str]]:
    """Per target, the labels ``fitted`` (from the new training table) has that ``parent`` lacks."""
    known = {t.column: t.labels for t in parent}
    return {t.column: [lab for lab in t.labels if lab not in known[t.column]] for t in fitted if t.type != "regression"}


def warm_start_model(config: ExperimentConfig, train: Table) -> MultimodalModel:
    """The parent's model, grown by the labels ``train`` adds, with the new config's training
    settings (freezing, dropout); see the module docstring."""
    parent_path = check_init_from(config)
    parent = MultimodalModel.load(model_dir(parent_path))  # an ensemble's folder holds its first model here
    added = added_labels(parent.spec.targets, fit_targets(train, config.targets))
    wanted = {t.column: t for t in config.targets}
    targets = [
        t.model_copy(
            update={
                "labels": t.labels + added.get(t.column, []),
                "loss_weight": wanted[t.column].loss_weight,
                "label_smoothing": wanted[t.column].label_smoothing,
            }
        )
        for t in parent.spec.targets
    ]
    freeze = {i.key: i for i in config.inputs}
    inputs = [
        i.model_copy(update={"encoder": i.encoder.model_copy(update={"freeze": freeze[i.key].encoder.freeze}), "required": freeze[i.key].required})
        for i in parent.spec.inputs
    ]
    fusion = parent.spec.fusion.model_copy(update={"dropout": config.fusion.dropout, "modality_dropout": config.fusion.modality_dropout})
    model = MultimodalModel(ModelSpec(inputs=inputs, targets=targets, fusion=fusion, head_dropout=config.head_dropout))
    state = parent.state_dict()
    generator = torch.Generator().manual_seed(config.train.seed)
    for name, labels in added.items():
        if labels:
            for part in ("weight", "bias"):
                key = f"heads.{name}.layer.1.{part}"
                state[key] = grow_rows(state[key], len(labels), generator)
    model.load_state_dict(state)
    return model


def grow_rows(old: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``old`` with ``n`` rows appended: the mean of the old rows plus seeded noise scaled to their
    spread (new classes start alike but not identical; the old rows are unchanged)."""
    mean = old.mean(0, keepdim=True)
    spread = old.std(0, keepdim=True) if old.shape[0] > 1 else torch.zeros_like(mean)
    noise = torch.randn((n, *old.shape[1:]), generator=generator, dtype=old.dtype) * spread * NEW_ROW_NOISE
    return torch.cat([old, mean.expand(n, *old.shape[1:]) + noise])
