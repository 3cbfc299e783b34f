"""Whisper-style English text normalisation for scoring.

WER is only comparable across systems and references when both sides are normalised the
same way: a reference that writes "ten" and a hypothesis that writes "10" are not an error
a listener would notice. We use ``EnglishTextNormalizer`` from the ``whisper-normalizer``
package, a maintained copy of the normaliser OpenAI published with Whisper and used for
the WER figures in the Whisper paper, so our numbers are computed the way most published
ASR numbers are. It

- lower-cases and removes punctuation and symbols (keeping ``%``, ``$``, decimals),
- expands contractions ("don't" -> "do not", "it's" -> "it is", "won't" -> "will not"),
- writes spelled-out numbers as digits ("ten" -> "10", "twenty five" -> "25",
  "first" -> "1st"),
- maps British to American spelling ("colour" -> "color") and titles ("Mr." -> "mister"),
- drops fillers ("uh", "um", "hmm") and text in brackets/parentheses.

One behaviour to know when reading numbers: consecutive spelled-out digits merge into one
number ("one two three" -> "123"), and "ten dollars" becomes "$10". Both sides of a
comparison are normalised alike, so this only matters when inspecting aligned text.
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
