"""Step 2 of the offline diariser, and the one speaker embedding speaker naming uses.

resemblyzer's GE2E LSTM encodes ``embedding_window`` s windows every ``embedding_step`` s
inside each segment. Raw GE2E vectors separate similar-sounding (and synthetic) voices
poorly, so for clustering the LSTM states are whitened with the covariance of their
variation *within* segments (what changes while the voice does not: phonemes, prosody);
what is left is mostly the voice. That whitening is estimated per recording, so it only
compares voices inside one; the raw GE2E vectors are on the encoder's own absolute
scale, which is why speaker naming and the final assignment use those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resources.audio import SAMPLE_RATE, AudioSource
from resources.diarisation.networks import (
    EMBEDDING_SIZE,
    MEL_WINDOW_STEP_MS,
    EncoderNet,
    MelBasis,
)
from resources.intervals import merge_intervals

WHITENING_REGULARISER = 0.1  # fraction of the mean eigenvalue added before whitening
MEL_FRAMES_PER_SECOND = 1000 // MEL_WINDOW_STEP_MS  # resemblyzer's mel hop is 10 ms
MEL_BLOCK_FRAMES = 6000  # speaker-encoder windows encoded a minute of mel frames at a time
TARGET_DBFS = -30.0  # resemblyzer normalises its training utterances to this level


@dataclass(slots=True)
class Windows:
    """The GE2E embedding of each window, kept for resegmentation: which segment it lies
    in and where its centre is. Windows are ordered by segment, then by time."""

    raw: np.ndarray  # (m, 256) GE2E embedding (unit length, the encoder's own scale)
    owner: np.ndarray  # (m,) index of the segment
    centres: np.ndarray  # (m,) seconds


@dataclass(slots=True)
class Segments:
    """Single-voice stretches of speech (seconds) and their embeddings."""

    bounds: np.ndarray  # (n, 2) start, end
    whitened: np.ndarray  # (n, 256) mean whitened LSTM state, unit rows: finds the groups
    raw: np.ndarray  # (n, 256) sum of GE2E window embeddings: places segments in groups
    windows: Windows

    @property
    def durations(self) -> np.ndarray:
        return self.bounds[:, 1] - self.bounds[:, 0]


def embed_segments(
    encoder: EncoderNet,
    waveform: AudioSource,
    bounds: np.ndarray,
    window: float,
    step: float,
    threads: int = 0,
) -> Segments:
    """Whitened and raw GE2E embeddings of each segment, from windows inside it."""
    mel = MelSpectrogram(waveform, speech_gain(waveform, bounds), encoder.mel_basis)
    spans, owner = embedding_windows(bounds, window, step, len(mel))
    size = round(window * MEL_FRAMES_PER_SECOND)
    hidden, raw = encode_windows(encoder, mel, spans, size, threads=threads)
    lag = max(1, round(window / step))  # windows that no longer overlap
    whitened = within_segment_whitening(hidden, owner, lag)
    n = len(bounds)
    seg_whitened = np.zeros((n, whitened.shape[1]))
    seg_raw = np.zeros((n, raw.shape[1]))
    np.add.at(seg_whitened, owner, whitened)
    np.add.at(seg_raw, owner, raw)
    centres = np.asarray(spans, dtype=float).reshape(-1, 2).mean(axis=1) / MEL_FRAMES_PER_SECOND
    windows = Windows(raw=raw, owner=owner, centres=centres)
    return Segments(bounds=bounds, whitened=unit_rows(seg_whitened), raw=seg_raw, windows=windows)


class MelSpectrogram:
    """resemblyzer's (power, not log) mel spectrogram: 10 ms frames, speech at -30 dBFS.

    Frames are computed on demand from slices of the waveform, each as
    ``resemblyzer.audio.wav_to_mel_spectrogram`` computes it (librosa's centred STFT,
    power, mel filterbank) on the whole waveform scaled by ``gain``, so a long episode
    holds neither its whole STFT nor all its mel frames nor a second copy of the samples.
    """

    def __init__(self, waveform: AudioSource, gain: float, basis: MelBasis) -> None:
        self.waveform = waveform
        self.gain = gain
        self.basis = basis
        self.hop = int(SAMPLE_RATE * MEL_WINDOW_STEP_MS / 1000)
        self.n_fft = len(basis.window)
        self.n_mels = len(basis.filters)

    def __len__(self) -> int:
        return 1 + len(self.waveform) // self.hop

    def frames(self, first: int, last: int) -> np.ndarray:
        """Frames ``first`` .. ``last - 1``, shape (frames, mel channels)."""
        last = min(last, len(self))
        if last <= first:
            return np.empty((0, self.n_mels), dtype=np.float32)
        # Samples of those frames in the centred (zero-padded by n_fft/2) signal.
        a = first * self.hop - self.n_fft // 2
        b = (last - 1) * self.hop + self.n_fft - self.n_fft // 2
        y = np.zeros(b - a, dtype=np.float32)
        lo, hi = max(a, 0), min(b, len(self.waveform))
        if hi > lo:
            y[lo - a : hi - a] = self.waveform[lo:hi] * self.gain
        windows = np.lib.stride_tricks.sliding_window_view(y, self.n_fft)[:: self.hop]
        power = np.abs(np.fft.rfft(windows * self.basis.window, axis=1)) ** 2
        return np.ascontiguousarray(power @ self.basis.filters.T, dtype=np.float32)


def speech_gain(waveform: AudioSource, bounds: np.ndarray) -> float:
    """The gain that brings the speech in ``bounds`` to resemblyzer's -30 dBFS."""
    energy, count = 0.0, 0
    for start, end in merge_intervals(np.asarray(bounds, dtype=float).reshape(-1, 2)):
        samples = waveform[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        energy += float(np.dot(samples, samples))
        count += len(samples)
    rms = float(np.sqrt(energy / count)) if count else 0.0
    return 10 ** (TARGET_DBFS / 20) / rms if rms > 1e-6 else 1.0


def embedding_windows(
    bounds: np.ndarray, window: float, step: float, n_mel: int
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Mel-frame spans covering each segment (one shorter span for a short segment)."""
    size = int(round(window * MEL_FRAMES_PER_SECOND))
    hop = max(1, int(round(step * MEL_FRAMES_PER_SECOND)))
    spans: list[tuple[int, int]] = []
    owner: list[int] = []
    for i, (start, end) in enumerate(bounds):
        a = int(round(start * MEL_FRAMES_PER_SECOND))
        b = min(n_mel, max(a + 2, int(round(end * MEL_FRAMES_PER_SECOND))))
        starts = list(range(a, b - size + 1, hop)) or [a]
        if starts[-1] + size < b - hop // 2:  # cover the segment's tail as well
            starts.append(b - size)
        spans.extend((x, min(b, x + size)) for x in starts)
        owner.extend([i] * len(starts))
    return spans, np.asarray(owner, dtype=int)


def encode_windows(
    encoder: EncoderNet,
    mel: MelSpectrogram,
    spans: list[tuple[int, int]],
    size: int,
    batch_size: int = 128,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(last LSTM state, GE2E embedding) per span.

    Spans are encoded in time order, ``MEL_BLOCK_FRAMES`` of mel frames at a time.
    A span shorter than ``size`` frames is tiled up to ``size``: the encoder was trained
    on 1.6 s inputs, and its state after fewer steps lies off the distribution that the
    whitening is estimated on, which misplaces short segments.
    """
    hidden = np.zeros((len(spans), encoder.hidden_size), dtype=np.float32)
    raw = np.zeros((len(spans), EMBEDDING_SIZE), dtype=np.float32)
    order = np.argsort([a for a, _ in spans], kind="stable")
    starts = np.asarray([spans[j][0] for j in order])
    i = 0
    while i < len(order):
        first = int(starts[i])
        stop = int(np.searchsorted(starts, first + MEL_BLOCK_FRAMES))
        block = order[i:stop]
        frames = mel.frames(first, max(spans[j][1] for j in block))
        for k in range(0, len(block), batch_size):
            rows = block[k : k + batch_size]
            batch = np.stack(
                [tiled(frames[spans[j][0] - first : spans[j][1] - first], size) for j in rows]
            )
            hidden[rows], raw[rows] = encoder(batch, threads)
        i = stop
    return hidden, raw


def tiled(frames: np.ndarray, size: int) -> np.ndarray:
    """``frames`` repeated until ``size`` long (cut to ``size`` when longer)."""
    repeats = int(np.ceil(size / max(len(frames), 1)))
    return np.tile(frames, (repeats, 1))[:size]


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def within_segment_whitening(x: np.ndarray, owner: np.ndarray, lag: int) -> np.ndarray:
    """Whiten with the covariance of the variation inside segments (one voice each).

    Directions along which a single voice wanders (content, prosody) are shrunk, so
    cosine distances afterwards are mostly about who speaks. The covariance comes from
    differences between windows ``lag`` apart in the same segment rather than from
    deviations from segment means: a segment that wrongly holds two voices then
    contaminates only the few pairs that straddle the change.
    """
    x = unit_rows(x)
    centred = x - x.mean(axis=0)
    index = np.arange(len(x))
    segment_ends = np.flatnonzero(np.diff(np.append(owner, -1)) != 0)  # owner is sorted
    partner = np.minimum(index + lag, segment_ends[np.searchsorted(segment_ends, index)])
    valid = partner > index
    diff = x[partner[valid]] - x[index[valid]]
    if len(diff) < 2:
        return unit_rows(centred)
    within = diff.T @ diff / (2 * len(diff))
    within += WHITENING_REGULARISER * np.trace(within) / len(within) * np.eye(len(within))
    eigval, eigvec = np.linalg.eigh(within)
    transform = eigvec @ np.diag(eigval**-0.5) @ eigvec.T
    return unit_rows(centred @ transform)
