"""The pure parts of ``benchmarks/unknown_inputs.py``: the Banking77-OOS split, the metrics computed
from the agent's decisions, the Clopper-Pearson bound, and the foreign images shown to the
BreastMNIST agent. No training and no mmagent import here, so ``tests/test_unknown_bench.py``
checks all of it on synthetic inputs in a second.

A decision is anything with the attributes of :class:`mmagent.agent.policy_base.Decision` that
these functions read: ``label``, ``escalated`` and, once the agent has them, ``unknown`` and
``unknown_score`` (absent: ``False`` / NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Banking77-OOS (Zhang et al. 2021) keeps 50 of the 77 intents in scope; we hold out about a third.
N_OOS = 26
OOS_SEED = 0
TEXT, LABEL = "text", "intent"


# -- Banking77-OOS -----------------------------------------------------------------------------------
def choose_oos_intents(intents: Iterable[str], n: int = N_OOS, seed: int = OOS_SEED) -> list[str]:
    """``n`` intents drawn with ``numpy.random.default_rng(seed)`` from the sorted distinct names:
    the same set for any order or repetition of ``intents``. Returned sorted."""
    names = sorted(set(intents))
    if not 0 < n < len(names):
        raise ValueError(f"cannot hold out {n} of {len(names)} intents")
    return sorted(np.random.default_rng(seed).choice(names, n, replace=False).tolist())


def oos_split(frames: dict[str, pd.DataFrame], oos: Sequence[str], label: str = LABEL) -> dict[str, pd.DataFrame]:
    """``train`` and ``validation`` without the out-of-scope intents' rows; ``test`` whole (its rows of
    those intents are the out-of-scope requests); ``test_in_scope``: the test rows of the other intents."""
    held = set(oos)
    keep = {s: frames[s][~frames[s][label].isin(held)].reset_index(drop=True) for s in ("train", "validation")}
    test = frames["test"].reset_index(drop=True)
    return {**keep, "test": test, "test_in_scope": test[~test[label].isin(held)].reset_index(drop=True)}


# -- metrics from decisions --------------------------------------------------------------------------
def _flags(decisions: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    labels = np.array([str(d.label) for d in decisions], dtype=object)
    escalated = np.array([bool(d.escalated) for d in decisions], dtype=bool)
    unknown = np.array([bool(getattr(d, "unknown", False)) for d in decisions], dtype=bool)
    score = np.array([float(s) if (s := getattr(d, "unknown_score", None)) is not None else math.nan for d in decisions], dtype=float)
    return labels, escalated, unknown, score


def _mean(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else math.nan


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for ``positive`` (NaN when a class is absent or a score is missing)."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    if positive.all() or not positive.any() or not np.isfinite(score).all():
        return math.nan
    return float(roc_auc_score(positive, score))


def oos_metrics(decisions: Sequence[Any], truth: Sequence[str], oos: Iterable[str]) -> dict[str, float]:
    """Banking77-OOS metrics over all test rows (``truth``: each row's intent; rows of ``oos`` intents
    are out of scope, whatever the agent answers for them is wrong)."""
    if len(decisions) != len(truth):
        raise ValueError(f"{len(decisions)} decisions for {len(truth)} rows")
    labels, escalated, unknown, score = _flags(decisions)
    truth_arr = np.array([str(t) for t in truth], dtype=object)
    is_oos = np.isin(truth_arr, list(set(oos)))
    ins = ~is_oos
    right = (labels == truth_arr) & ins
    answered = ~escalated
    return {
        "in_scope_accuracy": _mean(right[ins]),
        "in_scope_answered_correctly": _mean((answered & right)[ins]),
        "coverage": _mean(answered[ins]),
        "oos_recall": _mean(escalated[is_oos]),
        "oos_flagged_unknown": _mean(unknown[is_oos]),
        "in_scope_flagged_unknown": _mean(unknown[ins]),
        "unknown_auroc": auroc(is_oos, score),
        "error_among_answered": _mean(~right[answered]),
        "n_in_scope": float(ins.sum()),
        "n_oos": float(is_oos.sum()),
        "n_answered": float(answered.sum()),
    }


def oos_goals(metrics: dict[str, float], max_error: float) -> dict[str, tuple[str, bool]]:
    """Each goal of the OOS benchmark: metric -> (goal text, met)."""
    ok = lambda v, test: bool(np.isfinite(v) and test(v))  # noqa: E731
    limit = max_error + 0.01
    return {
        "oos_recall": (">= 0.80", ok(metrics["oos_recall"], lambda v: v >= 0.80)),
        "in_scope_answered_correctly": (">= 0.90", ok(metrics["in_scope_answered_correctly"], lambda v: v >= 0.90)),
        "unknown_auroc": (">= 0.95", ok(metrics["unknown_auroc"], lambda v: v >= 0.95)),
        "error_among_answered": (f"<= {limit:g} (max_error + 0.01)", ok(metrics["error_among_answered"], lambda v: v <= limit + 1e-12)),
    }


def clopper_pearson(errors: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided ``confidence`` Clopper-Pearson bounds (lower, upper) of a binomial rate from
    ``errors`` out of ``n`` (``n == 0``: (0, 1))."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    if not 0 <= errors <= n:
        raise ValueError(f"{errors} errors out of {n}")
    alpha = 1.0 - confidence
    lower = 0.0 if errors == 0 else float(beta.ppf(alpha, errors, n - errors + 1))
    upper = 1.0 if errors == n else float(beta.ppf(1.0 - alpha, errors + 1, n - errors))
    return lower, upper


def promise_metrics(decisions: Sequence[Any], truth: Sequence[str], max_error: float, confidence: float = 0.95) -> dict[str, float]:
    """Error among the answered rows and coverage, with the sampling slack: the promise
    ``error <= max_error`` is kept within slack when the one-sided lower Clopper-Pearson bound of
    the error does not exceed ``max_error`` (the observed excess, if any, is sampling noise);
    ``cp_upper`` is the error the answered count lets one guarantee."""
    labels, escalated, _, _ = _flags(decisions)
    truth_arr = np.array([str(t) for t in truth], dtype=object)
    answered = ~escalated
    n, errors = int(answered.sum()), int((answered & (labels != truth_arr)).sum())
    lower, upper = clopper_pearson(errors, n, confidence)
    return {
        "error_among_answered": errors / n if n else math.nan,
        "coverage": _mean(answered),
        "accuracy": _mean(labels == truth_arr),
        "cp_lower": lower,
        "cp_upper": upper,
        "within_slack": float(n > 0 and lower <= max_error),
        "n_answered": float(n),
        "n": float(len(truth_arr)),
    }


def foreign_metrics(decisions: Sequence[Any], kinds: Sequence[str]) -> dict[str, float]:
    """For foreign inputs: the share flagged unknown, referred (escalated), and referred as unknown
    (both), over all and per kind (``flagged_unknown:KIND``)."""
    _, escalated, unknown, _ = _flags(decisions)
    kinds_arr = np.asarray(kinds, dtype=object)
    out = {"flagged_unknown": _mean(unknown), "referred": _mean(escalated), "referred_as_unknown": _mean(unknown & escalated), "n": float(len(kinds_arr))}
    for kind in sorted(set(kinds_arr)):
        mask = kinds_arr == kind
        out[f"flagged_unknown:{kind}"] = _mean(unknown[mask])
        out[f"referred:{kind}"] = _mean(escalated[mask])
    return out


def separation_auroc(known: Sequence[Any], foreign: Sequence[Any]) -> float:
    """AUROC of the decisions' ``unknown_score`` for ``foreign`` vs ``known`` inputs (whatever the
    threshold: how well the score alone tells them apart)."""
    scores = np.concatenate([_flags(known)[3], _flags(foreign)[3]])
    return auroc(np.r_[np.zeros(len(known), bool), np.ones(len(foreign), bool)], scores)


def set_stats(decisions: Sequence[Any]) -> dict[str, float]:
    """Mean size of the decisions' conformal prediction sets and the share that hold one label
    (NaN when the agent gives no sets)."""
    sizes = np.array([len(s) for d in decisions if (s := getattr(d, "prediction_set", None)) is not None], dtype=float)
    return {"mean_set_size": float(sizes.mean()) if sizes.size else math.nan, "singleton_rate": _mean(sizes == 1), "n_with_set": float(sizes.size)}


# -- foreign images ----------------------------------------------------------------------------------
def to_grey(image: np.ndarray, size: int) -> np.ndarray:
    """Any 2-D (or HxWxC) array -> ``size`` x ``size`` uint8, the range stretched to 0-255 (a flat
    image keeps its level, clipped)."""
    from PIL import Image

    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=2)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.clip(a, 0, 255)
    img = Image.fromarray(a.astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def spectrogram(wave: np.ndarray, n_fft: int = 256, hop: int = 64) -> np.ndarray:
    """Log-magnitude STFT (frequency x time, low frequencies at the bottom) of a mono waveform."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.size < n_fft:
        wave = np.pad(wave, (0, n_fft - wave.size))
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop] * np.hanning(n_fft)
    return np.log1p(np.abs(np.fft.rfft(frames, axis=1))).T[::-1]


