"""Pictures of an explanation: the heatmap overlay PNG of an image input and a self-contained
HTML page (highlighted words, audio importance bars, the overlays embedded)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
from PIL import Image

DATA_URL = "data:image/png;base64,"


def shown_image(pixels: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """The (3, H, W) normalised tensor the encoder saw -> an (H, W, 3) uint8 picture."""
    img = pixels.astype(np.float64)
    if mean is not None and std is not None:
        img = img * np.asarray(std, dtype=np.float64)[:, None, None] + np.asarray(mean, dtype=np.float64)[:, None, None]
    else:  # an encoder without known normalisation: stretch to the full range for display
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
    return (np.clip(img.transpose(1, 2, 0), 0.0, 1.0) * 255).round().astype(np.uint8)


def overlay_png(picture: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> bytes:
    """The heatmap (values in [0, 1], any grid) in matplotlib's ``jet`` colours over ``picture``."""
    from matplotlib import colormaps

    h, w = picture.shape[:2]
    heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    colours = colormaps["jet"](np.asarray(heat_img, dtype=np.float64) / 255.0)[..., :3]
    blended = (1 - alpha) * picture.astype(np.float64) / 255.0 + alpha * colours
    out = io.BytesIO()
    Image.fromarray((np.clip(blended, 0, 1) * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def data_url(png: bytes) -> str:
    return DATA_URL + base64.b64encode(png).decode("ascii")


def png_bytes(url: str) -> bytes:
    """The PNG inside a ``data:image/png;base64,`` URL."""
    return base64.b64decode(url[len(DATA_URL) :])


def _word_spans(text: str, tokens: list[dict[str, Any]]) -> str:
    """The text with each scored word in a span: red for evidence for the label, blue against."""
    out, at = [], 0
    for t in tokens:
        out.append(html.escape(text[at : t["start"]]))
        s = float(t["score"])
        colour = f"rgba(220,40,40,{abs(s):.2f})" if s >= 0 else f"rgba(40,80,220,{abs(s):.2f})"
        out.append(f'<span title="{s:+.3f}" style="background:{colour}">{html.escape(text[t["start"] : t["end"]])}</span>')
        at = t["end"]
    out.append(html.escape(text[at:]))
    return "".join(out)


def _bars(scores: list[float], window: float) -> str:
    bars = "".join(
        f'<div title="{i * window:.2f} s: {s:.2f}" style="width:6px;height:{max(1, round(60 * s))}px;background:#d33;margin-right:1px"></div>'
        for i, s in enumerate(scores)
    )
    return f'<div style="display:flex;align-items:flex-end;height:62px;border-bottom:1px solid #999">{bars}</div><small>{window:g} s per bar</small>'


def html_page(explanation: dict[str, Any], texts: dict[str, str]) -> str:
    """A self-contained page for ``Explanation.to_dict()``; ``texts``: text input -> its text."""
    d = explanation["decision"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>mmagent explanation</title>",
        "<body style='font-family:sans-serif;max-width:900px;margin:2em auto'>",
        f"<h1>{html.escape(str(explanation['target']))}: {html.escape(str(explanation['explained_label']))}</h1>",
        f"<p>action <b>{html.escape(str(d.get('action')))}</b>, confidence {d.get('confidence')}"
        + (f", reason: {html.escape(str(d['reason']))}" if d.get("reason") else "")
        + "</p>",
    ]
    if explanation["contributions"]:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:+.4f}</td></tr>" for k, v in explanation["contributions"].items())
        parts.append(f"<h2>Contributions per input</h2><table>{rows}</table>")
    for name, info in explanation["inputs"].items():
        parts.append(f"<h2>{html.escape(name)} <small>({info['modality']}, {info['method']})</small></h2>")
        if info["modality"] == "text":
            parts.append(f"<p style='font-size:1.2em;line-height:1.8'>{_word_spans(texts.get(name, ''), info['tokens'])}</p>")
        elif info["modality"] == "image":
            parts.append(f"<img alt='{html.escape(name)} heatmap' style='width:320px;image-rendering:pixelated' src='{info['overlay_png']}'>")
        elif info["modality"] == "audio":
            parts.append(_bars(info["scores"], info["window_seconds"]))
            if info.get("transcript"):
                parts.append(f"<p>transcript: {html.escape(info['transcript'])}</p>")
        elif info["modality"] == "numeric":
            rows = "".join(f"<tr><td>{html.escape(f['name'])}</td><td>{f['score']:+.3f}</td></tr>" for f in info["features"])
            parts.append(f"<table>{rows}</table>")
        else:
            parts.append(f"<p>score {info['score']:+.4f}</p>")
    parts.append("</body>")
    return "\n".join(parts)
