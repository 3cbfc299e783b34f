"""The reference transcript model: every format's loader fills one ``Reference``.

Human references come in whatever format their maker had (STM, RTTM, the RAG pipeline's
``corrected.json`` and markdown, SRT/VTT, Podcasting 2.0 JSON, plain text). The metrics need
only a few views of them, so each loader fills one model and records what the file could
give (``has_speakers``, ``has_timestamps``, ``has_words``, ``has_text``); the caller computes
the metrics those allow. Loaders read UTF-8 with or without a BOM and any line ending, and
raise ``ReferenceFormatError`` naming the file (and line) when the content is not the format.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resources.schema import SpeakerTranscript, SpeakerTurn, Utterance, Word

#: Speaker label used where a format (or a word, or a turn) carries no speaker.
UNKNOWN_SPEAKER = "UNKNOWN"


class ReferenceFormatError(ValueError):
    """A reference file whose content does not match its format."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


@dataclass(slots=True)
class Reference:
    """A reference transcript in the shared data model, with what its source could provide.

    ``utterances`` are in file order. Without speakers every utterance has speaker
    ``UNKNOWN``; without timestamps ``start`` and ``end`` are 0.0; without words
    ``Utterance.words`` is empty and the text is in ``text_override``. The defaults are what
    most formats give: timed speaker turns with text but no word list.
    """

    utterances: list[Utterance]
    has_speakers: bool = True
    has_timestamps: bool = True
    has_words: bool = False
    has_text: bool = True
    speaker_names: dict[str, str] = field(default_factory=dict)
    source: str = ""
    format: str = ""

    @property
    def text(self) -> str:
        """All text in spoken order (time order when timed, file order otherwise)."""
        return " ".join(u.text for u in self._ordered() if u.text)

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances})

    @property
    def turns(self) -> list[SpeakerTurn]:
        """Speaker turns for DER; raises when the source has no timestamps."""
        if not self.has_timestamps:
            raise ValueError(f"{self.source or 'reference'} has no timestamps: no turns for DER")
        return [SpeakerTurn(u.start, u.end, u.speaker) for u in self._ordered() if u.end > u.start]

    @property
    def speaker_texts(self) -> dict[str, str]:
        """Each speaker's text concatenated in spoken order (for cpWER)."""
        parts: dict[str, list[str]] = {}
        for u in self._ordered():
            if u.text:
                parts.setdefault(u.speaker, []).append(u.text)
        return {spk: " ".join(texts) for spk, texts in parts.items()}

    @property
    def speaker_words(self) -> list[Word]:
        """The text as whitespace tokens, each tagged with its utterance's speaker (for WDER).

        Built from the text rather than ``words``: in a corrected transcript the text is
        authoritative and the word list may predate the correction.
        """
        return [
            Word(u.start, u.end, token, speaker=u.speaker)
            for u in self._ordered()
            for token in u.text.split()
        ]

    def name_of(self, speaker: str) -> str:
        return self.speaker_names.get(speaker, speaker)

    def _ordered(self) -> list[Utterance]:
        if not self.has_timestamps:
            return list(self.utterances)
        return sorted(self.utterances, key=lambda u: u.start)  # stable: ties keep file order

    @classmethod
    def from_transcript(cls, transcript: SpeakerTranscript, source: str = "") -> Reference:
        """Wrap a pipeline transcript (a hypothesis) in the same model as the references."""
        return cls(
            utterances=list(transcript.utterances),
            has_words=any(u.words for u in transcript.utterances),
            speaker_names=dict(transcript.speaker_names),
            source=source or transcript.key,
            format="transcript",
        )


# -- helpers shared by the loaders ---------------------------------------------------------
def loaded(
    path: Path, fmt: str, utterances: list[Utterance], empty: str | None = None, **fields: Any
) -> Reference:
    """A loader's result; ``empty`` is the error for a file without utterances."""
    if empty and not utterances:
        raise ReferenceFormatError(path, empty)
    return Reference(utterances, source=str(path), format=fmt, **fields)


def names_speakers(utterances: list[Utterance]) -> bool:
    """Whether any utterance has a speaker, where the format makes speakers optional."""
    return any(u.speaker != UNKNOWN_SPEAKER for u in utterances)


def read_lines(path: Path) -> list[str]:
    """Lines without line endings; BOM stripped; CR/CRLF/LF all accepted."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReferenceFormatError(path, f"not UTF-8 text ({exc})") from exc
    return text.splitlines()


def numbered_lines(path: Path, comments: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """The non-blank lines, stripped, with their line numbers; ``comments`` lines left out."""
    lines = ((n, raw.strip()) for n, raw in enumerate(read_lines(path), 1))
    return [(n, line) for n, line in lines if line and not line.startswith(comments)]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReferenceFormatError(path, f"invalid JSON ({exc})") from exc


def parse_float(path: Path, value: Any, what: str, line: int | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ReferenceFormatError(path, f"{what} is not a number: {value!r}", line) from exc
    if not math.isfinite(number):
        raise ReferenceFormatError(path, f"{what} is not finite: {value!r}", line)
    return number


def text_utterance(
    speaker: str, start: float, end: float, text: str, words: list[Word] | None = None
) -> Utterance:
    """An utterance whose text is given (not rebuilt from words), whitespace collapsed."""
    return Utterance(speaker, start, end, words or [], text_override=" ".join(text.split()))
