"""Step 1 of the offline diariser: speech cut into segments that each hold one voice.

pyannote.audio's segmentation model (PyanNet: 5 s windows, 3 local speakers) slides over
the waveform. Its local speakers are only consistent inside a window, so only
permutation-free quantities are averaged across windows: the loudest local activation
gives speech regions (hysteresis ``speech_onset``/``speech_offset``); a switch of the
dominant local speaker is a vote for a speaker change, and speech is cut where at least
``change_threshold`` of the covering windows vote; two simultaneous local speakers in at
least ``overlap_threshold`` of them mark overlapped speech.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from resources.audio import SAMPLE_RATE, AudioSource, ProgressCallback
from resources.diarisation.networks import SegmentationNet

LOCAL_ACTIVE = 0.5  # a local speaker of a segmentation window is "on" above this activation
CHANGE_SMOOTHING_FRAMES = 3  # votes within +-3 frames (+-50 ms) count for the same change
SEGMENTATION_BLOCK_SECONDS = 300.0  # audio read per segmentation pass
SEGMENTATION_BATCH = 8  # windows per forward pass: less peak memory than pyannote's 32


def segmentation_scores(
    model: SegmentationNet,
    waveform: AudioSource,
    step: float,
    progress: ProgressCallback | None,
    threads: int = 0,
) -> FrameScores:
    """Per-frame speech, change and overlap evidence of the whole waveform.

    The waveform is read in blocks of ``SEGMENTATION_BLOCK_SECONDS`` that overlap by one
    window minus one step and start on the step grid, so the windows (each scored on its
    own) are exactly those of one pass over the whole waveform. Each block's window
    activations are folded into the frame scores at once: neither the audio nor the
    activations of the whole episode are held.
    """
    duration = len(waveform) / SAMPLE_RATE
    step = min(step, model.window_seconds)
    scores = FrameScoreAccumulator(
        int(np.ceil(duration / model.frame_step)) + 1, step, model.frame_step
    )
    step_samples = round(step * SAMPLE_RATE)
    window_samples = model.window_samples
    block = max(1, round(SEGMENTATION_BLOCK_SECONDS / step)) * step_samples
    n = len(waveform)
    start = 0
    while True:
        end = start + block + window_samples - step_samples
        last = n - (start + block) < window_samples  # the tail goes with this block
        audio = np.ascontiguousarray(waveform[start : n if last else end], dtype=np.float32)
        for first, batch in sliding_windows(audio, window_samples, step_samples):
            scores.add(model(batch, threads), first_chunk=start // step_samples + first)
        if progress is not None:
            done = min(n, start + block) / SAMPLE_RATE
            progress(float(0.7 * done), duration)
        if last:
            break
        start += block
    return scores.result()


def sliding_windows(
    audio: np.ndarray, window: int, step: int, batch: int = SEGMENTATION_BATCH
) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the first window, (batch, 1, window) samples), pyannote's sliding windows:
    every whole window on the ``step`` grid, then the rest zero-padded to one window."""
    n = len(audio)
    whole = (n - window) // step + 1 if n >= window else 0
    views = np.lib.stride_tricks.sliding_window_view(audio, window)[::step][:whole] if whole else []
    for first in range(0, whole, batch):
        yield first, np.ascontiguousarray(views[first : first + batch])[:, None, :]
    if n < window or (n - window) % step > 0:
        tail = np.zeros((1, 1, window), dtype=np.float32)
        rest = audio[whole * step :]
        tail[0, 0, : len(rest)] = rest
        yield whole, tail


@dataclass(frozen=True, slots=True)
class FrameScores:
    """Per-frame evidence averaged over the segmentation windows that cover each frame."""

    speech: np.ndarray  # mean activation of the loudest local speaker: "someone speaks"
    change: np.ndarray  # share of windows whose dominant local speaker switches here
    overlap: np.ndarray  # share of windows hearing two or more local speakers at once


class FrameScoreAccumulator:
    """The permutation-free evidence of the windows (see the module docstring) summed on one
    global frame grid, a batch of windows at a time."""

    def __init__(self, n_frames: int, chunk_step: float, frame_step: float) -> None:
        self.n_frames, self.chunk_step, self.frame_step = n_frames, chunk_step, frame_step
        self.speech, self.votes, self.overlap, self.coverage = np.zeros((4, n_frames))

    def add(self, chunks: np.ndarray, first_chunk: int = 0) -> None:
        """Fold in windows ``first_chunk``, ``first_chunk + 1``, ... (frames x speakers each)."""
        for c, chunk in enumerate(chunks, start=first_chunk):
            start = int(round(c * self.chunk_step / self.frame_step))
            stop = min(self.n_frames, start + len(chunk))
            if stop <= start:
                break
            local = chunk[: stop - start]
            peak = local.max(axis=1)
            self.speech[start:stop] += peak
            self.overlap[start:stop] += (local > LOCAL_ACTIVE).sum(axis=1) >= 2
            self.coverage[start:stop] += 1
            dominant = np.where(peak > LOCAL_ACTIVE, local.argmax(axis=1), -1)
            voiced = np.flatnonzero(dominant >= 0)
            switches = np.flatnonzero(np.diff(dominant[voiced]) != 0)
            self.votes[start + (voiced[switches] + voiced[switches + 1]) // 2] += 1

    def result(self) -> FrameScores:
        coverage = np.maximum(self.coverage, 1)
        kernel = np.ones(2 * CHANGE_SMOOTHING_FRAMES + 1)
        change = np.convolve(self.votes, kernel, mode="same") / coverage
        return FrameScores(self.speech / coverage, change, self.overlap / coverage)


def hysteresis(scores: np.ndarray, onset: float, offset: float) -> np.ndarray:
    """Boolean activity: on above ``onset``, off again only below ``offset``."""
    active = np.zeros(len(scores), dtype=bool)
    on = False
    for i, value in enumerate(scores):
        on = value > (offset if on else onset)
        active[i] = on
    return active


def change_points(change: np.ndarray, threshold: float) -> np.ndarray:
    """Frames where the change score peaks at or above ``threshold``."""
    if len(change) < 3:
        return np.zeros(0, dtype=int)
    mid = change[1:-1]
    peaks = (mid >= threshold - 1e-9) & (mid >= change[:-2]) & (mid > change[2:])
    return np.flatnonzero(peaks) + 1


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index pairs of the True runs of ``mask``."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def frames_to_seconds(
    mask: np.ndarray, frame_step: float, frame_offset: float
) -> list[tuple[float, float]]:
    return [(a * frame_step + frame_offset, b * frame_step + frame_offset) for a, b in runs(mask)]


def single_voice_segments(
    speech: np.ndarray,
    changes: np.ndarray,
    frame_step: float,
    frame_offset: float,
    duration: float,
) -> np.ndarray:
    """Speech regions cut at the change points, as (n, 2) seconds."""
    bounds: list[tuple[float, float]] = []
    for start, stop in runs(speech):
        cuts = changes[(changes > start) & (changes < stop)]
        edges = np.concatenate(([start], cuts, [stop])) * frame_step + frame_offset
        edges = np.clip(edges, 0.0, duration)
        bounds.extend((a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b - a > 0.05)
    return np.asarray(bounds, dtype=float).reshape(-1, 2)
