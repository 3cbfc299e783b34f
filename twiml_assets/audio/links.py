"""Links between an upload and the published episode with the same audio, by fingerprint.

Staff upload the pre-release master; the feed later carries the host's re-encoded MP3,
maybe with an intro or ads. Their bytes differ, their fingerprints align
(:mod:`twiml_assets.audio.linking`). A link is one small record stored under both keys
(``links/{key}.json``), so either page finds the other side with one read. When the
upload's audio covers the whole episode at one offset, the episode's model step reuses
the upload's transcript, shifted by that offset, instead of transcribing it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from threading import Lock
from typing import Any

from resources.storage import StorageError, StorageResource
from twiml_assets.audio.fingerprint import Fingerprint, fingerprint_file, store_fingerprint
from twiml_assets.audio.linking import FingerprintIndex, Match, aligned_share, compare
from twiml_assets.keys import is_upload_key, is_valid_key
from twiml_assets.layout import FINGERPRINTS_DIR, EpisodeFiles

log = logging.getLogger(__name__)

REUSE_COVERAGE = 0.97
"""Share of the episode's audio that must align with the upload at the one main offset for
its transcript to be reused (shifted): an intro or an ad break the master lacks is speech
the upload's transcript does not have, so such an episode is transcribed itself."""


@dataclass(frozen=True, slots=True)
class Link:
    """``upload`` has the audio of published ``episode``.

    ``offset_seconds``: upload time + offset = episode time (at the main alignment).
    ``episode_coverage``: share of the episode's fingerprint that aligns with the upload at
    that one offset.
    """

    episode: str
    upload: str
    similarity: float
    offset_seconds: float
    episode_coverage: float
    linked_at: str

    @property
    def reusable(self) -> bool:
        """The upload's transcript, shifted, is the episode's (nothing of it is missing)."""
        return self.episode_coverage >= REUSE_COVERAGE

    def other(self, key: str) -> str:
        return self.upload if key == self.episode else self.episode

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Link:
        return cls(
            episode=str(data["episode"]),
            upload=str(data["upload"]),
            similarity=float(data["similarity"]),
            offset_seconds=float(data["offset_seconds"]),
            episode_coverage=float(data["episode_coverage"]),
            linked_at=str(data["linked_at"]),
        )


def read_link(storage: StorageResource, key: str) -> Link | None:
    """The link stored for ``key`` (episode or upload), or None."""
    rel = EpisodeFiles(key).link
    try:
        return Link.from_json(storage.read_json(rel)) if storage.exists(rel) else None
    except (StorageError, ValueError, KeyError, TypeError):
        return None


def write_link(storage: StorageResource, link: Link) -> None:
    """Store ``link`` under both keys. An upload keeps its first episode: when a later
    episode has the same audio too (a re-release), only that episode points back."""
    storage.write_json(EpisodeFiles(link.episode).link, link.to_json())
    kept = read_link(storage, link.upload)
    if kept is None or kept.episode == link.episode:
        storage.write_json(EpisodeFiles(link.upload).link, link.to_json())


def make_link(
    episode: str, episode_fp: Fingerprint, upload: str, upload_fp: Fingerprint
) -> Link | None:
    """The link between the two when their fingerprints align, else None."""
    if is_upload_key(episode) or not is_upload_key(upload):
        raise ValueError(f"a link joins a published episode and an upload, not {episode}/{upload}")
    match = compare(upload_fp, episode_fp, key=episode)  # upload time + offset = episode time
    if not match.linked:
        return None
    return Link(
        episode=episode,
        upload=upload,
        similarity=round(match.similarity, 3),
        offset_seconds=round(match.offset_seconds, 3),
        episode_coverage=round(aligned_share(episode_fp, upload_fp, -match.offset_seconds), 3),
        linked_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


# -- stored fingerprints ---------------------------------------------------------------------------
def ensure_fingerprint(
    storage: StorageResource, key: str, sha256: str | None, audio: str | Path
) -> tuple[Fingerprint, bool]:
    """``key``'s stored fingerprint when it is of this audio (``sha256``), else computed and
    stored; True when it was computed. ``audio`` is a storage path or a local file."""
    rel = EpisodeFiles(key).fingerprint
    if sha256 and storage.exists(rel):
        try:
            record = storage.read_json(rel)
            if record.get("sha256") == sha256:
                return Fingerprint.from_json(record), False
        except (StorageError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: stored fingerprint unreadable (%s); computing it again", key, exc)
    path = audio if isinstance(audio, Path) else storage.local_path(audio)
    fp = fingerprint_file(path)
    store_fingerprint(storage, key, fp, sha256)
    return fp, True


@dataclass
class StoredFingerprints:
    """A :class:`FingerprintIndex` over the stored fingerprints of one kind of key.

    ``wanted`` picks the keys (published episodes, or uploads). Each record is read the
    first time it is listed, so a long-lived web app pays for the archive once and then
    one listing per lookup.
    """

    storage: StorageResource
    wanted: Callable[[str], bool]
    index: FingerprintIndex = field(default_factory=FingerprintIndex)
    _lock: Lock = field(default_factory=Lock)

    def refresh(self) -> None:
        with self._lock:
            for rel in self.storage.list(FINGERPRINTS_DIR):
                key = Path(rel).stem
                if not rel.endswith(".json") or not is_valid_key(key) or not self.wanted(key):
                    continue
                if key in self.index:
                    continue
                try:
                    self.index.add(key, Fingerprint.from_json(self.storage.read_json(rel)))
                except (StorageError, ValueError, KeyError, TypeError) as exc:
                    log.warning("skipping unreadable fingerprint %s: %s", rel, exc)

    def match(self, fp: Fingerprint, exclude: tuple[str, ...] = ()) -> Match | None:
        """The best linked match among the stored fingerprints, or None."""
        self.refresh()
        return self.index.match(fp, exclude=exclude)


def published_fingerprints(storage: StorageResource) -> StoredFingerprints:
    return StoredFingerprints(storage, lambda key: not is_upload_key(key))


def link_published_episode(storage: StorageResource, key: str, fp: Fingerprint) -> Link | None:
    """Link published episode ``key`` to the upload with its audio, if any (stored both ways).

    Runs when the episode's audio arrives, so an upload made before the episode was
    published finds it then; an existing link is kept.
    """
    if is_upload_key(key):
        return None
    if (existing := read_link(storage, key)) is not None:
        return existing
    match = StoredFingerprints(storage, is_upload_key).match(fp)
    if match is None:
        return None
    upload_fp = Fingerprint.from_json(storage.read_json(EpisodeFiles(match.key).fingerprint))
    link = make_link(key, fp, match.key, upload_fp)
    if link is not None:
        write_link(storage, link)
    return link
