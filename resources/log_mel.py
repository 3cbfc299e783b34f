"""Whisper's log-Mel spectrogram of a long block, computed a minute at a time.

faster-whisper computes the spectrogram of all the audio it is given in one go: the
framed signal, the FFT and its complex64 copy of a 15-minute block take about 0.6 GB at
once. Each frame's FFT and each column's Mel projection depend only on that frame, so
computing the same frames in slices and normalising at the end (the clamp to 8 below the
global maximum) gives the same features in a few tens of MB.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

FRAMES_PER_SLICE = 6000  # 60 s of 10 ms frames


class SlicedFeatureExtractor(FeatureExtractor):
    """faster-whisper's ``FeatureExtractor`` with the same output and bounded memory."""

    def __call__(self, waveform: np.ndarray, padding: int = 160, chunk_length: int | None = None):
        hop, n_fft = self.hop_length, self.n_fft
        if len(waveform) <= FRAMES_PER_SLICE * hop:
            return super().__call__(waveform, padding, chunk_length)
        if chunk_length is not None:
            self.n_samples = chunk_length * self.sampling_rate
            self.nb_max_frames = self.n_samples // hop
        signal = np.pad(np.asarray(waveform, dtype=np.float32), (0, padding))
        signal = np.pad(signal, n_fft // 2, mode="reflect")  # the STFT's centring
        n_frames = (len(signal) - n_fft) // hop  # upstream drops the last frame
        window = np.hanning(n_fft + 1)[:-1].astype("float32")
        log_spec = np.empty((len(self.mel_filters), n_frames), dtype=np.float32)
        for first in range(0, n_frames, FRAMES_PER_SLICE):
            count = min(FRAMES_PER_SLICE, n_frames - first)
            piece = signal[first * hop : (first + count - 1) * hop + n_fft]
            stft = self.stft(piece, n_fft, hop, window=window, center=False, return_complex=True)
            mel = self.mel_filters @ np.abs(stft.astype("complex64")) ** 2
            log_spec[:, first : first + count] = np.log10(np.clip(mel, 1e-10, None))
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0


@lru_cache(maxsize=4)
def with_sliced_features(model: Any) -> Any:
    """A ``WhisperModel`` sharing ``model``'s weights whose features are computed in slices.

    A shallow copy, so bare faster-whisper baselines keep using ``model`` as shipped.
    """
    sliced = copy.copy(model)
    sliced.feature_extractor = SlicedFeatureExtractor(**model.feat_kwargs)
    return sliced
