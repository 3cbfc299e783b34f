"""Shared fixtures: generated speech (espeak-ng) with exact truth, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from twiml_assets.synth import SyntheticEpisode, synthesize_dialogue


@pytest.fixture(scope="session")
def dialogue(tmp_path_factory: pytest.TempPathFactory) -> SyntheticEpisode:
    """The default two-speaker dialogue (≈88 s) as WAV, with reference turns and text."""
    return synthesize_dialogue(tmp_path_factory.mktemp("dialogue") / "dialogue.wav")


@pytest.fixture(scope="session")
def dialogue_mp3(tmp_path_factory: pytest.TempPathFactory, dialogue: SyntheticEpisode) -> Path:
    """The same dialogue encoded as MP3 (what podcast feeds serve)."""
    import subprocess

    target = tmp_path_factory.mktemp("dialogue_mp3") / "dialogue.mp3"
    subprocess.run(
        ["ffmpeg", "-y", "-loglevel", "error", "-i", str(dialogue.audio_path), "-b:a", "64k",
         str(target)],
        check=True,
    )
    return target
