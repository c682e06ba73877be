"""Preprocessors shared by encoder sources: text tokenization, image transforms, waveforms.

They are plain picklable objects so DataLoader workers can run them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mmagent.encoders.base import Preprocessor
from mmagent.encoders.media import audio_seconds, load_audio, load_image


# -- text -----------------------------------------------------------------------------------
class ByteTokenizer:
    """Fallback tokenizer for randomly initialised models named by type (tests, from-scratch runs):
    UTF-8 bytes -> ids 3..258, with 0 = pad, 1 = CLS, 2 = SEP. Needs a vocabulary of >= 259."""

    vocab_size = 259
    pad_token_id = 0

    def __call__(self, text: str, max_length: int) -> list[int]:
        return [1, *(b + 3 for b in text.encode("utf-8")[: max_length - 2]), 2]


class TextPreprocessor(Preprocessor):
    """Tokenize one string (no padding here: ``collate`` pads to the longest in the batch).

    :meth:`warmed` tokenizes a whole column at once (one batched call of a fast tokenizer) into a
    copy that keeps the ids, so a dataset is tokenized once, not once per epoch."""

    pad_values = {"input_ids": 0}

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_values = {"input_ids": float(pad if pad is not None else 0)}
        self._ids: dict[str, list[int]] = {}

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if isinstance(self.tokenizer, ByteTokenizer):
            return [self.tokenizer(t, self.max_length) for t in texts]
        return list(self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"])

    def warmed(self, items: Sequence[Any]) -> TextPreprocessor:
        """A copy that has tokenized ``items`` already (its calls look them up)."""
        out = copy.copy(self)
        out._ids = dict(self._ids)
        texts = sorted({str(i) for i in items if i is not None} - set(out._ids))
        for start in range(0, len(texts), 4096):  # bounded batches: bounded memory
            chunk = texts[start : start + 4096]
            out._ids.update(zip(chunk, self._tokenize(chunk)))
        return out

    def ids(self, item: Any) -> list[int]:
        text = "" if item is None else str(item)
        found = self._ids.get(text)
        return found if found is not None else self._tokenize([text])[0]

    def __call__(self, item: Any) -> dict[str, Tensor]:
        return {"input_ids": torch.tensor(self.ids(item), dtype=torch.long)}

    def length(self, item: Any) -> float:
        """Tokens (what a batch is padded over)."""
        return float(len(self.ids(item)))

    def placeholder(self) -> dict[str, Tensor]:
        return self("")

    def collate(self, samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        batch = super().collate(samples)
        batch["attention_mask"] = batch.pop("input_ids_mask").long()
        return batch

    def save(self, folder: Any) -> None:
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(str(folder))


# -- image ----------------------------------------------------------------------------------
class ImagePreprocessor(Preprocessor):
    """Load -> resize/crop -> tensor -> normalize. ``training = True`` adds light augmentation
    (random resized crop, horizontal flip) — set by the data pipeline on the training copy."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], hflip: bool = True) -> None:
        self.size, self.mean, self.std, self.hflip = int(size), tuple(mean), tuple(std), hflip
        self.training = False
        self._transforms: dict[bool, Any] = {}

    def _transform(self) -> Any:
        if self.training not in self._transforms:
            from torchvision import transforms as T

            if self.training:
                steps = [T.RandomResizedCrop(self.size, scale=(0.8, 1.0), antialias=True)]
                if self.hflip:
                    steps.append(T.RandomHorizontalFlip())
            else:
                steps = [T.Resize(self.size, antialias=True), T.CenterCrop(self.size)]
            self._transforms[self.training] = T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])
        return self._transforms[self.training]

    def __call__(self, item: Any) -> dict[str, Tensor]:
        return {"pixel_values": self._transform()(load_image(item))}

    def placeholder(self) -> dict[str, Tensor]:
        return {"pixel_values": torch.zeros(3, self.size, self.size)}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_transforms": {}}


# -- audio ----------------------------------------------------------------------------------
class WaveformPreprocessor(Preprocessor):
    """Decode, mix to mono, resample and crop; ``feature_fn`` (optional) turns the waveform into
    model features in the worker (e.g. Whisper's log-mel). Without it the raw waveform is padded
    in ``collate`` and an ``input_values_mask`` marks real samples."""

    def __init__(self, sample_rate: int, max_seconds: float, normalize: bool = True) -> None:
        self.sample_rate, self.max_seconds, self.normalize = sample_rate, max_seconds, normalize
        self.pad_values = {"input_values": 0.0}

    def waveform(self, item: Any) -> Tensor:
        wave = load_audio(item, self.sample_rate, self.max_seconds)
        if self.normalize:  # zero mean, unit variance: what wav2vec2-style models were trained on
            wave = (wave - wave.mean()) / (wave.std() + 1e-7)
        return wave

    def __call__(self, item: Any) -> dict[str, Tensor]:
        return {"input_values": self.waveform(item)}

    def length(self, item: Any) -> float | None:
        """Seconds of audio (from the file header), when batches are padded to their longest clip;
        None for fixed-size features (subclasses that pad nothing)."""
        if not self.pad_values:
            return None
        return min(audio_seconds(item, self.sample_rate), self.max_seconds)

    def placeholder(self) -> dict[str, Tensor]:
        return {"input_values": torch.zeros(self.sample_rate // 10)}
