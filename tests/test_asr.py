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


def test_batch_clips_join_speech_up_to_one_window_and_cut_longer_chunks() -> None:
    from resources.asr import batch_clips

    sr = 16000
    chunks = [
        {"start": 0, "end": 10 * sr},
        {"start": 12 * sr, "end": 29 * sr},  # joins the first: 0-29 s is one window
        {"start": 31 * sr, "end": 40 * sr},  # 0-40 s would not
        {"start": 41 * sr, "end": 106 * sr},  # 65 s of speech (never cut by VAD): 3 clips
    ]
    assert batch_clips(chunks) == [
        {"start": 0.0, "end": 29.0},
        {"start": 31.0, "end": 40.0},
        {"start": 41.0, "end": 71.0},
        {"start": 71.0, "end": 101.0},
        {"start": 101.0, "end": 106.0},
    ]
    assert batch_clips([]) == []


@pytest.mark.slow
@pytest.mark.model_output
def test_batched_decoding_takes_the_episodes_vad_regions(dialogue, monkeypatch) -> None:
    """With the engine's speech regions, the batched pipeline runs no VAD of its own and
    decodes the same speech (its words fall inside the regions)."""
    import faster_whisper.transcribe as upstream

    from resources.asr import vad_options
    from resources.long_form import LongFormOptions, speech_regions_of

    waveform = decode_audio(dialogue.audio_path)[: 16000 * 60]
    asr = WhisperASR(profile="cpu-fast")
    s = asr.settings()
    regions = speech_regions_of(waveform, vad_options(s), LongFormOptions())

    own_vad = upstream.get_speech_timestamps
    vad_lengths: list[int] = []

    def counted(audio, *args, **kwargs):
        vad_lengths.append(len(audio))
        return own_vad(audio, *args, **kwargs)

    monkeypatch.setattr(upstream, "get_speech_timestamps", counted)
    result = asr.transcribe(waveform)
    # Only a stretch decoded again (a hole, seconds long) may run the pipeline's own VAD.
    assert all(n < len(waveform) // 2 for n in vad_lengths)
    assert result.words and result.config["batched"] is True
    spans = [(r.start / 16000 - 0.5, r.end / 16000 + 0.5) for r in regions]
    inside = [any(a <= w.start and w.end <= b for a, b in spans) for w in result.words]
    assert sum(inside) >= 0.95 * len(inside)
