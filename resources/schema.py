"""The transcript data model shared by the engines, the merge, the renderers and evaluation.

Plain dataclasses (no Dagster, no torch) so every layer can use them. Their JSON form is
declared on the classes (rounding, names, key order, what is left out) and pydantic applies
it only in ``dump`` and ``load``, so constructing one in the pipeline costs no validation;
the files' JSON Schemas come from the same declarations (``json_schema``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, partial
from typing import Annotated, Any, TypeVar

from pydantic import (
    AliasChoices,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    computed_field,
    model_serializer,
)

T = TypeVar("T")

Seconds = Annotated[float, PlainSerializer(partial(round, ndigits=3))]
"""A time as the output files keep it: to the millisecond."""


def _in_order(*keys: str) -> Any:
    """A serializer writing ``keys`` in the files' order, which is not the constructor's."""

    # No return annotation: pydantic would take it for the JSON Schema of the class.
    def serialise(self: object, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        return {key: data[key] for key in keys if key in data}

    return model_serializer(mode="wrap")(serialise)


@dataclass(slots=True)
class Word:
    """One recognised word with faster-whisper's word timestamps (seconds).

    Files name ``text`` ``word``, as faster-whisper does, and leave ``speaker`` out while it
    is unknown; other aligners' ``text`` and ``score`` are read too.
    """

    start: float
    end: float
    text: Annotated[str, Field(alias="word", validation_alias=AliasChoices("word", "text"))]
    probability: Annotated[float, Field(validation_alias=AliasChoices("probability", "score"))] = (
        1.0
    )
    speaker: str | None = None

    # By hand: words are by far the most numerous objects, and one call per word keeps
    # writing them cheap. No return annotation, so the JSON Schema stays the fields' one.
    @model_serializer
    def _json(self):
        out = {
            "word": self.text,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "probability": round(self.probability, 4),
        }
        if self.speaker is not None:
            out["speaker"] = self.speaker
        return out


@dataclass(slots=True)
class AsrSegment:
    """A faster-whisper segment: the unit the decoder emits, with its words."""

    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0

    _json = _in_order("start", "end", "text", "avg_logprob", "no_speech_prob", "words")


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
    """Consecutive words of one speaker: what a reader sees as a turn.

    Files carry its ``text`` for readers; loading rebuilds it from the words.
    """

    speaker: str
    start: Seconds
    end: Seconds
    words: list[Word] = field(default_factory=list)
    text_override: Annotated[str | None, Field(exclude=True)] = None

    _json = _in_order("speaker", "start", "end", "text", "words")

    @computed_field
    @property
    def text(self) -> str:
        if self.text_override is not None:
            return self.text_override
        # faster-whisper word tokens carry their own leading spaces
        return "".join(w.text for w in self.words).strip()


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

    _json = _in_order("language", "duration", "model", "config", "seconds", "details", "segments")

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


@cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def dump(value: Any, tp: Any = None) -> Any:
    """``value``'s JSON form (dicts and lists, for ``json.dumps``); ``tp`` when not its class."""
    return _adapter(tp or type(value)).dump_python(value, by_alias=True)


def load(tp: type[T], data: Any) -> T:
    """Read parsed JSON into ``tp`` (a class above, a document, or a list of them)."""
    return _adapter(tp).validate_python(data)


def json_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of what ``dump`` writes for ``tp``."""
    return _adapter(tp).json_schema(mode="serialization")
