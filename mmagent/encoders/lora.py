"""LoRA adapters for transformer encoders, through peft.

This module does not import :mod:`mmagent.encoders.base` (which calls it): the settings are
described by a protocol that ``LoraSpec`` satisfies, so the two modules do not import each other.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

# Attention projection names across the HF families we wrap (BERT, ViT, wav2vec2, Whisper, timm ViT).
DEFAULT_TARGETS = ("query", "key", "value", "q_proj", "k_proj", "v_proj", "qkv")


class LoraSettings(Protocol):
    """What :func:`apply_lora` reads from a ``LoraSpec``."""

    r: int
    alpha: int
    dropout: float
    target_modules: list[str] | None


def apply_lora(encoder: nn.Module, lora: LoraSettings, label: str = "encoder") -> None:
    """Inject LoRA adapters into the encoder's attention projections and freeze everything else
    in the encoder, so only the adapters train (plus fusion and heads, outside the encoder).
    ``label`` (``source:name``) names the encoder in errors."""
    from peft import LoraConfig, inject_adapter_in_model

    present = {name.rsplit(".", 1)[-1] for name, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    targets = lora.target_modules or [t for t in DEFAULT_TARGETS if t in present]
    if not targets:
        raise ValueError(f"LoRA: no attention projections found in {label}; set lora.target_modules (linear layers here: {sorted(present)[:12]})")
    for p in encoder.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(targets))
    inject_adapter_in_model(config, encoder)
    for name, p in encoder.named_parameters():
        p.requires_grad_("lora_" in name)
