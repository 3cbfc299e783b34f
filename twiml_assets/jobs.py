"""Jobs: the per-episode pipeline (one run per partition) and a feed refresh.

The pipeline runs with the in-process executor: every step of a run shares one
process, so the ASR and diarisation models (cached per process by their resources)
load once per run, not once per step, and no step pays a fresh Python/torch import.
Parallelism comes from running several episodes (runs) at once; the ``gpu`` pool keeps
the model step of those runs one at a time.
"""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor

from twiml_assets.assets import PER_EPISODE_ASSETS, feed_catalog

EPISODE_JOB = "episode_pipeline"

episode_pipeline = define_asset_job(
    EPISODE_JOB,
    selection=AssetSelection.assets(*PER_EPISODE_ASSETS),
    executor_def=in_process_executor,
    description="Feed entry → audio → ASR + diarisation → speaker transcript → RAG files and "
    "subtitles for one episode, with the integrity checks gating the RAG files.",
    tags={"twiml/pipeline": "episode"},
)

refresh_feed = define_asset_job(
    "refresh_feed",
    selection=AssetSelection.assets(feed_catalog),
    executor_def=in_process_executor,
    description="Re-read the feed and register any new episode partitions.",
)

ALL_JOBS = [episode_pipeline, refresh_feed]
