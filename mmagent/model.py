"""``MultimodalModel`` = one encoder per input + a fusion module + one head per target.

Saved as a folder: ``model.json`` (the :class:`ModelSpec`), ``model.safetensors`` (all weights, no
pickle) and ``assets/<input>/`` (tokenizer and config files, so loading needs no network).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from mmagent.encoders import build_encoder
from mmagent.fusion import build_fusion
from mmagent.io import atomic_dir, write_json
from mmagent.runs import RunFolderError, verify_checksums, write_checksums
from mmagent.specs import EncoderOutput, InputSpec, ModelSpec
from mmagent.tasks.heads import Head


@dataclass
class ModelOutput:
    logits: dict[str, Tensor]
    fused: Tensor
    gates: Tensor | None = None
    features: dict[str, EncoderOutput] = field(default_factory=dict)


class MultimodalModel(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoders = nn.ModuleDict({i.key: _build(n, i) for n, i in enumerate(spec.inputs)})
        self.fusion = build_fusion(spec.fusion, {k: e.output_dim for k, e in self.encoders.items()})
        self.heads = nn.ModuleDict({t.column: Head(t, self.fusion.output_dim, spec.head_dropout) for t in spec.targets})

    def train(self, mode: bool = True) -> MultimodalModel:
        """Frozen encoders stay in eval mode while the rest trains: no dropout noise, no BatchNorm
        statistics drift, and the same outputs as their cached features."""
        super().train(mode)
        for enc in self.encoders.values():
            if mode and enc.is_frozen:
                enc.eval()
        return self

    @property
    def input_names(self) -> list[str]:
        return list(self.encoders)

    def encode(self, inputs: dict[str, dict[str, Tensor]], cached: dict[str, EncoderOutput] | None = None) -> dict[str, EncoderOutput]:
        """Run every encoder, except those whose outputs are given in ``cached``."""
        cached = cached or {}
        return {name: cached[name] if name in cached else enc(inputs[name]) for name, enc in self.encoders.items()}

    def forward(self, inputs: dict[str, dict[str, Tensor]], present: Tensor, cached: dict[str, EncoderOutput] | None = None) -> ModelOutput:
        """``inputs``: per input, the batch its preprocessor collated. ``present``: (B, M) bool, in
        the order of :attr:`input_names`. ``cached``: precomputed outputs of frozen encoders."""
        features = self.encode(inputs, cached)
        fused = self.fusion(features, present)
        logits = {name: head(fused.vector) for name, head in self.heads.items()}
        return ModelOutput(logits=logits, fused=fused.vector, gates=fused.gates, features=features)

    def loss(self, output: ModelOutput, targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum of per-target losses, and the per-target values."""
        parts = {name: head.loss(output.logits[name], targets[name]) for name, head in self.heads.items()}
        total = sum(self.heads[n].spec.loss_weight * v for n, v in parts.items())
        return total, parts  # type: ignore[return-value]

    def predict(self, output: ModelOutput) -> dict[str, Tensor]:
        return {name: head.predict(output.logits[name]) for name, head in self.heads.items()}

    # -- persistence ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write the model folder atomically (config JSON + safetensors + encoder assets)."""
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            spec = self.spec.model_copy(deep=True)
            for inp in spec.inputs:
                overrides = self.encoders[inp.key].save_assets(tmp / "assets" / _safe(inp.key))
                inp.encoder = inp.encoder.model_copy(update=overrides)
            write_json(tmp / "model.json", spec.model_dump(mode="json"))
            save_model(self, str(tmp / "model.safetensors"))
            write_checksums(tmp)

    @classmethod
    def load(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> MultimodalModel:
        folder = Path(folder)
        if not (folder / "model.json").is_file():
            raise FileNotFoundError(f"{folder} is not a saved mmagent model (no model.json)")
        verify_checksums(folder)
        spec = ModelSpec.model_validate(json.loads((folder / "model.json").read_text()))
        for inp in spec.inputs:
            assets = (folder / "assets" / _safe(inp.key)).resolve()
            name = inp.encoder.name.replace("{assets}", str(assets))
            # Weights come from model.safetensors: never fetch pretrained ones again.
            inp.encoder = inp.encoder.model_copy(update={"name": name, "pretrained": False})
        model = cls(spec)
        weights = folder / "model.safetensors"
        try:
            missing, unexpected = load_model(model, str(weights), strict=False, device=str(map_location))
        except (SafetensorError, OSError, ValueError) as e:  # no checksums to tell: say which file
            raise RunFolderError(f"{weights}: cannot read the weights ({e})") from None
        if missing or unexpected:
            raise ValueError(f"{folder}: weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.eval()
        return model


def _build(n: int, inp: InputSpec) -> nn.Module:
    """Input ``n``'s encoder; a spec the source refuses (an HF config whose hidden size does not
    divide by its heads, a missing option) is an error naming the config key, not the library's words alone."""
    try:
        return build_encoder(inp.encoder, inp.modality)
    except (ValueError, TypeError, KeyError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if message.startswith("inputs."):
            raise
        named = f"inputs.{n}.encoder ({inp.encoder.source}:{inp.encoder.name}, input {inp.key!r}): {message}"
        try:
            error = type(e)(named) if isinstance(e, ValueError) else ValueError(named)  # keep EncoderError and kin
        except TypeError:  # an exception class that takes other arguments
            error = ValueError(named)
        raise error from e


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
