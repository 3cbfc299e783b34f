"""Per-label voiceprints: the mean GE2E embedding of each diarisation label's turns.

Raw, not whitened, GE2E vectors: the diariser's whitening is estimated per recording, so
only raw vectors are comparable across episodes and with enrolment audio. The windows and
encoder calls are the diariser's own, so the voiceprints match what its clustering saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from resources.audio import SAMPLE_RATE
from resources.schema import SpeakerTurn

MATCH_THRESHOLD = 0.90
"""Cosine similarity (raw GE2E voiceprints) at or above which two voices are one.

It sits between same-voice and different-voice scores on generated speech (re-checked by
tests/test_naming.py), except for two male voices differing only in accent and pitch, which
GE2E hears as one, as the diariser does. Real voices spread wider. Settable per run.
"""

MIN_TURN_SECONDS = 0.3  # shorter turns are mostly boundary noise
EMBEDDING_WINDOW = 1.6  # seconds, the encoder's training length (as the diariser uses)
EMBEDDING_STEP = 0.4  # seconds; coarser than diarisation: a mean over minutes needs less


@dataclass(slots=True)
class VoicePrint:
    """One label's voice in one recording: unit-length embedding and seconds of speech."""

    embedding: np.ndarray
    seconds: float
    first_start: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "embedding": [round(float(x), 6) for x in self.embedding],
            "seconds": round(self.seconds, 3),
            "first_start": round(self.first_start, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> VoicePrint:
        return cls(
            embedding=unit(np.asarray(data["embedding"], dtype=float)),
            seconds=float(data.get("seconds", 0.0)),  # type: ignore[arg-type]
            first_start=float(data.get("first_start", 0.0)),  # type: ignore[arg-type]
        )


def unit(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to length 1 (zero stays zero)."""
    norm = float(np.linalg.norm(x))
    return x / norm if norm > 1e-12 else x


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(unit(a), unit(b)))


def default_encoder(device: str = "cpu") -> object:
    """The process-wide resemblyzer encoder (loaded once, shared with the diariser)."""
    from resources.diarisation.models import load_speaker_encoder
    from resources.model_paths import resemblyzer_encoder

    return load_speaker_encoder(str(resemblyzer_encoder()), device)


def embed_bounds(encoder: object, waveform: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Unit mean GE2E embedding over the given (start, end) spans of ``waveform``."""
    from resources.diarisation.embedding import embed_segments

    segments = embed_segments(encoder, waveform, bounds, EMBEDDING_WINDOW, EMBEDDING_STEP)
    return unit(segments.raw.sum(axis=0))


def label_voiceprints(
    waveform: np.ndarray, turns: Iterable[SpeakerTurn], encoder: object | None = None
) -> dict[str, VoicePrint]:
    """A voiceprint per diarisation label (labels with no usable speech are left out)."""
    encoder = encoder if encoder is not None else default_encoder()
    duration = len(waveform) / SAMPLE_RATE
    by_label: dict[str, list[tuple[float, float]]] = {}
    for t in sorted(turns, key=lambda t: t.start):
        start, end = max(0.0, t.start), min(duration, t.end)
        if end - start >= MIN_TURN_SECONDS:
            by_label.setdefault(t.speaker, []).append((start, end))
    prints = {}
    for label, spans in by_label.items():
        bounds = np.asarray(spans, dtype=float)
        prints[label] = VoicePrint(
            embedding=embed_bounds(encoder, waveform, bounds),
            seconds=float((bounds[:, 1] - bounds[:, 0]).sum()),
            first_start=float(bounds[0, 0]),
        )
    return prints


def audio_voiceprint(
    waveforms: Sequence[np.ndarray], encoder: object | None = None, top_db: float = 40.0
) -> VoicePrint:
    """One voiceprint from single-speaker enrolment recordings (silence left out)."""
    encoder = encoder if encoder is not None else default_encoder()
    total = np.zeros(256)
    seconds = 0.0
    for waveform in waveforms:
        bounds = speech_bounds(waveform, top_db)
        if len(bounds) == 0:
            continue
        seconds += float((bounds[:, 1] - bounds[:, 0]).sum())
        total += embed_bounds(encoder, waveform, bounds) * (bounds[:, 1] - bounds[:, 0]).sum()
    if seconds == 0.0:
        raise ValueError("no speech found in the enrolment audio")
    return VoicePrint(embedding=unit(total), seconds=seconds)


def speech_bounds(waveform: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    """Non-silent spans (seconds) by energy: enrolment audio is one clean voice."""
    import librosa

    intervals = librosa.effects.split(waveform, top_db=top_db)
    bounds = intervals.astype(float) / SAMPLE_RATE
    keep = (bounds[:, 1] - bounds[:, 0]) >= MIN_TURN_SECONDS if len(bounds) else []
    return bounds[keep].reshape(-1, 2)
