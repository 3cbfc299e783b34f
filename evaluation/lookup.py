"""Where an episode's reference transcripts come from: the one lookup that the evaluation,
the checks and the model comparison use.

1. Files someone put there: ``{key}.<fmt>`` or ``{n}.<fmt>`` (``n`` the episode number, the
   RAG pipeline's naming) in the configured references directory (``TWIML_REFERENCES_DIR``)
   and in the storage root's ``references/``, where downloaded transcripts land too.
2. Otherwise the publisher's own transcript (the feed item's ``<podcast:transcript>``),
   downloaded once into ``references/`` by ``evaluation.feed_transcript``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from evaluation.feed_transcript import FeedTranscript, fetch_feed_transcript
from resources.storage import StorageResource
from twiml_assets.http_policy import DEFAULT_TIMEOUT
from twiml_assets.keys import rag_stem
from twiml_assets.layout import REFERENCE_SIDECAR_SUFFIX, REFERENCES_DIR

log = logging.getLogger(__name__)

#: Reference file endings, best first: richer formats (text + speakers + times) win ties.
REFERENCE_SUFFIXES = tuple("corrected.json stm rttm json srt vtt md txt text".split())


def _suffix_of(name: str, stems: Iterable[str]) -> str | None:
    """The reference suffix of ``name`` for one of ``stems``, or None when it is not one."""
    if name.endswith((".speakers.json", REFERENCE_SIDECAR_SUFFIX)):
        return None
    for stem in stems:
        rest = name.removeprefix(f"{stem}.")
        if rest != name and rest in REFERENCE_SUFFIXES:
            return rest
    return None


def find_references(
    storage: StorageResource, key: str, references_root: str | None = None
) -> list[Path]:
    """Reference files of an episode, best first: configured dir, then storage ``references/``.

    Matches ``{key}.<fmt>`` and ``{n}.<fmt>``; ``speakers.json`` files (names only) and
    download sidecars are not references. On S3 the files are local cached copies.
    """
    stems = (key, rag_stem(key))
    found: list[tuple[int, int, str, Path]] = []
    if references_root and (root := Path(references_root).expanduser()).is_dir():
        for p in root.iterdir():
            if p.is_file() and (suffix := _suffix_of(p.name, stems)) is not None:
                found.append((0, REFERENCE_SUFFIXES.index(suffix), p.name, p))
    for rel in storage.list(REFERENCES_DIR):
        name = rel[len(REFERENCES_DIR) + 1 :]
        if "/" not in name and (suffix := _suffix_of(name, stems)) is not None:
            found.append((1, REFERENCE_SUFFIXES.index(suffix), name, storage.local_path(rel)))
    unique: dict[Path, Path] = {}
    for *_, path in sorted(found):
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def resolve_references(
    storage: StorageResource,
    key: str,
    references_root: str | None = None,
    transcript_url: str | None = None,
    *,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[Path], FeedTranscript | None]:
    """References of an episode, fetching the feed's transcript only when there is nothing else."""
    references = find_references(storage, key, references_root)
    if references or not transcript_url:
        return references, None
    fetched = fetch_feed_transcript(storage, key, transcript_url, timeout=timeout)
    if fetched.status in ("failed", "unsupported"):
        (warn or log.warning)(
            f"{key}: feed transcript {transcript_url} not usable ({fetched.status}): "
            f"{fetched.message}"
        )
        return references, fetched
    return find_references(storage, key, references_root), fetched
