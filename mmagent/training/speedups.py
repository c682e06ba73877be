"""Speed switches of the training loop that do not change what is learned: the AdamW kernel and
``torch.compile``. (Length-grouped batches are in ``sampling.py``, the thread policy in
``threads.py``, mixed precision in the trainer; README "Speed" says what each one gains.)"""

from __future__ import annotations

from typing import Any

import torch


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether torch has a fused AdamW kernel for ``device`` (CUDA, and the CPU from torch 2.4 on)."""
    try:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1, device=device))], fused=True)
    except (RuntimeError, ValueError, TypeError):  # "fused=True requires all the params to be ... on a supported device"
        return False
    return True


def use_fused(choice: bool | str, device: torch.device) -> bool:
    """``train.fused_optimizer``: True / False as given; ``auto`` fuses wherever torch can. On this
    project's 2-core CPU one AdamW step over MiniLM-L6 (22 M parameters) took 16 ms fused against
    238 ms for torch's default ``foreach`` kernel (1 thread): memory traffic, not arithmetic."""
    if choice == "auto":
        return fused_adamw_supported(device)
    if choice and not fused_adamw_supported(device):
        raise ValueError(f"train.fused_optimizer: torch {torch.__version__} has no fused AdamW for {device.type}; set it to auto or false")
    return bool(choice)


def make_optimizer(groups: list[dict[str, Any]], fused: bool) -> torch.optim.AdamW:
    """AdamW over the parameter groups: one fused kernel per step when ``fused``, else torch's
    default (the multi-tensor ``foreach`` implementation)."""
    return torch.optim.AdamW(groups, fused=True) if fused else torch.optim.AdamW(groups)


def compile_encoders(model: Any) -> list[str]:
    """``torch.compile`` each trainable encoder in place (``nn.Module.compile``: parameter names and
    saved weights do not change), with dynamic shapes since batches differ in length; return
    their names. Frozen encoders are left alone (cached, or cheap next to the backward pass)."""
    names = []
    for name, enc in model.encoders.items():
        if not enc.is_frozen:
            enc.compile(dynamic=True)
            names.append(name)
    return names
