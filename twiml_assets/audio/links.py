"""Links between an upload and the published episode with the same audio, by fingerprint.

Staff upload the pre-release master; the feed later carries the host's re-encoded MP3,
maybe with an intro or ads. Their bytes differ, their fingerprints align
(:mod:`twiml_assets.audio.linking`). Two recordings are the same when they align
(``compare``) *and* the alignment covers at least half of the episode: a shared jingle, an
ad or a short clip of an episode is not that episode. A link is one small record,
``links/{key}.json``, under the episode's key and the upload's (an upload keeps its first
episode), so either page finds the other side with one read. When the upload's audio
covers the whole episode at one offset, the episode's model step reuses the upload's
transcript, shifted by that offset, instead of transcribing it again.
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
from twiml_assets.audio.fingerprint import (
    Fingerprint,
    fingerprint_file,
    load_all_fingerprints,
    store_fingerprint,
)
from twiml_assets.audio.linking import FingerprintIndex, aligned_share, compare
from twiml_assets.keys import is_upload_key
from twiml_assets.layout import EpisodeFiles

log = logging.getLogger(__name__)

MIN_EPISODE_SHARE = 0.5
"""Share of the episode that must align with the upload for the two to be one recording:
a clip or one half of an episode is its own upload, with its own transcript."""
REUSE_MAX_UNALIGNED_SECONDS = 4.0
"""Episode audio (seconds) that may fail to align with the upload at the one main offset
while its transcript is still reused, shifted: room for the fade at the ends and the
encoder's padding, not for an intro or an ad (speech the upload's transcript lacks)."""


@dataclass(frozen=True, slots=True)
class Link:
    """``upload`` has the audio of published ``episode``.

    ``offset_seconds``: upload time + offset = episode time (at the main alignment).
    ``episode_coverage``: share of the episode's fingerprint that aligns with the upload at
    that one offset; ``episode_seconds`` its length; ``episode_sha256`` the episode audio
    the link was made from (new audio, a new link).
    """

    episode: str
    upload: str
    similarity: float
    offset_seconds: float
    episode_coverage: float
    episode_seconds: float
    episode_sha256: str | None
    linked_at: str

    @property
    def unaligned_seconds(self) -> float:
        return (1.0 - self.episode_coverage) * self.episode_seconds

    @property
    def reusable(self) -> bool:
        """The upload's transcript, shifted, is the episode's: none of its speech is missing."""
        return self.unaligned_seconds <= REUSE_MAX_UNALIGNED_SECONDS

    def other(self, key: str) -> str:
        """The other side of the link, seen from ``key``."""
        return self.upload if key == self.episode else self.episode

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> Link:
        if not isinstance(data, dict):
            raise ValueError("a link record is a JSON object")
        return cls(
            episode=str(data["episode"]),
            upload=str(data["upload"]),
            similarity=float(data["similarity"]),
            offset_seconds=float(data["offset_seconds"]),
            episode_coverage=float(data["episode_coverage"]),
            episode_seconds=float(data["episode_seconds"]),
            episode_sha256=data.get("episode_sha256"),
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
    """Store ``link`` under the episode's key, and the upload's unless the upload already
    points at another episode (an upload keeps its first episode; a re-release with the
    same audio points back at the upload, not the other way round)."""
    storage.write_json(EpisodeFiles(link.episode).link, link.to_json())
    kept = read_link(storage, link.upload)
    if kept is None or kept.episode == link.episode:
        storage.write_json(EpisodeFiles(link.upload).link, link.to_json())


def make_link(
    episode: str,
    episode_fp: Fingerprint,
    upload: str,
    upload_fp: Fingerprint,
    episode_sha256: str | None = None,
) -> Link | None:
    """The link between the two when they are one recording, else None."""
    if is_upload_key(episode) or not is_upload_key(upload):
        raise ValueError(f"a link joins a published episode and an upload, not {episode}/{upload}")
    match = compare(upload_fp, episode_fp, key=episode)  # upload time + offset = episode time
    if not match.linked or not episode_fp.seconds:
        return None
    seen_from_episode = compare(episode_fp, upload_fp, key=upload)
    if seen_from_episode.overlap_seconds < MIN_EPISODE_SHARE * episode_fp.seconds:
        return None  # a jingle, an ad, a clip: part of the episode, not the episode
    return Link(
        episode=episode,
        upload=upload,
        similarity=round(match.similarity, 3),
        offset_seconds=round(match.offset_seconds, 3),
        episode_coverage=round(aligned_share(episode_fp, upload_fp, -match.offset_seconds), 3),
        episode_seconds=round(episode_fp.seconds, 2),
        episode_sha256=episode_sha256,
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
            if isinstance(record, dict) and record.get("sha256") == sha256:
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

    ``wanted`` picks the keys (published episodes, or registered uploads). Each record is
    read the first time it is listed, so a long-lived web app pays for the archive once
    and then one listing per lookup.
    """

    storage: StorageResource
    wanted: Callable[[str], bool]
    index: FingerprintIndex = field(default_factory=FingerprintIndex)
    _lock: Lock = field(default_factory=Lock)

    def refresh(self) -> None:
        with self._lock:
            for key, fp in load_all_fingerprints(self.storage, self.wanted, self.index).items():
                self.index.add(key, fp)

    def find_link(self, key: str, fp: Fingerprint, sha256: str | None = None) -> Link | None:
        """The link of recording ``key`` (fingerprint ``fp``; audio ``sha256``) to the stored
        recording of the other kind that is the same, or None."""
        self.refresh()
        for match in self.index.best(fp, limit=5):
            other = self.index.get(match.key)
            if not match.linked or other is None:
                continue
            if is_upload_key(key):
                link = make_link(match.key, other, key, fp)
            else:
                link = make_link(key, fp, match.key, other, episode_sha256=sha256)
            if link is not None:
                return link
        return None


def published_fingerprints(storage: StorageResource) -> StoredFingerprints:
    """The published episodes' fingerprints: what an upload is matched against."""
    return StoredFingerprints(storage, lambda key: not is_upload_key(key))


def registered_uploads(storage: StorageResource) -> StoredFingerprints:
    """The fingerprints of uploads whose registration finished (``episodes/{key}.json``)."""
    return StoredFingerprints(
        storage, lambda key: is_upload_key(key) and storage.exists(EpisodeFiles(key).episode)
    )


def link_published_episode(
    storage: StorageResource, key: str, fp: Fingerprint, sha256: str | None
) -> Link | None:
    """Link published episode ``key`` to the upload with its audio, if any (stored).

    Runs when the episode's audio arrives, so an upload made before the episode was
    published finds it then. A link made from the same audio is kept; new audio (a
    re-download that changed) is matched again.
    """
    if is_upload_key(key):
        return None
    existing = read_link(storage, key)
    if existing is not None and existing.episode_sha256 == sha256:
        return existing
    link = registered_uploads(storage).find_link(key, fp, sha256)
    if link is not None:
        write_link(storage, link)
    elif existing is not None:  # the new audio is no longer the upload's
        storage.delete(EpisodeFiles(key).link)
        upload_side = read_link(storage, existing.upload)
        if upload_side is not None and upload_side.episode == key:
            storage.delete(EpisodeFiles(existing.upload).link)
    return link
