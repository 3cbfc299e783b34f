"""Speaker labels on segments become ``SpeakerTurn`` s, with overlap and gaps handled.

Shared by the offline diariser and the hub pipeline adapter, so both back-ends join, drop
and name turns the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resources.schema import SpeakerTurn


def segments_annotation(bounds: np.ndarray, labels: np.ndarray) -> Any:
    from pyannote.core import Annotation, Segment

    annotation = Annotation()
    for (start, end), label in zip(bounds, labels, strict=True):
        annotation[Segment(float(start), float(end))] = int(label)
    return annotation


def add_overlapping_speakers(annotation: Any, overlap: list[tuple[float, float]]) -> Any:
    """Give overlapped speech a second speaker: the nearest *other* speaker in time.

    The segmentation model says reliably *when* two people talk at once, but not who the
    second voice is; in conversation it is almost always the person who just spoke or
    is about to (a backchannel, an interruption, a turn taken early).
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
