"""Long-form decoding: streamed VAD, block planning, failure filtering and hole recovery.

The planning and repair logic is tested here with a scripted decoder (what faster-whisper
would return); the real decoder runs in ``test_long_audio.py`` on a 20-minute episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from resources.audio import SAMPLE_RATE
from resources.long_form import (
    LongFormOptions,
    Repairs,
    drop_failures,
    find_holes,
    plan_blocks,
    recover_holes,
    repair_holes,
    split_long_regions,
    transcribe_long_form,
    trim_stretched_words,
)
from resources.schema import AsrSegment, Word
from resources.vad import SpeechRegion, regions_from_probabilities, speech_regions

SR = SAMPLE_RATE


def region(a: float, b: float) -> SpeechRegion:
    return SpeechRegion(int(a * SR), int(b * SR))


@dataclass
class FakeWord:
    start: float
    end: float
    word: str
    probability: float = 0.9


@dataclass
class FakeSegment:
    start: float
    end: float
    text: str
    words: list[FakeWord] = field(default_factory=list)
    avg_logprob: float = -0.3
    compression_ratio: float = 1.2
    no_speech_prob: float = 0.05


@dataclass
class FakeInfo:
    language: str = "en"


def segment_of(*words: tuple[float, float, str], **kw: Any) -> FakeSegment:
    ws = [FakeWord(a, b, f" {t}") for a, b, t in words]
    return FakeSegment(ws[0].start, ws[-1].end, "".join(w.word for w in ws), ws, **kw)


def test_blocks_are_cut_in_silence_and_keep_every_region() -> None:
    regions = [region(t, t + 50) for t in range(0, 1000, 60)]  # 50 s speech, 10 s pauses
    blocks = plan_blocks(regions, 1000 * SR, block_seconds=300)
    assert [r for b in blocks for r in b.regions] == regions
    assert blocks[0].start == 0 and blocks[-1].end == 1000 * SR
    for before, after in zip(blocks, blocks[1:], strict=False):
        assert before.end == after.start  # contiguous, nothing falls between blocks
        gap = (before.regions[-1].end, after.regions[0].start)
        assert gap[0] <= before.end <= gap[1]  # the cut lies in the silence
        assert before.end - before.start <= 310 * SR


def test_a_region_longer_than_a_block_is_split_where_the_voice_is_least_likely() -> None:
    probs = np.full(int(700 * SR / 512) + 1, 0.9, dtype=np.float32)
    pause = int(250 * SR / 512)
    probs[pause] = 0.01
    pieces = split_long_regions([region(0, 700)], probs, max_seconds=300)
    assert pieces[0].start == 0 and pieces[0].end == pause * 512  # cut at the pause
    assert pieces[-1].end == 700 * SR
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:], strict=False))
    assert all(r.duration <= 300 for r in pieces)


def test_vad_state_machine_matches_faster_whisper_on_probabilities() -> None:
    from unittest import mock

    from faster_whisper import vad

    rng = np.random.default_rng(3)
    probs = np.clip(
        np.repeat(rng.random(400) > 0.45, 12) * 0.8 + rng.normal(0, 0.1, 4800), 0, 1
    ).astype(np.float32)
    n = (len(probs) - 1) * 512 + 100
    options = dict(min_silence_duration_ms=500, speech_pad_ms=400, min_speech_duration_ms=250)
    with mock.patch.object(vad, "get_vad_model", return_value=lambda _audio: probs):
        upstream = vad.get_speech_timestamps(np.zeros(n, np.float32), vad.VadOptions(**options))
    ours = regions_from_probabilities(probs, n, **options)
    assert len(ours) > 20
    assert [(r.start, r.end) for r in ours] == [(u["start"], u["end"]) for u in upstream]


@pytest.mark.slow
def test_streamed_vad_equals_faster_whisper_on_a_six_minute_episode(tmp_path) -> None:
    """Over 320 s the model runs in several batches: the carried state must match upstream."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from resources.audio import decode_audio, open_waveform
    from twiml_assets.demo.synth_long import generate_long_episode

    ep = generate_long_episode(tmp_path / "six.mp3", 6, speakers=2, seed=5)
    upstream = get_speech_timestamps(
        decode_audio(ep.audio_path), VadOptions(min_silence_duration_ms=500)
    )
    with open_waveform(ep.audio_path) as waveform:
        ours = speech_regions(waveform, min_silence_duration_ms=500)
    assert len(ours) > 5
    assert [(r.start, r.end) for r in ours] == [(u["start"], u["end"]) for u in upstream]


