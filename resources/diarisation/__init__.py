"""Speaker diarisation (who spoke when), split the way pyannote.audio splits it.

``resource`` holds the ``PyannoteDiariser`` resource and the hub pipeline adapter;
``models`` loads and caches weights; the offline back-end is ``segmentation`` (speech
cut into single-voice segments), ``embedding`` (GE2E speaker embeddings, also used by
speaker naming), ``clustering`` (segments grouped into speakers) and ``turns`` (labels
to ``SpeakerTurn`` s), put together by ``offline``. The names below are the package's
public surface.
"""

from resources.diarisation.clustering import cluster_segments
from resources.diarisation.embedding import MelSpectrogram, Segments, embed_segments
from resources.diarisation.models import (
    check_pipeline_source,
    load_hub_pipeline,
    load_segmentation_model,
    load_speaker_encoder,
    resolve_device,
)
from resources.diarisation.offline import diarise_offline
from resources.diarisation.resource import (
    OFFLINE_MODEL_NAME,
    PyannoteDiariser,
    diarise_with_pipeline,
)
from resources.diarisation.segmentation import (
    FrameScoreAccumulator,
    FrameScores,
    change_points,
    hysteresis,
    segmentation_scores,
    single_voice_segments,
)
from resources.diarisation.settings import OFFLINE, DiarisationSettings, ProgressCallback
from resources.diarisation.turns import add_overlapping_speakers, annotation_to_turns

__all__ = [
    "OFFLINE",
    "OFFLINE_MODEL_NAME",
    "DiarisationSettings",
    "FrameScoreAccumulator",
    "FrameScores",
    "MelSpectrogram",
    "ProgressCallback",
    "PyannoteDiariser",
    "Segments",
    "add_overlapping_speakers",
    "annotation_to_turns",
    "change_points",
    "check_pipeline_source",
    "cluster_segments",
    "diarise_offline",
    "diarise_with_pipeline",
    "embed_segments",
    "hysteresis",
    "load_hub_pipeline",
    "load_segmentation_model",
    "load_speaker_encoder",
    "resolve_device",
    "segmentation_scores",
    "single_voice_segments",
]
