"""Reuse an upload's transcript for the published episode it is linked to.

An episode published after staff uploaded its master is linked to that upload by
``audio_fingerprint`` (:mod:`twiml_assets.audio.links`). When the upload's audio covers
the whole episode at one offset and its ASR and diarisation ran with the settings this
run would use, the model step writes the upload's words and turns, shifted onto the
episode's clock, instead of transcribing the same speech again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from resources.asr import WhisperASR
from resources.diarisation import PyannoteDiariser
from resources.schema import AsrResult, DiarisationResult, load
from resources.storage import StorageResource
from twiml_assets.asset_io import StepOutput, read_json_or_fail
from twiml_assets.audio.links import Link, read_link
from twiml_assets.layout import EpisodeFiles
from twiml_assets.speech.step import ModelStepConfig, write_model_outputs

ASR_RUNTIME_ONLY = {"device", "compute_type", "cpu_threads", "download_root", "initial_prompt"}
"""ASR settings that say where and how fast the model runs, not what it writes (the episode
prompt differs between an upload and its episode by construction)."""
DIARISATION_RUNTIME_ONLY = {"device", "hf_token_set"}


def engine_settings(config: dict[str, Any], runtime_only: set[str]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in runtime_only}


def reusable_link(
    key: str,
    options: ModelStepConfig,
    storage: StorageResource,
    asr: WhisperASR,
    diariser: PyannoteDiariser,
    log: Callable[[str], None],
) -> tuple[Link, dict[str, Any], dict[str, Any]] | None:
    """The link and the upload's ASR and diarisation records, when they can be reused."""
    link = read_link(storage, key)
    if link is None or link.episode != key:
        return None
    if not link.reusable:
        log(
            f"{key}: linked to upload {link.upload}, but only {link.episode_coverage:.0%} of the "
            "episode aligns with it at one offset (intro, ads); transcribing the episode itself"
        )
        return None
    upload = EpisodeFiles(link.upload)
    if not (storage.exists(upload.asr_result) and storage.exists(upload.diarisation_result)):
        log(f"{key}: linked upload {link.upload} has no transcript yet; transcribing")
        return None
    asr_record = storage.read_json(upload.asr_result)
    diar_record = storage.read_json(upload.diarisation_result)
    wanted_asr = asr.settings().model_dump()
    wanted_diar = diariser.settings(
        num_speakers=options.num_speakers,
        min_speakers=options.min_speakers,
        max_speakers=options.max_speakers,
    ).model_dump()
    same = engine_settings(asr_record.get("config", {}), ASR_RUNTIME_ONLY) == engine_settings(
        wanted_asr, ASR_RUNTIME_ONLY
    ) and engine_settings(diar_record.get("config", {}), DIARISATION_RUNTIME_ONLY) == (
        engine_settings(wanted_diar, DIARISATION_RUNTIME_ONLY)
    )
    if not same:
        log(f"{key}: linked upload {link.upload} was transcribed with other settings; transcribing")
        return None
    return link, asr_record, diar_record


def reuse_upload_transcript(
    key: str,
    options: ModelStepConfig,
    storage: StorageResource,
    asr: WhisperASR,
    diariser: PyannoteDiariser,
    log: Callable[[str], None],
) -> list[StepOutput] | None:
    """Write the linked upload's outputs as this episode's, or None to run the models."""
    found = reusable_link(key, options, storage, asr, diariser, log)
    if found is None:
        return None
    link, asr_record, diar_record = found
    audio = read_json_or_fail(storage, EpisodeFiles(key).audio_sidecar, key, "raw_audio")
    duration = float(storage.read_json(EpisodeFiles(key).fingerprint)["duration"])
    asr_result = shifted_asr(load(AsrResult, asr_record), link.offset_seconds, duration)
    diarisation = shifted_diarisation(
        load(DiarisationResult, diar_record), link.offset_seconds, duration
    )
    source = {
        "audio_path": audio["path"],
        "audio_sha256": audio.get("sha256"),
        "decode_seconds": 0.0,
        "duration": round(duration, 3),
        "reused_from": link.upload,
    }
    log(
        f"{key}: reusing the transcript of upload {link.upload} (similarity "
        f"{link.similarity:.2f}, shifted {link.offset_seconds:+.2f} s); no model ran"
    )
    extra = {
        "reused_from": link.upload,
        "similarity": link.similarity,
        "offset_seconds": link.offset_seconds,
    }
    return write_model_outputs(storage, key, asr_result, diarisation, source, extra)


def clamp(t: float, duration: float) -> float:
    return min(max(t, 0.0), duration)


def shifted_asr(result: AsrResult, offset: float, duration: float) -> AsrResult:
    """``result`` on the episode's clock; what falls outside the episode is dropped."""
    segments = []
    for segment in result.segments:
        start, end = segment.start + offset, segment.end + offset
        if end <= 0 or start >= duration:
            continue
        segment.start, segment.end = clamp(start, duration), clamp(end, duration)
        segment.words = [w for w in segment.words if 0 <= w.start + offset < duration]
        for word in segment.words:
            word.start, word.end = word.start + offset, clamp(word.end + offset, duration)
        segments.append(segment)
    result.segments, result.duration = segments, duration
    result.details = {**result.details, "reused_offset_seconds": offset}
    return result


def shifted_diarisation(
    result: DiarisationResult, offset: float, duration: float
) -> DiarisationResult:
    """``result``'s turns on the episode's clock, clipped to the episode."""
    turns = []
    for turn in result.turns:
        start, end = clamp(turn.start + offset, duration), clamp(turn.end + offset, duration)
        if end > start:
            turn.start, turn.end = start, end
            turns.append(turn)
    result.turns, result.duration = turns, duration
    return result
