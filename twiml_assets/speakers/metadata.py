"""Guest names from an episode's title and description.

TWIML titles name the guest at the end ("… with First Last - #623") and descriptions
introduce them ("Today we're joined by First Last, …"). Only these explicit patterns
are trusted: a name guessed from arbitrary capitalised words would end up in RAG chunks
as a speaker who never spoke.
"""

from __future__ import annotations

import re

_WORD = r"[A-Z][a-zA-Z'’\-]+"
_INITIAL = r"[A-Z]\."
_PARTICLE = r"(?:de|van|der|von|da|del|di|le|la|bin|al)"
NAME = rf"{_WORD}(?:\s+(?:{_INITIAL}|{_PARTICLE}|{_WORD}))*\s+{_WORD}"
_HONORIFIC = r"(?:Dr\.?\s+|Prof\.?\s+)?"
_JOIN = r"(?:\s*,\s*(?:and\s+)?|\s+and\s+|\s*&\s*)"
_NAMES = rf"{_HONORIFIC}{NAME}(?:{_JOIN}{_HONORIFIC}{NAME})*"

TITLE = re.compile(rf"\bwith\s+({_NAMES})\s*(?:[-–—|:(#]|$)")
DESCRIPTION = re.compile(
    rf"(?:joined\s+by|speak\s+with|speaks\s+with|talk\s+with|chat\s+with|sit\s+down\s+with|"
    rf"sits\s+down\s+with|our\s+guest(?:s)?\s+(?:is|are)|welcome)\s+({_NAMES})"
)
_SPLIT = re.compile(r"\s*(?:,\s*(?:and\s+)?|\s+and\s+|&)\s*")
_TITLES = re.compile(r"^(?:Dr|Prof)\.?\s+")
MAX_WORDS = 4  # longer runs of capitalised words are titles of things, not names


def _names_in(match_text: str) -> list[str]:
    names = (_TITLES.sub("", part.strip()) for part in _SPLIT.split(match_text))
    return [name for name in names if 2 <= len(name.split()) <= MAX_WORDS]


def guest_names(
    title: str | None, description: str | None, exclude: set[str] = frozenset()
) -> list[str]:
    """Guests in order of introduction (description first, then the title), deduplicated.

    ``exclude`` holds names that are not guests (the host), compared case-insensitively.
    """
    found: list[str] = []
    for match in DESCRIPTION.finditer(description or ""):
        found.extend(_names_in(match.group(1)))
    matches = list(TITLE.finditer(title or ""))
    if matches:
        found.extend(_names_in(matches[-1].group(1)))
    first: dict[str, str] = {}  # casefolded → the name as first written
    for name in found:
        first.setdefault(name.casefold(), name)
    excluded = {e.casefold() for e in exclude}
    return [name for folded, name in first.items() if folded not in excluded]
