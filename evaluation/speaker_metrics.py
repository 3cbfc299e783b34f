"""Speaker-attributed word metrics: cpWER (who said which words, up to label permutation)
and WDER (correct words given to the wrong speaker)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import groupby

import numpy as np

from evaluation.metrics import WordErrors, align, rate, speaker_label, word_tokens
from evaluation.references import UNKNOWN_SPEAKER, Reference
from resources.schema import Utterance, Word


def _assignment(cost: np.ndarray, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The optimal one-to-one speaker mapping (Hungarian method). scipy is imported here, not
    at module level: it costs every Dagster process (run workers too) seconds at start-up,
    and only episodes with a speaker-attributed reference need it."""
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(cost, maximize=maximize)


# -- cpWER ---------------------------------------------------------------------------------
SpeakerTexts = Mapping[str, str] | Sequence[Utterance] | Reference


def speaker_texts(source: SpeakerTexts) -> dict[str, str]:
    """Each speaker's words concatenated in time order (utterances sorted by start, stably)."""
    if isinstance(source, Reference):
        return dict(source.speaker_texts)
    if isinstance(source, Mapping):
        return {str(k): str(v) for k, v in source.items()}
    parts: dict[str, list[str]] = defaultdict(list)
    for u in sorted(source, key=lambda u: u.start):
        parts[speaker_label(u.speaker)].append(u.text)
    return {spk: " ".join(t for t in texts if t) for spk, texts in parts.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class CpWerResult(WordErrors):
    """Concatenated minimum-permutation WER (cpWER) with its counts.

    ``speaker_mapping`` maps each matched hypothesis speaker to its reference speaker;
    ``unmatched_reference`` speakers were scored as all deletions and
    ``unmatched_hypothesis`` speakers as all insertions.
    """

    cpwer: float
    speaker_mapping: dict[str, str] = field(default_factory=dict)
    unmatched_reference: list[str] = field(default_factory=list)
    unmatched_hypothesis: list[str] = field(default_factory=list)


def cp_word_error_rate(
    reference: SpeakerTexts, hypothesis: SpeakerTexts, normalise: bool = True
) -> CpWerResult:
    """cpWER: WER after concatenating each speaker's words and pairing speakers optimally.

    Unlike WER it penalises words given to the wrong speaker; unlike WDER it needs no
    word-level alignment of speaker labels, and the labels need not agree between the sides.
    """
    ref_texts, hyp_texts = speaker_texts(reference), speaker_texts(hypothesis)
    ref_spk, hyp_spk = sorted(ref_texts), sorted(hyp_texts)
    ref_tok = [word_tokens(ref_texts[s], normalise) for s in ref_spk]
    hyp_tok = [word_tokens(hyp_texts[s], normalise) for s in hyp_spk]

    def pair(i: int, j: int) -> WordErrors:
        """Reference speaker ``i`` scored against hypothesis speaker ``j``; past the end of
        either list is "no speaker": the other's words are all deleted or all inserted."""
        if i < len(ref_spk) and j < len(hyp_spk):
            return align(ref_tok[i], hyp_tok[j])[0]
        n_ref = len(ref_tok[i]) if i < len(ref_spk) else 0
        n_hyp = len(hyp_tok[j]) if j < len(hyp_spk) else 0
        return WordErrors(0, n_ref, n_hyp, 0, n_ref, n_hyp)

    size = max(len(ref_spk), len(hyp_spk))
    pairs = [[pair(i, j) for j in range(size)] for i in range(size)]
    cost = np.array([[p.errors for p in row] for row in pairs], dtype=np.int64)
    chosen = list(zip(*_assignment(cost), strict=True)) if size else []
    total = WordErrors.total(pairs[i][j] for i, j in chosen)
    return CpWerResult(
        cpwer=rate(total.errors, total.reference_words),
        **asdict(total),
        speaker_mapping={
            hyp_spk[j]: ref_spk[i] for i, j in chosen if i < len(ref_spk) and j < len(hyp_spk)
        },
        unmatched_reference=sorted(ref_spk[i] for i, j in chosen if j >= len(hyp_spk)),
        unmatched_hypothesis=sorted(hyp_spk[j] for i, j in chosen if i >= len(ref_spk)),
    )


# -- WDER ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WderResult:
    """Word diarisation error rate with its counts.

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


def _speaker_tokens(words: Sequence[Word], normalise: bool) -> tuple[list[str], list[str]]:
    """Tokens and the speaker of each token.

    Normalisation can change the number of tokens ("don't" -> "do not", "twenty five" ->
    "25"), so it is applied per run of consecutive same-speaker words: every token a run
    yields belongs to that run's speaker, and multi-word numbers inside a turn still merge.
    """
    tokens: list[str] = []
    speakers: list[str] = []
    for speaker, run in groupby(words, key=lambda w: speaker_label(w.speaker)):
        run_tokens = word_tokens(" ".join(w.text.strip() for w in run), normalise)
        tokens += run_tokens
        speakers += [speaker or UNKNOWN_SPEAKER] * len(run_tokens)
    return tokens, speakers


def word_diarisation_error_rate(
    reference_words: Sequence[Word],
    hypothesis_words: Sequence[Word],
    normalise: bool = True,
) -> WderResult:
    """WDER: how many correctly placed words carry the wrong speaker.

    Both word lists must be in spoken order; a ``None`` speaker is scored as ``UNKNOWN``.
    Speakers are mapped one-to-one so that the most aligned pairs agree. With no aligned words
    the rate is undefined and reported as 0.0 (check ``aligned_words``).
    """
    ref_tok, ref_spk = _speaker_tokens(reference_words, normalise)
    hyp_tok, hyp_spk = _speaker_tokens(hypothesis_words, normalise)
    pairs = [  # (reference speaker, hypothesis speaker, is a substitution)
        (ref_spk[c.ref_start_idx + k], hyp_spk[c.hyp_start_idx + k], c.type == "substitute")
        for c in align(ref_tok, hyp_tok)[1]
        if c.type in ("equal", "substitute")
        for k in range(c.ref_end_idx - c.ref_start_idx)
    ]
    agree = Counter((r, h) for r, h, _ in pairs)
    ref_labels, hyp_labels = sorted({r for r, _ in agree}), sorted({h for _, h in agree})
    mapping: dict[str, str] = {}
    if pairs:
        table = np.array([[agree[r, h] for h in hyp_labels] for r in ref_labels], dtype=np.int64)
        rows, cols = _assignment(table, maximize=True)
        mapping = {hyp_labels[j]: ref_labels[i] for i, j in zip(rows, cols, strict=True)}
    # (is a substitution, has the wrong speaker) -> number of aligned words
    kinds = Counter((is_sub, mapping.get(h) != r) for r, h, is_sub in pairs)
    hits, subs = kinds[False, False] + kinds[False, True], kinds[True, False] + kinds[True, True]
    wrong = kinds[False, True] + kinds[True, True]
    return WderResult(
        wder=wrong / (hits + subs) if hits + subs else 0.0,
        hits=hits,
        substitutions=subs,
        hits_wrong_speaker=kinds[False, True],
        substitutions_wrong_speaker=kinds[True, True],
        speaker_mapping=mapping,
    )
