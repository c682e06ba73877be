"""Text to speech for the demos and tests, with no system package: eSpeak NG from a wheel.

    from mmagent.demo.tts import speak
    speak("i lost my credit card", "q.wav", rate=140, voice="en-us")

The PyPI package ``espeakng-loader`` bundles ``libespeak-ng`` and its voice data; this module
drives that library through ``ctypes`` (its C API, ``speak_lib.h``) in synchronous mode and
writes the samples as a 16-bit mono WAV (22.05 kHz, like ``espeak-ng -w``). The library keeps
global state, so calls are serialised by a lock. A process renders the same utterances in the
same order identically; otherwise the same text can differ by eSpeak's pitch-flutter phase, which
carries over from the previous utterance (a few milliseconds, nothing a listener or Whisper
notices).
"""

from __future__ import annotations

import ctypes
import difflib
import threading
from pathlib import Path

import numpy as np

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report data errors instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000  # a short pause at the end, as the espeak-ng program adds
_RATE, _VOLUME, _PITCH = 1, 2, 3
_EE_OK = 0

RATE_RANGE = (80, 450)  # words per minute eSpeak accepts
PITCH_RANGE = (0, 99)


class TTSError(RuntimeError):
    """The bundled eSpeak NG library is missing or failed to render."""


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # [priority byte, language, NUL]... NUL: not one C string
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}  # lib, sample_rate, callback (kept alive while the library may call it)
_CHUNKS: list[np.ndarray] = []  # samples of the utterance being rendered (under _LOCK)


@_CALLBACK
def _collect(wav: ctypes.Array, count: int, events: int) -> int:
    if wav and count > 0:
        _CHUNKS.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
    return 0  # 0: go on synthesising


def _library() -> tuple[ctypes.CDLL, int]:
    """The bundled library, initialised once per process (call under ``_LOCK``)."""
    if "lib" not in _STATE:
        try:
            import espeakng_loader
        except ImportError as e:
            raise TTSError("speech rendering needs the package espeakng-loader (libespeak-ng and its data): pip install espeakng-loader") from e
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p
        ]  # fmt: skip
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        data = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise TTSError(f"libespeak-ng could not start with the data in {data.decode()} (code {rate})")
        lib.espeak_SetSynthCallback(_collect)
        _STATE.update(lib=lib, sample_rate=int(rate))
    return _STATE["lib"], int(_STATE["sample_rate"])  # type: ignore[return-value]


def available() -> bool:
    """True when speech can be rendered (the bundled library loads)."""
    try:
        with _LOCK:
            _library()
        return True
    except (TTSError, OSError):
        return False


def _catalogue(lib: ctypes.CDLL) -> dict[str, str]:
    """Every name a voice answers to, lowercased -> its identifier: identifiers (``gmw/en-us``),
    their last part (``en-us``), voice names and language codes (``en-gb``). Call under ``_LOCK``."""
    if "catalogue" not in _STATE:
        known: dict[str, str] = {}
        listing, i = lib.espeak_ListVoices(None), 0
        while listing[i]:
            v = listing[i].contents
            ident = v.identifier.decode()
            keys = [ident, ident.rsplit("/", 1)[-1], v.name.decode()]
            raw = v.languages
            while raw and ctypes.string_at(raw, 1) != b"\0":
                lang = ctypes.string_at(raw + 1)
                keys.append(lang.decode())
                raw += 2 + len(lang)
            for key in keys:
                known.setdefault(key.lower(), ident)
            i += 1
        _STATE["catalogue"] = known
    return _STATE["catalogue"]  # type: ignore[return-value]


def voices() -> list[str]:
    """Voice identifiers the bundled data offers (e.g. ``gmw/en-US``); ``speak`` takes them, their
    last part or a language code, case-insensitively (``en-us``, ``en-gb``)."""
    with _LOCK:
        return sorted(set(_catalogue(_library()[0]).values()))


def synthesize(text: str, rate: int = 160, voice: str = "en-us", pitch: int = 50) -> tuple[np.ndarray, int]:
    """``text`` as int16 mono samples and their sample rate.

    ``rate``: words per minute (80-450); ``voice``: an eSpeak voice name (``en-us``, ``en-gb``,
    ``en-gb-scotland``, ``en-029``, ``en-gb-x-rp``...); ``pitch``: 0-99 (50 is the voice's own).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("speak: text must be a non-empty string")
    if not RATE_RANGE[0] <= int(rate) <= RATE_RANGE[1]:
        raise ValueError(f"speak: rate must be {RATE_RANGE[0]}-{RATE_RANGE[1]} words per minute, got {rate}")
    if not PITCH_RANGE[0] <= int(pitch) <= PITCH_RANGE[1]:
        raise ValueError(f"speak: pitch must be {PITCH_RANGE[0]}-{PITCH_RANGE[1]}, got {pitch}")
    with _LOCK:
        lib, sample_rate = _library()
        known = _catalogue(lib)
        if voice.lower() not in known:
            close = difflib.get_close_matches(voice.lower(), list(known), n=5)
            raise ValueError(f"speak: unknown voice {voice!r}" + (f"; did you mean {', '.join(close)}?" if close else "") + " (see mmagent.demo.tts.voices())")
        # as the espeak-ng program: a voice name / identifier, else a language (``en-gb``)
        language = ctypes.create_string_buffer(voice.encode())
        by_language = _Voice(languages=ctypes.addressof(language))
        if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK and lib.espeak_SetVoiceByProperties(ctypes.byref(by_language)) != _EE_OK:
            raise TTSError(f"libespeak-ng could not select voice {voice!r}")
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_VOLUME, 100)):
            lib.espeak_SetParameter(param, int(value), 0)
        _CHUNKS.clear()
        data = text.encode("utf-8") + b"\0"
        try:
            code = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
            if code != _EE_OK:
                raise TTSError(f"libespeak-ng failed to render {text[:40]!r} (code {code})")
            lib.espeak_Synchronize()
            samples = np.concatenate(_CHUNKS) if _CHUNKS else np.zeros(0, np.int16)
        finally:
            _CHUNKS.clear()
    if samples.size == 0:
        raise TTSError(f"libespeak-ng rendered no audio for {text[:40]!r}")
    return samples.astype(np.int16), sample_rate


def speak(text: str, path: str | Path, rate: int = 160, voice: str = "en-us", pitch: int = 50) -> Path:
    """Render ``text`` to a 16-bit mono WAV at ``path`` (atomic write); see :func:`synthesize`."""
    import soundfile as sf

    from mmagent.io import atomic_path

    samples, sample_rate = synthesize(text, rate, voice, pitch)
    path = Path(path)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), samples, sample_rate, subtype="PCM_16", format="WAV")
    return path
