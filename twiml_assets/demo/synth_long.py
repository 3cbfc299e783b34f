"""Long generated episodes (10 minutes to hours) with exact truth, for tests and benchmarks.

The faults that matter (Whisper's long-form failures, memory that grows with length, words
given to the wrong speaker at turn changes) only show on long audio. The text is sentences
from the standard library's docstrings (nobody wrote it for the test), shuffled by
``seed``; one host asks short questions, guests answer for up to a minute, with
backchannels over long turns, small overlaps and pauses; the output is what a podcast CDN
serves (44.1 kHz stereo mp3), streamed into ffmpeg so hours of audio need little memory.
The reference (``stm``/``rttm``) has one line per spoken turn.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sysconfig
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from resources.schema import SpeakerTurn
from twiml_assets.demo.synth import DEFAULT_VOICES, SyntheticEpisode, Voice, espeak, trim_silence

RATE = 22_050  # espeak-ng's native rate: no resampling before ffmpeg
VOICES = (*DEFAULT_VOICES.values(), Voice("en-gb-scotland+f4", pitch=60, speed=170))
SPEAKER_NAMES = ("HOST", "GUEST", "GUEST2", "GUEST3")
BACKCHANNELS = ("yeah", "right", "okay", "sure", "exactly", "I see", "true", "got it")
ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,;'\-]*[.?!]$")
DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
FLUSH_LAG_S = 10.0  # audio older than this behind the write position can no longer change


@dataclass(frozen=True, slots=True)
class Line:
    """One thing said: who, when (seconds), and what."""

    speaker: str
    start: float
    text: str


SENTENCES_LOCK = threading.Lock()


def stdlib_sentences() -> tuple[str, ...]:
    """Clean English sentences from the standard library's docstrings, in a stable order.

    Read once, under a lock: episodes are generated in threads, and ``ast.parse`` in two
    threads at once can fail in CPython 3.11 ("AST constructor recursion depth mismatch").
    """
    with SENTENCES_LOCK:
        return _stdlib_sentences()


@lru_cache(maxsize=1)
def _stdlib_sentences() -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    sentences: dict[str, None] = {}  # ordered, without repeats
    for path in sorted(root.glob("*.py")) + sorted(root.glob("[a-z]*/*.py")):
        if "test" in path.parts[-2:][0] or path.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, DOCUMENTED) and (doc := ast.get_docstring(node)):
                sentences.update(dict.fromkeys(split_sentences(doc)))
    return tuple(sentences)


def split_sentences(doc: str) -> Iterator[str]:
    """Prose sentences of a docstring: 5 to 30 plain words, no code, no numbers."""
    prose = " ".join(doc.split())
    for sentence in re.split(r"(?<=[.?!])\s+", prose):
        words = sentence.split()
        if not 5 <= len(words) <= 30 or not ALLOWED.match(sentence):
            continue
        if any(not w.islower() and (w.isupper() or w[1:] != w[1:].lower()) for w in words[1:]):
            continue  # acronyms, constants and CamelCase names are read letter by letter
        yield sentence


def plan_lines(minutes: float, speakers: int, seed: int) -> list[Line]:
    """Who says what when, about ``minutes`` long; durations are estimated, then measured."""
    if not 1 <= speakers <= len(VOICES):
        raise ValueError(f"speakers must be 1..{len(VOICES)}, got {speakers}")
    rng = np.random.default_rng(seed)
    pool = stdlib_sentences()
    order = rng.permutation(len(pool))
    names = SPEAKER_NAMES[:speakers]
    lines: list[Line] = []
    cursor, used, speaker = 1.0, 0, 0
    while cursor < minutes * 60:
        if speaker == 0 and speakers > 1:
            n = int(rng.choice([1, 1, 2, 3]))  # the host asks
        else:
            n = int(rng.choice([1, 2, 3, 4, 6, 8, 11]))  # guests answer, short to ~1 min
        text = " ".join(pool[order[(used + i) % len(pool)]] for i in range(n))
        used += n
        lines.append(Line(names[speaker], cursor, text))
        cursor += len(text.split()) * 60.0 / VOICES[speaker].speed + 0.6  # estimated
        if speakers > 1:
            back = speaker != 0 and rng.random() < 0.6  # guests mostly hand back to the host
            speaker = 0 if back else int(rng.choice([s for s in range(speakers) if s != speaker]))
    return lines


def render(text: str, voice: Voice) -> np.ndarray:
    """One line spoken by espeak-ng at 22.05 kHz, trimmed of its padding silence."""
    audio, rate = espeak(text, voice)
    if rate != RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected {RATE}")
    return trim_silence(audio, RATE)


class Mixer:
    """Mixes clips at sample positions and streams finished audio to an ffmpeg encoder."""

    def __init__(self, path: Path, noise_db: float, seed: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        codec = ["-b:a", "128k"] if path.suffix.lower() == ".mp3" else []
        self.proc = subprocess.Popen(
            ["ffmpeg", "-y", "-loglevel", "error", "-f", "f32le", "-ar", str(RATE), "-ac", "1"]
            + ["-i", "pipe:0", "-ac", "2", "-ar", "44100", *codec, str(path)],
            stdin=subprocess.PIPE,
        )
        self.rng = np.random.default_rng(seed + 1)
        self.noise = 10 ** (noise_db / 20)
        self.flushed = 0  # samples already sent to ffmpeg
        self.buffer = np.zeros(0, dtype=np.float32)

    def add(self, position: int, clip: np.ndarray) -> None:
        offset = position - self.flushed
        if offset < 0:
            raise ValueError("clip starts in audio that was already written")
        if offset + len(clip) > len(self.buffer):
            grown = np.zeros(offset + len(clip), dtype=np.float32)
            grown[: len(self.buffer)] = self.buffer
            self.buffer = grown
        self.buffer[offset : offset + len(clip)] += clip

    def flush_before(self, position: int) -> None:
        n = min(max(0, position - self.flushed), len(self.buffer))
        if n:
            noise = self.noise * self.rng.standard_normal(n).astype(np.float32)
            assert self.proc.stdin is not None
            self.proc.stdin.write(np.clip(self.buffer[:n] + noise, -1, 1).astype("<f4").tobytes())
            self.buffer = self.buffer[n:].copy()
            self.flushed += n

    def close(self, total: int) -> None:
        if total > self.flushed + len(self.buffer):
            self.add(total - 1, np.zeros(1, dtype=np.float32))
        self.flush_before(total)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise RuntimeError("ffmpeg failed to encode the generated episode")


def generate_long_episode(
    path: str | Path,
    minutes: float,
    *,
    speakers: int = 3,
    seed: int = 0,
    noise_db: float = -50.0,
    backchannel_rate: float = 0.35,
    overlap_rate: float = 0.2,
) -> SyntheticEpisode:
    """Write an episode of about ``minutes`` to ``path`` (.mp3: 44.1 kHz stereo, 128 kbit/s).

    ``backchannel_rate`` is the chance that a turn longer than 6 s gets a short reply from
    another speaker spoken over it; ``overlap_rate`` the chance that a turn starts up to
    half a second before the previous one ends.
    """
    path = Path(path)
    rng = np.random.default_rng(seed + 7)
    voices = dict(zip(SPEAKER_NAMES[:speakers], VOICES[:speakers], strict=True))
    plan = plan_lines(minutes, speakers, seed)
    mixer = Mixer(path, noise_db, seed)
    spoken: list[tuple[SpeakerTurn, str]] = []
    cursor = int(1.0 * RATE)
    with ThreadPoolExecutor(max_workers=2) as pool:
        clips = pool.map(lambda line: render(line.text, voices[line.speaker]), plan)
        for line, clip in zip(plan, clips, strict=True):
            gain = 0.35 + 0.02 * SPEAKER_NAMES.index(line.speaker)
            clip = gain * clip / (np.max(np.abs(clip)) + 1e-9)
            if spoken and rng.random() < overlap_rate:
                cursor -= int(rng.uniform(0.1, 0.5) * RATE)  # starts over the previous turn
            cursor = max(cursor, mixer.flushed)
            mixer.add(cursor, clip)
            start, end = cursor / RATE, (cursor + len(clip)) / RATE
            spoken.append((SpeakerTurn(start, end, line.speaker), line.text))
            if speakers > 1 and end - start > 6 and rng.random() < backchannel_rate:
                spoken.append(backchannel(mixer, rng, voices, line.speaker, start, end))
            cursor += len(clip) + pause_samples(rng)
            mixer.flush_before(cursor - int(FLUSH_LAG_S * RATE))
    total = cursor + RATE
    mixer.close(total)
    spoken.sort(key=lambda item: item[0].start)
    return SyntheticEpisode(
        audio_path=path,
        duration=total / RATE,
        turns=[turn for turn, _ in spoken],
        lines=[(turn.speaker, text) for turn, text in spoken],
        sample_rate=RATE,
    )


def backchannel(
    mixer: Mixer,
    rng: np.random.Generator,
    voices: dict[str, Voice],
    over: str,
    start: float,
    end: float,
) -> tuple[SpeakerTurn, str]:
    """A short reply by another speaker, 30-80 % into the current turn, over its voice."""
    others: Sequence[str] = [s for s in voices if s != over]
    who = str(rng.choice(others))
    word = str(rng.choice(BACKCHANNELS))
    clip = render(word, voices[who])
    clip = 0.3 * clip / (np.max(np.abs(clip)) + 1e-9)
    at = start + rng.uniform(0.3, 0.8) * (end - start)
    position = int(at * RATE)
    mixer.add(position, clip)
    return SpeakerTurn(position / RATE, (position + len(clip)) / RATE, who), word


def pause_samples(rng: np.random.Generator) -> int:
    """Mostly short pauses, sometimes a long one (a thinking pause, an edit)."""
    seconds = rng.uniform(2.0, 4.0) if rng.random() < 0.05 else rng.uniform(0.2, 1.2)
    return int(seconds * RATE)