def test_failed_fallbacks_and_verbatim_repeats_are_dropped() -> None:
    def seg(text: str, start: float) -> AsrSegment:
        return AsrSegment(start, start + 2, text, [Word(start, start + 1, text)])

    repairs = Repairs()
    kept = drop_failures(
        [
            seg("The model reads thirty seconds at a time.", 0),
            seg("the the the the the the the the the the the the the the the the", 2),
            seg("And then it moves on.", 4),
            seg("And then it moves on.", 6),
            seg("Yes.", 8),
            seg("Yes.", 10),
        ],
        LongFormOptions(),
        repairs,
    )
    assert [s.start for s in kept] == [0, 4, 8, 10]  # short answers may repeat for real
    assert (repairs.dropped_repetitive, repairs.dropped_repeats) == (1, 1)


def test_holes_are_speech_without_words() -> None:
    regions = [region(0, 30), region(40, 45)]
    words = [Word(t, t + 0.3, "w") for t in np.arange(0.5, 10, 0.5)]  # 0.5-10 s covered
    words += [Word(t, t + 0.3, "w") for t in np.arange(22, 30, 0.5)]  # 22-30 s covered
    holes = find_holes(regions, words, min_seconds=2.0)
    assert [(round(a, 1), round(b, 1)) for a, b in holes] == [(10.1, 21.7), (40.0, 45.0)]
    assert find_holes(regions, words, min_seconds=20.0) == []


def test_holes_are_decoded_again_without_conditioning_and_merged() -> None:
    calls: list[dict[str, Any]] = []

    def decode(audio: np.ndarray, overrides: dict[str, Any]):
        calls.append(overrides)
        duration = len(audio) / SR
        return iter(
            [
                segment_of((0.3, 0.8, "recovered"), (0.9, 1.4, "words")),
                segment_of((duration - 0.1, duration + 0.5, "outside")),  # beyond the hole
                segment_of((1.5, 2.0, "noise"), avg_logprob=-1.6),  # fails Whisper's gate
            ]
        )

    repairs = Repairs()
    waveform = np.zeros(60 * SR, dtype=np.float32)
    recovered = recover_holes(waveform, [(20.0, 24.0)], decode, LongFormOptions(), repairs)
    assert calls[0]["condition_on_previous_text"] is False and calls[0]["initial_prompt"] is None
    words = [w for s in recovered for w in s.words]
    assert [w.text for w in words] == [" recovered", " words"]
    assert 20.0 <= words[0].start < words[-1].end <= 24.0  # shifted into episode time
    assert (repairs.decoded_again, repairs.recovered_words) == (1, 2)


def test_a_word_stretched_over_skipped_speech_does_not_hide_it() -> None:
    """Whisper's alignment gives the word after a timestamp jump the whole jump: 20-50 s."""
    regions = [region(0, 60)]
    words = [Word(t, t + 0.3, "w") for t in np.arange(0.5, 20, 0.5)]
    words += [Word(20.0, 50.0, " Thank")]  # the jump, as one word
    words += [Word(t, t + 0.3, "w") for t in np.arange(50.5, 60, 0.5)]
    holes = find_holes(regions, words, min_seconds=2.0)
    assert [(round(a, 1), round(b, 1)) for a, b in holes] == [(22.3, 47.7)]


def scripted_decoder(said: dict[float, str], skip_after: float | None = None):
    """A decoder that says ``said`` (episode time → word) in the audio it is given.

    The test waveform's samples are their own time in seconds, so a call knows where its
    slice lies. A call starting before ``skip_after`` stops there, as a decoder that skips
    the rest of the stretch would.
    """
    calls: list[tuple[float, float]] = []

    def decode(audio: np.ndarray, overrides: dict[str, Any]):
        start = float(audio[0])
        end = start + len(audio) / SR
        calls.append((round(start, 2), round(end, 2)))
        stop = end if skip_after is None or start >= skip_after - 5 else skip_after
        ts = [t for t in said if start <= t and t + 0.4 <= stop]
        if not ts:
            return iter([])
        return iter([segment_of(*[(t - start, t - start + 0.4, said[t]) for t in ts])])

    return decode, calls


def run_repair(first_pass: list[Word], decode) -> tuple[list[Word], Repairs]:
    """``repair_holes`` over 0-60 s of speech (a waveform whose samples are their time)."""
    waveform = (np.arange(61 * SR) / SR).astype(np.float32)
    segments = [AsrSegment(w.start, w.end, w.text, [w]) for w in first_pass]
    repairs = Repairs()
    repaired = repair_holes(waveform, [region(0, 60)], segments, decode, LongFormOptions(), repairs)
    return sorted((w for s in repaired for w in s.words), key=lambda w: w.start), repairs


