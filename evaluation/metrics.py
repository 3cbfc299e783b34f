"""Transcript and diarisation metrics: WER and DER (cpWER and WDER in ``speaker_metrics``).

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
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import jiwer

from evaluation.normalise import normalise_text
from evaluation.references import UNKNOWN_SPEAKER
from resources.schema import SpeakerTurn

if TYPE_CHECKING:  # pyannote is imported lazily: only DER needs it, and it is slow to import.
    from pyannote.core import Annotation, Timeline


def rate(errors: float, total: float) -> float:
    """errors / total, with the empty-reference convention of the module docstring."""
    if total > 0:
        return errors / total
    return 0.0 if errors == 0 else 1.0


def speaker_label(speaker: str | None) -> str:
    """The label a speaker is scored under: ``None`` (unknown) as ``UNKNOWN``."""
    return speaker if speaker is not None else UNKNOWN_SPEAKER


def word_tokens(text: str, normalise: bool) -> list[str]:
    return normalise_text(text).split() if normalise else text.split()


def summed(items: Iterable[Any], names: Iterable[str]) -> list[Any]:
    """Each named field summed over ``items``: how every corpus score is pooled."""
    items = list(items)
    return [sum(getattr(item, name) for item in items) for name in names]


@dataclass(frozen=True, slots=True)
class WordErrors:
    """The counts a word error rate comes from; corpus rates pool these, never the rates."""

    substitutions: int
    deletions: int
    insertions: int
    hits: int
    reference_words: int
    hypothesis_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @staticmethod
    def total(items: Iterable[WordErrors]) -> WordErrors:
        return WordErrors(*summed(items, (f.name for f in fields(WordErrors))))


def align(reference: list[str], hypothesis: list[str]) -> tuple[WordErrors, list[Any]]:
    """Levenshtein-align two token lists with jiwer; return counts and alignment chunks."""
    if not reference and not hypothesis:
        return WordErrors(0, 0, 0, 0, 0, 0), []
    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    counts = (out.substitutions, out.deletions, out.insertions, out.hits)
    return WordErrors(*counts, len(reference), len(hypothesis)), list(out.alignments[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class WerResult(WordErrors):
    """Word error rate with its counts. ``wer = (S + D + I) / N`` with N reference words."""

    wer: float

    @classmethod
    def of(cls, counts: WordErrors) -> WerResult:
        return cls(wer=rate(counts.errors, counts.reference_words), **asdict(counts))

    @classmethod
    def pooled(cls, results: Iterable[WerResult]) -> WerResult:
        """Corpus WER: summed errors over summed reference words (not a mean of rates)."""
        return cls.of(WordErrors.total(results))


def word_error_rate(reference: str, hypothesis: str, normalise: bool = True) -> WerResult:
    """Speaker-agnostic WER of ``hypothesis`` against ``reference``, via ``jiwer.process_words``.

    With ``normalise`` (the default) both texts go through Whisper's English normaliser first,
    so differences in case, punctuation, contractions and number format are not errors.
    """
    counts, _ = align(word_tokens(reference, normalise), word_tokens(hypothesis, normalise))
    return WerResult.of(counts)


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

    @classmethod
    def of(
        cls,
        total: float,
        missed: float,
        false_alarm: float,
        confusion: float,
        correct: float,
        **settings: Any,
    ) -> DerResult:
        """From seconds: each error's rate is its share of the reference speech ``total``."""

        def share(seconds: float) -> float:
            return seconds / total if total else 0.0

        return cls(
            der=rate(missed + false_alarm + confusion, total),
            missed=share(missed),
            false_alarm=share(false_alarm),
            confusion=share(confusion),
            total=total,
            missed_seconds=missed,
            false_alarm_seconds=false_alarm,
            confusion_seconds=confusion,
            correct_seconds=correct,
            **settings,
        )

    @classmethod
    def pooled(cls, results: Iterable[DerResult]) -> DerResult:
        """Corpus DER: summed error seconds over summed reference seconds (mapping dropped)."""
        items = list(results)
        seconds = ("missed_seconds", "false_alarm_seconds", "confusion_seconds", "correct_seconds")
        return cls.of(
            *summed(items, ("total", *seconds)),
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
            annotation[Segment(float(turn.start), float(turn.end)), i] = speaker_label(turn.speaker)
    return annotation.support()


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
    overlapped speech scored) are the strictest setting. ``uem`` restricts scoring to given
    ``(start, end)`` regions; by default it is the union of the reference and hypothesis
    extents, so hypothesis speech after the reference ends is false alarm.
    """
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    settings: dict[str, Any] = {"collar": collar, "skip_overlap": skip_overlap}
    ref = turns_to_annotation(reference)
    hyp = turns_to_annotation(hypothesis)
    if not ref and not hyp:
        return DerResult.of(0.0, 0.0, 0.0, 0.0, 0.0, **settings)
    if isinstance(uem, Timeline):
        timeline = uem
    elif uem is not None:
        timeline = Timeline([Segment(float(s), float(e)) for s, e in uem], uri=ref.uri)
    else:  # pyannote's own fallback (union of both extents), made explicit to avoid its warning
        extent = ref.get_timeline().extent() | hyp.get_timeline().extent()
        timeline = Timeline([extent] if extent else [], uri=ref.uri)
    metric = DiarizationErrorRate(**settings)
    parts = metric.compute_components(ref, hyp, uem=timeline)
    # The mapping on the same collar/overlap-extruded region the components were scored on.
    ref_x, hyp_x = metric.uemify(ref, hyp, uem=timeline, **settings)
    mapping = {str(h): str(r) for h, r in metric.optimal_mapping(ref_x, hyp_x).items()}
    seconds = ("total", "missed detection", "false alarm", "confusion", "correct")
    return DerResult.of(
        *(float(parts[name]) for name in seconds), speaker_mapping=mapping, **settings
    )
