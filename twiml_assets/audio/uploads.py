"""Uploaded audio files become episodes: sniffed, hashed, stored, linked to duplicates.

An upload is registered without any change to the assets: its audio goes to
``audio/up-<hash><ext>`` with the same sidecar ``raw_audio`` writes after a download
(url, path, size, sha256), and ``episodes/up-<hash>.json`` holds an :class:`EpisodeInfo`
whose ``audio_url`` is ``upload:up-<hash><ext>``. ``episode_metadata`` then finds the
episode from its key alone (``find_episode`` falls back to the stored entry), and
``raw_audio`` reuses the stored file because the sidecar matches: nothing is downloaded.

Safety: the type comes from the file's first bytes (never from its name or the
browser's Content-Type), the size is capped while streaming, and the client's file
name is kept only as display text, never as a path: every stored path derives from
the sha256 of the content.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from threading import Lock
from typing import BinaryIO

from resources.storage import StorageError, StorageResource
from twiml_assets.audio.download import audio_extension
from twiml_assets.feed.source import EpisodeInfo
from twiml_assets.keys import validate_key
from twiml_assets.layout import EpisodeFiles

log = logging.getLogger(__name__)

CHUNK = 1 << 20
UPLOAD_PREFIX = "up-"
UPLOAD_SCHEME = "upload"


@dataclass(frozen=True, slots=True)
class AudioKind:
    """A sniffed container: its short name (as in the allow-list), extension and MIME type."""

    name: str
    ext: str
    mime: str


KINDS: dict[str, AudioKind] = {
    k.name: k
    for k in (
        AudioKind("mp3", ".mp3", "audio/mpeg"),
        AudioKind("wav", ".wav", "audio/wav"),
        AudioKind("flac", ".flac", "audio/flac"),
        AudioKind("ogg", ".ogg", "audio/ogg"),
        AudioKind("opus", ".opus", "audio/opus"),
        AudioKind("m4a", ".m4a", "audio/mp4"),
        AudioKind("aac", ".aac", "audio/aac"),
        AudioKind("webm", ".webm", "audio/webm"),
    )
}
DEFAULT_TYPES = tuple(KINDS)
# ISO-BMFF major brands of audio files (M4A from iTunes/ffmpeg, generic MP4, 3GP); image
# brands that share the container (heic, avif, mif1) are not audio.
MP4_AUDIO_BRANDS = {
    b"M4A ",
    b"M4B ",
    b"M4P ",
    b"mp41",
    b"mp42",
    b"isom",
    b"iso2",
    b"iso4",
    b"iso5",
    b"iso6",
    b"dash",
    b"3gp4",
    b"3gp5",
    b"3gp6",
    b"3g2a",
    b"MSNV",
    b"f4a ",
    b"qt  ",
}
SNIFF_BYTES = 64


def sniff_audio(head: bytes) -> AudioKind | None:
    """The audio container ``head`` starts with (magic numbers), or None.

    Only containers ffmpeg decodes and podcasts use are recognised; anything else
    (HTML, scripts, archives, images, text) is refused however it is named.
    """
    if len(head) < 4:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return KINDS["wav"]
    if head[:4] == b"fLaC":
        return KINDS["flac"]
    if head[:4] == b"OggS":
        return KINDS["opus"] if b"OpusHead" in head[:SNIFF_BYTES] else KINDS["ogg"]
    if head[4:8] == b"ftyp" and head[8:12] in MP4_AUDIO_BRANDS:
        return KINDS["m4a"]
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return KINDS["webm"]
    if head[:3] == b"ID3":
        return KINDS["mp3"]
    if head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        layer = (head[1] >> 1) & 0b11
        if layer == 0b00 and head[1] & 0xF6 == 0xF0:
            return KINDS["aac"]  # ADTS: MPEG-2/4 AAC frames
        bitrate, rate = head[2] >> 4, (head[2] >> 2) & 0b11
        if layer != 0b00 and bitrate not in (0b0000, 0b1111) and rate != 0b11:
            return KINDS["mp3"]  # MPEG audio frame with a valid bitrate index
    return None


class UploadError(ValueError):
    """An upload was refused; ``status`` is the HTTP status that says why."""

    status = 400


class EmptyUploadError(UploadError):
    status = 400


class UploadTooLargeError(UploadError):
    status = 413


class UnsupportedAudioError(UploadError):
    status = 415


def format_size(n: int) -> str:
    """``500 MB`` / ``20 KB``: limits as people read them (binary units)."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.3g} MB"
    return f"{max(1, n // 1024)} KB"


