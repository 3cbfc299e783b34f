"""Text renderings of a speaker transcript: RAG JSON/markdown, SRT, VTT, RTTM.

Pure functions from data model to str/dict, so the CLI, the Dagster assets and the
web page render identically and tests can check formats without touching storage.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Field, with_config

from resources.schema import Seconds, SpeakerTranscript, SpeakerTurn, Utterance, Word, dump

MARKDOWN_WIDTH = 80
CUE_MAX_SECONDS = 7.0
CUE_MAX_CHARS = 84


# -- RAG pipeline formats (README "Outputs") -----------------------------------------------
@dataclass(slots=True)
class Dialog:
    """A turn of ``corrected.json``: its speaker is an index into ``speakers``."""

    speaker: Annotated[int, Field(ge=0)]
    start: Seconds
    end: Seconds
    text: str
    words: list[Word]


@with_config(ConfigDict(extra="forbid"))
@dataclass(slots=True)
class CorrectedJson:
    """``transcripts/{n}.corrected.json``: these two keys only, as the RAG pipeline reads it."""

    dialogs: list[Dialog]
    speakers: list[str]


NonEmpty = Annotated[str, Field(min_length=1)]
SpeakersJson = dict[NonEmpty, NonEmpty]
"""``asr/{n}.speakers.json``: label → display name (the label itself when unknown)."""


def corrected_json(transcript: SpeakerTranscript) -> dict[str, Any]:
    index = {label: i for i, label in enumerate(transcript.speakers)}
    dialogs = [
        Dialog(index[u.speaker], u.start, u.end, u.text, u.words) for u in transcript.utterances
    ]
    return dump(CorrectedJson(dialogs, list(transcript.speakers)))


def speakers_json(transcript: SpeakerTranscript) -> SpeakersJson:
    return {label: transcript.name_of(label) for label in transcript.speakers}


def format_markdown_time(seconds: float) -> str:
    """``{h}h {m}m {s:.2f}s`` as the RAG markdown uses it."""
    hours, rest = divmod(max(0.0, seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours)}h {int(minutes)}m {secs:.2f}s"


def markdown(transcript: SpeakerTranscript) -> str:
    """``markdown/{n}.md``: a header line per turn, then its text wrapped at 80 columns."""
    blocks = []
    for u in transcript.utterances:
        header = (
            f"__{transcript.name_of(u.speaker)}__ "
            f"_({format_markdown_time(u.start)}-{format_markdown_time(u.end)})_:"
        )
        body = textwrap.fill(u.text, width=MARKDOWN_WIDTH, break_long_words=False)
        blocks.append(f"{header}\n{body}")
    return "\n\n".join(blocks) + ("\n" if blocks else "")


# -- subtitles ----------------------------------------------------------------------------
def subtitle_cues(transcript: SpeakerTranscript) -> list[tuple[float, float, str, str]]:
    """Cues of at most ~7 s / 84 characters, split at word boundaries within one speaker."""
    cues: list[tuple[float, float, str, str]] = []
    for u in transcript.utterances:
        name = transcript.name_of(u.speaker)
        for chunk in _split_words(u):
            text = "".join(w.text for w in chunk).strip()
            if text:
                cues.append((chunk[0].start, chunk[-1].end, name, text))
    return cues


def _split_words(u: Utterance) -> list[list[Word]]:
    chunks: list[list[Word]] = []
    for word in u.words:
        current = chunks[-1] if chunks else []
        width = len("".join(w.text for w in current)) + len(word.text)
        if not current or word.end - current[0].start > CUE_MAX_SECONDS or width > CUE_MAX_CHARS:
            chunks.append([])
        chunks[-1].append(word)
    return chunks


def _timestamp(seconds: float, sep: str) -> str:
    millis = int(round(max(0.0, seconds) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def srt(transcript: SpeakerTranscript) -> str:
    return "\n".join(
        f"{i}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{name}: {text}\n"
        for i, (start, end, name, text) in enumerate(subtitle_cues(transcript), 1)
    )


def vtt(transcript: SpeakerTranscript) -> str:
    lines = ["WEBVTT", ""]
    for start, end, name, text in subtitle_cues(transcript):
        lines.append(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n<v {name}>{text}\n")
    return "\n".join(lines)


def rttm(turns: list[SpeakerTurn], uri: str) -> str:
    """NIST RTTM, one SPEAKER line per turn (the format pyannote.metrics and md-eval read)."""
    return "".join(
        f"SPEAKER {uri} 1 {t.start:.3f} {t.duration:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
        for t in sorted(turns, key=lambda t: t.start)
    )
