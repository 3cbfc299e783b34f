"""Decode any audio file once into the 16 kHz mono waveform both engines consume.

faster-whisper and pyannote both work on 16 kHz mono float32. Decoding once (with
PyAV, which faster-whisper already depends on) and handing the same array to both
saves a full decode per episode, and gives one place where bad input becomes a clear
message instead of a traceback from deep inside FFmpeg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
SUPPORTED_HINT = "mp3, m4a/aac, wav, flac, ogg/opus or any format FFmpeg reads"


class AudioDecodeError(ValueError):
    """The input is missing, empty, not audio, or unreadable."""


def decode_audio(
    source: str | Path, sample_rate: int = SAMPLE_RATE, label: str | None = None
) -> np.ndarray:
    """Return the file's audio as mono float32 at ``sample_rate``.

    A truncated file (an interrupted download, say) decodes up to the damage: PyAV
    stops at the first undecodable packet, which is what a listener would hear.
    ``label`` (an episode key, say) is put in error messages so the user knows which
    input failed.
    """
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

    import av
    from faster_whisper.audio import decode_audio as _decode

    try:
        audio = _decode(str(path), sampling_rate=sample_rate)
    except (av.error.InvalidDataError, av.error.EOFError, av.error.DecoderNotFoundError) as exc:
        raise AudioDecodeError(
            f"cannot decode {what}: not audio FFmpeg can read ({SUPPORTED_HINT}); "
            "check the file is complete and really audio"
        ) from exc
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(f"cannot decode {what}: {exc}") from exc
    except (IndexError, StopIteration) as exc:  # PyAV: container has no audio stream
        raise AudioDecodeError(f"{what} has no audio stream ({SUPPORTED_HINT})") from exc
    if audio.size == 0:
        raise AudioDecodeError(
            f"{what} contains no decodable audio samples; the file may be truncated"
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def duration_of(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    return float(len(waveform)) / sample_rate
