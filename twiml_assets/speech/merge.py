"""Attribute each ASR word to a speaker turn, then group words into utterances.

Word-level assignment (rather than segment-level) is what keeps a quick "yeah" or a
turn change in the middle of a Whisper segment on the right speaker.
"""

from __future__ import annotations

import bisect
from itertools import accumulate

from resources.schema import (
    AsrResult,
    DiarisationResult,
    SpeakerTranscript,
    SpeakerTurn,
    Utterance,
    Word,
)

FALLBACK_SPEAKER = "SPEAKER_00"
BACKCHANNEL_SECONDS = 1.5  # a turn this short inside another speaker's turn is a backchannel


class TurnIndex:
    """Turns sorted by start, with a running max of ends to stop backward scans early."""

    def __init__(self, turns: list[SpeakerTurn]):
        self.turns = sorted(turns, key=lambda t: (t.start, t.end))
        self.starts = [t.start for t in self.turns]
        self.max_end = list(accumulate((t.end for t in self.turns), max))
        # Index of the turn that holds each running max: the latest-ending turn so far.
        self.max_end_at: list[int] = []
        for i, turn in enumerate(self.turns):
            best = self.max_end_at[-1] if self.max_end_at else i
            self.max_end_at.append(i if turn.end >= self.turns[best].end else best)
        self.backchannel = [self.is_backchannel(i) for i in range(len(self.turns))]

    def is_backchannel(self, i: int) -> bool:
        """A short turn lying inside another speaker's turn ("yeah", "right" over them)."""
        turn = self.turns[i]
        if turn.duration >= BACKCHANNEL_SECONDS:
            return False
        j = bisect.bisect_right(self.starts, turn.start) - 1
        while j >= 0 and self.max_end[j] >= turn.end:
            other = self.turns[j]
            if j != i and other.speaker != turn.speaker and other.end >= turn.end:
                return True
            j -= 1
        return False

    def speaker_for(self, start: float, end: float) -> str | None:
        """The speaker overlapping [start, end] most; else the nearest turn's speaker.

        Where a word overlaps a backchannel and the turn it was said over, it goes to the
        turn: Whisper writes the main voice and rarely the quiet reply under it.
        """
        if not self.turns:
            return None
        overlap_by_speaker: dict[str, float] = {}
        backchannel_overlap: dict[str, float] = {}
        j = bisect.bisect_right(self.starts, end) - 1
        while j >= 0 and self.max_end[j] > start:
            turn = self.turns[j]
            overlap = min(end, turn.end) - max(start, turn.start)
            if overlap > 0:
                target = backchannel_overlap if self.backchannel[j] else overlap_by_speaker
                target[turn.speaker] = target.get(turn.speaker, 0.0) + overlap
            j -= 1
        for candidates in (overlap_by_speaker, backchannel_overlap):
            if candidates:
                return max(candidates.items(), key=lambda item: item[1])[0]
        return self.nearest(0.5 * (start + end))

    def nearest(self, t: float) -> str:
        """Speaker of the turn nearest to ``t`` (the latest-ending earlier one, or the next)."""
        i = bisect.bisect_right(self.starts, t)
        candidates: list[tuple[float, str]] = []
        if i > 0:
            before = self.turns[self.max_end_at[i - 1]]
            candidates.append((max(t - before.end, 0.0), before.speaker))
        if i < len(self.turns):
            after = self.turns[i]
            candidates.append((after.start - t, after.speaker))
        return min(candidates, key=lambda c: c[0])[1]


def assign_speakers(words: list[Word], turns: list[SpeakerTurn]) -> list[Word]:
    """Return copies of ``words`` with ``speaker`` set; no word is ever dropped."""
    index = TurnIndex(turns)
    assigned = []
    for word in words:
        speaker = index.speaker_for(word.start, word.end) or FALLBACK_SPEAKER
        assigned.append(Word(word.start, word.end, word.text, word.probability, speaker))
    return assigned


def group_utterances(words: list[Word]) -> list[Utterance]:
    """Consecutive words of one speaker form one utterance."""
    utterances: list[Utterance] = []
    for word in words:
        if utterances and utterances[-1].speaker == word.speaker:
            current = utterances[-1]
            current.words.append(word)
            current.end = max(current.end, word.end)
        else:
            utterances.append(
                Utterance(word.speaker or FALLBACK_SPEAKER, word.start, word.end, [word])
            )
    return utterances


def relabel_by_first_appearance(utterances: list[Utterance]) -> dict[str, str]:
    """Map diarisation labels to SPEAKER_00, 01, … in order of first speech in the text."""
    mapping: dict[str, str] = {}
    for utt in utterances:
        if utt.speaker not in mapping:
            mapping[utt.speaker] = f"SPEAKER_{len(mapping):02d}"
    for utt in utterances:
        utt.speaker = mapping[utt.speaker]
        for word in utt.words:
            word.speaker = utt.speaker
    return mapping


def merge_words(asr: AsrResult, diarisation: DiarisationResult, key: str) -> SpeakerTranscript:
    """The speaker-attributed transcript of one recording."""
    words = sorted(asr.words, key=lambda w: (w.start, w.end))
    utterances = group_utterances(assign_speakers(words, diarisation.turns))
    mapping = relabel_by_first_appearance(utterances)
    speakers = list(mapping.values())
    return SpeakerTranscript(
        key=key,
        duration=max(asr.duration, diarisation.duration),
        utterances=utterances,
        speakers=speakers,
        speaker_names={s: s for s in speakers},
        language=asr.language,
        metadata={"diarisation_labels": mapping, "long_form": dict(asr.details)},
    )
