"""The faster-whisper resource: profiles, overrides, model cache, clear errors."""

from __future__ import annotations

import pytest

from resources.asr import WhisperASR, load_whisper_model
from resources.audio import decode_audio
from resources.model_paths import ModelNotFoundError
from resources.model_registry import profile_names, profile_settings


def test_profiles_exist_and_fields_override_them() -> None:
    assert {"cpu-dev", "gpu-prod"} <= set(profile_names())
    assert profile_settings("gpu-prod", "asr")["model"] == "large-v3-turbo"
    s = WhisperASR(profile="gpu-prod", model="tiny.en", device="cpu").settings()
    assert (s.model, s.device, s.batched, s.batch_size) == ("tiny.en", "cpu", True, 16)
    assert WhisperASR().settings(beam_size=1).beam_size == 1  # per-call override wins


def test_english_only_models_force_english() -> None:
    assert WhisperASR(language="de").settings().language == "en"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beam_size": 0}, "beam_size"),
        ({"compute_type": "int4"}, "compute_type"),
        ({"device": "tpu"}, "device"),
        ({"profile": "nope"}, "unknown profile"),
    ],
)
def test_bad_config_is_a_clear_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WhisperASR(**kwargs).settings()


def test_missing_model_names_the_model_and_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="large-v3.*huggingface-cli download"):
        WhisperASR(model="large-v3").load()
    with pytest.raises(ModelNotFoundError, match="model.bin"):
        WhisperASR(model=str(tmp_path)).load()
    with pytest.raises(ModelNotFoundError, match="unknown whisper model"):
        WhisperASR(model="gigantic-v9").load()


@pytest.mark.slow
@pytest.mark.model_output
def test_model_loads_once_and_transcribes_with_word_timestamps(dialogue) -> None:
    waveform = decode_audio(dialogue.audio_path)
    first, second = WhisperASR(), WhisperASR(beam_size=1)
    before = load_whisper_model.cache_info()
    assert first.load() is second.load()  # same weights: one model for both instances
    assert load_whisper_model.cache_info().hits >= before.hits + 1

    ticks: list[tuple[float, float]] = []
    result = second.transcribe(waveform[: 16000 * 20], progress=lambda d, t: ticks.append((d, t)))
    assert result.words and all(w.end >= w.start for w in result.words)
    assert ticks[-1][0] == ticks[-1][1] == pytest.approx(20.0)
    assert result.config["compute_type"] == "int8" and result.config["beam_size"] == 1
    batched = first.transcribe(waveform[: 16000 * 20], batched=True, batch_size=4)
    assert batched.words and batched.config["batched"] is True
