"""Jobs: the per-episode pipeline (one run per partition), a feed refresh, the evaluation
summary, model comparison and re-naming speakers (on demand).

Selections name assets by key, so this module imports no stage. The in-process executor
(every job's, set once in ``definitions.py``) lets the steps of a run share the models
loaded by their resources (once per run, not per step); parallelism comes from running
several episodes at once, and the ``gpu`` pool keeps their model steps one at a time.
"""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

EPISODE_JOB = "episode_pipeline"
PER_EPISODE_ASSETS = (
    "episode_metadata",
    "raw_audio",
    "audio_fingerprint",
    "transcript",
    "diarisation",
    "speaker_transcript",
    "speaker_names",
    "rag_outputs",
    "subtitles",
    "evaluation",
)

episode_pipeline = define_asset_job(
    EPISODE_JOB,
    selection=AssetSelection.assets(*PER_EPISODE_ASSETS),
    description="Feed entry → audio (+ fingerprint, upload link) → ASR + diarisation → speaker "
    "transcript → RAG files, subtitles and evaluation for one episode, with the integrity "
    "checks gating the RAG files.",
    tags={"twiml/pipeline": "episode"},
)

refresh_feed = define_asset_job(
    "refresh_feed",
    selection=AssetSelection.assets("feed_catalog"),
    description="Re-read the feed and register any new episode partitions.",
)

evaluation_summary_job = define_asset_job(
    "evaluation_summary_job",
    selection=AssetSelection.assets("evaluation_summary"),
    description="Gather every episode's evaluation into one table, pooled WER/DER and a chart.",
)

model_comparison_job = define_asset_job(
    "model_comparison_job",
    selection=AssetSelection.assets("model_comparison"),
    description="Engine configurations side by side on one episode's audio (set 'configs' in "
    "the launchpad); each configuration runs in its own worker process.",
)

speaker_naming_job = define_asset_job(
    "speaker_naming_job",
    selection=AssetSelection.assets("speaker_names", "rag_outputs", "subtitles"),
    description="Name the speakers again (registry changed, host now recognisable) and re-render "
    "the RAG files and subtitles, from the stored voiceprints: no decoding, no transcription.",
)

ALL_JOBS = [
    episode_pipeline,
    refresh_feed,
    evaluation_summary_job,
    model_comparison_job,
    speaker_naming_job,
]
