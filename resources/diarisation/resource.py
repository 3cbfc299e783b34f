"""The diariser as a Dagster resource that is also a plain object, and its two back-ends.

``pipeline`` picks the back-end: ``"offline"`` (default) runs the registry-shipped weights
with no model hub; anything else is a pyannote pipeline (hub id, local directory or
``config.yaml``), the production choice where a token or a local copy exists.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from dagster import ConfigurableResource
from pydantic import Field

from resources.audio import SAMPLE_RATE, AudioSource, ProgressCallback, is_silent
from resources.diarisation.models import (
    check_pipeline_source,
    load_hub_pipeline,
    load_segmentation_model,
    load_speaker_encoder,
    resolve_device,
)
from resources.diarisation.networks import torch_threads
from resources.diarisation.offline import diarise_offline, import_clustering_libraries
from resources.diarisation.settings import OFFLINE, DiarisationFields, DiarisationSettings
from resources.diarisation.turns import annotation_tracks, tracks_to_turns
from resources.environment import environment
from resources.model_paths import resemblyzer_encoder, segmentation_checkpoint
from resources.model_registry import profile_settings
from resources.schema import DiarisationResult, SpeakerTurn

OFFLINE_MODEL_NAME = "offline:pyannote-segmentation+resemblyzer"
MIN_AUDIO_SECONDS = 0.5  # shorter input cannot hold a diarisable turn


class PyannoteDiariser(ConfigurableResource, DiarisationFields):
    """Diarise 16 kHz mono audio into speaker turns (SPEAKER_00, ... by first appearance).

    Works unchanged in a notebook: ``PyannoteDiariser().diarise(waveform)``.
    """

    hf_token: str | None = Field(
        default=None, description="Hugging Face token for gated hub pipelines (default: $HF_TOKEN)."
    )

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides: Any) -> PyannoteDiariser:
        """A model_config.yml profile's diarisation section; non-None ``overrides`` on top."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**profile_settings(profile, "diarisation") | given)

    def settings(self, **overrides: Any) -> DiarisationSettings:
        """Fields < per-call ``overrides`` (None = keep the field's value)."""
        values = {name: getattr(self, name) for name in DiarisationFields.model_fields}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return DiarisationSettings(**values)

    def load(self, s: DiarisationSettings | None = None) -> Any:
        """Import the libraries and load the models (cached per process), without diarising.

        The engine calls this beside the ASR, so a diarisation that must wait for the cores
        does not also wait for its imports. Returns what ``diarise`` runs: the offline
        (segmentation model, speaker encoder), or a pyannote pipeline.
        """
        s = s or self.settings()
        device = resolve_device(s.device)
        if s.pipeline == OFFLINE:
            segmentation = load_segmentation_model(str(segmentation_checkpoint()), device)
            encoder = load_speaker_encoder(str(resemblyzer_encoder()), device)
            import_clustering_libraries()
            return segmentation, encoder
        token = self.hf_token or environment().hf_token
        check_pipeline_source(s.pipeline, token)
        return load_hub_pipeline(s.pipeline, device, token)

    def diarise(
        self,
        waveform: AudioSource,
        sample_rate: int = SAMPLE_RATE,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        progress: ProgressCallback | None = None,
        threads: int = 0,
    ) -> DiarisationResult:
        """Speaker turns of one waveform (16 kHz mono array or ``Waveform``, decoded once),
        computed on ``threads`` CPU threads (0: the cores this process may use)."""
        s = self.settings(
            num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers
        )
        if sample_rate != SAMPLE_RATE:
            raise ValueError(
                f"expected {SAMPLE_RATE} Hz audio, got {sample_rate} Hz: decode with "
                "resources.audio.decode_audio, which resamples"
            )
        if isinstance(waveform, np.ndarray):
            waveform = np.ascontiguousarray(waveform, dtype=np.float32).reshape(-1)
        duration = len(waveform) / SAMPLE_RATE
        device = resolve_device(s.device)
        token = self.hf_token or environment().hf_token
        config = {**s.model_dump(), "device": device, "hf_token_set": token is not None}
        started = time.perf_counter()
        models = self.load(s)
        model_name = OFFLINE_MODEL_NAME if s.pipeline == OFFLINE else s.pipeline
        load_seconds = time.perf_counter() - started

        started = time.perf_counter()
        if duration < MIN_AUDIO_SECONDS or is_silent(waveform):
            turns, details = [], {"num_speakers": 0, "reason": "silent or too short"}
        elif s.pipeline == OFFLINE:
            segmentation, encoder = models
            turns, details = diarise_offline(
                waveform, s, segmentation, encoder, progress=progress, threads=threads
            )
        else:
            with torch_threads(threads):
                turns, details = diarise_with_pipeline(waveform, s, models)
        seconds = time.perf_counter() - started
        if progress is not None:
            progress(duration, duration)
        details = {
            **details,
            "load_seconds": round(load_seconds, 3),
            "real_time_factor": round(seconds / duration, 4) if duration else 0.0,
        }
        return DiarisationResult(turns, duration, model_name, config, seconds, details)


def diarise_with_pipeline(
    waveform: AudioSource, s: DiarisationSettings, pipeline: Any
) -> tuple[list[SpeakerTurn], dict[str, Any]]:
    """Run a pyannote ``Pipeline`` on the in-memory waveform (never re-reading the file)."""
    import torch

    bounds = ("num_speakers", "min_speakers", "max_speakers")
    kwargs = {k: getattr(s, k) for k in bounds if getattr(s, k) is not None}
    samples = np.ascontiguousarray(waveform[0 : len(waveform)], dtype=np.float32)
    output = pipeline(
        {"waveform": torch.from_numpy(samples)[None], "sample_rate": SAMPLE_RATE}, **kwargs
    )
    annotation = getattr(output, "speaker_diarization", output)  # pyannote 4 wraps it
    turns = tracks_to_turns(annotation_tracks(annotation), s.min_duration_on, 0.0)
    return turns, {"num_speakers": len({t.speaker for t in turns})}
