"""Per-input attributions of one class score, on Captum.

Every method works on one collated record (a batch of one, as :func:`mmagent.inference.make_loader`
gives it) through a :class:`Scorer`, which runs the whole model with one input's tensors replaced
and returns the explained score (the calibrated probability of the explained label):

- text: Integrated Gradients over the encoder's token embeddings (``LayerIntegratedGradients``;
  an ensemble's members' embeddings together); encoders without a reachable embedding layer fall
  back to occluding one token at a time;
- image: Grad-CAM on the last convolution that still has a spatial map (CNN encoders), else
  occlusion of square patches (ViT-style encoders, ensembles, any encoder without such a convolution);
- audio: occlusion of time windows of the waveform, each occluded clip run through the encoder's
  own preprocessor, so every audio encoder (mel-CNN, wav2vec2, Whisper, ...) works the same way;
- numeric: Integrated Gradients from the training mean (the standardizer's ``mean``);
- categorical: occlusion of the whole input (the model's placeholder for a missing input).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmagent.model import MultimodalModel

MAX_GRID = 64  # image heatmaps are at most 64 x 64 cells
IG_STEPS = 32
MAX_AUDIO_WINDOWS = 100


class Scorer:
    """The explained score of one record as a function of one input's tensors."""

    def __init__(self, model: MultimodalModel, batch: dict[str, Any], target: str, label_index: int, temperature: float) -> None:
        self.model, self.batch, self.target = model, batch, target
        self.label_index, self.temperature = label_index, temperature
        self.kind = model.heads[target].spec.type

    def __call__(self, name: str, replaced: dict[str, Tensor], present: bool = True) -> Tensor:
        """Scores (N,) with input ``name``'s tensors replaced by ``replaced`` (each (N, ...)); every
        other input is repeated N times. ``present=False`` hides the input (its placeholder)."""
        n = next(iter(replaced.values())).shape[0] if replaced else 1
        inputs = {k: {key: _repeat(t, n) for key, t in v.items()} for k, v in self.batch["inputs"].items()}
        inputs[name] = {**inputs[name], **replaced}
        mask = _repeat(self.batch["present"], n).clone()
        mask[:, self.model.input_names.index(name)] = present
        logits = self.model(inputs, mask).logits[self.target].float()
        if self.kind == "regression":
            return logits.reshape(n, -1)[:, 0]
        logits = logits / self.temperature
        probs = torch.sigmoid(logits) if self.kind == "multilabel" else torch.softmax(logits, -1)
        return probs[:, self.label_index]


def _repeat(t: Tensor, n: int) -> Tensor:
    return t.repeat(n, *([1] * (t.dim() - 1))) if t.shape[0] != n else t


