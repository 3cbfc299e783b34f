"""Speaker labels on segments become ``SpeakerTurn`` s, with overlap and gaps handled.

Shared by the offline diariser and the hub pipeline adapter, so both back-ends join, drop
and name turns the same way. Plain (start, end, label) tracks rather than
``pyannote.core.Annotation``: importing pyannote.core imports matplotlib, about 2 s of
CPU in every process that diarises, for a few interval operations.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, NamedTuple

import numpy as np

from resources.schema import SpeakerTurn

PRECISION = 1e-6  # seconds; shorter intersections and gaps count as none (pyannote's rule)


class Track(NamedTuple):
    """One stretch of one speaker; tracks of one label may overlap or touch."""

    start: float
    end: float
    label: Hashable


def labelled_segments(bounds: np.ndarray, labels: np.ndarray) -> list[Track]:
    return [
        Track(float(a), float(b), int(label)) for (a, b), label in zip(bounds, labels, strict=True)
    ]


def annotation_tracks(annotation: Any) -> list[Track]:
    """A ``pyannote.core.Annotation`` (what hub pipelines return) as tracks."""
    return [
        Track(segment.start, segment.end, label)
        for segment, _, label in annotation.itertracks(yield_label=True)
    ]


def add_overlapping_speakers(
    tracks: list[Track], overlap: list[tuple[float, float]]
) -> list[Track]:
    """Give overlapped speech a second speaker: the nearest *other* speaker in time.

    The segmentation model says reliably *when* two people talk at once, but not who the
    second voice is; in conversation it is almost always the person who just spoke or
    is about to (a backchannel, an interruption, a turn taken early).
    """
    if len({t.label for t in tracks}) < 2 or not overlap:
        return list(tracks)
    ordered = sorted(tracks, key=lambda t: (t.start, t.end))
    out = list(tracks)
    for region_start, region_end in overlap:
        for track in ordered:
            start, end = max(track.start, region_start), min(track.end, region_end)
            if end - start <= PRECISION:
                continue
            others = [
                (max(other.start - end, start - other.end, 0.0), other.label)
                for other in ordered
                if other.label != track.label
            ]
            _, second = min(others, key=lambda item: item[0])
            out.append(Track(start, end, second))
    return out


def tracks_to_turns(tracks: Iterable[Track], min_on: float, min_off: float) -> list[SpeakerTurn]:
    """Join same-speaker gaps < ``min_off``, drop turns < ``min_on``, label by first turn."""
    by_label: dict[Hashable, list[tuple[float, float]]] = {}
    for track in tracks:
        by_label.setdefault(track.label, []).append((track.start, track.end))
    joined = [
        (start, end, label)
        for label, spans in by_label.items()
        for start, end in support(spans, min_off)
        if end - start >= min_on
    ]
    joined.sort(key=lambda t: (t[0], t[1], t[2]))
    first_seen: dict[Hashable, str] = {}
    turns = []
    for start, end, label in joined:
        name = first_seen.setdefault(label, f"SPEAKER_{len(first_seen):02d}")
        turns.append(SpeakerTurn(round(start, 3), round(end, 3), name))
    return turns


def support(spans: list[tuple[float, float]], collar: float) -> list[tuple[float, float]]:
    """The union of ``spans``, also joining those separated by less than ``collar``."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged:
            gap = start - merged[-1][1]
            if gap <= PRECISION or gap < collar:
                merged[-1][1] = max(merged[-1][1], end)
                continue
        merged.append([start, end])
    return [(a, b) for a, b in merged]
