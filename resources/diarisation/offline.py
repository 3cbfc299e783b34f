"""The offline diariser: segmentation → embedding → clustering → resegmentation → turns.

It runs with weights that come from PyPI only (pyannote.audio's segmentation model from
the whisperx wheel and resemblyzer's GE2E speaker encoder), because the machines this
project targets reach package registries but no model hub. pyannote's stock
``SpeakerDiarization`` pipeline wired to these weights does poorly, so the assembly is
our own; each step's module says how it works. Known limits: two voices that GE2E hears
as one collapse into one speaker; clips of about 10 s have too little speech for
reliable embeddings; a stretch of another voice shorter than 1.5 s with neither a pause
nor a clear segmentation vote stays with the speaker around it.
"""

from __future__ import annotations

import time
from typing import Any

from resources.audio import SAMPLE_RATE, AudioSource, ProgressCallback
from resources.diarisation.clustering import cluster_segments
from resources.diarisation.embedding import embed_segments
from resources.diarisation.networks import EncoderNet, SegmentationNet
from resources.diarisation.resegmentation import split_mixed_segments
from resources.diarisation.segmentation import (
    change_points,
    frames_to_seconds,
    hysteresis,
    segmentation_scores,
    single_voice_segments,
)
from resources.diarisation.settings import DiarisationSettings
from resources.diarisation.turns import add_overlapping_speakers, labelled_segments, tracks_to_turns
from resources.schema import SpeakerTurn


def diarise_offline(
    waveform: AudioSource,
    s: DiarisationSettings,
    segmentation_model: SegmentationNet,
    encoder: EncoderNet,
    progress: ProgressCallback | None = None,
    threads: int = 0,
) -> tuple[list[SpeakerTurn], dict[str, Any]]:
    """Segmentation → single-voice segments → whitened GE2E embeddings → clusters →
    segments split where their windows change voice → turns,
    the networks using ``threads`` threads (0: the cores this process may use)."""
    duration = len(waveform) / SAMPLE_RATE
    timings: dict[str, float] = {}
    started = time.perf_counter()
    scores = segmentation_scores(
        segmentation_model, waveform, s.segmentation_step, progress, threads
    )
    frame_step, frame_offset = segmentation_model.frame_step, segmentation_model.frame_offset
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
    segments = embed_segments(
        encoder, waveform, bounds, s.embedding_window, s.embedding_step, threads
    )
    timings["embedding"] = time.perf_counter() - started
    if progress is not None:
        progress(0.95 * duration, duration)

    started = time.perf_counter()
    labels, estimated = cluster_segments(segments, s)
    split_bounds, labels = split_mixed_segments(segments, labels)
    tracks = add_overlapping_speakers(labelled_segments(split_bounds, labels), overlap)
    turns = tracks_to_turns(tracks, s.min_duration_on, s.min_duration_off)
    timings["clustering"] = time.perf_counter() - started
    details = {
        "num_speakers": len({t.speaker for t in turns}),
        "estimated_speakers": estimated,
        "segments": len(bounds),
        "segments_split": len(split_bounds) - len(bounds),
        "speech_seconds": round(float(segments.durations.sum()), 3),
        "overlap_seconds": round(float(sum(b - a for a, b in overlap)), 3),
        "timings": rounded(timings),
    }
    return turns, details


def import_clustering_libraries() -> None:
    """Import what clustering uses (about 1 s) with the model loads."""
    import scipy.cluster.hierarchy  # noqa: F401


def rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}
