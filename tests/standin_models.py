"""Stand-in models for the orchestration tests: deterministic, instant, no torch, no CTranslate2.

A test device, never used by the product. The tests of *orchestration* (the chaos
catch-up, the hung-run and the PostgreSQL backfill tests) run dozens of Dagster runs,
and with the real engine every run worker loads faster-whisper (CTranslate2), the
offline diariser and the speaker encoder (torch): seconds of CPU and most of a GB per
run, spent on models these tests do not look at. The code location
``tests.standin_definitions`` swaps in what is here; everything else stays real.

What is replaced, and only that:

- :class:`StandInASR` (a :class:`~resources.asr.WhisperASR`) and :class:`StandInDiariser`
  (a :class:`~resources.diarisation.PyannoteDiariser`) override ``transcribe`` / ``diarise``
  (and ``settings``, so every record names the stand-in). They read the waveform that the
  real ``run_model_step`` decoded (the real decoder: a corrupt episode still fails there,
  with the same reason), find its loud stretches by frame energy and return words (the
  episode prompt's words, or a fixed list, one per ~0.3 s of speech) and turns (the
  speaker alternates at every pause of 0.4 s or more), in the real result types;
- the speaker encoder of ``speaker_names`` (resemblyzer, torch):
  :func:`install_standin_voice_encoder` replaces ``default_encoder`` and ``embed_bounds`` of
  ``twiml_assets.speakers.voiceprints`` (the two functions through which every voiceprint
  is made) with a spectral-shape vector. It patches the process it runs in, so only the
  stand-in code location calls it (never a test process).

A model takes time, and the tests need that time: a worker is SIGKILLed or SIGSTOPped
*in* the model step, which must not be over before the test sees it start. So the
stand-ins spend ``seconds_per_audio_second`` × the audio's length asleep, reporting
progress as they go, as a model would (``STANDIN_MODEL_PACE``, see
``tests/standin_definitions.py``).
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
from pydantic import Field

from resources.asr import AsrSettings, WhisperASR
from resources.audio import SAMPLE_RATE, AudioSource, ProgressCallback, is_silent
from resources.diarisation import DiarisationSettings, PyannoteDiariser
from resources.diarisation.resource import MIN_AUDIO_SECONDS
from resources.schema import AsrResult, AsrSegment, DiarisationResult, SpeakerTurn, Word

STANDIN_ASR_MODEL = "standin:energy-words"
STANDIN_DIARISER_MODEL = "standin:energy-turns"
STANDIN_VOICE_ENCODER = "standin:spectral-shape"

FRAME = SAMPLE_RATE // 50  # 20 ms energy frames
BLOCK_FRAMES = 3000  # one minute of frames read at a time (a Waveform is read by slices)
RELATIVE_FLOOR_DB = -35.0  # a frame is speech within this much of the loudest frame …
ABSOLUTE_FLOOR_DB = -55.0  # … and above this level
MIN_SILENCE = 0.4  # seconds of quiet that end a stretch (and, in turns, change the speaker)
MIN_SPEECH = 0.1  # shorter stretches are clicks
WORD_SECONDS = 0.3  # one stand-in word per this much speech
DEFAULT_WORDS = ("stand", "in", "words", "for", "orchestration", "tests")
SLEEP_SLICE = 0.25  # seconds between progress reports while pacing


def pace_field() -> Any:
    return Field(
        default=0.0,
        ge=0.0,
        description="Stand-in only: wall seconds spent per second of audio, in place of a "
        "model's compute (so a test can signal the worker while it is in the model step).",
    )


# -- what both stand-ins hear: loud stretches of the decoded waveform ------------------------
def frame_levels(waveform: AudioSource) -> np.ndarray:
    """Mean-square level (dB) of every 20 ms frame, reading a minute of samples at a time."""
    levels = []
    step = FRAME * BLOCK_FRAMES
    for start in range(0, len(waveform), step):
        block = np.asarray(waveform[start : start + step], dtype=np.float32)
        frames = len(block) // FRAME
        if frames == 0:
            continue
        power = np.square(block[: frames * FRAME].astype(np.float64)).reshape(frames, FRAME)
        levels.append(10 * np.log10(power.mean(axis=1) + 1e-12))
    return np.concatenate(levels) if levels else np.zeros(0)


def speech_stretches(waveform: AudioSource) -> list[tuple[float, float]]:
    """(start, end) seconds of the loud stretches, pauses under ``MIN_SILENCE`` bridged."""
    levels = frame_levels(waveform)
    if len(levels) == 0:
        return []
    threshold = max(float(levels.max()) + RELATIVE_FLOOR_DB, ABSOLUTE_FLOOR_DB)
    loud = np.flatnonzero(levels >= threshold)
    stretches: list[list[float]] = []
    seconds_per_frame = FRAME / SAMPLE_RATE
    for i in loud:
        start, end = i * seconds_per_frame, (i + 1) * seconds_per_frame
        if stretches and start - stretches[-1][1] < MIN_SILENCE:
            stretches[-1][1] = end
        else:
            stretches.append([start, end])
    return [(round(s, 3), round(e, 3)) for s, e in stretches if e - s >= MIN_SPEECH]


def spend(seconds: float, progress: ProgressCallback | None, duration: float) -> None:
    """Sleep ``seconds`` in slices, reporting progress through the audio as a model does."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(SLEEP_SLICE, left))
        if progress is not None and seconds > 0:
            done = 1.0 - max(0.0, deadline - time.monotonic()) / seconds
            progress(duration * done, duration)


