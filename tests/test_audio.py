"""Decoding once into a disk-backed waveform: same samples as faster-whisper, clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from resources.audio import AudioDecodeError, Waveform, decode_audio, is_silent, open_waveform


def scratch_files() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("twiml-waveform-")}


def test_samples_equal_faster_whisper_and_slices_read_from_disk(dialogue_mp3: Path) -> None:
    from faster_whisper.audio import decode_audio as faster_whisper_decode

    expected = faster_whisper_decode(str(dialogue_mp3))
    before = scratch_files()
    with open_waveform(dialogue_mp3, label="ep-1") as waveform:
        assert isinstance(waveform, Waveform) and len(waveform) == len(expected)
        assert scratch_files() == before  # unlinked at once: nothing left if killed
        assert np.array_equal(waveform[16_000:48_000], expected[16_000:48_000])
        assert np.array_equal(waveform[-5:], expected[-5:])
        assert len(waveform[len(waveform) + 10 :]) == 0
        blocks = list(waveform.blocks(100_000))
        assert sum(len(b) for _, b in blocks) == len(expected)
        assert not waveform.is_silent() and not is_silent(expected)
        with pytest.raises(TypeError):
            waveform[::2]
    assert np.array_equal(decode_audio(dialogue_mp3), expected)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"this is not audio at all" * 100, "cannot decode")],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "episode.mp3"
    path.write_bytes(content)
    before = scratch_files()
    with pytest.raises(AudioDecodeError, match=message):
        open_waveform(path, label="ep-9")
    assert scratch_files() == before
    with pytest.raises(AudioDecodeError, match="not found"):
        open_waveform(tmp_path / "missing.mp3")
