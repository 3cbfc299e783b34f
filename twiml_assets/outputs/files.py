"""Write an episode's output files into the storage layout, and read them back.

Paths follow ``twiml_assets.layout``: the RAG set is named by episode number (``{n}``), our own
files by episode key. Every writer returns ``{name: uri}`` for logs and metadata.
Serialisation of the intermediate results lives here too: Dagster assets hand them
to each other as JSON files in the same layout, so a re-run or a backfill needs
nothing but the storage root and the partition key.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from resources.schema import (
    AsrResult,
    AsrSegment,
    DiarisationResult,
    SpeakerTranscript,
    SpeakerTurn,
    Utterance,
    Word,
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


def full_record(
    transcript: SpeakerTranscript,
    asr: AsrResult,
    diarisation: DiarisationResult,
    timings: dict[str, float] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``transcripts/{key}.json``: everything needed to audit or re-render a transcript."""
    return {
        "schema_version": SCHEMA_VERSION,
        "key": transcript.key,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source or {},
        "duration": round(transcript.duration, 3),
        "language": transcript.language,
        "speakers": transcript.speakers,
        "speaker_names": transcript.speaker_names,
        "asr": {"model": asr.model, "config": asr.config, "seconds": round(asr.seconds, 3)},
        "diarisation": {
            "model": diarisation.model,
            "config": diarisation.config,
            "seconds": round(diarisation.seconds, 3),
            "details": diarisation.details,
            "turns": [dataclasses.asdict(t) for t in diarisation.turns],
        },
        "timings": {k: round(v, 3) for k, v in (timings or {}).items()},
        "metadata": transcript.metadata,
        "utterances": [utterance_to_dict(u) for u in transcript.utterances],
    }


def write_full_record(
    storage: StorageResource,
    transcript: SpeakerTranscript,
    asr: AsrResult,
    diarisation: DiarisationResult,
    timings: dict[str, float] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, str]:
    record = full_record(transcript, asr, diarisation, timings, source)
    return {"record": storage.write_json(EpisodeFiles(transcript.key).record, record)}


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
    written: dict[str, str] = {}
    written.update(write_rttm(storage, diarisation, transcript.key))
    written.update(write_subtitles(storage, transcript))
    written.update(write_rag_outputs(storage, transcript, info))
    written.update(write_full_record(storage, transcript, asr, diarisation, timings, source))
    return written


# -- (de)serialisation of intermediate results -----------------------------------------------
def utterance_to_dict(u: Utterance) -> dict[str, Any]:
    return {
        "speaker": u.speaker,
        "start": round(u.start, 3),
        "end": round(u.end, 3),
        "text": u.text,
        "words": [w.to_dict() for w in u.words],
    }


def asr_to_dict(asr: AsrResult) -> dict[str, Any]:
    return {
        "language": asr.language,
        "duration": asr.duration,
        "model": asr.model,
        "config": asr.config,
        "seconds": asr.seconds,
        "details": asr.details,
        "segments": [
            {
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "avg_logprob": s.avg_logprob,
                "no_speech_prob": s.no_speech_prob,
                "words": [w.to_dict() for w in s.words],
            }
            for s in asr.segments
        ],
    }


def asr_from_dict(data: dict[str, Any]) -> AsrResult:
    segments = [
        AsrSegment(
            start=s["start"],
            end=s["end"],
            text=s["text"],
            words=[Word.from_dict(w) for w in s["words"]],
            avg_logprob=s.get("avg_logprob", 0.0),
            no_speech_prob=s.get("no_speech_prob", 0.0),
        )
        for s in data["segments"]
    ]
    return AsrResult(
        segments,
        data["language"],
        data["duration"],
        data["model"],
        data["config"],
        data["seconds"],
        dict(data.get("details") or {}),
    )


def diarisation_to_dict(result: DiarisationResult) -> dict[str, Any]:
    return dataclasses.asdict(result)


def diarisation_from_dict(data: dict[str, Any]) -> DiarisationResult:
    return DiarisationResult(
        turns=[SpeakerTurn(**t) for t in data["turns"]],
        duration=data["duration"],
        model=data["model"],
        config=data["config"],
        seconds=data.get("seconds", 0.0),
        details=data.get("details", {}),
    )


def transcript_from_record(record: dict[str, Any]) -> SpeakerTranscript:
    """Rebuild a SpeakerTranscript from ``transcripts/{key}.json``."""
    utterances = [
        Utterance(
            speaker=u["speaker"],
            start=u["start"],
            end=u["end"],
            words=[Word.from_dict({**w, "speaker": u["speaker"]}) for w in u["words"]],
        )
        for u in record["utterances"]
    ]
    return SpeakerTranscript(
        key=record["key"],
        duration=record["duration"],
        utterances=utterances,
        speakers=list(record["speakers"]),
        speaker_names=dict(record.get("speaker_names") or {}),
        language=record.get("language", "en"),
        metadata=dict(record.get("metadata") or {}),
    )