def digit_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` scikit-learn 8x8 digits (a seeded choice), upscaled."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    pick = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return [to_grey(images[i], size) for i in pick]


def text_images(sentences: Sequence[str], size: int, canvas: int = 112) -> list[np.ndarray]:
    """Each sentence word-wrapped onto a ``canvas`` px square in PIL's default font (dark on light
    and light on dark in turn), downscaled."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    out = []
    for i, sentence in enumerate(sentences):
        fg, bg = (0, 255) if i % 2 == 0 else (255, 0)
        img = Image.new("L", (canvas, canvas), bg)
        draw = ImageDraw.Draw(img)
        lines, line = [], ""
        for word in sentence.split():
            if line and draw.textlength(f"{line} {word}", font=font) > canvas - 4:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        for k, text in enumerate(lines[: canvas // 12]):
            draw.text((2, 2 + 12 * k), text, fill=fg, font=font)
        out.append(np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8))
    return out


def blank_images(size: int) -> list[np.ndarray]:
    """All black, all white, mid grey."""
    return [np.full((size, size), v, dtype=np.uint8) for v in (0, 255, 128)]


def noise_images(n: int, size: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``n`` uniform and ``n`` gaussian (mean 128, sd 50, clipped) noise images, seeded."""
    rng = np.random.default_rng(seed)
    uniform = [("noise_uniform", rng.integers(0, 256, (size, size), dtype=np.uint8)) for _ in range(n)]
    gauss = [("noise_gaussian", np.clip(rng.normal(128, 50, (size, size)), 0, 255).astype(np.uint8)) for _ in range(n)]
    return uniform + gauss


PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "brick", "grass", "gravel")


def photo_crops(n: int, size: int, seed: int = 0) -> list[np.ndarray] | None:
    """``n`` random square crops of scikit-image's bundled photos, resized; None without skimage."""
    try:
        import skimage.data as sk
    except ImportError:
        return None
    photos = [np.asarray(getattr(sk, name)()) for name in PHOTOS if hasattr(sk, name)]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        side = int(rng.integers(min(p.shape[:2]) // 4, min(p.shape[:2]) + 1))
        y, x = (int(rng.integers(0, d - side + 1)) for d in p.shape[:2])
        out.append(to_grey(p[y : y + side, x : x + side], size))
    return out


Source = Callable[[int], list[np.ndarray] | None]


def foreign_images(size: int, per_kind: int, sources: dict[str, Source], seed: int = 0) -> tuple[list[tuple[str, np.ndarray]], dict[str, str]]:
    """Foreign images of ``size`` px: ``per_kind`` of each kind in ``sources`` (kind -> function of
    the count giving the images, or None when the kind is unavailable), then digits, blanks and
    noise (the built-in kinds). Returns ([(kind, image)], {skipped kind: why})."""
    images: list[tuple[str, np.ndarray]] = []
    skipped: dict[str, str] = {}
    for kind, make in sources.items():
        made = make(per_kind)
        if made is None:
            skipped[kind] = "not available"
        else:
            images += [(kind, im) for im in made]
    images += [("digits", im) for im in digit_images(per_kind, size, seed)]
    images += [("blank", im) for im in blank_images(size)]
    images += noise_images(per_kind // 2 or 1, size, seed)
    return images, skipped


def write_images(images: Sequence[tuple[str, np.ndarray]], folder: Path, column: str = "image") -> pd.DataFrame:
    """PNGs ``folder/KIND_NNNN.png``; a table of ``kind`` and ``column`` (absolute paths)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (kind, im) in enumerate(images):
        path = (folder / f"{kind}_{i:04d}.png").resolve()
        Image.fromarray(np.ascontiguousarray(im, dtype=np.uint8)).save(path)
        rows.append({"kind": kind, column: str(path)})
    return pd.DataFrame(rows, columns=["kind", column])