def too_large(limit: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"the file is larger than the limit of {format_size(limit)}")


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """What an upload may be: at most ``max_bytes``, one of ``types`` by content."""

    max_bytes: int = 500 * 1024 * 1024
    types: tuple[str, ...] = DEFAULT_TYPES

    def __post_init__(self) -> None:
        unknown = [t for t in self.types if t not in KINDS]
        if unknown or not self.types:
            raise ValueError(
                f"unknown upload type(s) {', '.join(unknown) or '(none)'}: "
                f"choose from {', '.join(KINDS)}"
            )
        if self.max_bytes <= 0:
            raise ValueError("the upload size limit must be positive")

    @property
    def accept(self) -> str:
        """The ``accept`` attribute of the file input (a hint to the browser only)."""
        return ",".join(sorted({KINDS[t].ext for t in self.types} | {"audio/*"}))


@dataclass(slots=True)
class StagedUpload:
    """An upload copied to a private temporary file, with its hash and sniffed kind."""

    path: Path
    size: int
    sha256: str
    kind: AudioKind
    display_name: str = ""

    @property
    def key(self) -> str:
        return UPLOAD_PREFIX + self.sha256[:12]

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def display_name(filename: str | None, limit: int = 120) -> str:
    """The client's file name as plain display text: no directories, no control characters."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = re.sub(r"\s+", " ", name).strip()
    return name[:limit]


def stage_upload(
    source: BinaryIO,
    limits: UploadLimits,
    filename: str | None = None,
    directory: str | Path | None = None,
) -> StagedUpload:
    """Copy ``source`` to a temporary file while hashing it; refuse bad type or size early.

    The type is decided on the first bytes, before the rest is read; the size is checked
    as bytes arrive, so an oversized stream stops at the limit.
    """
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix="twiml-upload-", suffix=".part", dir=directory)
    path = Path(tmp)
    size = 0
    kind: AudioKind | None = None
    try:
        with open(fd, "wb") as out:
            head = source.read(SNIFF_BYTES)
            while head and len(head) < SNIFF_BYTES:  # short reads from a stream
                more = source.read(SNIFF_BYTES - len(head))
                if not more:
                    break
                head += more
            if not head:
                raise EmptyUploadError("the uploaded file is empty")
            kind = sniff_audio(head)
            if kind is None or kind.name not in limits.types:
                what = f"{kind.name} audio" if kind else "not a recognised audio file"
                raise UnsupportedAudioError(
                    f"unsupported file type ({what}); upload one of: {', '.join(limits.types)}"
                )
            block = head
            while block:
                size += len(block)
                if size > limits.max_bytes:
                    raise too_large(limits.max_bytes)
                digest.update(block)
                out.write(block)
                block = source.read(CHUNK)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return StagedUpload(path, size, digest.hexdigest(), kind, display_name(filename))


# -- duplicates: the same audio bytes as a stored episode ------------------------------------------
def storage_key_ok(key: str) -> bool:
    try:
        validate_key(key)
    except ValueError:
        return False
    return True


@dataclass
class SidecarIndex:
    """sha256 → episode key over the ``audio/{key}.json`` sidecars, read once each.

    A feed with hundreds of episodes has as many sidecars; reading them all on every
    upload would be slow on S3, so each is read the first time it is listed. A hit is
    re-read before it is trusted (the audio of a key can be downloaded again).
    """

    storage: StorageResource
    _by_path: dict[str, tuple[str, str]] = field(default_factory=dict)
    _lock: Lock = field(default_factory=Lock)

    def _read(self, rel: str) -> tuple[str, str] | None:
        try:
            record = self.storage.read_json(rel)
        except (StorageError, ValueError):
            return None
        sha, key = record.get("sha256"), Path(rel).stem
        path = record.get("path")
        if not isinstance(sha, str) or not isinstance(path, str):
            return None
        if not path.startswith(f"audio/{key}.") or not storage_key_ok(key):
            return None
        return sha, key

    def refresh(self) -> None:
        with self._lock:
            for rel in self.storage.list("audio"):
                if rel.endswith(".json") and rel not in self._by_path:
                    entry = self._read(rel)
                    if entry is not None:
                        self._by_path[rel] = entry

    def find(self, sha256: str, prefer_published: bool = True) -> str | None:
        """The key of a stored episode whose audio has this sha256 (published keys first)."""
        self.refresh()
        hits = sorted(
            (key.startswith(UPLOAD_PREFIX) if prefer_published else False, key, rel)
            for rel, (sha, key) in self._by_path.items()
            if sha == sha256
        )
        for _, key, rel in hits:
            current = self._read(rel)
            if current is not None and current[0] == sha256:
                return key
            with self._lock:
                self._by_path.pop(rel, None)
        return None


# -- registration ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Registered:
    """Where an upload's transcript will be: ``key``; ``linked`` when it is a published episode."""

    key: str
    linked: bool
    stored: bool


