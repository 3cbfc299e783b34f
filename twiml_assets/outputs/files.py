"""Write an episode's output files into the storage layout, and read them back.

Paths follow ``twiml_assets.layout``: the RAG set is named by episode number (``{n}``), our own
files by episode key. Every writer returns ``{name: uri}`` for logs and metadata.
The documents are dataclasses in the order of their keys: ``resources.schema.dump`` writes
them and ``json_schema`` gives their JSON Schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from resources.schema import (
    AsrResult,
    DiarisationResult,
    Seconds,
    SpeakerTranscript,
    SpeakerTurn,
    Utterance,
    dump,
    load,
)
from resources.storage import StorageResource
from twiml_assets.layout import EpisodeFiles
from twiml_assets.outputs import renderers

SCHEMA_VERSION = 1


def write_rag_outputs(
    storage: StorageResource, transcript: SpeakerTranscript, info: dict[str, Any] | None = None
) -> dict[str, str]:
    """The files the RAG embedding pipeline ingests (plus info.json when ``info`` is given)."""
    paths = EpisodeFiles(transcript.key)
    written = {
        "corrected_json": storage.write_json(paths.corrected, renderers.corrected_json(transcript)),
        "speakers_json": storage.write_json(paths.speakers, renderers.speakers_json(transcript)),
        "markdown": storage.write_text(paths.markdown, renderers.markdown(transcript)),
    }
    if info is not None:
        written["info_json"] = storage.write_json(paths.info, info)
    return written


def write_subtitles(storage: StorageResource, transcript: SpeakerTranscript) -> dict[str, str]:
    paths = EpisodeFiles(transcript.key)
    return {
        "srt": storage.write_text(paths.srt, renderers.srt(transcript)),
        "vtt": storage.write_text(paths.vtt, renderers.vtt(transcript)),
    }


def write_rttm(
    storage: StorageResource, diarisation: DiarisationResult, key: str
) -> dict[str, str]:
    rttm = renderers.rttm(diarisation.turns, key)
    return {"rttm": storage.write_text(EpisodeFiles(key).rttm, rttm)}


@dataclass(slots=True)
class RunInfo:
    """Which model produced a result, with what settings, in how long."""

    model: str
    config: dict[str, Any]
    seconds: Seconds


@dataclass(slots=True)
class DiarisationRun(RunInfo):
    """The diariser's run, with the turns the words were attributed from."""

    details: dict[str, Any]
    turns: list[SpeakerTurn]


@dataclass(slots=True)
class FullRecord:
    """``transcripts/{key}.json``: everything needed to audit or re-render a transcript."""

    schema_version: Literal[1]
    key: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    created: str
    source: dict[str, Any]
    duration: Seconds
    language: str
    speakers: list[str]
    speaker_names: dict[str, str]
    asr: RunInfo
    diarisation: DiarisationRun
    timings: dict[str, Seconds]
    metadata: dict[str, Any]
    utterances: list[Utterance]


def full_record(
    transcript: SpeakerTranscript,
    asr: AsrResult,
    diarisation: DiarisationResult,
    timings: dict[str, float] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    t, d = transcript, diarisation
    record = FullRecord(
        schema_version=SCHEMA_VERSION,
        key=t.key,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        source=source or {},
        duration=t.duration,
        language=t.language,
        speakers=t.speakers,
        speaker_names=t.speaker_names,
        asr=RunInfo(asr.model, asr.config, asr.seconds),
        diarisation=DiarisationRun(d.model, d.config, d.seconds, d.details, d.turns),
        timings=timings or {},
        metadata=t.metadata,
        utterances=t.utterances,
    )
    return dump(record)


def write_full_record(storage: StorageResource, record: dict[str, Any]) -> dict[str, str]:
    return {"record": storage.write_json(EpisodeFiles(record["key"]).record, record)}


def write_all_outputs(
    storage: StorageResource,
    transcript: SpeakerTranscript,
    asr: AsrResult,
    diarisation: DiarisationResult,
    *,
    info: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Everything for one recording. The full record goes last: its presence marks done."""
    return {
        **write_rttm(storage, diarisation, transcript.key),
        **write_subtitles(storage, transcript),
        **write_rag_outputs(storage, transcript, info),
        **write_full_record(storage, full_record(transcript, asr, diarisation, timings, source)),
    }


def transcript_from_record(record: dict[str, Any]) -> SpeakerTranscript:
    """Read ``transcripts/{key}.json`` back; every word takes its turn's speaker."""
    transcript = load(SpeakerTranscript, record)
    for u in transcript.utterances:
        for w in u.words:
            w.speaker = u.speaker
    return transcript
