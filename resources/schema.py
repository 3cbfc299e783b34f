"""The transcript data model shared by the engines, the merge, the renderers and evaluation.

Plain dataclasses (no Dagster, no torch) so every layer can use them: the ASR and
diarisation resources produce them, ``twiml_assets`` merges and renders them, and
``evaluation`` loads references into the same shapes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class Word:
    """One recognised word with faster-whisper's word timestamps (seconds)."""

    start: float
    end: float
    text: str
    probability: float = 1.0
    speaker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "word": self.text,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "probability": round(self.probability, 4),
        }
        if self.speaker is not None:
            out["speaker"] = self.speaker
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Word:
        return cls(
            start=float(data["start"]),
            end=float(data["end"]),
            text=str(data.get("word", data.get("text", ""))),
            probability=float(data.get("probability", data.get("score", 1.0))),
            speaker=data.get("speaker"),
        )


@dataclass(slots=True)
class AsrSegment:
    """A faster-whisper segment: the unit the decoder emits, with its words."""

    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(slots=True)
class SpeakerTurn:
    """A stretch of time in which one speaker talks (diarisation output)."""

    start: float
    end: float
    speaker: str

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(slots=True)
class Utterance:
    """Consecutive words of one speaker: what a reader sees as a turn."""

    speaker: str
    start: float
    end: float
    words: list[Word] = field(default_factory=list)
    text_override: str | None = None

    @property
    def text(self) -> str:
        if self.text_override is not None:
            return self.text_override
        return join_words(self.words)


@dataclass(slots=True)
class AsrResult:
    """What the ASR resource returns for one waveform."""

    segments: list[AsrSegment]
    language: str
    duration: float
    model: str
    config: dict[str, Any]
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def words(self) -> list[Word]:
        return [w for seg in self.segments for w in seg.words]

    @property
    def text(self) -> str:
        return " ".join(seg.text.strip() for seg in self.segments if seg.text.strip())


@dataclass(slots=True)
class DiarisationResult:
    """What the diarisation resource returns for one waveform."""

    turns: list[SpeakerTurn]
    duration: float
    model: str
    config: dict[str, Any]
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def speakers(self) -> list[str]:
        return sorted({t.speaker for t in self.turns})


@dataclass(slots=True)
class SpeakerTranscript:
    """The merged, speaker-attributed transcript of one recording."""

    key: str
    duration: float
    utterances: list[Utterance]
    speakers: list[str]
    speaker_names: dict[str, str] = field(default_factory=dict)
    language: str = "en"
    metadata: dict[str, Any] = field(default_factory=dict)

    def name_of(self, speaker: str) -> str:
        return self.speaker_names.get(speaker, speaker)

    @property
    def words(self) -> list[Word]:
        return [w for u in self.utterances for w in u.words]

    @property
    def text(self) -> str:
        return " ".join(u.text for u in self.utterances if u.text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def join_words(words: list[Word]) -> str:
    """Join faster-whisper word tokens, which carry their own leading spaces."""
    return "".join(w.text for w in words).strip()