def test_a_partial_recovery_is_decoded_again_and_counted_on_the_final_words() -> None:
    """The hole's first decode stops half way (another skip): a second round fills the rest."""
    said = {float(t): " again" for t in np.arange(20.5, 48.0, 0.5)}
    decode, calls = scripted_decoder(said, skip_after=30.0)
    first = [Word(t, t + 0.3, " w") for t in np.arange(0.5, 20, 0.5)]
    first += [Word(20.0, 50.0, " Thank")]  # the stretched word of the timestamp jump
    first += [Word(t, t + 0.3, " w") for t in np.arange(50.5, 59.5, 0.5)]
    words, repairs = run_repair(first, decode)
    details = repairs.as_dict()
    assert details["recovery_rounds"] == 2, details
    # Round 2 decodes only what round 1 left (and the stretched word's freed start).
    assert all(19.5 <= a and b <= 50.5 for a, b in calls[1:]), calls
    assert details["recovered_stretches"] == 1 and details["unrecovered_stretches"] == 0
    assert details["speech_stretches_without_words_after_recovery"] == 0, repairs.remaining
    assert find_holes([region(0, 60)], words, 2.0) == []
    stretched = next(w for w in words if w.text == " Thank")
    assert (stretched.start, stretched.end) == (48.0, 50.0)  # out of the recovered words


def test_a_stretched_word_over_a_stretch_nothing_recovers_leaves_it_unrecovered() -> None:
    decode, _ = scripted_decoder({})  # the decoder finds nothing there
    first = [Word(t, t + 0.3, " w") for t in np.arange(0.5, 20, 0.5)]
    first += [Word(20.0, 50.0, " Thank")]
    first += [Word(t, t + 0.3, " w") for t in np.arange(50.5, 59.5, 0.5)]
    _, repairs = run_repair(first, decode)
    details = repairs.as_dict()
    assert details["unrecovered_stretches"] == 1 and details["partly_recovered_stretches"] == 0


def test_a_stretch_the_fast_decoder_finds_nothing_in_is_decoded_carefully_once() -> None:
    """A batched or greedy decode that fails on a stretch: beam search gets one go at it."""
    fast, fast_calls = scripted_decoder({})
    said = {float(t): " careful" for t in np.arange(20.5, 49.5, 0.5)}
    careful, careful_calls = scripted_decoder(said)
    first = [Word(t, t + 0.3, " w") for t in np.arange(0.5, 20, 0.5)]
    first += [Word(t, t + 0.3, " w") for t in np.arange(50.5, 59.5, 0.5)]
    waveform = (np.arange(61 * SR) / SR).astype(np.float32)
    segments = [AsrSegment(w.start, w.end, w.text, [w]) for w in first]
    repairs = Repairs()
    repaired = repair_holes(
        waveform, [region(0, 60)], segments, fast, LongFormOptions(), repairs, careful
    )
    details = repairs.as_dict()
    assert len(fast_calls) == len(careful_calls) == 1
    assert details["stretches_decoded_carefully"] == 1
    assert details["recovered_stretches"] == 1
    assert sum(w.text.strip() == "careful" for s in repaired for w in s.words) == len(said)


def test_a_stretch_that_stays_half_empty_is_counted_as_partly_recovered() -> None:
    said = {float(t): " again" for t in np.arange(20.5, 30, 0.5)}  # nothing after 30 s
    decode, calls = scripted_decoder(said)
    first = [Word(t, t + 0.3, " w") for t in np.arange(0.5, 20, 0.5)]
    first += [Word(t, t + 0.3, " w") for t in np.arange(50.5, 59.5, 0.5)]
    words, repairs = run_repair(first, decode)
    details = repairs.as_dict()
    assert details["speech_stretches_without_words"] == 1
    assert details["recovered_stretches"] == 0
    assert details["partly_recovered_stretches"] == 1  # words 20-30 s, none 30-50 s
    assert details["recovered_words"] == len(said)
    assert details["longest_speech_without_words"] > 15
    assert len(calls) == 2  # the rest was tried once more, on its own