def normalise_signed(values: np.ndarray) -> np.ndarray:
    """Scale so that max |value| = 1 (all zeros stay zeros); NaN becomes 0."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    top = np.abs(values).max(initial=0.0)
    return values / top if top > 0 else values


def normalise_positive(values: np.ndarray) -> np.ndarray:
    """Keep the evidence for the explained label (positive part), scaled to [0, 1]."""
    values = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, None)
    top = values.max(initial=0.0)
    return values / top if top > 0 else values


# -- text -----------------------------------------------------------------------------------------
def embedding_layer(encoder: nn.Module) -> nn.Module | None:
    """The token-embedding layer of a text encoder: HF's ``get_input_embeddings`` when it has one
    (HF and zoo encoders, also under LoRA), else the largest ``nn.Embedding``."""
    backbone = getattr(encoder, "backbone", None)
    getter = getattr(backbone, "get_input_embeddings", None)
    if callable(getter):
        try:
            layer = getter()
        except NotImplementedError:
            layer = None
        if isinstance(layer, nn.Module):
            return layer
    embeddings = [m for m in encoder.modules() if isinstance(m, nn.Embedding)]
    return max(embeddings, key=lambda m: m.num_embeddings) if embeddings else None


def text_token_scores(scorer: Scorer, name: str, keep: list[bool]) -> tuple[np.ndarray, str]:
    """Signed attribution per token position, and the method. ``keep``: positions left as they are
    in the baseline (special tokens), every other token becomes the pad token there."""
    from captum.attr import LayerIntegratedGradients, Occlusion

    encoder = scorer.model.encoders[name]
    ids = scorer.batch["inputs"][name]["input_ids"]
    pad = int(getattr(encoder.preprocessor, "pad_values", {}).get("input_ids", 0))
    baseline = torch.where(torch.tensor(keep, device=ids.device)[None, :], ids, torch.full_like(ids, pad))
    # An ensemble: every member's embedding layer, interpolated together, so the scores add up to
    # the ensemble's change in probability, not to one member's share of it.
    # (A member that reuses another's identical encoder never runs its own: leave that one out.)
    members = getattr(scorer.model, "members", [scorer.model])
    reuse = getattr(scorer.model, "reuse", [{} for _ in members])
    layers = [embedding_layer(m.encoders[name]) for m, r in zip(members, reuse) if name not in r]
    if all(layer is not None for layer in layers):
        with warnings.catch_warnings():  # Captum's caution about layers that feed one another: members' never do
            warnings.filterwarnings("ignore", message="Multiple layers provided")
            lig = LayerIntegratedGradients(lambda x: scorer(name, {"input_ids": x}), layers if len(layers) > 1 else layers[0])
            attr = lig.attribute(ids, baselines=baseline, n_steps=IG_STEPS, internal_batch_size=IG_STEPS)
        total = sum(a.sum(-1) for a in attr) if isinstance(attr, list) else attr.sum(-1)
        return total[0].detach().cpu().numpy(), "integrated_gradients"
    occlusion = Occlusion(lambda x: scorer(name, {"input_ids": x.round().long()}))
    attr = occlusion.attribute(ids.float(), sliding_window_shapes=(1,), baselines=float(pad), perturbations_per_eval=16)
    return attr[0].detach().cpu().numpy() * np.logical_not(keep), "occlusion"


# -- image ----------------------------------------------------------------------------------------
def _gradcam_layer(encoder: nn.Module, run: Any) -> nn.Module | None:
    """The last convolution (in execution order) whose output is still at least 4 x 4, for CNN
    encoders (three or more convolutions); ``None`` for ViT-style encoders (one patch projection)."""
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) < 3:
        return None
    seen: list[tuple[nn.Module, tuple[int, ...]]] = []
    hooks = [c.register_forward_hook(lambda m, _i, out: seen.append((m, tuple(out.shape)))) for c in convs]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    spatial = [m for m, shape in seen if len(shape) == 4 and min(shape[-2:]) >= 4]
    return spatial[-1] if spatial else None


def image_heat(scorer: Scorer, name: str) -> tuple[np.ndarray, str]:
    """A (H, W) map in [0, 1] over the preprocessed image, and the method."""
    from captum.attr import LayerAttribution, LayerGradCam, Occlusion

    pixels = scorer.batch["inputs"][name]["pixel_values"]
    side_h, side_w = pixels.shape[-2:]
    forward = lambda x: scorer(name, {"pixel_values": x})
    # Grad-CAM reads one network's feature maps; an ensemble's members each have their own: occlusion.
    ensemble = hasattr(scorer.model, "members")
    layer = None if ensemble else _gradcam_layer(scorer.model.encoders[name], lambda: forward(pixels))
    if layer is not None:
        cam = LayerGradCam(forward, layer).attribute(pixels, relu_attributions=True)
        heat = LayerAttribution.interpolate(cam.detach(), (side_h, side_w), interpolate_mode="bilinear")[0, 0]
        method = "grad_cam"
    else:
        # Patches of a quarter side at half-patch strides (7 x 7 positions): small patches miss
        # evidence spread over an object, and the overlap smooths the map.
        patch = max(1, min(side_h, side_w) // 4)
        stride = max(1, patch // 2)
        attr = Occlusion(forward).attribute(
            pixels, sliding_window_shapes=(pixels.shape[1], patch, patch), strides=(pixels.shape[1], stride, stride), baselines=0.0, perturbations_per_eval=16
        )
        heat = attr[0].sum(0).detach()
        method = "occlusion"
    return normalise_positive(heat.cpu().numpy()), method


def grid(heat: np.ndarray) -> np.ndarray:
    """Average-pool a heatmap down to at most MAX_GRID x MAX_GRID cells, rescaled to [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    size = (min(MAX_GRID, t.shape[-2]), min(MAX_GRID, t.shape[-1]))
    return normalise_positive(F.adaptive_avg_pool2d(t, size)[0, 0].numpy())


# -- audio ----------------------------------------------------------------------------------------
def audio_importance(scorer: Scorer, name: str, item: Any) -> tuple[np.ndarray, float]:
    """Importance in [0, 1] per time window of the clip, and the window length in seconds: each
    window is silenced in turn and the clip re-run through the encoder's preprocessor."""
    from captum.attr import Occlusion

    from mmagent.encoders.media import load_audio

    pre = scorer.model.encoders[name].preprocessor
    rate = int(pre.sample_rate)
    wave = load_audio(item, rate, getattr(pre, "max_seconds", None))
    seconds = wave.numel() / rate
    window_s = max(0.1, seconds / MAX_AUDIO_WINDOWS)
    window = max(1, int(round(window_s * rate)))
    device = scorer.batch["present"].device

    def forward(waves: Tensor) -> Tensor:
        samples = [pre((w.detach().cpu().numpy(), rate)) for w in waves]
        batch = {k: v.to(device) for k, v in pre.collate(samples).items()}
        return scorer(name, batch)

    with torch.no_grad():
        attr = Occlusion(forward).attribute(
            wave[None].to(device),
            sliding_window_shapes=(window,),
            strides=(window,),
            baselines=background(wave, window)[None].to(device),
            perturbations_per_eval=16,
        )
    per_sample = attr[0].cpu().numpy()
    starts = range(0, per_sample.size, window)
    return normalise_positive(np.array([per_sample[s : s + window].mean() for s in starts])), window * 1.0 / rate


def background(wave: Tensor, window: int) -> Tensor:
    """What an occluded window becomes: seeded noise at the level of the clip's quietest windows
    (a tenth quantile of the windows' RMS). Digital silence would be far outside what log-mel
    encoders saw in training, and the model's reaction to it would swamp the attribution."""
    rms = torch.stack([wave[s : s + window].pow(2).mean().sqrt() for s in range(0, wave.numel(), window)])
    level = float(torch.quantile(rms, 0.1))
    return torch.randn(wave.numel(), generator=torch.Generator().manual_seed(0)) * level


# -- numeric and categorical ----------------------------------------------------------------------
def numeric_scores(scorer: Scorer, name: str) -> np.ndarray:
    """Integrated Gradients per feature, from the training mean (zeros without a standardizer)."""
    from captum.attr import IntegratedGradients

    values = scorer.batch["inputs"][name]["values"].float()
    mean = getattr(scorer.model.encoders[name], "mean", None)
    baseline = mean[None].to(values) if isinstance(mean, Tensor) and mean.shape[-1] == values.shape[-1] else torch.zeros_like(values)
    attr = IntegratedGradients(lambda x: scorer(name, {"values": x})).attribute(values, baselines=baseline, n_steps=IG_STEPS)
    return normalise_signed(attr[0].detach().cpu().numpy())  # a missing value (NaN) scores 0


def occlusion_score(scorer: Scorer, name: str) -> float:
    """How much the explained score drops when the input is hidden (a missing input)."""
    with torch.no_grad():
        full, hidden = scorer(name, {}), scorer(name, {}, present=False)
    return float(np.nan_to_num((full - hidden)[0].item()))
