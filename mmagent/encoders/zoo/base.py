"""What every zoo encoder shares: how it is saved, and which ``config`` keys it takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmagent.specs import EncoderSpec


class ZooAssets:
    """Mixin: a saved model rebuilds the zoo encoder by name, with its weights from the model file."""

    def save_assets(self, folder: Path) -> dict[str, Any]:
        return {"pretrained": False}


def check_config(spec: EncoderSpec, allowed: set[str]) -> None:
    """Only ``allowed`` keys may appear in a zoo encoder's ``config`` (the weights fix the rest)."""
    unknown = set(spec.config) - allowed
    if unknown:
        raise ValueError(f"zoo:{spec.name}: unknown config key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
