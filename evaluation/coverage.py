"""Reference speech that the hypothesis left without words: lost speech, made visible.

WER averages a lost minute into a few points; a list of the stretches of reference speech
with no hypothesis word in them shows where and how long. Used by the long-audio tests
and ``bench/long_episode.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from resources.intervals import merge_intervals, word_spans
from resources.schema import SpeakerTurn, Word


def speech_without_words(
    reference: Sequence[SpeakerTurn], words: Iterable[Word]
) -> list[tuple[float, float]]:
    """Stretches of reference speech (any speaker) that no hypothesis word overlaps.

    A word timed over more than ``LONGEST_WORD_SECONDS`` covers only that much at each end
    (``resources.intervals.word_spans``): a stretched word is not speech recovered.
    """
    speech = merge_intervals((t.start, t.end) for t in reference)
    covered = merge_intervals(word_spans((w.start, w.end) for w in words))
    gaps: list[tuple[float, float]] = []
    j = 0
    for start, end in speech:
        cursor = start
        while j < len(covered) and covered[j][1] <= start:
            j += 1
        k = j
        while k < len(covered) and covered[k][0] < end:
            if covered[k][0] > cursor:
                gaps.append((cursor, covered[k][0]))
            cursor = max(cursor, covered[k][1])
            k += 1
        if end > cursor:
            gaps.append((cursor, end))
    return gaps


def longest_without_words(reference: Sequence[SpeakerTurn], words: Iterable[Word]) -> float:
    """Seconds of the longest stretch of reference speech without a hypothesis word."""
    return max((b - a for a, b in speech_without_words(reference, words)), default=0.0)
