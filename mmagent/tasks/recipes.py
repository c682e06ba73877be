"""Domain recipes: named starting points a config selects with ``recipe: NAME``.

A recipe fills what the config leaves out — encoders per modality, fusion, training defaults,
tuning space, agent policy — and never overrides what the config states. Defaults use the offline
``zoo`` encoders; the usual hub alternatives are listed for each recipe (and in the README).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from mmagent import catalog


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    encoders: dict[str, dict[str, Any]]
    fusion: dict[str, Any]
    train: dict[str, Any]
    agent: dict[str, Any]
    hub_alternatives: dict[str, list[str]] = field(default_factory=dict)
    tune_space: dict[str, Any] = field(default_factory=dict)


_ZOO = {
    **{m: catalog.default_encoder(m) for m in ("text", "image", "audio")},  # the catalog's smallest offline backbones
    "numeric": {"source": "builtin", "name": "mlp"},
    "categorical": {"source": "builtin", "name": "hash-embedding"},
}

RECIPES: dict[str, Recipe] = {
    "customer_service": Recipe(
        name="customer_service",
        description="Typed and/or spoken utterance -> intent -> reply from a playbook, or hand-off to a human.",
        encoders=_ZOO,
        fusion={"type": "gated", "hidden_dim": 256, "modality_dropout": 0.3},
        train={"epochs": 4, "batch_size": 16, "lr": 5e-5, "head_lr": 1e-3, "early_stopping_patience": 2},
        # Spoken requests without text are transcribed (offline Whisper tiny.en) into the text input.
        # Unknown requests (outside every intent) go to a person; answered ones are right 95 % of the time.
        agent={"type": "customer_service", "threshold": 0.5, "escalation": {"max_error": 0.05}, "speech_to_text": "auto"},
        hub_alternatives={
            "text": ["hf: bert-base-uncased", "hf: roberta-base"],
            "audio": ["hf: openai/whisper-base", "hf: facebook/wav2vec2-base", "torchaudio: WAV2VEC2_BASE"],
        },
        tune_space={
            "train.lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True},
            "fusion.modality_dropout": {"type": "float", "low": 0.0, "high": 0.5},
        },
    ),
    "medical_imaging": Recipe(
        name="medical_imaging",
        description="Image (+ optional clinical text) -> finding(s); calibrated probabilities; refer to a clinician when unsure.",
        encoders=_ZOO,
        fusion={"type": "concat", "hidden_dim": 256, "modality_dropout": 0.2},
        train={"epochs": 8, "batch_size": 32, "lr": 1e-4, "head_lr": 1e-3, "early_stopping_patience": 3},
        # Images unlike the training scans (a photo, a blank, another modality) are referred, not graded.
        agent={"type": "medical", "refer_below": 0.8, "escalation": {"max_error": 0.1}},
        hub_alternatives={
            "image": ["timm: resnet50", "timm: convnext_tiny", "hf: google/vit-base-patch16-224"],
            "text": ["hf: emilyalsentzer/Bio_ClinicalBERT"],
        },
        tune_space={
            "train.lr": {"type": "float", "low": 3e-5, "high": 3e-4, "log": True},
            "inputs.0.encoder.freeze": {"type": "categorical", "choices": ["none", 2, "all"]},
        },
    ),
    "finance": Recipe(
        name="finance",
        description="News / tweets (+ numeric market features) -> sentiment or movement; alerts above thresholds.",
        encoders=_ZOO,
        fusion={"type": "gated", "hidden_dim": 128, "modality_dropout": 0.2},
        train={"epochs": 4, "batch_size": 32, "lr": 5e-5, "head_lr": 1e-3, "early_stopping_patience": 2},
        agent={
            "type": "finance",
            "threshold": 0.5,
            "escalation": {"max_error": 0.1},
            "alerts": [{"label": "negative", "above": 0.8, "action": "alert", "message": "strongly negative news"}],
        },
        hub_alternatives={"text": ["hf: ProsusAI/finbert", "hf: yiyanghkust/finbert-tone"]},
        tune_space={
            "train.lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True},
            "fusion.type": {"type": "categorical", "choices": ["concat", "gated", "cross_attention"]},
        },
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown recipe {name!r}; available: {sorted(RECIPES)}")
    return RECIPES[name]


def _merge(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: what the config gives wins."""
    out = copy.deepcopy(defaults)
    for k, v in given.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def refine_encoder(default: dict[str, Any], given: Any) -> Any:
    """The recipe's encoder refined by the config's partial settings (``--set
    inputs.0.encoder.freeze=all`` keeps the recipe's model and freezes it). A config that names
    another model (a different source or name) keeps none of the recipe's encoder settings."""
    if given is None:
        return copy.deepcopy(default)
    if not isinstance(given, dict):
        return given  # let validation name the problem
    same_model = all(given.get(k, default.get(k)) == default.get(k) for k in ("source", "name"))
    return _merge(default, given) if same_model else given


def apply_recipe(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill a raw config dict from its recipe (``raw["recipe"]``)."""
    recipe = get_recipe(raw["recipe"])
    raw = copy.deepcopy(raw)
    for inp in raw.get("inputs") or []:
        if isinstance(inp, dict) and inp.get("modality") in recipe.encoders:
            inp["encoder"] = refine_encoder(recipe.encoders[inp["modality"]], inp.get("encoder"))
    raw["fusion"] = _merge(recipe.fusion, raw.get("fusion") or {})
    raw["train"] = _merge(recipe.train, raw.get("train") or {})
    given_agent = raw.get("agent") or {}
    # A different policy type keeps none of the recipe's policy settings.
    if given_agent.get("type", recipe.agent["type"]) == recipe.agent["type"]:
        # the escalation block is one promise (max_error, target_precision or target_coverage): a
        # given one replaces the recipe's whole, it is never mixed with it
        defaults = {k: v for k, v in recipe.agent.items() if not (k == "escalation" and "escalation" in given_agent)}
        raw["agent"] = _merge(defaults, given_agent)
    else:
        raw["agent"] = given_agent
    if "space" not in (raw.get("tune") or {}) and recipe.tune_space:
        raw["tune"] = {**(raw.get("tune") or {}), "space": copy.deepcopy(recipe.tune_space)}
    return raw
