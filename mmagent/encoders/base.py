"""The encoder interface, the encoder spec and the source registry.

An *encoder* turns one modality into vectors. Every encoder, whatever library it wraps, offers:

- ``modality`` (``text``/``image``/``audio``/``numeric``) and ``output_dim``;
- ``preprocessor``: a picklable object that turns one raw input (a string, an image path / PIL
  image / array, a waveform or audio path, a list of numbers) into tensors. It is cheap and runs in
  DataLoader workers; its ``collate`` pads a list of samples into a batch;
- ``forward(batch) -> EncoderOutput``: per-sample token sequences with a padding mask, plus a pooled
  vector, so that fusion modules can use either.

Encoders are chosen by a spec ``{source, name, ...}``. A *source* (``hf``, ``timm``, ``builtin``,
...) is a builder function registered with :func:`register_source`; third-party packages add
sources through the ``mmagent.encoders`` entry-point group.
"""

from __future__ import annotations

import difflib
import importlib.metadata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.encoders.lora import apply_lora
from mmagent.specs import EncoderOutput, EncoderSpec


def pad_stack(tensors: list[Tensor], pad_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Pad tensors along dim 0 to the longest and stack them; also return the (B, T) validity mask."""
    length = max(int(t.shape[0]) for t in tensors)
    out = tensors[0].new_full((len(tensors), length, *tensors[0].shape[1:]), pad_value)
    mask = torch.zeros(len(tensors), length, dtype=torch.bool)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


class Preprocessor:
    """Raw input -> tensors for one sample; ``collate`` batches them. Must be picklable.

    Subclasses implement ``__call__``. ``placeholder()`` is what a missing input becomes, so a batch
    keeps its shape; fusion ignores it through the presence mask.
    """

    #: per-key padding value; keys not listed are stacked (they must have equal shapes)
    pad_values: dict[str, float] = {}

    def __call__(self, item: Any) -> dict[str, Tensor]:
        raise NotImplementedError

    def placeholder(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def collate(self, samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        batch: dict[str, Tensor] = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            if key in self.pad_values:
                batch[key], batch[key + "_mask"] = pad_stack(values, self.pad_values[key])
            else:
                batch[key] = torch.stack(values)
        return batch

    def save(self, folder: Path) -> None:
        """Write files the preprocessor needs (tokenizer, feature-extractor config) into ``folder``."""

    def length(self, item: Any) -> float | None:
        """How long ``item`` is along the axis ``collate`` pads (tokens, seconds...), for
        length-grouped batches; None when batches are not padded to their longest item."""
        return None


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def pool(tokens: Tensor, mask: Tensor, how: str) -> Tensor:
    """Pool (B, T, D) tokens over valid positions."""
    if how == "cls":
        return tokens[:, 0]
    if how == "max":
        return tokens.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    return masked_mean(tokens, mask)


class Encoder(nn.Module):
    """Base class. Subclasses set ``modality``, ``output_dim``, ``preprocessor`` and implement
    ``forward`` and (for partial freezing) ``layer_groups``."""

    modality: str
    output_dim: int
    preprocessor: Preprocessor

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def layer_groups(self) -> list[nn.Module]:
        """Modules from the input side up (embeddings, block 0, block 1, ...), for ``freeze: N``."""
        return [self]

    def save_assets(self, folder: Path) -> dict[str, Any]:
        """Write what is needed to rebuild this encoder without the network (HF configs,
        tokenizers). Returns spec fields to override when reloading (e.g. ``name`` -> folder)."""
        return {}

    # -- freezing -----------------------------------------------------------------------------
    #: names of normalisation modules with running statistics inside the frozen layers (set by
    #: ``apply_freeze``); ``train()`` keeps them in eval mode so their statistics stay pretrained
    frozen_norms: tuple[str, ...] = ()

    def apply_freeze(self) -> None:
        """``freeze: all`` freezes everything; ``freeze: N`` (N > 0) the embeddings + N blocks.

        Frozen means frozen: BatchNorm-style layers in the frozen part also stop updating their
        running statistics (they stay in eval mode, even under ``model.train()``).
        """
        freeze = self.spec.freeze
        if freeze == "none" or freeze == 0:
            return
        modules = [self] if freeze == "all" else self.layer_groups()[: int(freeze) + 1]
        frozen_params: set[int] = set()
        inside: set[int] = set()  # modules within the frozen groups (groups may be ParameterLists)
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(False)
                frozen_params.add(id(p))
            inside.update(id(m) for m in module.modules())
        norms = []
        for name, m in self.named_modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                params = list(m.parameters(recurse=False))
                if id(m) in inside or (params and all(id(p) in frozen_params for p in params)):
                    norms.append(name)
        self.frozen_norms = tuple(norms)
        self.train(self.training)

    def train(self, mode: bool = True) -> Encoder:
        """``nn.Module.train``, except that frozen normalisation layers stay in eval mode."""
        super().train(mode)
        for name in self.frozen_norms:
            self.get_submodule(name).eval()
        return self

    @property
    def is_frozen(self) -> bool:
        """True when no parameter trains (its outputs can be cached)."""
        return not any(p.requires_grad for p in self.parameters())


# -- registry ---------------------------------------------------------------------------------
class EncoderError(ValueError):
    """An encoder spec names a source, model or builder that does not exist (in a config being
    validated or a saved model being loaded); the message names it and what is available."""


def unknown_name(what: str, name: str, available: Iterable[str], listing: str | None = None, key: str = "encoder.name") -> EncoderError:
    """An :class:`EncoderError` for the spec field ``key`` holding an unknown ``what`` ``name``,
    with the closest of ``available``.

    ``listing`` replaces the list of everything available (for catalogues too long to print,
    e.g. timm's ~1000 models: say how to list them instead).
    """
    choices = sorted(set(available))
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    rest = listing if listing is not None else f"available: {', '.join(choices)}"
    return EncoderError(f"{key}: unknown {what} {name!r}{hint} ({rest})")


SourceBuilder = Callable[[EncoderSpec], Encoder]
_SOURCES: dict[str, SourceBuilder] = {}
_ENTRY_POINTS_LOADED = False


def register_source(name: str) -> Callable[[SourceBuilder], SourceBuilder]:
    """Decorator: register ``fn(spec) -> Encoder`` as the builder for ``source: name``."""

    def deco(fn: SourceBuilder) -> SourceBuilder:
        _SOURCES[name] = fn
        return fn

    return deco


def build_named(source: str, catalogue: dict[str, type[Encoder]], spec: EncoderSpec) -> Encoder:
    """Builder body for sources that offer a fixed set of named encoders (``builtin``, ``zoo``)."""
    if spec.name not in catalogue:
        raise unknown_name(f"{source} encoder name", spec.name, catalogue)
    cls = catalogue[spec.name]
    if spec.modality is not None and spec.modality != cls.modality:
        raise ValueError(f"{source}:{spec.name} encodes {cls.modality}, not {spec.modality}")
    return cls(spec)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in importlib.metadata.entry_points(group="mmagent.encoders"):
        if ep.name not in _SOURCES:
            _SOURCES[ep.name] = ep.load()


def available_sources() -> list[str]:
    _load_entry_points()
    return sorted(_SOURCES)


def build_encoder(spec: EncoderSpec | dict[str, Any], modality: str | None = None) -> Encoder:
    """Build an encoder from a spec (a mapping or :class:`EncoderSpec`).

    ``modality`` fills ``spec.modality`` when the spec leaves it out (sources such as ``hf`` serve
    several modalities). Freezing and LoRA are applied here, once, for every source.
    """
    spec = EncoderSpec.model_validate(spec) if not isinstance(spec, EncoderSpec) else spec.model_copy()
    if modality is not None:
        if spec.modality is not None and spec.modality != modality:
            raise ValueError(f"encoder {spec.source}:{spec.name} is for {spec.modality}, input is {modality}")
        spec.modality = modality  # type: ignore[assignment]
    _load_entry_points()
    if spec.source not in _SOURCES:
        raise unknown_name("encoder source", spec.source, available_sources(), key="encoder.source")
    encoder = _SOURCES[spec.source](spec)
    if spec.lora is not None:
        apply_lora(encoder, spec.lora, f"{spec.source}:{spec.name}")
    encoder.apply_freeze()
    return encoder
