"""The model step itself, without Dagster: decode once, ASR, diarisation, files, metadata.

The ``transcribe_and_diarise`` asset runs it in the run's process (compute ``local``);
the Pipes worker (``speech/worker.py``) runs the very same function on a GPU worker.
Both report the same two materialisations, so the outputs and the metadata shown in
the UI do not depend on where the step ran. Metadata is kept in Pipes' wire form
(plain values, and ``{"raw_value", "type"}`` for paths, JSON and Markdown), which the
worker sends as is and the asset converts as Pipes does (``asset_io.as_metadata``).
Failures that a re-run cannot fix (a missing upstream file, undecodable audio) are
permanent ``dagster.Failure``s (``resources.failures``), wherever the step runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dagster import Config
from pydantic import Field

from resources.asr import WhisperASR
from resources.audio import SAMPLE_RATE, AudioDecodeError, Waveform, open_waveform
from resources.diarisation import PyannoteDiariser
from resources.schema import AsrResult, DiarisationResult, SpeakerTurn, dump
from resources.storage import StorageResource
from twiml_assets.asset_io import (
    StepOutput,
    load_episode,
    read_json_or_fail,
    rtf,
    typed,
    undecodable_audio,
    wire_paths,
)
from twiml_assets.layout import EpisodeFiles
from twiml_assets.outputs.files import write_rttm
from twiml_assets.speech.engine import episode_prompt
from twiml_assets.speech.overlap import run_asr_and_diarisation

Log = Callable[[str], None]


class ModelStepConfig(Config):
    """Per-run knobs; model choice and quality settings live on the asr/diariser resources."""

    use_episode_prompt: bool = Field(
        default=True,
        description="Prompt Whisper with the episode title and description (names, jargon).",
    )
    num_speakers: int | None = Field(default=None, description="Exact number of speakers.")
    min_speakers: int | None = Field(default=None, description="Lower bound on speakers.")
    max_speakers: int | None = Field(default=None, description="Upper bound on speakers.")
    overlap_models: bool = Field(
        default=True,
        description="Diarise while transcribing, sharing the cores (False: one after the "
        "other, for less peak memory).",
    )
    reuse_linked_upload: bool = Field(
        default=True,
        description="Reuse the transcript of an upload with this episode's audio (linked by "
        "audio_fingerprint) when it covers the episode and ran with the same settings.",
    )


def run_model_step(
    key: str,
    options: ModelStepConfig,
    storage: StorageResource,
    asr: WhisperASR,
    diariser: PyannoteDiariser,
    log: Log,
    voiceprints: bool = False,
) -> list[StepOutput]:
    """Decode the episode once; transcribe and diarise that one waveform; write the files.

    ``voiceprints``: also embed each speaker's turns from that waveform and store them (the
    worker asks: it has the engine, which the control plane that runs ``speaker_names`` may
    not have).
    Storage that cannot take the files fails the step before the download, decode and
    models: unreachable is a transient ``StorageUnavailableError`` (the retry policy
    tries again), refused a permanent ``StorageError``.
    """
    storage.check_writable()
    files = EpisodeFiles(key)
    episode = load_episode(storage, key)
    audio = read_json_or_fail(storage, files.audio_sidecar, key, "raw_audio")
    started = time.perf_counter()
    path = storage.local_path(audio["path"])  # storage errors are not bad audio
    try:
        waveform = open_waveform(path, label=key)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this episode's bad audio
        reason = (
            str(exc)
            if isinstance(exc, AudioDecodeError)
            else f"cannot decode {key} ({audio['path']}): {type(exc).__name__}: {exc}"
        )
        raise undecodable_audio(reason) from exc
    decode_seconds = time.perf_counter() - started
    duration = len(waveform) / SAMPLE_RATE
    log(f"{key}: decoded {duration:.1f} s of audio in {decode_seconds:.1f} s")

    prompt = (
        episode_prompt(episode.title, episode.description) if options.use_episode_prompt else None
    )
    loggers = {
        "transcribe": progress_logger(log, key, "transcribed"),
        "diarise": progress_logger(log, key, "diarised"),
    }
    asr_result, diarisation, model_timings = run_asr_and_diarisation(
        waveform,
        asr,
        diariser,
        initial_prompt=prompt,
        num_speakers=options.num_speakers,
        min_speakers=options.min_speakers,
        max_speakers=options.max_speakers,
        progress=lambda stage, done, total: loggers[stage](done, total),
        overlap=options.overlap_models,
    )
    if voiceprints:
        store_voiceprints(storage, key, waveform, diarisation.turns, log)
    waveform.close()

    source = {
        "audio_path": audio["path"],
        "audio_sha256": audio.get("sha256"),
        "decode_seconds": round(decode_seconds, 3),
        "models_seconds": round(model_timings["models"], 3),
        "duration": round(duration, 3),
    }
    return write_model_outputs(storage, key, asr_result, diarisation, source)


def store_voiceprints(
    storage: StorageResource, key: str, waveform: Waveform, turns: list[SpeakerTurn], log: Log
) -> None:
    """The episode's voiceprints from the decoded waveform, stored for ``speaker_names``.

    Best effort: the transcript and the diarisation are what the step is for, so a failure
    here is logged, not raised, and ``speaker_names`` computes them itself where the engine
    is installed (or says that it is not).
    """
    from twiml_assets.speakers.service import write_voiceprints
    from twiml_assets.speakers.voiceprints import label_voiceprints

    try:
        prints = label_voiceprints(waveform, turns)
        write_voiceprints(storage, key, prints, turns)
    except Exception as exc:  # noqa: BLE001 - any failure only costs speaker_names a decode
        log(f"{key}: voiceprints not stored ({type(exc).__name__}: {exc})")
        return
    log(f"{key}: voiceprints of {len(prints)} speaker(s) stored")


def write_model_outputs(
    storage: StorageResource,
    key: str,
    asr_result: AsrResult,
    diarisation: DiarisationResult,
    source: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> list[StepOutput]:
    """Write the step's files and describe its two materialisations.

    ``source`` describes the audio (path, sha256, duration, decode time); ``extra`` is
    metadata both outputs carry (a reused transcript names where it came from).
    """
    files = EpisodeFiles(key)
    duration, decode_seconds = source["duration"], source.get("decode_seconds", 0.0)
    asr_files = {
        "asr_json": storage.write_json(files.asr_result, {**dump(asr_result), "audio": source})
    }
    diar_files = {
        "diarisation_json": storage.write_json(
            files.diarisation_result, {**dump(diarisation), "audio": source}
        ),
        **write_rttm(storage, diarisation, key),
    }

    speech = sum(t.duration for t in diarisation.turns)
    extra = extra or {}
    return [
        StepOutput(
            "transcript",
            {
                "duration_s": round(duration, 2),
                "words": len(asr_result.words),
                "segments": len(asr_result.segments),
                "language": asr_result.language,
                "asr_seconds": round(asr_result.seconds, 2),
                "decode_seconds": round(decode_seconds, 2),
                "real_time_factor": rtf(asr_result.seconds, duration),
                "recovered_stretches": asr_result.details.get("recovered_stretches", 0),
                "partly_recovered_stretches": asr_result.details.get(
                    "partly_recovered_stretches", 0
                ),
                "unrecovered_stretches": asr_result.details.get("unrecovered_stretches", 0),
                "longest_speech_without_words_s": asr_result.details.get(
                    "longest_speech_without_words", 0.0
                ),
                "model": asr_result.model,
                "config": typed(asr_result.config, "json"),
                "preview": typed(asr_result.text[:600] or "_(no speech recognised)_", "md"),
                **extra,
                **wire_paths(asr_files),
            },
        ),
        StepOutput(
            "diarisation",
            {
                "duration_s": round(duration, 2),
                "speakers": len(diarisation.speakers),
                "speaker_labels": ", ".join(diarisation.speakers) or "none",
                "turns": len(diarisation.turns),
                "speech_s": round(speech, 2),
                "diarisation_seconds": round(diarisation.seconds, 2),
                "real_time_factor": rtf(diarisation.seconds, duration),
                "model": diarisation.model,
                "config": typed(diarisation.config, "json"),
                **extra,
                **wire_paths(diar_files),
            },
        ),
    ]


def progress_logger(log: Log, key: str, verb: str) -> Callable[[float, float], None]:
    """A progress callback that logs about every 10 % (at most once a minute of audio)."""
    last = [-1]

    def report(done: float, total: float) -> None:
        second = round(done)
        if not total or second == last[0]:
            return
        if last[0] < 0 or second - last[0] >= max(60.0, total / 10) or done >= total:
            last[0] = second
            log(f"{key}: {verb} {second}/{total:.0f} s")

    return report
