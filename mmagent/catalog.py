"""The backbone catalog: which pretrained encoders each modality can use, from small to large.

Each entry says where the weights come from (the offline zoo, or a hub: Hugging Face for ``hf`` and
``timm``), its size, its input limits, its licence, and what one sample's forward pass cost on a
2-core CPU (measured once on the project's 2-core machine, batch 32, the encoder alone).
``mmagent fit`` starts every tunable input on the smallest available
entry of its modality and climbs to a larger one when the measured cost and the budget afford it
(:mod:`mmagent.search.plan`). ``mmagent zoo list`` prints this table with what is available.

Entries are data, kept beside the specs rather than in ``encoders/`` because recipes and config
checks read them without loading the model stack: nothing here imports torch, and nothing touches
the network until :func:`available` is asked about a hub entry.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Origin = Literal["zoo", "hub"]


class Backbone(BaseModel):
    """One catalog entry."""

    model_config = ConfigDict(frozen=True)

    modality: Literal["text", "image", "audio"]
    encoder: dict[str, Any]  # the encoder spec an input gets (source, name and their defaults)
    params_m: float  # parameters, millions
    limits: str  # input limits, as a user reads them
    licence: str
    origin: Origin
    #: forward pass, ms per sample, 2-core CPU, batch 32 (text: a 20-token request; image 224 px;
    #: audio a 1 s clip in a 5 s window); None: not measured here (hub weights cannot load here)
    cpu_ms: float | None = None

    @property
    def key(self) -> str:
        return f"{self.encoder['source']}:{self.encoder['name']}"


def _zoo(name: str, **kw: Any) -> dict[str, Any]:
    return {"source": "zoo", "name": name, **kw}


CATALOG: tuple[Backbone, ...] = (
    # -- text --------------------------------------------------------------------------------
    Backbone(modality="text", encoder=_zoo("minilm-l6", max_length=64), params_m=22.7, limits="256 tokens (64 by default)", licence="Apache-2.0", origin="zoo", cpu_ms=2.8),
    Backbone(modality="text", encoder=_zoo("mpnet-base", max_length=64), params_m=109.5, limits="384 tokens (64 by default)", licence="Apache-2.0", origin="zoo", cpu_ms=17.9),
    Backbone(modality="text", encoder={"source": "hf", "name": "google/electra-base-discriminator", "max_length": 128}, params_m=108.9, limits="512 tokens", licence="Apache-2.0", origin="hub"),
    Backbone(modality="text", encoder={"source": "hf", "name": "roberta-base", "max_length": 128}, params_m=124.6, limits="512 tokens", licence="MIT", origin="hub"),
    Backbone(modality="text", encoder={"source": "hf", "name": "microsoft/deberta-v3-base", "max_length": 128}, params_m=183.8, limits="512 tokens", licence="MIT", origin="hub"),
    # -- image -------------------------------------------------------------------------------
    Backbone(modality="image", encoder=_zoo("efficientnet-lite0"), params_m=3.4, limits="224 x 224 px", licence="Apache-2.0", origin="zoo", cpu_ms=32.1),
    Backbone(modality="image", encoder=_zoo("efficientnet-lite2"), params_m=4.8, limits="260 x 260 px", licence="Apache-2.0", origin="zoo", cpu_ms=64.4),
    Backbone(modality="image", encoder={"source": "timm", "name": "efficientnet_b2"}, params_m=7.7, limits="256 x 256 px", licence="Apache-2.0", origin="hub"),
    Backbone(modality="image", encoder={"source": "timm", "name": "convnext_tiny"}, params_m=28.6, limits="224 x 224 px", licence="Apache-2.0", origin="hub"),
    Backbone(modality="image", encoder={"source": "hf", "name": "google/vit-base-patch16-224-in21k"}, params_m=86.4, limits="224 x 224 px", licence="Apache-2.0", origin="hub"),
    Backbone(modality="image", encoder={"source": "timm", "name": "swin_base_patch4_window7_224"}, params_m=87.8, limits="224 x 224 px", licence="MIT", origin="hub"),
    # -- audio -------------------------------------------------------------------------------
    Backbone(modality="audio", encoder=_zoo("whisper-tiny.en", max_seconds=5.0, freeze="all"), params_m=7.7, limits="30 s (window read off the files)", licence="MIT", origin="zoo", cpu_ms=135.0),
    Backbone(modality="audio", encoder={"source": "hf", "name": "facebook/wav2vec2-base", "max_seconds": 10.0}, params_m=94.4, limits="any length (10 s by default)", licence="Apache-2.0", origin="hub"),
    Backbone(modality="audio", encoder={"source": "hf", "name": "openai/whisper-base", "max_seconds": 5.0, "freeze": "all"}, params_m=20.6, limits="30 s", licence="Apache-2.0", origin="hub"),
    Backbone(modality="audio", encoder={"source": "hf", "name": "openai/whisper-small", "max_seconds": 5.0, "freeze": "all"}, params_m=88.2, limits="30 s", licence="Apache-2.0", origin="hub"),
)  # fmt: skip


def entries(modality: str) -> list[Backbone]:
    """The catalog's entries for ``modality``, smallest first."""
    return sorted((b for b in CATALOG if b.modality == modality), key=lambda b: b.params_m)


def default_encoder(modality: str) -> dict[str, Any]:
    """The encoder an input of ``modality`` starts on: the smallest zoo entry (offline)."""
    return dict(next(b for b in entries(modality) if b.origin == "zoo").encoder)


def find(encoder: dict[str, Any]) -> Backbone | None:
    """The catalog entry ``encoder`` (a spec dict) is built from, if any (same source and name)."""
    return next((b for b in CATALOG if (b.encoder["source"], b.encoder["name"]) == (encoder.get("source"), encoder.get("name"))), None)


def available(backbone: Backbone) -> tuple[bool, str]:
    """Whether ``backbone`` can be built here, and why not."""
    if backbone.origin == "zoo":
        from mmagent.encoders.zoo.archive import ARCHIVES, installed
        from mmagent.encoders.zoo.cache import ZooError, install_hint, package_dir

        name = backbone.encoder["name"]
        if name in ARCHIVES:
            return (True, "") if installed(name) else (False, f"not installed: mmagent zoo install {name}")
        try:
            package_dir(name)
        except ZooError:
            return False, f"not installed: {install_hint(name)}"
        return True, ""
    return (True, "") if hub_reachable() else (False, "no hub here (HF_HUB_OFFLINE, or huggingface.co unreachable)")


@functools.cache
def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers (``HF_HUB_OFFLINE=1`` says no without asking)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def larger(encoder: dict[str, Any]) -> list[Backbone]:
    """The available entries of the same modality that are larger than ``encoder``'s, smallest
    first (empty when ``encoder`` is not in the catalog: a user's own choice is kept)."""
    current = find(encoder)
    if current is None:
        return []
    return [b for b in entries(current.modality) if b.params_m > current.params_m and available(b)[0]]


def table() -> str:
    """The catalog as a text table, with what is available here."""
    lines = [f"{'modality':8} {'backbone':42} {'params':>8} {'cpu ms':>7}  {'licence':11} {'limits':32} available"]
    for b in sorted(CATALOG, key=lambda b: (b.modality, b.params_m)):
        ok, why = available(b)
        cost = f"{b.cpu_ms:.1f}" if b.cpu_ms is not None else "-"
        lines.append(f"{b.modality:8} {b.key:42} {b.params_m:7.1f}M {cost:>7}  {b.licence:11} {b.limits:32} {'yes' if ok else why}")
    return "\n".join(lines)
