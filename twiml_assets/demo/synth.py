"""Synthetic podcast episodes spoken by espeak-ng, with exact reference turns and text.

Tests, benchmarks and the offline demo feed need speech whose truth is known: who
speaks when, and what is said. espeak-ng with two distinct voices gives exactly that
without shipping audio files or reaching a network.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from resources.schema import SpeakerTurn
from twiml_assets.outputs import renderers

SAMPLE_RATE = 16_000


@dataclass(frozen=True, slots=True)
class Voice:
    """espeak-ng voice settings: a voice name, pitch (0-99) and speed (words/min)."""

    name: str
    pitch: int = 50
    speed: int = 165


HOST_VOICE = Voice("en-us", pitch=35, speed=165)
GUEST_VOICE = Voice("en-gb+f3", pitch=75, speed=155)
EXTRA_VOICE = Voice("en-us+m7", pitch=20, speed=150)

DEFAULT_VOICES: dict[str, Voice] = {"HOST": HOST_VOICE, "GUEST": GUEST_VOICE, "EXTRA": EXTRA_VOICE}


def dialogue(script: str) -> tuple[tuple[str, str], ...]:
    """``SPEAKER: text`` lines (indented lines continue the text) as (speaker, text) pairs."""
    turns = re.findall(r"^(\w+): (.+(?:\n +.+)*)", textwrap.dedent(script), re.MULTILINE)
    return tuple((speaker, " ".join(text.split())) for speaker, text in turns)


# Numbers are spelled out so that the reference needs no normalisation to compare.
DEFAULT_DIALOGUE: tuple[tuple[str, str], ...] = dialogue("""
    HOST: Welcome to the podcast. Today we are talking about speech recognition and how to make it
        work on real recordings.
    GUEST: Thanks for having me. I have been building transcription systems for about ten years,
        mostly for meetings and interviews.
    HOST: Let us start with the basics. What makes long audio hard for a model?
    GUEST: The model only sees thirty seconds at a time, so the system has to cut the audio into
        pieces and then stitch the text back together without losing words.
    HOST: And where does voice activity detection come in?
    GUEST: It removes the silence before decoding. That saves time and it also stops the model from
        inventing sentences when nobody is talking.
    HOST: That makes sense. How do you decide who said what in a conversation?
    GUEST: That is speaker diarization. A network finds the speech of each voice in short windows,
        and a clustering step links the windows that belong to the same person.
    HOST: Is it accurate enough for a show like this one?
    GUEST: With two clear voices it is very good. It gets harder with many people, music, or when
        everyone talks at once.
    HOST: What would you tell a team that wants to start today?
    GUEST: Measure everything. Keep a few reference transcripts, compute the error rates after every
        change, and only then pick the bigger model.
    HOST: Great advice. Thank you for joining us on the show.
    GUEST: It was a pleasure. Thank you.
""")


@dataclass(slots=True)
class SyntheticEpisode:
    """A generated recording and its exact truth."""

    audio_path: Path
    duration: float
    turns: list[SpeakerTurn]
    lines: list[tuple[str, str]]
    sample_rate: int = SAMPLE_RATE

    @property
    def text(self) -> str:
        return " ".join(text for _, text in self.lines)

    @property
    def speakers(self) -> list[str]:
        return sorted({speaker for speaker, _ in self.lines})

    def stm(self, uri: str = "episode") -> str:
        """NIST STM reference: speaker, times and exact text of every line."""
        return "".join(
            f"{uri} 1 {turn.speaker} {turn.start:.3f} {turn.end:.3f} {text}\n"
            for turn, (_, text) in zip(self.turns, self.lines, strict=True)
        )

    def rttm(self, uri: str = "episode") -> str:
        return renderers.rttm(self.turns, uri)


def espeak(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    """One line as espeak-ng speaks it: samples (float32) and their rate."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng is not installed: run `make setup` (apt-get install espeak-ng)"
        )
    args = ["-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.speed), "--stdout", text]
    result = subprocess.run([exe, *args], check=True, capture_output=True)
    return sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=False)


def speak(text: str, voice: Voice, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Render one line with espeak-ng at ``sample_rate``, trimmed of leading/trailing silence."""
    audio, rate = espeak(text, voice)
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if rate != sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(rate, sample_rate)
        audio = resample_poly(audio, sample_rate // g, rate // g)
    return trim_silence(audio.astype(np.float32), sample_rate)


def trim_silence(audio: np.ndarray, sample_rate: int, threshold_db: float = -45.0) -> np.ndarray:
    """Cut the silence espeak-ng pads around a line so reference turn bounds are exact."""
    frame = int(0.01 * sample_rate)
    if len(audio) < frame:
        return audio
    n = len(audio) // frame
    energy = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    level = 20 * np.log10(energy / (np.max(np.abs(audio)) + 1e-9))
    voiced = np.flatnonzero(level > threshold_db)
    if voiced.size == 0:
        return audio[:0]
    return audio[voiced[0] * frame : (voiced[-1] + 1) * frame]


def synthesize_dialogue(
    path: str | Path,
    lines: Sequence[tuple[str, str]] = DEFAULT_DIALOGUE,
    voices: dict[str, Voice] | None = None,
    gaps: Sequence[float] = (0.45, 0.7, 0.55, 0.8, 0.6),
    lead_in: float = 0.5,
    noise_db: float = -60.0,
    seed: int = 0,
) -> SyntheticEpisode:
    """Write a dialogue to ``path`` (.wav, or any format ffmpeg can encode) with its truth.

    Gaps between lines cycle through ``gaps`` so turn boundaries are not periodic; a
    faint noise floor keeps the signal realistic for VAD without disturbing ASR.
    """
    voices = {**DEFAULT_VOICES, **(voices or {})}
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = [np.zeros(int(lead_in * SAMPLE_RATE), dtype=np.float32)]
    turns: list[SpeakerTurn] = []
    cursor = lead_in
    for i, (speaker, text) in enumerate(lines):
        clip = speak(text, voices[speaker])
        clip = 0.5 * clip / (np.max(np.abs(clip)) + 1e-9)
        turns.append(SpeakerTurn(cursor, cursor + len(clip) / SAMPLE_RATE, speaker))
        pieces.append(clip)
        cursor += len(clip) / SAMPLE_RATE
        gap = gaps[i % len(gaps)] if i < len(lines) - 1 else lead_in
        pieces.append(np.zeros(int(gap * SAMPLE_RATE), dtype=np.float32))
        cursor += int(gap * SAMPLE_RATE) / SAMPLE_RATE
    audio = np.concatenate(pieces)
    audio += (10 ** (noise_db / 20)) * rng.standard_normal(len(audio)).astype(np.float32)
    path = Path(path)
    write_audio(path, audio, SAMPLE_RATE)
    return SyntheticEpisode(path, len(audio) / SAMPLE_RATE, turns, list(lines))


def write_audio(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write WAV/FLAC directly; anything else (mp3, m4a, ogg) through ffmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in {".wav", ".flac"}:
        sf.write(path, audio, sample_rate)
        return
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "in.wav"
        sf.write(wav, audio, sample_rate)
        subprocess.run(
            ["ffmpeg", "-y", "-loglevel", "error", "-i", str(wav), "-ac", "1", str(path)],
            check=True,
        )


def synthesize_silence(path: str | Path, seconds: float = 5.0) -> Path:
    path = Path(path)
    write_audio(path, np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32), SAMPLE_RATE)
    return path
