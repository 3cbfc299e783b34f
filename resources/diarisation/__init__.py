"""Speaker diarisation (who spoke when), split the way pyannote.audio splits it.

``resource`` holds the ``PyannoteDiariser`` resource and the hub pipeline adapter;
``models`` loads and caches weights; the offline back-end is ``segmentation`` (speech
cut into single-voice segments), ``embedding`` (GE2E speaker embeddings, also used by
speaker naming), ``clustering`` (segments grouped into speakers), ``resegmentation``
(segments that hold two voices split) and ``turns`` (labels to ``SpeakerTurn`` s), put
together by ``offline``. The names below are the ones used
from outside the package; everything else is imported from its module.
"""

from resources.diarisation.models import load_segmentation_model, load_speaker_encoder
from resources.diarisation.offline import diarise_offline
from resources.diarisation.resource import PyannoteDiariser
from resources.diarisation.segmentation import change_points, hysteresis
from resources.diarisation.settings import DiarisationSettings
from resources.diarisation.turns import add_overlapping_speakers, tracks_to_turns

__all__ = [
    "DiarisationSettings",
    "PyannoteDiariser",
    "add_overlapping_speakers",
    "tracks_to_turns",
    "change_points",
    "diarise_offline",
    "hysteresis",
    "load_segmentation_model",
    "load_speaker_encoder",
]
