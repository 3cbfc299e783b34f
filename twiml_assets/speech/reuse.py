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
prompt differs between an upload and its episode by construction). The compute type does
change the words (int8 and float16 differ), so it is compared on its own: the record has
the one that ran, the settings the one asked for, unless they leave it to the device."""
DIARISATION_RUNTIME_ONLY = {"device", "hf_token_set"}
ANY_COMPUTE_TYPE = {"auto", "default"}


def engine_settings(config: dict[str, Any], runtime_only: set[str]) -> dict[str, Any]:
    """The settings that decide the output (what two runs must share to give the same)."""
    return {k: v for k, v in config.items() if k not in runtime_only}


def same_asr_settings(ran: dict[str, Any], wanted: dict[str, Any]) -> bool:
    compute_type = wanted.get("compute_type")
    if compute_type not in ANY_COMPUTE_TYPE and ran.get("compute_type") != compute_type:
        return False
    return engine_settings(ran, ASR_RUNTIME_ONLY) == engine_settings(wanted, ASR_RUNTIME_ONLY)


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
    if not options.reuse_linked_upload:
        log(f"{key}: linked to upload {link.upload}; reuse is off for this run, transcribing")
        return None
    if not link.reusable:
        log(
            f"{key}: linked to upload {link.upload}, but {link.unaligned_seconds:.0f} s of the "
            "episode do not align with it at one offset (intro, ads): transcribing the episode"
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
    same = same_asr_settings(asr_record.get("config", {}), wanted_asr) and engine_settings(
        diar_record.get("config", {}), DIARISATION_RUNTIME_ONLY
    ) == engine_settings(wanted_diar, DIARISATION_RUNTIME_ONLY)
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
    """``t`` inside the episode (a shifted time can fall just outside it)."""
    return min(max(t, 0.0), duration)


def shifted_asr(result: AsrResult, offset: float, duration: float) -> AsrResult:
    """``result`` on the episode's clock; what falls outside the episode is dropped. No
    model ran, so the compute time is 0."""
    segments = []
    for segment in result.segments:
        start, end = segment.start + offset, segment.end + offset
        if end <= 0 or start >= duration:
            continue
        kept = [w for w in segment.words if 0 <= w.start + offset < duration]
        if len(kept) != len(segment.words):  # words (tokens with their spaces) make the text
            segment.text = "".join(w.text for w in kept)
        segment.start, segment.end = clamp(start, duration), clamp(end, duration)
        segment.words = kept
        for word in kept:
            word.start, word.end = word.start + offset, clamp(word.end + offset, duration)
        segments.append(segment)
    result.segments, result.duration, result.seconds = segments, duration, 0.0
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
    result.turns, result.duration, result.seconds = turns, duration, 0.0
    return result
