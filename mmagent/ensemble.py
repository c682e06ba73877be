"""``EnsembleModel``: several trained models of one task, their calibrated probabilities averaged.

``mmagent fit`` builds one when averaging its best candidates beats the best single candidate on
validation. It stands in for a :class:`~mmagent.model.MultimodalModel` wherever a model is *run*
(the agent and the server, evaluation, the report, calibration): the same inputs, the same heads.

- Members share each input's preprocessing (same encoder, token limit, image size, audio window),
  so one collated batch feeds them all; they differ in what was trained (freezing, LoRA, learning
  rates, fusion, epochs).
- Its logits are the log of the members' averaged calibrated probabilities (multilabel: the logit
  of the average; regression: the averaged output), so softmax / sigmoid of them give the average
  back, and metrics, a temperature on top and escalation thresholds apply unchanged.
- What needs one network (the fused embedding that drift profiles watch, a warm-started update)
  uses :attr:`primary`: the first member, the best single candidate. The ONNX export is one graph
  of all members; explanations go through all of them (Grad-CAM gives way to occlusion).

Saved as a folder: the primary as a plain model folder (``model.json``, ``model.safetensors``,
``assets/``: what reads one network finds it where it always is), ``members/<i>/`` (the others,
each a saved ``MultimodalModel``), ``ensemble.json`` (member folders and every member's
temperatures) and ``checksums.sha256`` over all of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmagent.io import atomic_dir, write_json
from mmagent.model import ModelOutput, MultimodalModel
from mmagent.runs import ENSEMBLE_FILE, RunFolderError, write_checksums
from mmagent.specs import EncoderOutput, EncoderSpec, ModelSpec

MEMBERS_DIR = "members"
# What an encoder spec says about preprocessing (the rest, freezing and LoRA, is about training).
_PREPROCESSING_FIELDS = ("source", "name", "modality", "max_length", "image_size", "sample_rate", "max_seconds")
_EPS = 1e-7
ASSETS_PLACEHOLDER = "{assets}"  # as saved in model.json (see mmagent.encoders.hf)


def preprocessing_key(encoder: EncoderSpec) -> tuple[Any, ...]:
    """Two encoders with equal keys turn a row into the same tensors. A loaded model's encoder
    names its own saved assets folder (tokenizer, config): that counts as the saved placeholder."""
    fields = {f: getattr(encoder, f) for f in _PREPROCESSING_FIELDS}
    name = Path(fields["name"])
    if name.is_absolute() and name.parent.name == "assets":
        fields["name"] = ASSETS_PLACEHOLDER
    return tuple(fields.values()) + (json.dumps(encoder.config, sort_keys=True),)


def incompatibility(a: ModelSpec, b: ModelSpec) -> str | None:
    """Why models of specs ``a`` and ``b`` cannot be averaged (``None`` when they can)."""
    if [i.key for i in a.inputs] != [i.key for i in b.inputs]:
        return f"different inputs: {[i.key for i in a.inputs]} vs {[i.key for i in b.inputs]}"
    for x, y in zip(a.inputs, b.inputs):
        if x.columns != y.columns or preprocessing_key(x.encoder) != preprocessing_key(y.encoder):
            return f"input {x.key!r} is preprocessed differently ({x.encoder.source}:{x.encoder.name} vs {y.encoder.source}:{y.encoder.name})"
    ta = [(t.column, t.type, list(t.labels), t.mean, t.std) for t in a.targets]
    tb = [(t.column, t.type, list(t.labels), t.mean, t.std) for t in b.targets]
    if ta != tb:
        return "different targets or label sets"
    return None


class EnsembleModel(nn.Module):
    """Members' calibrated probabilities averaged (see the module docstring). ``temperatures``:
    per member, target -> the temperature its logits are divided by (fitted on validation)."""

    def __init__(self, members: list[MultimodalModel], temperatures: list[dict[str, float]] | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        for i, m in enumerate(members[1:], 1):
            why = incompatibility(members[0].spec, m.spec)
            if why:
                raise ValueError(f"ensemble member {i} cannot be averaged with member 0: {why}")
        self.members = nn.ModuleList(members)
        self.temperatures = [dict(t) for t in (temperatures or [{} for _ in members])]
        if len(self.temperatures) != len(members):
            raise ValueError(f"{len(members)} members but {len(self.temperatures)} temperature sets")
        bad = [(i, k, t) for i, ts in enumerate(self.temperatures) for k, t in ts.items() if not (isinstance(t, (int, float)) and 0 < t < float("inf"))]
        if bad:
            raise ValueError(f"ensemble temperatures must be positive numbers; member {bad[0][0]}, target {bad[0][1]!r}: {bad[0][2]!r}")
        # Per member, input -> an earlier member whose encoder has the very same weights (a frozen
        # pretrained encoder shared by probes): its output is reused, not computed again.
        self.reuse: list[dict[str, int]] = [{} for _ in members]
        for j, member in enumerate(members):
            for key in member.encoders:
                earlier = next((i for i in range(j) if _same_encoder(members[i], member, key)), None)
                if earlier is not None:
                    self.reuse[j][key] = earlier

    @property
    def primary(self) -> MultimodalModel:
        """The first member (the best single candidate): used where one network is needed."""
        return self.members[0]  # type: ignore[return-value]

    @property
    def spec(self) -> ModelSpec:
        return self.primary.spec

    @property
    def encoders(self) -> nn.ModuleDict:
        """The primary's encoders: their preprocessors are every member's."""
        return self.primary.encoders

    @property
    def heads(self) -> nn.ModuleDict:
        return self.primary.heads

    @property
    def input_names(self) -> list[str]:
        return self.primary.input_names

    def forward(self, inputs: dict[str, dict[str, Tensor]], present: Tensor, cached: dict[str, EncoderOutput] | None = None) -> ModelOutput:
        """As :meth:`MultimodalModel.forward`, averaged over members. ``cached`` features are not
        taken: a frozen encoder's cache belongs to one member."""
        if cached:
            raise ValueError("an ensemble runs its members' encoders itself: cached features belong to one member")
        outs: list[ModelOutput] = []
        for member, reuse in zip(self.members, self.reuse):
            outs.append(member(inputs, present, {k: outs[i].features[k] for k, i in reuse.items()}))
        logits = {}
        for name, head in self.heads.items():
            kind = head.spec.type
            per_member = [o.logits[name].float() / t.get(name, 1.0) for o, t in zip(outs, self.temperatures)]
            if kind == "regression":
                logits[name] = torch.stack([o.logits[name].float() for o in outs]).mean(0)
            elif kind == "multilabel":
                mean = torch.stack([x.sigmoid() for x in per_member]).mean(0).clamp(_EPS, 1 - _EPS)
                logits[name] = torch.log(mean) - torch.log1p(-mean)
            else:
                logits[name] = torch.stack([x.softmax(-1) for x in per_member]).mean(0).clamp_min(_EPS).log()
        gates = [o.gates for o in outs]
        mean_gates = torch.stack(gates).mean(0) if all(g is not None for g in gates) else None
        return ModelOutput(logits=logits, fused=outs[0].fused, gates=mean_gates, features=outs[0].features)

    def save(self, folder: str | Path) -> None:
        """Write the ensemble folder atomically: the primary saved as a plain model folder (so what
        reads one network, a warm start or the registry, finds it there), the other members under
        ``members/``, ``ensemble.json``, and checksums of every file."""
        with atomic_dir(folder) as tmp:
            self.primary.save(tmp)
            names = []
            for i, member in enumerate(list(self.members)[1:], 1):
                names.append(f"{MEMBERS_DIR}/{i}")
                member.save(tmp / names[-1])  # type: ignore[operator]
            write_json(tmp / ENSEMBLE_FILE, {"members": names, "temperatures": self.temperatures})
            write_checksums(tmp)

    @classmethod
    def load(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> EnsembleModel:
        folder = Path(folder)
        primary = MultimodalModel.load(folder, map_location)  # verifies the whole folder's checksums
        try:
            manifest = json.loads((folder / ENSEMBLE_FILE).read_text())
            names, temperatures = [str(n) for n in manifest["members"]], list(manifest["temperatures"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunFolderError(f"{folder / ENSEMBLE_FILE}: not a readable ensemble manifest ({e})") from None
        paths = [(folder / n).resolve() for n in names]
        if any(folder.resolve() not in p.parents for p in paths):
            raise RunFolderError(f"{folder / ENSEMBLE_FILE}: a member lies outside the ensemble folder")
        try:
            return cls([primary] + [MultimodalModel.load(p, map_location) for p in paths], temperatures).eval()
        except ValueError as e:  # members that cannot be averaged, bad temperatures: name the file
            raise RunFolderError(f"{folder / ENSEMBLE_FILE}: {e}") from None


def _same_encoder(x: MultimodalModel, y: MultimodalModel, key: str) -> bool:
    """Input ``key``'s encoders in ``x`` and ``y`` compute the same function: the same class and
    pooling, equal parameters and buffers."""
    a, b = x.encoders[key], y.encoders[key]
    if a is b:
        return True
    pooling = [next(i.encoder.pooling for i in m.spec.inputs if i.key == key) for m in (x, y)]
    if type(a) is not type(b) or pooling[0] != pooling[1]:
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def is_ensemble(folder: str | Path) -> bool:
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def load_model(folder: str | Path, map_location: str | torch.device = "cpu") -> MultimodalModel | EnsembleModel:
    """A saved model folder: one model or an ensemble of them."""
    if is_ensemble(folder):
        return EnsembleModel.load(folder, map_location)
    return MultimodalModel.load(folder, map_location)


def single_model(model: MultimodalModel | EnsembleModel) -> MultimodalModel:
    """The model itself, or an ensemble's primary member (where one network is needed)."""
    return model.primary if isinstance(model, EnsembleModel) else model
