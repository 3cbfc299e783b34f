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

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jiwer
import numpy as np
from scipy.optimize import linear_sum_assignment

from evaluation.normalise import normalise_text
from resources.schema import SpeakerTurn, Utterance, Word

if TYPE_CHECKING:  # pyannote is imported lazily: it costs ~1 s and only DER needs it.
    from pyannote.core import Annotation, Timeline

#: Label given to words/turns whose speaker is unknown (``None``).
UNKNOWN_SPEAKER = "UNKNOWN"


def _rate(errors: float, total: float) -> float:
    """errors / total, with the empty-reference convention of the module docstring."""
    if total > 0:
        return errors / total
    return 0.0 if errors == 0 else 1.0


def _tokens(text: str, normalise: bool) -> list[str]:
    return normalise_text(text).split() if normalise else text.split()


@dataclass(frozen=True, slots=True)
class _Counts:
    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def _align(reference: list[str], hypothesis: list[str]) -> tuple[_Counts, list[Any]]:
    """Levenshtein-align two token lists with jiwer; return counts and alignment chunks."""
    if not reference and not hypothesis:
        return _Counts(), []
    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    counts = _Counts(out.hits, out.substitutions, out.deletions, out.insertions)
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
            wer=_rate(s + d + i, n),
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
    ref = _tokens(reference, normalise)
    hyp = _tokens(hypothesis, normalise)
    counts, _ = _align(ref, hyp)
    return WerResult(
        wer=_rate(counts.errors, len(ref)),
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
            der=_rate(miss + fa + conf, total),
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
        der=_rate(miss + fa + conf, total),
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


# -- cpWER ---------------------------------------------------------------------------------
@runtime_checkable
class HasSpeakerTexts(Protocol):
    """Anything with per-speaker texts, e.g. ``evaluation.references.Reference``."""

    @property
    def speaker_texts(self) -> dict[str, str]: ...


SpeakerTexts = Mapping[str, str] | Sequence[Utterance] | HasSpeakerTexts


def speaker_texts(source: SpeakerTexts) -> dict[str, str]:
    """Each speaker's words concatenated in time order (utterances sorted by start, stably)."""
    if isinstance(source, HasSpeakerTexts):
        return dict(source.speaker_texts)
    if isinstance(source, Mapping):
        return {str(k): str(v) for k, v in source.items()}
    parts: dict[str, list[str]] = defaultdict(list)
    for u in sorted(source, key=lambda u: u.start):
        speaker = u.speaker if u.speaker is not None else UNKNOWN_SPEAKER
        parts[speaker].append(u.text)
    return {spk: " ".join(t for t in texts if t) for spk, texts in parts.items()}


@dataclass(frozen=True, slots=True)
class CpWerResult:
    """Concatenated minimum-permutation WER (CHiME-6 cpWER) with its counts.

    ``speaker_mapping`` maps each matched hypothesis speaker to its reference speaker;
    ``unmatched_reference`` speakers were scored as all deletions and
    ``unmatched_hypothesis`` speakers as all insertions.
    """

    cpwer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    reference_words: int
    hypothesis_words: int
    speaker_mapping: dict[str, str] = field(default_factory=dict)
    unmatched_reference: list[str] = field(default_factory=list)
    unmatched_hypothesis: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cp_word_error_rate(
    reference: SpeakerTexts, hypothesis: SpeakerTexts, normalise: bool = True
) -> CpWerResult:
    """cpWER: WER after concatenating each speaker's words and pairing speakers optimally.

    Unlike WER it penalises words given to the wrong speaker; unlike WDER it needs no
    word-level alignment of speaker labels. Every reference speaker is paired with at most one
    hypothesis speaker so that the summed errors are smallest (Hungarian algorithm, scipy's
    ``linear_sum_assignment``, on the matrix of pairwise error counts padded with "no speaker"
    rows/columns); speakers left unpaired count as all deletions (reference) or all insertions
    (hypothesis). Speaker labels need not agree between the two sides.
    """
    ref_texts = speaker_texts(reference)
    hyp_texts = speaker_texts(hypothesis)
    ref_spk = sorted(ref_texts)
    hyp_spk = sorted(hyp_texts)
    ref_tok = [_tokens(ref_texts[s], normalise) for s in ref_spk]
    hyp_tok = [_tokens(hyp_texts[s], normalise) for s in hyp_spk]

    size = max(len(ref_spk), len(hyp_spk))
    pair_counts: dict[tuple[int, int], _Counts] = {}
    cost = np.zeros((size, size), dtype=np.int64)
    for i in range(size):
        for j in range(size):
            if i < len(ref_spk) and j < len(hyp_spk):
                counts, _ = _align(ref_tok[i], hyp_tok[j])
                pair_counts[i, j] = counts
                cost[i, j] = counts.errors
            elif i < len(ref_spk):  # reference speaker left without a partner
                cost[i, j] = len(ref_tok[i])
            elif j < len(hyp_spk):  # hypothesis speaker left without a partner
                cost[i, j] = len(hyp_tok[j])

    rows, cols = linear_sum_assignment(cost) if size else ([], [])
    hits = subs = dels = ins = 0
    mapping: dict[str, str] = {}
    unmatched_ref: list[str] = []
    unmatched_hyp: list[str] = []
    for i, j in zip(rows, cols, strict=True):
        if (i, j) in pair_counts:
            c = pair_counts[i, j]
            hits, subs, dels, ins = (
                hits + c.hits,
                subs + c.substitutions,
                dels + c.deletions,
                ins + c.insertions,
            )
            mapping[hyp_spk[j]] = ref_spk[i]
        elif i < len(ref_spk):
            dels += len(ref_tok[i])
            unmatched_ref.append(ref_spk[i])
        elif j < len(hyp_spk):
            ins += len(hyp_tok[j])
            unmatched_hyp.append(hyp_spk[j])

    n_ref = sum(len(t) for t in ref_tok)
    return CpWerResult(
        cpwer=_rate(subs + dels + ins, n_ref),
        substitutions=subs,
        deletions=dels,
        insertions=ins,
        hits=hits,
        reference_words=n_ref,
        hypothesis_words=sum(len(t) for t in hyp_tok),
        speaker_mapping=mapping,
        unmatched_reference=sorted(unmatched_ref),
        unmatched_hypothesis=sorted(unmatched_hyp),
    )


# -- WDER ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WderResult:
    """Word diarisation error rate (Shafey et al., 2019) with its counts.

    ``wder = (substitutions_wrong_speaker + hits_wrong_speaker) / (substitutions + hits)``:
    among reference words aligned to some hypothesis word, the fraction whose hypothesis
    speaker, after the optimal speaker mapping, is not the reference speaker. Deleted and
    inserted words do not count: WER measures them.
    """

    wder: float
    hits: int
    substitutions: int
    hits_wrong_speaker: int
    substitutions_wrong_speaker: int
    speaker_mapping: dict[str, str] = field(default_factory=dict)

    @property
    def aligned_words(self) -> int:
        return self.hits + self.substitutions

    @property
    def wrong_speaker_words(self) -> int:
        return self.hits_wrong_speaker + self.substitutions_wrong_speaker

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _speaker_tokens(words: Sequence[Word], normalise: bool) -> tuple[list[str], list[str]]:
    """Tokens and the speaker of each token.

    Normalisation can change the number of tokens ("don't" -> "do not", "twenty five" ->
    "25"), so it is applied per run of consecutive same-speaker words: every token a run
    yields belongs to that run's speaker, and multi-word numbers inside a turn still merge.
    """
    tokens: list[str] = []
    speakers: list[str] = []
    run: list[str] = []
    run_speaker: str | None = None

    def flush() -> None:
        if run:
            toks = _tokens(" ".join(run), normalise)
            tokens.extend(toks)
            speakers.extend([run_speaker or UNKNOWN_SPEAKER] * len(toks))
            run.clear()

    for w in words:
        speaker = w.speaker if w.speaker is not None else UNKNOWN_SPEAKER
        if speaker != run_speaker:
            flush()
            run_speaker = speaker
        run.append(w.text.strip())
    flush()
    return tokens, speakers


def word_diarisation_error_rate(
    reference_words: Sequence[Word],
    hypothesis_words: Sequence[Word],
    normalise: bool = True,
) -> WderResult:
    """WDER: how many correctly placed words carry the wrong speaker.

    Both word lists must be in spoken order and carry ``speaker`` (``None`` is scored as the
    label ``UNKNOWN``). The two texts are aligned with jiwer on normalised tokens; the aligned
    (correct or substituted) pairs give a reference x hypothesis speaker co-occurrence table,
    from which scipy's ``linear_sum_assignment`` picks the one-to-one mapping with the most
    agreeing pairs. Pairs whose mapped hypothesis speaker differs from the reference speaker
    (or whose hypothesis speaker is unmapped) are speaker errors. With no aligned words the
    rate is undefined and reported as 0.0 (check ``aligned_words``).
    """
    ref_tok, ref_spk = _speaker_tokens(reference_words, normalise)
    hyp_tok, hyp_spk = _speaker_tokens(hypothesis_words, normalise)
    _, chunks = _align(ref_tok, hyp_tok)

    pairs: list[tuple[str, str, bool]] = []  # (ref speaker, hyp speaker, is substitution)
    for chunk in chunks:
        if chunk.type not in ("equal", "substitute"):
            continue
        for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
            pairs.append(
                (
                    ref_spk[chunk.ref_start_idx + k],
                    hyp_spk[chunk.hyp_start_idx + k],
                    chunk.type == "substitute",
                )
            )

    ref_labels = sorted({p[0] for p in pairs})
    hyp_labels = sorted({p[1] for p in pairs})
    agree = np.zeros((len(ref_labels), len(hyp_labels)), dtype=np.int64)
    r_index = {s: i for i, s in enumerate(ref_labels)}
    h_index = {s: j for j, s in enumerate(hyp_labels)}
    for r, h, _ in pairs:
        agree[r_index[r], h_index[h]] += 1
    mapping: dict[str, str] = {}
    if pairs:
        rows, cols = linear_sum_assignment(agree, maximize=True)
        mapping = {hyp_labels[j]: ref_labels[i] for i, j in zip(rows, cols, strict=True)}

    hits = subs = hits_wrong = subs_wrong = 0
    for r, h, is_sub in pairs:
        wrong = mapping.get(h) != r
        if is_sub:
            subs += 1
            subs_wrong += wrong
        else:
            hits += 1
            hits_wrong += wrong
    aligned = hits + subs
    return WderResult(
        wder=(hits_wrong + subs_wrong) / aligned if aligned else 0.0,
        hits=hits,
        substitutions=subs,
        hits_wrong_speaker=hits_wrong,
        substitutions_wrong_speaker=subs_wrong,
        speaker_mapping=mapping,
    )
