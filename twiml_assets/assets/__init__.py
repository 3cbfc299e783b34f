"""Software-defined assets by stage: feed/ingest, models, outputs, evaluation (DESIGN.md's graph).

``evaluation`` is per episode and part of the pipeline (it never fails for lack of a
reference); ``evaluation_summary`` (across episodes) and ``model_comparison`` (expensive,
on demand) are not.
"""

from twiml_assets.assets.evaluation import evaluation, evaluation_summary, model_comparison
from twiml_assets.assets.ingest import episode_metadata, feed_catalog, raw_audio
from twiml_assets.assets.models import GPU_POOL, transcribe_and_diarise
from twiml_assets.assets.naming import speaker_names
from twiml_assets.assets.outputs import rag_outputs, speaker_transcript, subtitles

PER_EPISODE_ASSETS = [
    episode_metadata,
    raw_audio,
    transcribe_and_diarise,
    speaker_transcript,
    speaker_names,
    rag_outputs,
    subtitles,
    evaluation,
]
ALL_ASSETS = [feed_catalog, *PER_EPISODE_ASSETS, evaluation_summary, model_comparison]

__all__ = [
    "ALL_ASSETS",
    "GPU_POOL",
    "PER_EPISODE_ASSETS",
    "episode_metadata",
    "evaluation",
    "evaluation_summary",
    "feed_catalog",
    "model_comparison",
    "rag_outputs",
    "raw_audio",
    "speaker_names",
    "speaker_transcript",
    "subtitles",
    "transcribe_and_diarise",
]
