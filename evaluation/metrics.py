"""Transcript and diarisation metrics: WER, DER, cpWER and WDER.

Each metric returns a small frozen dataclass with the raw counts as well as the rate, because
rates do not average: a corpus score is the sum of errors over the sum of reference words (or
seconds), which ``pooled`` computes from per-episode results.

Conventions shared by the word metrics:

- Text is normalised with Whisper's English normaliser (``evaluation.normalise``) unless
  ``normalise=False``; without it, tokens are the whitespace-separated words as written.
- An empty reference has no defined error rate (errors / 0). We report 0.0 when the hypothesis
  is empty too, and 1.0 otherwise, so a single bad episode cannot put ``inf`` in a table; the
  counts stay exact, so ``pooled`` results are unaffected by this choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import jiwer

from evaluation.normalise import normalise_text
from resources.schema import SpeakerTurn

if TYPE_CHECKING:  # pyannote is imported lazily: it costs ~1 s and only DER needs it.
    from pyannote.core import Annotation, Timeline

#: Label given to words/turns whose speaker is unknown (``None``).
UNKNOWN_SPEAKER = "UNKNOWN"


def rate(errors: float, total: float) -> float:
    """errors / total, with the empty-reference convention of the module docstring."""
    if total > 0:
        return errors / total
    return 0.0 if errors == 0 else 1.0


def word_tokens(text: str, normalise: bool) -> list[str]:
    return normalise_text(text).split() if normalise else text.split()


@dataclass(frozen=True, slots=True)
class Counts:
    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def align(reference: list[str], hypothesis: list[str]) -> tuple[Counts, list[Any]]:
    """Levenshtein-align two token lists with jiwer; return counts and alignment chunks."""
    if not reference and not hypothesis:
        return Counts(), []
    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    counts = Counts(out.hits, out.substitutions, out.deletions, out.insertions)
    return counts, list(out.alignments[0])


# -- WER -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WerResult:
    """Word error rate with its counts. ``wer = (S + D + I) / N`` with N reference words."""

    wer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    reference_words: int
    hypothesis_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def pooled(cls, results: Iterable[WerResult]) -> WerResult:
        """Corpus WER: summed errors over summed reference words (not a mean of rates)."""
        items = list(results)
        s = sum(r.substitutions for r in items)
        d = sum(r.deletions for r in items)
        i = sum(r.insertions for r in items)
        n = sum(r.reference_words for r in items)
        return cls(
            wer=rate(s + d + i, n),
            substitutions=s,
            deletions=d,
            insertions=i,
            hits=sum(r.hits for r in items),
            reference_words=n,
            hypothesis_words=sum(r.hypothesis_words for r in items),
        )


def word_error_rate(reference: str, hypothesis: str, normalise: bool = True) -> WerResult:
    """Speaker-agnostic WER of ``hypothesis`` against ``reference``, via ``jiwer.process_words``.

    With ``normalise`` (the default) both texts go through Whisper's English normaliser first,
    so differences in case, punctuation, contractions and number format are not errors. An
    empty reference gives ``wer`` 0.0 against an empty hypothesis and 1.0 otherwise (the
    insertions are still counted).
    """
    ref = word_tokens(reference, normalise)
    hyp = word_tokens(hypothesis, normalise)
    counts, _ = align(ref, hyp)
    return WerResult(
        wer=rate(counts.errors, len(ref)),
        substitutions=counts.substitutions,
        deletions=counts.deletions,
        insertions=counts.insertions,
        hits=counts.hits,
        reference_words=len(ref),
        hypothesis_words=len(hyp),
    )


# -- DER -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DerResult:
    """Diarisation error rate and its parts.

    ``missed``, ``false_alarm`` and ``confusion`` are fractions of ``total`` (seconds of
    reference speech inside the scored region, overlapped speech counted once per speaker),
    so ``der = missed + false_alarm + confusion``; the ``*_seconds`` fields hold the durations.
    ``speaker_mapping`` is the optimal one-to-one hypothesis -> reference label mapping used
    to score confusion; unmapped hypothesis speakers are all confusion/false alarm.
    """

    der: float
    missed: float
    false_alarm: float
    confusion: float
    total: float
    missed_seconds: float
    false_alarm_seconds: float
    confusion_seconds: float
    correct_seconds: float
    speaker_mapping: dict[str, str] = field(default_factory=dict)
    collar: float = 0.0
    skip_overlap: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def pooled(cls, results: Iterable[DerResult]) -> DerResult:
        """Corpus DER: summed error seconds over summed reference seconds (mapping dropped)."""
        items = list(results)
        total = sum(r.total for r in items)
        miss = sum(r.missed_seconds for r in items)
        fa = sum(r.false_alarm_seconds for r in items)
        conf = sum(r.confusion_seconds for r in items)
        return cls(
            der=rate(miss + fa + conf, total),
            missed=miss / total if total else 0.0,
            false_alarm=fa / total if total else 0.0,
            confusion=conf / total if total else 0.0,
            total=total,
            missed_seconds=miss,
            false_alarm_seconds=fa,
            confusion_seconds=conf,
            correct_seconds=sum(r.correct_seconds for r in items),
            collar=items[0].collar if items else 0.0,
            skip_overlap=items[0].skip_overlap if items else False,
        )


def turns_to_annotation(turns: Iterable[SpeakerTurn], uri: str = "recording") -> Annotation:
    """pyannote ``Annotation`` of speaker turns; a speaker's overlapping/abutting turns merge.

    Merging matters: an annotation holding two overlapping tracks of one speaker would count
    that stretch twice in the reference total.
    """
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri=uri)
    for i, turn in enumerate(turns):
        if turn.end > turn.start:
            speaker = turn.speaker if turn.speaker is not None else UNKNOWN_SPEAKER
            annotation[Segment(float(turn.start), float(turn.end)), i] = speaker
    return annotation.support()


def _as_timeline(
    uem: Timeline | Sequence[tuple[float, float]] | None,
    reference: Annotation,
    hypothesis: Annotation,
) -> Timeline:
    from pyannote.core import Segment, Timeline

    if isinstance(uem, Timeline):
        return uem
    if uem is not None:
        return Timeline([Segment(float(s), float(e)) for s, e in uem], uri=reference.uri)
    # pyannote's own fallback (union of both extents), made explicit to avoid its warning.
    extent = reference.get_timeline().extent() | hypothesis.get_timeline().extent()
    return Timeline([extent] if extent else [], uri=reference.uri)


def diarisation_error_rate(
    reference: Sequence[SpeakerTurn],
    hypothesis: Sequence[SpeakerTurn],
    collar: float = 0.0,
    skip_overlap: bool = False,
    uem: Timeline | Sequence[tuple[float, float]] | None = None,
) -> DerResult:
    """DER of hypothesis turns against reference turns, via pyannote.metrics.

    ``collar`` is pyannote's: the *total* width of the forgiveness zone centred on each
    reference boundary, so ``collar=0.5`` equals md-eval's ``-c 0.25``. The defaults (no collar,
    overlapped speech scored) are the strict setting that recent challenges (DIHARD, VoxSRC's
    "full" DER) and pyannote's published benchmarks use. ``uem`` restricts scoring to given
    ``(start, end)`` regions; by default it is the union of the reference and hypothesis
    extents, so hypothesis speech after the reference ends is false alarm.
    """
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref = turns_to_annotation(reference)
    hyp = turns_to_annotation(hypothesis)
    if not ref and not hyp:
        return DerResult(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, {}, collar, skip_overlap)
    timeline = _as_timeline(uem, ref, hyp)

    metric = DiarizationErrorRate(collar=collar, skip_overlap=skip_overlap)
    parts = metric.compute_components(ref, hyp, uem=timeline)
    # The mapping on the same collar/overlap-extruded region the components were scored on.
    ref_x, hyp_x, uem_x = metric.uemify(
        ref, hyp, uem=timeline, collar=collar, skip_overlap=skip_overlap, returns_uem=True
    )
    mapping = {str(h): str(r) for h, r in metric.optimal_mapping(ref_x, hyp_x).items()}

    total = float(parts["total"])
    miss = float(parts["missed detection"])
    fa = float(parts["false alarm"])
    conf = float(parts["confusion"])
    return DerResult(
        der=rate(miss + fa + conf, total),
        missed=miss / total if total else 0.0,
        false_alarm=fa / total if total else 0.0,
        confusion=conf / total if total else 0.0,
        total=total,
        missed_seconds=miss,
        false_alarm_seconds=fa,
        confusion_seconds=conf,
        correct_seconds=float(parts["correct"]),
        speaker_mapping=mapping,
        collar=collar,
        skip_overlap=skip_overlap,
    )
