"""Merged transcript and its renderings: speaker_transcript, rag_outputs, subtitles.

speaker_transcript writes the full record ``transcripts/{key}.json``; its presence is
what the sensor treats as "done". The blocking integrity checks (checks.py) run on it
before rag_outputs and subtitles, so a broken transcript never reaches the RAG
pipeline's files.
"""

import time

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from resources.failures import STEP_RETRY
from resources.schema import AsrResult, DiarisationResult, load
from resources.storage import StorageResource
from twiml_assets.asset_io import (
    GROUP_OUTPUTS,
    files_metadata,
    load_episode,
    markdown_preview,
    read_json_or_fail,
    rtf,
    word_count,
)
from twiml_assets.feed.partitions import episode_partitions
from twiml_assets.layout import EpisodeFiles
from twiml_assets.outputs.files import (
    full_record,
    transcript_from_record,
    write_full_record,
    write_rag_outputs,
    write_subtitles,
)
from twiml_assets.outputs.renderers import subtitle_cues
from twiml_assets.speakers.service import with_names
from twiml_assets.speech.merge import merge_words


@asset(
    partitions_def=episode_partitions,
    retry_policy=STEP_RETRY,
    deps=[AssetKey("transcript"), AssetKey("diarisation")],
    group_name=GROUP_OUTPUTS,
    kinds={"json"},
)
def speaker_transcript(
    context: AssetExecutionContext, storage: StorageResource
) -> MaterializeResult:
    """Every word attributed to a speaker, grouped into turns: ``transcripts/{key}.json``."""
    key = context.partition_key
    p = EpisodeFiles(key)
    episode = load_episode(storage, key)
    asr_data = read_json_or_fail(storage, p.asr_result, key, "transcript")
    diar_data = read_json_or_fail(storage, p.diarisation_result, key, "diarisation")
    asr = load(AsrResult, asr_data)
    diarisation = load(DiarisationResult, diar_data)

    started = time.perf_counter()
    transcript = merge_words(asr, diarisation, key)
    merge_seconds = time.perf_counter() - started
    transcript.metadata.update(
        {"title": episode.title, "episode": episode.number, "published": episode.published}
    )
    audio = asr_data.get("audio", {})
    timings = {
        "decode": float(audio.get("decode_seconds", 0.0)),
        "asr": asr.seconds,
        "diarisation": diarisation.seconds,
        # Wall time of both models: they overlap, so it is not their sum (older records:
        # the sum, as they ran one after the other).
        "models": float(audio.get("models_seconds", asr.seconds + diarisation.seconds)),
        "merge": merge_seconds,
    }
    source = {
        "audio_url": episode.audio_url,
        "audio_path": audio.get("audio_path"),
        "audio_sha256": audio.get("audio_sha256"),
        "title": episode.title,
    }
    files = write_full_record(storage, full_record(transcript, asr, diarisation, timings, source))
    total = timings["decode"] + timings["models"] + timings["merge"]
    return MaterializeResult(
        metadata={
            "duration_s": round(transcript.duration, 2),
            "real_time_factor": rtf(total, transcript.duration),
            "processing_seconds": round(total, 2),
            "speakers": len(transcript.speakers),
            "speaker_labels": ", ".join(transcript.speakers) or "none",
            "turns": len(transcript.utterances),
            "word_count": word_count(transcript.words),
            "asr_model": asr.model,
            "diarisation_model": diarisation.model,
            "config": MetadataValue.json({"asr": asr.config, "diarisation": diarisation.config}),
            "preview": MetadataValue.md(markdown_preview(transcript)),
            **files_metadata(files),
        }
    )


def _load_transcript(storage: StorageResource, key: str):
    """The full record with the names of ``speaker_names`` (``speakers/{key}.json``) applied."""
    record = read_json_or_fail(storage, EpisodeFiles(key).record, key, "speaker_transcript")
    return with_names(storage, transcript_from_record(record))


@asset(
    partitions_def=episode_partitions,
    retry_policy=STEP_RETRY,
    deps=[speaker_transcript, AssetKey("speaker_names")],
    group_name=GROUP_OUTPUTS,
    kinds={"json", "markdown"},
)
def rag_outputs(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
    """The RAG pipeline's files, named by episode number ``{n}``.

    ``transcripts/{n}.corrected.json``, ``asr/{n}.speakers.json``, ``markdown/{n}.md``
    and ``info/{n}.info.json`` (the RSS fields).
    """
    key = context.partition_key
    episode = load_episode(storage, key)
    transcript = _load_transcript(storage, key)
    files = write_rag_outputs(storage, transcript, info=episode.info_json())
    return MaterializeResult(
        metadata={
            "episode": episode.number or key,
            "title": episode.title,
            "duration_s": round(transcript.duration, 2),
            "speakers": len(transcript.speakers),
            "turns": len(transcript.utterances),
            "word_count": word_count(transcript.words),
            "preview": MetadataValue.md(markdown_preview(transcript)),
            **files_metadata(files),
        }
    )


@asset(
    partitions_def=episode_partitions,
    retry_policy=STEP_RETRY,
    deps=[speaker_transcript, AssetKey("speaker_names")],
    group_name=GROUP_OUTPUTS,
    kinds={"file"},
)
def subtitles(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
    """Speaker-labelled subtitles: ``subtitles/{key}.srt`` and ``.vtt``."""
    key = context.partition_key
    transcript = _load_transcript(storage, key)
    files = write_subtitles(storage, transcript)
    return MaterializeResult(
        metadata={
            "cues": len(subtitle_cues(transcript)),
            "duration_s": round(transcript.duration, 2),
            "speakers": len(transcript.speakers),
            **files_metadata(files),
        }
    )
