"""Silero voice activity detection over a whole episode in bounded memory.

faster-whisper's ``get_speech_timestamps`` copies the whole waveform before running the
model. The model runs on batches of 512-sample windows and carries its LSTM state and a
64-sample context from window to window, so feeding it one batch at a time with the same
state carried over gives exactly the probabilities of the one-shot call.

Speech regions follow faster-whisper's rules (hysteresis, minimum silence, padding), so
the engine decodes the same speech as bare faster-whisper with the same ``VadOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resources.audio import SAMPLE_RATE, AudioSource

WINDOW = 512  # samples per Silero decision (32 ms)
CONTEXT = 64  # samples of the previous window the model sees
BATCH_WINDOWS = 10_000  # windows per model call; state carries across calls


@dataclass(frozen=True, slots=True)
class SpeechRegion:
    """A stretch of speech, in samples of the 16 kHz waveform."""

    start: int
    end: int

    @property
    def seconds(self) -> tuple[float, float]:
        return self.start / SAMPLE_RATE, self.end / SAMPLE_RATE

    @property
    def duration(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def speech_probabilities(waveform: AudioSource) -> np.ndarray:
    """Silero's speech probability for every 512-sample window, streamed in batches."""
    from faster_whisper.vad import get_vad_model

    session = get_vad_model().session
    h = c = np.zeros((1, 1, 128), dtype=np.float32)  # LSTM state; only read, then replaced
    previous = np.zeros(CONTEXT, dtype=np.float32)
    n_windows = len(waveform) // WINDOW + 1  # the last window is zero-padded, as upstream
    probs = np.empty(n_windows, dtype=np.float32)
    batch_samples = BATCH_WINDOWS * WINDOW
    for first in range(0, n_windows, BATCH_WINDOWS):
        start = first * WINDOW
        block = waveform[start : start + batch_samples]
        windows = min(BATCH_WINDOWS, n_windows - first)
        if len(block) < windows * WINDOW:
            block = np.pad(block, (0, windows * WINDOW - len(block)))
        frames = np.asarray(block, dtype=np.float32).reshape(windows, WINDOW)
        if first + windows == n_windows:  # upstream zeroes the last window's tail; so do we
            frames = frames.copy()
            frames[-1, -CONTEXT:] = 0.0
        contexts = np.vstack([previous[None], frames[:-1, -CONTEXT:]])
        batch = np.concatenate([contexts, frames], axis=1)
        out, h, c = session.run(None, {"input": batch, "h": h, "c": c})
        probs[first : first + windows] = np.asarray(out).reshape(-1)
        previous = frames[-1, -CONTEXT:].copy()
    return probs


def regions_from_probabilities(
    probs: np.ndarray,
    n_samples: int,
    *,
    threshold: float = 0.5,
    neg_threshold: float | None = None,
    min_speech_duration_ms: int = 0,
    min_silence_duration_ms: int = 2000,
    speech_pad_ms: int = 400,
) -> list[SpeechRegion]:
    """Speech regions by faster-whisper's rules (without its ``max_speech_duration_s``)."""
    if neg_threshold is None:
        neg_threshold = max(threshold - 0.15, 0.01)
    min_speech = SAMPLE_RATE * min_speech_duration_ms / 1000
    min_silence = SAMPLE_RATE * min_silence_duration_ms / 1000
    pad = SAMPLE_RATE * speech_pad_ms / 1000

    spans: list[list[int]] = []
    start: int | None = None
    silence_from = 0
    for i, p in enumerate(probs.tolist()):
        here = WINDOW * i
        if p >= threshold:
            silence_from = 0
            if start is None:
                start = here
            continue
        if start is None or p >= neg_threshold:
            continue
        if not silence_from:
            silence_from = here
        if here - silence_from < min_silence:
            continue
        if silence_from - start > min_speech:
            spans.append([start, silence_from])
        start, silence_from = None, 0
    if start is not None and n_samples - start > min_speech:
        spans.append([start, n_samples])
    return [SpeechRegion(a, b) for a, b in pad_spans(spans, pad, n_samples)]


def pad_spans(spans: list[list[int]], pad: float, n_samples: int) -> list[list[int]]:
    """Widen spans by ``pad``; a gap narrower than two pads is split between its neighbours."""
    for i, span in enumerate(spans):
        if i == 0:
            span[0] = int(max(0, span[0] - pad))
        if i + 1 < len(spans):
            following = spans[i + 1]
            gap = following[0] - span[1]
            if gap < 2 * pad:
                span[1] += int(gap // 2)
                following[0] = int(max(0, following[0] - gap // 2))
            else:
                span[1] = int(min(n_samples, span[1] + pad))
                following[0] = int(max(0, following[0] - pad))
        else:
            span[1] = int(min(n_samples, span[1] + pad))
    return spans


def speech_regions(waveform: AudioSource, **options: float | int | None) -> list[SpeechRegion]:
    """Speech regions of a 16 kHz waveform (options as faster-whisper's ``VadOptions``)."""
    return regions_from_probabilities(speech_probabilities(waveform), len(waveform), **options)
