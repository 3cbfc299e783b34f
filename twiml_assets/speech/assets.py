"""The model step: decode once, then ASR (``transcript``) and diarisation (``diarisation``).

One multi-asset step produces both assets because both consume the same decoded
waveform (decoding a one-hour MP3 twice costs tens of seconds and twice the memory).
It runs in the ``gpu`` pool (limit 1 in dagster.yaml), so two runs never fight over one
accelerator, while their downloads and renders go on in parallel. Models are cached
per process by the resources, and the job runs in-process, so a run loads each model
once whatever the number of steps. The ``compute`` resource can move the step to a GPU
worker (a subprocess, Modal or Kubernetes, through Dagster Pipes): same code, same files.
"""

from collections.abc import Iterator

from dagster import AssetExecutionContext, AssetSpec, MaterializeResult, multi_asset

from resources.asr import WhisperASR
from resources.compute import ComputeResource
from resources.diarisation import PyannoteDiariser
from resources.failures import MODEL_STEP_RETRY, permanent_errors_fail_at_once
from resources.storage import StorageResource
from twiml_assets.asset_io import GROUP_MODELS, as_metadata
from twiml_assets.audio.assets import raw_audio
from twiml_assets.audio.fingerprint_assets import audio_fingerprint
from twiml_assets.feed.partitions import episode_partitions
from twiml_assets.speech import worker
from twiml_assets.speech.reuse import reuse_upload_transcript
from twiml_assets.speech.step import ModelStepConfig, run_model_step

GPU_POOL = "gpu"


def model_output(name: str, kind: str, description: str) -> AssetSpec:
    """One of the model step's two per-episode outputs."""
    return AssetSpec(
        name,
        deps=[raw_audio, audio_fingerprint],
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
    retry_policy=MODEL_STEP_RETRY,
    can_subset=False,
)
def transcribe_and_diarise(
    context: AssetExecutionContext,
    config: ModelStepConfig,
    storage: StorageResource,
    asr: WhisperASR,
    diariser: PyannoteDiariser,
    compute: ComputeResource,
) -> Iterator[MaterializeResult]:
    """Decode the episode once; transcribe and diarise that one waveform (gpu pool).

    Runs here or on a GPU worker, as the ``compute`` resource says; the files and the
    metadata are the same either way. An episode linked to an upload with the same audio
    and engine settings reuses that upload's transcript instead (``speech/reuse.py``).
    """
    key = context.partition_key
    with permanent_errors_fail_at_once():
        reused = reuse_upload_transcript(key, config, storage, asr, diariser, context.log.info)
        if reused is not None:  # a linked upload's transcript: no model, no GPU worker
            for output in reused:
                yield MaterializeResult(
                    asset_key=output.asset, metadata=as_metadata(output.metadata)
                )
            return
        if not compute.runs_in_process:
            params = worker.WorkerParams.build(key, config, storage, asr, diariser)
            context.log.info(f"{key}: model step on the {compute.backend} backend")
            yield from compute.run_worker(
                context, worker.MODULE, params.model_dump(mode="json"), worker.MODAL_ENTRYPOINT
            )
            return
        for output in run_model_step(key, config, storage, asr, diariser, log=context.log.info):
            yield MaterializeResult(asset_key=output.asset, metadata=as_metadata(output.metadata))
