"""The model step: decode once, then ASR (``transcript``) and diarisation (``diarisation``).

One multi-asset step produces both assets because both consume the same decoded
waveform (decoding a one-hour MP3 twice costs tens of seconds and twice the memory).
It runs in the ``gpu`` pool (limit 1 in dagster.yaml), so two runs never fight over one
accelerator, while their downloads and renders go on in parallel. Models are cached
per process by the resources, and the job runs in-process, so a run loads each model
once whatever the number of steps.
"""

import time
from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetSpec,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)
from pydantic import Field

from resources.asr import WhisperASR
from resources.audio import SAMPLE_RATE, AudioDecodeError, open_waveform
from resources.diarisation import PyannoteDiariser
from resources.schema import dump
from resources.storage import StorageResource
from twiml_assets.asset_io import (
    GROUP_MODELS,
    files_metadata,
    load_episode,
    read_json_or_fail,
    rtf,
)
from twiml_assets.audio.assets import raw_audio
from twiml_assets.feed.partitions import episode_partitions
from twiml_assets.layout import EpisodeFiles
from twiml_assets.outputs.files import write_rttm
from twiml_assets.speech.engine import episode_prompt

GPU_POOL = "gpu"


class ModelStepConfig(Config):
    """Per-run knobs; model choice and quality settings live on the asr/diariser resources."""

    use_episode_prompt: bool = Field(
        default=True,
        description="Prompt Whisper with the episode title and description (names, jargon).",
    )
    num_speakers: int | None = Field(default=None, description="Exact number of speakers.")
    min_speakers: int | None = Field(default=None, description="Lower bound on speakers.")
    max_speakers: int | None = Field(default=None, description="Upper bound on speakers.")


def model_output(name: str, kind: str, description: str) -> AssetSpec:
    """One of the model step's two per-episode outputs."""
    return AssetSpec(
        name,
        deps=[raw_audio],
        partitions_def=episode_partitions,
        group_name=GROUP_MODELS,
        kinds={kind},
        description=description,
    )


@multi_asset(
    name="transcribe_and_diarise",
    specs=[
        model_output(
            "transcript",
            "whisper",
            "Words with timestamps and probabilities (faster-whisper), ``asr/{key}.asr.json``.",
        ),
        model_output(
            "diarisation",
            "pytorch",
            "Speaker turns (pyannote.audio), ``diarisation/{key}.json`` and ``.rttm``.",
        ),
    ],
    pool=GPU_POOL,
    can_subset=False,
)
def transcribe_and_diarise(
    context: AssetExecutionContext,
    config: ModelStepConfig,
    storage: StorageResource,
    asr: WhisperASR,
    diariser: PyannoteDiariser,
) -> Iterator[MaterializeResult]:
    """Decode the episode once; transcribe and diarise that one waveform (gpu pool)."""
    key = context.partition_key
    episode = load_episode(storage, key)
    audio = read_json_or_fail(storage, EpisodeFiles(key).audio_sidecar, key, "raw_audio")
    started = time.perf_counter()
    try:
        waveform = open_waveform(storage.local_path(audio["path"]), label=key)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this episode's bad audio
        reason = (
            str(exc)
            if isinstance(exc, AudioDecodeError)
            else (f"cannot decode {key} ({audio['path']}): {type(exc).__name__}: {exc}")
        )
        raise Failure(
            description=f"{reason}. Re-materialise raw_audio with force_download=true if the "
            "download was damaged; if the source itself is broken, this episode cannot be "
            "transcribed until the publisher fixes it (the other episodes are unaffected)",
            allow_retries=False,
        ) from exc
    decode_seconds = time.perf_counter() - started
    duration = len(waveform) / SAMPLE_RATE
    context.log.info(f"{key}: decoded {duration:.1f} s of audio in {decode_seconds:.1f} s")

    prompt = (
        episode_prompt(episode.title, episode.description) if config.use_episode_prompt else None
    )
    asr_result = asr.transcribe(
        waveform, initial_prompt=prompt, progress=_progress(context, key, "transcribed")
    )
    diarisation = diariser.diarise(
        waveform,
        SAMPLE_RATE,
        num_speakers=config.num_speakers,
        min_speakers=config.min_speakers,
        max_speakers=config.max_speakers,
        progress=_progress(context, key, "diarised"),
    )
    waveform.close()

    p = EpisodeFiles(key)
    source = {
        "audio_path": audio["path"],
        "audio_sha256": audio.get("sha256"),
        "decode_seconds": round(decode_seconds, 3),
        "duration": round(duration, 3),
    }
    asr_files = {
        "asr_json": storage.write_json(p.asr_result, {**dump(asr_result), "audio": source})
    }
    diar_files = {
        "diarisation_json": storage.write_json(
            p.diarisation_result, {**dump(diarisation), "audio": source}
        ),
        **write_rttm(storage, diarisation, key),
    }

    words = asr_result.words
    yield MaterializeResult(
        asset_key="transcript",
        metadata={
            "duration_s": round(duration, 2),
            "words": len(words),
            "segments": len(asr_result.segments),
            "language": asr_result.language,
            "asr_seconds": round(asr_result.seconds, 2),
            "decode_seconds": round(decode_seconds, 2),
            "real_time_factor": rtf(asr_result.seconds, duration),
            "recovered_stretches": asr_result.details.get("recovered_stretches", 0),
            "unrecovered_stretches": asr_result.details.get("unrecovered_stretches", 0),
            "model": asr_result.model,
            "config": MetadataValue.json(asr_result.config),
            "preview": MetadataValue.md(asr_result.text[:600] or "_(no speech recognised)_"),
            **files_metadata(asr_files),
        },
    )
    speech = sum(t.duration for t in diarisation.turns)
    yield MaterializeResult(
        asset_key="diarisation",
        metadata={
            "duration_s": round(duration, 2),
            "speakers": len(diarisation.speakers),
            "speaker_labels": ", ".join(diarisation.speakers) or "none",
            "turns": len(diarisation.turns),
            "speech_s": round(speech, 2),
            "diarisation_seconds": round(diarisation.seconds, 2),
            "real_time_factor": rtf(diarisation.seconds, duration),
            "model": diarisation.model,
            "config": MetadataValue.json(diarisation.config),
            **files_metadata(diar_files),
        },
    )


def _progress(context: AssetExecutionContext, key: str, verb: str):
    """A progress callback that logs about every 10 % (at most once a minute of audio)."""
    last = [-1]

    def report(done: float, total: float) -> None:
        second = round(done)
        if not total or second == last[0]:
            return
        if last[0] < 0 or second - last[0] >= max(60.0, total / 10) or done >= total:
            last[0] = second
            context.log.info(f"{key}: {verb} {second}/{total:.0f} s")

    return report
