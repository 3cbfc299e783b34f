"""Time intervals (start, end) in seconds: union, length and intersection.

Speech regions, speaker turns and word spans are all interval lists; coverage checks,
lost-speech measurements and the diariser's loudness estimate all need their union.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Interval = tuple[float, float]

LONGEST_WORD_SECONDS = 2.0
"""A word timed longer than this was stretched over speech the decoder skipped (Whisper's
word alignment gives the word after a timestamp jump the whole jump): it counts as
covering only this much at each of its ends."""


def word_spans(
    spans: Iterable[Sequence[float]], slack: float = 0.0, longest: float = LONGEST_WORD_SECONDS
) -> list[Interval]:
    """The time words really cover: each span widened by ``slack``, a long one only at its ends.

    Lost-speech checks in the engine and in evaluation both use this, so a word stretched
    across a skipped stretch hides it from neither.
    """
    out: list[Interval] = []
    for start, end in spans:
        start, end = float(start), float(end)
        if end - start <= longest:
            out.append((start - slack, end + slack))
        else:
            out.append((start - slack, start + longest + slack))
            out.append((end - longest - slack, end + slack))
    return out


def merge_intervals(intervals: Iterable[Sequence[float]], gap: float = 0.0) -> list[Interval]:
    """Sorted, disjoint union of intervals, bridging gaps up to ``gap`` seconds.

    Empty intervals (end <= start) cover nothing and are left out.
    """
    merged: list[list[float]] = []
    for start, end in sorted((float(s), float(e)) for s, e in intervals):
        if end <= start:
            continue
        if merged and start <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def total(intervals: Iterable[Interval]) -> float:
    return sum(e - s for s, e in intervals)


def overlap(a: Sequence[Interval], b: Sequence[Interval]) -> float:
    """Length of the intersection of two sorted, disjoint interval lists."""
    i = j = 0
    out = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            out += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out
