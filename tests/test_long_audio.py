"""Long episodes end to end: no lost speech, parity with bare faster-whisper, bounded memory.

A 20-minute generated episode (three voices, backchannels, overlaps, noise, stereo mp3)
goes through the engine's model step and through bare faster-whisper with the same
settings, each in a fresh process (``twiml_assets.speech.model_step``). These are accuracy,
coverage and memory assertions; the timings are in ``bench/long_episode.py``. The coverage
assertion is strict; the WER comparison with bare faster-whisper allows the margin measured
across CPU kernels (``tests/model_output.py``), since both runs are model output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evaluation.coverage import speech_without_words
from evaluation.metrics import word_error_rate
from resources.schema import Word, load
from tests.model_output import ENGINE_BARE_WER_MARGIN
from twiml_assets.demo.synth import SyntheticEpisode
from twiml_assets.demo.synth_long import generate_long_episode
from twiml_assets.speech.model_step import measure

pytestmark = pytest.mark.slow

LONG_MINUTES, SHORT_MINUTES, SEED = 20, 5, 23


@pytest.fixture(scope="module")
def long_episode(tmp_path_factory: pytest.TempPathFactory) -> SyntheticEpisode:
    out = tmp_path_factory.mktemp("long") / "long.mp3"
    return generate_long_episode(out, LONG_MINUTES, speakers=3, seed=SEED)


@pytest.fixture(scope="module")
def engine_run(long_episode: SyntheticEpisode) -> dict[str, Any]:
    return measure(long_episode.audio_path, "cpu-dev")


def words_of(run: dict[str, Any]) -> list[Word]:
    return load(list[Word], run["words"])


def test_the_generated_episode_is_what_a_podcast_serves(long_episode: SyntheticEpisode) -> None:
    import av

    with av.open(str(long_episode.audio_path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name.startswith("mp3")  # mp3float: the FFmpeg decoder
        assert (stream.rate, stream.channels) == (44100, 2)
    assert long_episode.duration >= LONG_MINUTES * 60
    assert set(long_episode.speakers) == {"HOST", "GUEST", "GUEST2"}
    overlapped = sum(
        1
        for a, b in zip(long_episode.turns, long_episode.turns[1:], strict=False)
        if b.start < a.end
    )
    assert overlapped >= 10  # backchannels and early starts


@pytest.mark.model_output
def test_no_speech_is_lost_and_engine_is_no_worse_than_bare_faster_whisper(
    long_episode: SyntheticEpisode, engine_run: dict[str, Any]
) -> None:
    bare_run = measure(long_episode.audio_path, "cpu-dev", bare=True)
    engine_words, bare_words = words_of(engine_run), words_of(bare_run)
    lost = [
        (round(a, 1), round(b - a, 1))
        for a, b in speech_without_words(long_episode.turns, engine_words)
        if b - a > 5.0
    ]
    assert lost == [], f"reference speech without words (start, seconds): {lost}"
    engine_wer = word_error_rate(long_episode.text, "".join(w.text for w in engine_words)).wer
    bare_wer = word_error_rate(long_episode.text, "".join(w.text for w in bare_words)).wer
    assert engine_wer <= bare_wer + ENGINE_BARE_WER_MARGIN, (engine_wer, bare_wer)
    details = engine_run["asr_details"]
    assert details["blocks"] >= 2  # 20 minutes are decoded in bounded blocks
    assert details["recovered_stretches"] <= details["speech_stretches_without_words"]


PLANTED_JUMP_SECONDS = 30.0


@pytest.mark.model_output
def test_a_planted_timestamp_jump_is_found_and_its_speech_recovered(
    long_episode: SyntheticEpisode, engine_run: dict[str, Any]
) -> None:
    """The engine's own transcript of the episode with a timestamp jump planted in it: 30 s
    of speech without words, the word before them stretched across (as Whisper's alignment
    stretches the word after a jump). The repair pass, with the real VAD and decoder, finds
    the stretch and fills it; the counts are those of the final words."""
    from resources.asr import WhisperASR, vad_options
    from resources.audio import open_waveform
    from resources.long_form import (
        LongFormOptions,
        Repairs,
        hole_outcomes,
        repair_holes,
        speech_regions_of,
    )
    from resources.schema import AsrSegment

    start = next(t.start for t in long_episode.turns if t.start >= 600.0)
    end = start + PLANTED_JUMP_SECONDS
    words = words_of(engine_run)
    inside = [w for w in words if start <= 0.5 * (w.start + w.end) < end]
    kept = [w for w in words if w not in inside]
    before = max((w for w in kept if w.end <= start), key=lambda w: w.end)
    before.end = end  # stretched across the jump
    assert speech_without_words(
        [t for t in long_episode.turns if start <= t.start < end - 5], kept
    ), "the planted jump leaves speech without words"

    asr = WhisperASR(profile="cpu-dev")
    s = asr.settings()
    options = LongFormOptions()
    repairs = Repairs()
    with open_waveform(long_episode.audio_path) as waveform:
        regions = speech_regions_of(waveform, vad_options(s), options)
        decode = asr.decoder(s)
        repaired = repair_holes(
            waveform,
            regions,
            [AsrSegment(w.start, w.end, w.text, [w]) for w in kept],
            lambda audio, overrides: decode(audio, {**overrides, "language": "en"})[0],
            options,
            repairs,
        )
    final = sorted((w for seg in repaired for w in seg.words), key=lambda w: w.start)
    planted = [(a, b) for a, b in repairs.holes if a < end and b > start]
    assert planted, f"the jump {start:.1f}-{end:.1f} s was not found: {repairs.holes}"
    outcomes = hole_outcomes(planted, repairs.remaining, final, options)
    assert outcomes["recovered"] == len(planted), outcomes  # counted on the final words
    lost = [
        (round(a, 1), round(b - a, 1))
        for a, b in speech_without_words(long_episode.turns, final)
        if b - a > 5.0 and a < end and b > start
    ]
    assert lost == [], f"speech still without words in the jump (start, seconds): {lost}"
    recovered = [w for w in final if start <= 0.5 * (w.start + w.end) < end]
    assert len(recovered) >= 0.7 * len(inside), (len(recovered), len(inside))


def test_model_step_memory_does_not_grow_with_the_episode(
    tmp_path: Path, engine_run: dict[str, Any]
) -> None:
    short = generate_long_episode(tmp_path / "short.mp3", SHORT_MINUTES, speakers=3, seed=SEED)
    short_run = measure(short.audio_path, "cpu-dev")
    growth = engine_run["peak_rss_mb"] - short_run["peak_rss_mb"]
    assert growth <= 200, (
        f"peak RSS {engine_run['peak_rss_mb']:.0f} MB for {LONG_MINUTES} min vs "
        f"{short_run['peak_rss_mb']:.0f} MB for {SHORT_MINUTES} min"
    )