def upload_audio_url(key: str, ext: str) -> str:
    """``upload:up-<hash><ext>``: says where the audio came from; audio_extension reads ``ext``."""
    return f"{UPLOAD_SCHEME}:{key}{ext}"


def register_upload(
    storage: StorageResource,
    staged: StagedUpload,
    index: SidecarIndex | None = None,
    now: datetime | None = None,
) -> Registered:
    """Store ``staged`` as episode ``up-<hash>``, or link it to a published duplicate.

    Writes the audio first, then the sidecar, then ``episodes/{key}.json`` (its
    presence means "registered"), so an interrupted upload is never half a partition.
    Idempotent: the same bytes again rewrite nothing.
    """
    key = validate_key(staged.key)
    duplicate = (index or SidecarIndex(storage)).find(staged.sha256)
    if duplicate is not None and not duplicate.startswith(UPLOAD_PREFIX):
        log.info("upload %s has the audio of %s; reusing that episode", key, duplicate)
        return Registered(duplicate, linked=True, stored=False)

    url = upload_audio_url(key, staged.kind.ext)
    if audio_extension(url, staged.kind.mime) != staged.kind.ext:  # raw_audio's path rule
        raise RuntimeError(f"audio_extension disagrees with {staged.kind.ext} for {url}")
    files = EpisodeFiles(key)
    rel, sidecar = files.audio(staged.kind.ext), files.audio_sidecar
    if storage.exists(files.episode) and storage.exists(rel) and storage.exists(sidecar):
        return Registered(key, linked=False, stored=False)

    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    storage.put_file(rel, staged.path)
    storage.write_json(
        sidecar,
        {
            "url": url,
            "path": rel,
            "size": staged.size,
            "sha256": staged.sha256,
            "content_type": staged.kind.mime,
            "etag": None,
            "last_modified": None,
            "attempts": 0,
            "resumed": False,
            "seconds": 0.0,
            "key": key,
            "downloaded_at": stamp,
            "source": "upload",
        },
    )
    title = staged.display_name or f"Upload {stamp[:10]}"
    episode = EpisodeInfo(
        key=key,
        number=None,
        title=title,
        audio_url=url,
        audio_type=staged.kind.mime,
        audio_length=staged.size,
        published=stamp,
        description="Uploaded through the web app.",
        guid=f"upload:{staged.sha256}",
    )
    storage.write_json(EpisodeFiles(key).episode, episode.to_dict())
    return Registered(key, linked=False, stored=True)