def test_stretched_words_keep_their_larger_free_end_and_only_when_words_lie_inside() -> None:
    words = [Word(0.0, 0.4, "a"), Word(0.5, 9.0, "long"), Word(3.0, 3.4, "b"), Word(9.5, 20, "z")]
    trim_stretched_words(words)
    assert [(w.start, w.end) for w in words] == [(0.0, 0.4), (7.0, 9.0), (3.0, 3.4), (9.5, 20)]
    early = [Word(0.5, 9.0, "long"), Word(8.0, 8.4, "b")]
    trim_stretched_words(early)
    assert (early[0].start, early[0].end) == (0.5, 2.5)


def test_a_skipped_window_is_recovered_and_counted(monkeypatch) -> None:
    """A decoder that drops 20 s of speech (a skipped window): the hole is filled."""
    import resources.long_form as long_form

    speech = [region(1, 60)]
    monkeypatch.setattr(long_form, "speech_probabilities", lambda w: np.zeros(1))
    monkeypatch.setattr(long_form, "regions_from_probabilities", lambda *a, **k: speech)

    def decode(audio: np.ndarray, extra: dict[str, Any]):
        if "condition_on_previous_text" in extra:  # the second pass, on one hole
            span = len(audio) / SR
            words = [(t, t + 0.4, "again") for t in np.arange(0.5, span - 0.5, 0.5)]
            return iter([segment_of(*words)]), FakeInfo()
        # First pass: words everywhere except 20-40 s.
        ts = [t for t in np.arange(1.0, 59.5, 0.5) if not 20 <= t < 40]
        return iter([segment_of(*[(t, t + 0.4, "first") for t in ts])]), FakeInfo()

    result = transcribe_long_form(
        np.zeros(61 * SR, dtype=np.float32),
        decode,
        vad_options={},
        prompt=None,
    )
    assert result.details["speech_stretches_without_words"] == 1
    assert result.details["recovered_stretches"] == 1
    assert result.details["unrecovered_stretches"] == 0
    assert result.details["speech_stretches_without_words_after_recovery"] == 0
    starts = [w.start for s in result.segments for w in s.words]
    assert starts == sorted(starts)
    assert any(20 <= t < 40 for t in starts)
    assert result.language == "en"


def test_sliced_log_mel_matches_faster_whisper() -> None:
    """Features computed a minute at a time equal faster-whisper's one-shot spectrogram.

    The Mel projection is a matrix product whose BLAS blocking depends on the number of
    frames, so values may differ in the last bit; nothing more.
    """
    from faster_whisper.feature_extractor import FeatureExtractor

    from resources.log_mel import FRAMES_PER_SLICE, SlicedFeatureExtractor

    rng = np.random.default_rng(5)
    seconds = 2.5 * FRAMES_PER_SLICE / 100  # two and a half slices
    t = np.arange(int(seconds * SR)) / SR
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(t)) + 0.05 * rng.standard_normal(len(t))
    audio = audio.astype(np.float32)
    expected = FeatureExtractor()(audio)
    sliced = SlicedFeatureExtractor()(audio)
    assert sliced.shape == expected.shape and sliced.dtype == expected.dtype
    np.testing.assert_allclose(sliced, expected, rtol=0, atol=1e-6)
    short = audio[: 30 * SR]  # a window or a batched chunk: exactly upstream's code path
    assert np.array_equal(SlicedFeatureExtractor()(short), FeatureExtractor()(short))


def test_every_block_starts_with_the_episodes_prompt_only(monkeypatch) -> None:
    """The previous block's text is not carried as the next block's prompt: on an hour it
    made the conditioned decoding skip 791 s of speech (10.7 s without it)."""
    import resources.long_form as long_form

    speech = [region(1, 20), region(40, 60), region(80, 100)]
    monkeypatch.setattr(long_form, "speech_probabilities", lambda w: np.zeros(1))
    monkeypatch.setattr(long_form, "regions_from_probabilities", lambda *a, **k: speech)
    prompts: list[str | None] = []

    def decode(audio: np.ndarray, extra: dict[str, Any]):
        if "speech_chunks" in extra:  # a block's first pass
            prompts.append(extra["initial_prompt"])
        span = len(audio) / SR
        words = [(t, t + 0.4, "said") for t in np.arange(0.0, span - 0.5, 0.5)]
        return iter([segment_of(*words)]), FakeInfo()

    transcribe_long_form(
        np.zeros(101 * SR, dtype=np.float32),
        decode,
        vad_options={},
        prompt="TWIML with Ada Example",
        options=LongFormOptions(block_seconds=30.0),
    )
    assert prompts == ["TWIML with Ada Example"] * 3
