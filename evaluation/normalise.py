"""Whisper-style English text normalisation for scoring.

WER is only comparable across systems and references when both sides are normalised the
same way: "ten" against "10" is not an error a listener would notice. ``EnglishTextNormalizer``
(``whisper-normalizer``, a maintained copy of the one released with Whisper, so our numbers
are computed the way most ASR numbers are) lower-cases, drops punctuation, fillers ("uh",
"um") and bracketed text, expands contractions ("don't" -> "do not"), writes numbers as
digits and British spellings as American. Consecutive spelled-out digits merge ("one two
three" -> "123"): both sides alike, so this only matters when reading aligned text.
"""

from __future__ import annotations

from functools import lru_cache

from whisper_normalizer.english import EnglishTextNormalizer


@lru_cache(maxsize=1)
def _normaliser() -> EnglishTextNormalizer:
    # Building it loads a spelling table from JSON: do it once per process.
    return EnglishTextNormalizer()


def normalise_text(text: str) -> str:
    """Return ``text`` normalised as Whisper's evaluation does, words separated by one space."""
    if not text or not text.strip():
        return ""
    return " ".join(_normaliser()(text).split())
