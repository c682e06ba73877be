"""mmagent: turn pretrained encoders into task-specific multimodal agents.

``from mmagent import fit, Agent, MultimodalModel, build_encoder, build_fusion, load_config`` — imported
lazily so that ``mmagent --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Agent": "mmagent.agent.agent",
    "MultimodalModel": "mmagent.model",
    "build_encoder": "mmagent.encoders",
    "build_fusion": "mmagent.fusion",
    "load_config": "mmagent.config",
    "train": "mmagent.workflow",
    "fit": "mmagent.search.fit",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmagent' has no attribute {name!r}")


__all__ = list(_EXPORTS)