# -- ASR ------------------------------------------------------------------------------------
def vocabulary(prompt: str | None) -> tuple[str, ...]:
    """The words the stand-in "hears": the prompt's (episode title and description)."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", prompt or "")
    return tuple(words) or DEFAULT_WORDS


class StandInASR(WhisperASR):
    """A ``WhisperASR`` that loads no model: one word per ~0.3 s of loud audio.

    Settings resolve as the real resource's do (profile, fields), with the model named
    :data:`STANDIN_ASR_MODEL`, so records, metadata and upload reuse all see the stand-in.
    """

    seconds_per_audio_second: float = pace_field()

    def settings(self, **overrides: Any) -> AsrSettings:
        return super().settings(**overrides).model_copy(update={"model": STANDIN_ASR_MODEL})

    def load(self, **overrides: Any) -> Any:
        """Nothing to load (the engine loads before it transcribes)."""
        return None

    def transcribe(
        self,
        waveform: AudioSource,
        *,
        initial_prompt: str | None = None,
        progress: ProgressCallback | None = None,
        **overrides: Any,
    ) -> AsrResult:
        s = self.settings(initial_prompt=initial_prompt, **overrides)
        duration = len(waveform) / SAMPLE_RATE
        config = {**s.model_dump(), "device": "cpu", "compute_type": s.compute_type}
        started = time.perf_counter()
        language = s.language or "en"
        if duration < 0.1:  # as the real resource: nothing to transcribe
            return AsrResult([], language, duration, s.model, config, 0.0)
        spend(self.seconds_per_audio_second * duration, progress, duration)
        vocab = vocabulary(s.initial_prompt)
        segments, n = [], 0
        for start, end in speech_stretches(waveform):
            count = max(1, round((end - start) / WORD_SECONDS))
            edges = np.linspace(start, end, count + 1)
            words = []
            for a, b in zip(edges[:-1], edges[1:], strict=True):
                words.append(Word(float(a), float(b), " " + vocab[n % len(vocab)], 0.9))
                n += 1
            text = "".join(w.text for w in words)
            segments.append(AsrSegment(start, end, text, words, avg_logprob=-0.1))
        if progress is not None:
            progress(duration, duration)
        details = {"standin": True, "recovered_stretches": 0, "unrecovered_stretches": 0}
        seconds = time.perf_counter() - started
        return AsrResult(segments, language, duration, s.model, config, seconds, details)


# -- diarisation ----------------------------------------------------------------------------
class StandInDiariser(PyannoteDiariser):
    """A ``PyannoteDiariser`` that loads no model: a turn per loud stretch, speakers taking
    turns (SPEAKER_00, SPEAKER_01, …, up to the speaker bounds; two by default)."""

    seconds_per_audio_second: float = pace_field()

    def settings(self, **overrides: Any) -> DiarisationSettings:
        settings = super().settings(**overrides)
        return settings.model_copy(update={"pipeline": STANDIN_DIARISER_MODEL})

    def load(self, s: DiarisationSettings | None = None) -> Any:
        """Nothing to load (the engine loads the diariser beside the ASR)."""
        return None

    def diarise(
        self,
        waveform: AudioSource,
        sample_rate: int = SAMPLE_RATE,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        progress: ProgressCallback | None = None,
        threads: int = 0,
    ) -> DiarisationResult:
        s = self.settings(
            num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers
        )
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"expected {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
        duration = len(waveform) / SAMPLE_RATE
        config = {**s.model_dump(), "device": "cpu", "hf_token_set": False}
        started = time.perf_counter()
        if duration < MIN_AUDIO_SECONDS or is_silent(waveform):
            turns, details = [], {"num_speakers": 0, "reason": "silent or too short"}
        else:
            spend(self.seconds_per_audio_second * duration, progress, duration)
            fewest, most = s.speaker_bounds()
            speakers = max(fewest, min(2, most or 2))
            turns = [
                SpeakerTurn(start, end, f"SPEAKER_{i % speakers:02d}")
                for i, (start, end) in enumerate(speech_stretches(waveform))
            ]
            details = {"num_speakers": len({t.speaker for t in turns}), "standin": True}
        seconds = time.perf_counter() - started
        if progress is not None:
            progress(duration, duration)
        details["real_time_factor"] = round(seconds / duration, 4) if duration else 0.0
        return DiarisationResult(turns, duration, STANDIN_DIARISER_MODEL, config, seconds, details)


# -- the speaker encoder of speaker naming ---------------------------------------------------
def spectral_voiceprint(encoder: object, waveform: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Stands for ``voiceprints.embed_bounds``: a unit 256-vector of the mean log spectrum
    (32 ms frames) over the spans, its mean removed: the spectral shape of the voice."""
    n_fft = 512
    window = np.hanning(n_fft)
    total, count = np.zeros(n_fft // 2 + 1), 0
    for start, end in np.asarray(bounds, dtype=float).reshape(-1, 2):
        samples = np.asarray(waveform[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)])
        frames = len(samples) // n_fft
        if frames == 0:
            continue
        spectra = np.abs(np.fft.rfft(samples[: frames * n_fft].reshape(frames, n_fft) * window))
        total += np.log1p(spectra**2).sum(axis=0)
        count += frames
    if count == 0:
        return np.zeros(256)
    shape = total[1:257] / count
    shape = shape - shape.mean()
    norm = float(np.linalg.norm(shape))
    return shape / norm if norm > 1e-12 else shape


def install_standin_voice_encoder() -> None:
    """Make this process's voiceprints with :func:`spectral_voiceprint` (no torch).

    ``label_voiceprints`` and ``audio_voiceprint`` call ``default_encoder()`` and
    ``embed_bounds`` through their module, so this replaces the encoder for every
    voiceprint the process makes; the stored file's shape and use are unchanged.
    """
    from twiml_assets.speakers import voiceprints

    voiceprints.default_encoder = lambda device="cpu": STANDIN_VOICE_ENCODER
    voiceprints.embed_bounds = spectral_voiceprint
