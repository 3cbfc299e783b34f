"""Speaker-attributed word metrics: cpWER (who said which words, up to label permutation)
and WDER (correct words given to the wrong speaker)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy.optimize import linear_sum_assignment

from evaluation.metrics import UNKNOWN_SPEAKER, Counts, align, rate, word_tokens
from resources.schema import Utterance, Word


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
    ref_tok = [word_tokens(ref_texts[s], normalise) for s in ref_spk]
    hyp_tok = [word_tokens(hyp_texts[s], normalise) for s in hyp_spk]

    size = max(len(ref_spk), len(hyp_spk))
    pair_counts: dict[tuple[int, int], Counts] = {}
    cost = np.zeros((size, size), dtype=np.int64)
    for i in range(size):
        for j in range(size):
            if i < len(ref_spk) and j < len(hyp_spk):
                counts, _ = align(ref_tok[i], hyp_tok[j])
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
        cpwer=rate(subs + dels + ins, n_ref),
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
            toks = word_tokens(" ".join(run), normalise)
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
    _, chunks = align(ref_tok, hyp_tok)

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
