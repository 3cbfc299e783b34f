"""Uploaded audio files become episodes: sniffed, hashed, stored, linked to duplicates.

An upload needs no change to the assets: its audio goes to ``audio/up-<hash><ext>`` with
the sidecar ``raw_audio`` writes after a download, and ``episodes/up-<hash>.json`` holds
its :class:`EpisodeInfo`, so ``episode_metadata`` finds it by key and ``raw_audio`` reuses
the stored file. The type comes from the first bytes (never the name or Content-Type), the
size is capped while streaming, and every stored path derives from the content's sha256.
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
from typing import BinaryIO, NamedTuple

from resources.audio import AudioDecodeError
from resources.schema import dump
from resources.storage import StorageError, StorageResource
from twiml_assets.audio.download import CHUNK_SIZE, DownloadResult, audio_extension, is_audio_of
from twiml_assets.audio.fingerprint import fingerprint_file, store_fingerprint
from twiml_assets.audio.links import StoredFingerprints, published_fingerprints
from twiml_assets.feed.source import EpisodeInfo
from twiml_assets.keys import is_upload_key, is_valid_key, upload_key, validate_key
from twiml_assets.layout import AUDIO_DIR, EpisodeFiles

log = logging.getLogger(__name__)


class AudioKind(NamedTuple):
    """A sniffed container: its name in the allow-list (the extension without the dot)."""

    name: str
    mime: str

    @property
    def ext(self) -> str:
        return f".{self.name}"


KINDS = {
    name: AudioKind(name, mime)
    for name, mime in {
        "mp3": "audio/mpeg",
        "wav": "audio/wav",
        "flac": "audio/flac",
        "ogg": "audio/ogg",
        "opus": "audio/opus",
        "m4a": "audio/mp4",
        "aac": "audio/aac",
        "webm": "audio/webm",
    }.items()
}
DEFAULT_TYPES = tuple(KINDS)
# ISO-BMFF major brands of audio files (M4A from iTunes/ffmpeg, generic MP4, 3GP); image
# brands that share the container (heic, avif, mif1) are not audio.
MP4_AUDIO_BRANDS = {
    *(b"M4A ", b"M4B ", b"M4P ", b"f4a ", b"qt  ", b"MSNV", b"dash"),
    *(b"mp41", b"mp42", b"isom", b"iso2", b"iso4", b"iso5", b"iso6"),
    *(b"3gp4", b"3gp5", b"3gp6", b"3g2a"),
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


class UploadTooLargeError(UploadError):
    status = 413


class UnsupportedAudioError(UploadError):
    status = 415


class UndecodableUploadError(UploadError):
    """Audio by its first bytes, but the decoder cannot read it (cut off, corrupt)."""

    status = 422


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
        return upload_key(self.sha256)

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
    size, head = 0, b""
    try:
        with open(fd, "wb") as out:
            while len(head) < SNIFF_BYTES and (more := source.read(SNIFF_BYTES - len(head))):
                head += more  # a stream may return fewer bytes than asked for
            if not head:
                raise UploadError("the uploaded file is empty")
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
                block = source.read(CHUNK_SIZE)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return StagedUpload(path, size, digest.hexdigest(), kind, display_name(filename))


# -- duplicates: the same audio bytes as a stored episode ------------------------------------------
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
        sha, path, key = record.get("sha256"), record.get("path"), Path(rel).stem
        valid = isinstance(sha, str) and isinstance(path, str) and is_valid_key(key)
        return (sha, key) if valid and is_audio_of(path, key) else None

    def refresh(self) -> None:
        with self._lock:
            for rel in self.storage.list(AUDIO_DIR):
                if rel.endswith(".json") and rel not in self._by_path:
                    if (entry := self._read(rel)) is not None:
                        self._by_path[rel] = entry

    def find(self, sha256: str) -> str | None:
        """The key of a stored episode whose audio has this sha256 (published keys first)."""
        self.refresh()
        hits = sorted(
            (is_upload_key(key), key, rel)
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
    """Where an upload's transcript will be: ``key``; ``linked`` when it is a published episode
    (``similarity`` 1.0 for the same bytes, the fingerprint similarity otherwise)."""

    key: str
    linked: bool
    stored: bool
    similarity: float | None = None


def register_upload(
    storage: StorageResource,
    staged: StagedUpload,
    index: SidecarIndex | None = None,
    fingerprints: StoredFingerprints | None = None,
    now: datetime | None = None,
) -> Registered:
    """Store ``staged`` as episode ``up-<hash>``, or link it to the published episode with
    the same bytes (sha256) or the same sound (Chromaprint fingerprint).

    Writes the audio first, then the sidecar, then ``episodes/{key}.json`` (its presence
    means "registered"), so an interrupted upload is never half a partition, then the
    fingerprint. Idempotent: the same bytes again rewrite nothing.
    """
    key = validate_key(staged.key)
    duplicate = (index or SidecarIndex(storage)).find(staged.sha256)
    if duplicate is not None and not is_upload_key(duplicate):
        log.info("upload %s has the audio of %s; reusing that episode", key, duplicate)
        return Registered(duplicate, linked=True, stored=False, similarity=1.0)

    url = f"upload:{key}{staged.kind.ext}"  # where it came from; audio_extension reads ``ext``
    if audio_extension(url, staged.kind.mime) != staged.kind.ext:  # raw_audio's path rule
        raise RuntimeError(f"audio_extension disagrees with {staged.kind.ext} for {url}")
    files = EpisodeFiles(key)
    rel, sidecar = files.audio(staged.kind.ext), files.audio_sidecar
    if storage.exists(files.episode) and storage.exists(rel) and storage.exists(sidecar):
        return Registered(key, linked=False, stored=False)

    try:
        fp = fingerprint_file(staged.path)
    except AudioDecodeError as exc:
        raise UndecodableUploadError(f"the file cannot be decoded as audio: {exc}") from exc
    link = (fingerprints or published_fingerprints(storage)).find_link(key, fp)
    if link is not None:
        log.info(
            "upload %s sounds like %s (similarity %.2f); reusing that episode",
            key,
            link.episode,
            link.similarity,
        )
        return Registered(link.episode, linked=True, stored=False, similarity=link.similarity)

    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    storage.put_file(rel, staged.path)
    result = DownloadResult(url, rel, staged.size, staged.sha256, staged.kind.mime)
    storage.write_json(sidecar, {**result.sidecar(key, rel, stamp), "source": "upload"})
    episode = EpisodeInfo(
        key=key,
        number=None,
        title=staged.display_name or f"Upload {stamp[:10]}",
        audio_url=url,
        audio_type=staged.kind.mime,
        audio_length=staged.size,
        published=stamp,
        description="Uploaded through the web app.",
        guid=f"upload:{staged.sha256}",
    )
    storage.write_json(files.episode, dump(episode))
    # Last: only a registered upload is linked to episodes (audio_fingerprint recomputes a
    # fingerprint an interruption left unwritten).
    store_fingerprint(storage, key, fp, staged.sha256)
    return Registered(key, linked=False, stored=True)
