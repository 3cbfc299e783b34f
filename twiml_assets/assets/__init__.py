"""Software-defined assets by stage: feed/ingest, models, outputs (see DESIGN.md's graph)."""

from twiml_assets.assets.ingest import episode_metadata, feed_catalog, raw_audio
from twiml_assets.assets.models import GPU_POOL, transcribe_and_diarise
from twiml_assets.assets.outputs import rag_outputs, speaker_transcript, subtitles

PER_EPISODE_ASSETS = [
    episode_metadata,
    raw_audio,
    transcribe_and_diarise,
    speaker_transcript,
    rag_outputs,
    subtitles,
]
ALL_ASSETS = [feed_catalog, *PER_EPISODE_ASSETS]

__all__ = [
    "ALL_ASSETS",
    "GPU_POOL",
    "PER_EPISODE_ASSETS",
    "episode_metadata",
    "feed_catalog",
    "rag_outputs",
    "raw_audio",
    "speaker_transcript",
    "subtitles",
    "transcribe_and_diarise",
]
