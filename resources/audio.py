"""Decode any audio file once into the 16 kHz mono waveform both engines consume.

faster-whisper and pyannote both work on 16 kHz mono float32. Decoding once (with PyAV,
which faster-whisper already depends on) and handing the same samples to both saves a
full decode per episode, and gives one place where bad input becomes a clear message
instead of a traceback from deep inside FFmpeg.

A whole episode of samples is too much to hold next to the models on a small worker, so
``open_waveform`` streams them into an unlinked scratch file and returns a ``Waveform``
that reads slices on demand; the engines only ever slice it. ``decode_audio`` returns
the same samples as one array, for short clips.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Union

import numpy as np

SAMPLE_RATE = 16_000
SUPPORTED_HINT = "mp3, m4a/aac, wav, flac, ogg/opus or any format FFmpeg reads"
BYTES_PER_SAMPLE = 4  # float32


AudioSource = Union[np.ndarray, "Waveform"]
"""What the engines accept: an in-memory array or a ``Waveform``; both are only sliced."""

ProgressCallback = Callable[[float, float], None]
"""The engines call it with (seconds of audio done, total seconds)."""


def is_silent(waveform: AudioSource) -> bool:
    """True when every sample is zero (read a block at a time)."""
    if isinstance(waveform, np.ndarray):
        return not np.any(waveform)
    return waveform.is_silent()


class AudioDecodeError(ValueError):
    """The input is missing, empty, not audio, or unreadable."""


class Waveform:
    """16 kHz mono float32 samples in a scratch file, read by slices (``w[a:b]``).

    Behaves like a read-only 1-D array for ``len`` and slicing, which is all the
    engines need. The file is unlinked as soon as it is opened, so nothing is left
    behind even if the process is killed; ``close`` (or ``with``) releases it.
    """

    def __init__(self, fd: int, n_samples: int):
        self._fd = fd
        self._n = n_samples

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a Waveform is read by contiguous slices: w[start:end]")
        start, stop, _ = key.indices(self._n)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        data = os.pread(self._fd, (stop - start) * BYTES_PER_SAMPLE, start * BYTES_PER_SAMPLE)
        return np.frombuffer(data, dtype=np.float32).copy()

    def blocks(self, samples: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first sample, samples) of consecutive blocks of at most ``samples``."""
        for start in range(0, self._n, samples):
            yield start, self[start : start + samples]

    def is_silent(self) -> bool:
        return not any(np.any(block) for _, block in self.blocks(SAMPLE_RATE * 60))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Waveform:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def open_waveform(source: str | Path, label: str | None = None) -> Waveform:
    """Decode ``source`` to 16 kHz mono into a scratch file; a ``Waveform`` over it.

    The samples are exactly faster-whisper's ``decode_audio``: the same PyAV resampler
    to 16-bit mono, the same frame grouping, then / 32768. A truncated file (an
    interrupted download, say) decodes up to the damage, which is what a listener would
    hear. ``label`` (an episode key, say) goes into error messages.
    """
    import av
    from faster_whisper.audio import _group_frames, _ignore_invalid_frames, _resample_frames

    path = Path(source)
    what = f"{label} ({path})" if label else str(path)
    if not path.exists():
        raise AudioDecodeError(f"audio file not found: {what}")
    if path.is_dir():
        raise AudioDecodeError(f"expected an audio file, got a directory: {what}")
    if path.stat().st_size == 0:
        raise AudioDecodeError(
            f"audio file is empty (0 bytes): {what}; re-download or re-export it"
        )
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    fd, name = tempfile.mkstemp(prefix="twiml-waveform-", suffix=".f32")
    os.unlink(name)
    written = 0
    try:
        try:
            with av.open(str(path), mode="r", metadata_errors="ignore") as container:
                frames = _ignore_invalid_frames(container.decode(audio=0))
                for frame in _resample_frames(_group_frames(frames, 500_000), resampler):
                    samples = frame.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
                    os.write(fd, samples.tobytes())
                    written += len(samples)
        except (av.error.InvalidDataError, av.error.EOFError, av.error.DecoderNotFoundError) as e:
            raise AudioDecodeError(
                f"cannot decode {what}: not audio FFmpeg can read ({SUPPORTED_HINT}); "
                "check the file is complete and really audio"
            ) from e
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(f"cannot decode {what}: {exc}") from exc
        except (IndexError, StopIteration) as exc:  # PyAV: container has no audio stream
            raise AudioDecodeError(f"{what} has no audio stream ({SUPPORTED_HINT})") from exc
        if written == 0:
            raise AudioDecodeError(
                f"{what} contains no decodable audio samples; the file may be truncated"
            )
    except BaseException:
        os.close(fd)
        raise
    return Waveform(fd, written)


def decode_audio(source: str | Path, label: str | None = None) -> np.ndarray:
    """The file's audio as one mono float32 array at 16 kHz (see ``open_waveform``)."""
    with open_waveform(source, label=label) as waveform:
        return waveform[0 : len(waveform)]
