"""Download an episode's audio safely: stream, resume, verify, rename atomically.

Podcast CDNs drop connections and sometimes answer an audio URL with an HTML page: bytes go
to a hidden ``.part`` file renamed only when whole, and non-audio is refused with a message
that names the episode. Size and sha256 are recorded so that re-runs can reuse the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import requests

from twiml_assets import http_policy
from twiml_assets.http_policy import media_type
from twiml_assets.keys import sha256_file
from twiml_assets.layout import AUDIO_DIR, EpisodeFiles

if TYPE_CHECKING:
    from resources.storage import StorageResource

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
NON_AUDIO_TYPES = tuple(
    "text/ image/ application/json application/xml application/xhtml application/rss "
    "application/atom application/javascript".split()
)
# Stored extension → the media type it is served with (the web player), then the other
# types servers send for it. A type listed twice is stored as the first extension.
AUDIO_TYPES = {
    ".mp3": "audio/mpeg audio/mp3 audio/mpeg3 audio/x-mpeg",
    ".m4a": "audio/mp4 audio/x-m4a audio/m4a",
    ".mp4": "audio/mp4 video/mp4",
    ".aac": "audio/aac audio/x-aac",
    ".wav": "audio/wav audio/x-wav audio/wave",
    ".flac": "audio/flac audio/x-flac",
    ".ogg": "audio/ogg application/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg audio/opus",
    ".webm": "audio/webm",
}
MEDIA_TYPES = {ext: types.split()[0] for ext, types in AUDIO_TYPES.items()}
EXTENSIONS = {mime: ext for ext, types in reversed(AUDIO_TYPES.items()) for mime in types.split()}
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")

ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes on disk, expected total or None)."""


class DownloadError(RuntimeError):
    """The audio could not be downloaded; the message names the episode and what to do.

    ``transient``: a later try may succeed (5xx, timeouts, a cut connection); otherwise the
    URL or the file itself is wrong and only a person can fix it.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class NotAudioError(DownloadError):
    """The server answered with something that is not audio (an HTML page, JSON, …)."""


@dataclass(slots=True)
class DownloadResult:
    """What was downloaded, for the asset's metadata and the ``audio/{key}.json`` sidecar."""

    url: str
    path: str
    size: int = 0
    sha256: str = ""
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    attempts: int = 0
    resumed: bool = False
    seconds: float = 0.0

    def sidecar(self, key: str, rel: str, downloaded_at: str | None = None) -> dict[str, Any]:
        """The ``audio/{key}.json`` record, ``rel`` being the audio's path in storage."""
        stamp = downloaded_at or datetime.now(UTC).isoformat(timespec="seconds")
        return {**asdict(self), "path": rel, "key": key, "downloaded_at": stamp}


def audio_extension(url: str, content_type: str | None = None) -> str:
    """File extension for the stored audio: from the URL path, else the MIME type, else .mp3."""
    suffix = Path(urlparse(url).path).suffix.lower()
    return suffix if suffix in AUDIO_TYPES else EXTENSIONS.get(media_type(content_type), ".mp3")


def is_audio_of(rel: str, key: str) -> bool:
    """``rel`` is ``audio/{key}<audio ext>``: not the sidecar, not the audio of a longer key."""
    prefix = EpisodeFiles(key).audio("")
    return rel.startswith(prefix) and rel[len(prefix) :] in AUDIO_TYPES


def audio_files(storage: StorageResource, key: str) -> list[str]:
    """The stored audio of one episode (normally one file)."""
    return [rel for rel in storage.list(AUDIO_DIR) if is_audio_of(rel, key)]


def sniff_not_audio(head: bytes) -> str | None:
    """A description of what ``head`` is when it is clearly not audio, else None."""
    text = head[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if text.startswith((b"<?xml", b"<rss", b"<feed")):
        return "an XML document"
    if text.startswith((b"{", b"[")) and b"\x00" not in text:
        return "a JSON document"
    return None


def part_paths(dest: Path) -> tuple[Path, Path]:
    """Hidden ``.{name}.part`` (bytes so far) and its ``.json`` state (URL and validators)."""
    part = dest.with_name(f".{dest.name}.part")
    return part, part.with_name(part.name + ".json")


@dataclass
class Downloader:
    """Streams one URL to one destination; ``download_audio`` is the usual entry point.

    The session (:mod:`twiml_assets.http_policy`) retries failed requests; this class adds
    the outer loop that continues a partial file with ``Range``/``If-Range`` after a
    connection drops mid-body, or restarts it when the server cannot resume.
    """

    url: str
    dest: Path
    _: KW_ONLY
    label: str | None = None
    timeout: float | tuple[float, float] = http_policy.DEFAULT_TIMEOUT
    retries: int = 4
    backoff: float = 1.0
    chunk_size: int = CHUNK_SIZE
    progress: ProgressCallback | None = None

    def __post_init__(self) -> None:
        self.label = self.label or self.dest.stem
        self.session = http_policy.session(retries=self.retries, backoff=self.backoff)
        self.part, self.state_path = part_paths(self.dest)
        # Filled in as the download goes; ``attempts`` counts the session's retries too.
        self.result = DownloadResult(self.url, str(self.dest))

    def run(self) -> DownloadResult:
        if urlparse(self.url).scheme not in {"http", "https"}:
            raise DownloadError(
                f"{self.label}: unsupported audio URL {self.url!r} (only http/https); "
                "check the feed's <enclosure>"
            )
        started = time.perf_counter()
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(self.retries + 1):
            try:
                interrupted = self._attempt()
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                # The body stopped mid-way (the session retries only up to the headers).
                interrupted = http_policy.describe(exc).what
            if not interrupted:
                return self._finish(time.perf_counter() - started)
            log.warning(
                "%s: download interrupted (%s); continuing with %d bytes kept",
                self.label,
                interrupted,
                self._part_size(),
            )
        raise self._error(interrupted)

    def _attempt(self) -> str:
        """One GET, streamed into the part file; why it stopped short, or "" when complete."""
        offset, validator = self._resume_point()
        headers = {"Accept": "audio/*, */*;q=0.5"}
        if offset:
            headers |= {"Range": f"bytes={offset}-", "If-Range": validator}
        try:
            resp = self.session.get(self.url, headers=headers, timeout=self.timeout, stream=True)
        except requests.RequestException as exc:  # the session's retries are spent
            self.result.attempts += self.retries + 1
            raise self._error(http_policy.describe(exc)) from exc
        with resp:
            result, status = self.result, resp.status_code
            content_type = resp.headers.get("Content-Type")
            result.attempts += http_policy.attempts(resp)
            if status == 416 and offset:  # our partial file does not fit the current object
                self._discard_part()
                return "HTTP 416 on resume; restarting from zero"
            if status >= 400:
                raise self._error(http_policy.describe(resp))
            if media_type(content_type).startswith(NON_AUDIO_TYPES):
                raise NotAudioError(
                    f"{self.label}: {self.url} is not audio (HTTP {status}, Content-Type "
                    f"{content_type}); the enclosure may point at a web page or need a login. "
                    "Check the episode's <enclosure> URL in the feed"
                )
            if status == 206 and offset:
                start, total = _content_range(resp.headers.get("Content-Range"))
                if start != offset:
                    self._discard_part()
                    return f"server resumed at byte {start}, not {offset}"
                result.resumed = True
            else:  # 200: the whole body (the server ignored Range, or the object changed)
                offset = 0
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            result.content_type = content_type
            result.etag = resp.headers.get("ETag")
            result.last_modified = resp.headers.get("Last-Modified")
            if not offset:  # a fresh part file: what it is a part of, for resuming it
                state = {k: getattr(result, k) for k in ("url", "etag", "last_modified")}
                self.state_path.write_text(json.dumps(state))
            written = self._stream(resp, offset, total)
        if total is not None and written < total:
            return f"connection closed at {written} of {total} bytes"
        if written == 0:
            self._discard_part()
            raise DownloadError(
                f"{self.label}: {self.url} returned an empty body (0 bytes); the enclosure is "
                "broken, check it in a browser"
            )
        return ""

    def _stream(self, resp: requests.Response, offset: int, total: int | None) -> int:
        """Append after ``offset`` bytes (0: start the part file afresh); bytes on disk."""
        written = offset
        with self.part.open("ab" if offset else "wb") as fh:
            for chunk in resp.iter_content(chunk_size=self.chunk_size):
                if not chunk:
                    continue
                if not written and (what := sniff_not_audio(chunk)):  # first bytes: audio at all?
                    self._discard_part()
                    raise NotAudioError(
                        f"{self.label}: {self.url} returned {what} instead of audio (Content-Type "
                        f"{resp.headers.get('Content-Type')}); the enclosure URL is broken or "
                        "redirects to a web page. Check it in a browser; nothing was saved"
                    )
                fh.write(chunk)
                written += len(chunk)
                if self.progress is not None:
                    self.progress(written, total)
            fh.flush()
            os.fsync(fh.fileno())
        return written

    def _resume_point(self) -> tuple[int, str]:
        """Bytes kept and their If-Range validator: only for a partial file of this URL."""
        size = self._part_size()
        if not size:
            return 0, ""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            state = {}
        validator = state.get("etag") or state.get("last_modified")
        if state.get("url") != self.url or not validator:
            self._discard_part()
            return 0, ""
        return size, validator

    def _part_size(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def _discard_part(self) -> None:
        self.part.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)

    def _finish(self, seconds: float) -> DownloadResult:
        self.result.size = self.part.stat().st_size
        self.result.sha256 = sha256_file(self.part)
        self.result.seconds = round(seconds, 3)
        os.replace(self.part, self.dest)
        self.state_path.unlink(missing_ok=True)
        return self.result

    def _error(self, failure: http_policy.Failure | str) -> DownloadError:
        if isinstance(failure, http_policy.Failure) and not failure.transient:
            return DownloadError(
                f"{self.label}: downloading {self.url} failed with {failure}; re-materialise "
                "episode_metadata (it re-reads the feed for the current URL), then raw_audio"
            )
        return DownloadError(
            f"{self.label}: could not download {self.url} after {self.result.attempts} "
            f"attempts ({failure}). {self._part_size()} bytes are kept in {self.part.name} and "
            "the next run resumes from there; re-materialise raw_audio for this episode later",
            transient=True,
        )


def download_audio(url: str, dest: str | Path, **kwargs: Any) -> DownloadResult:
    """Download ``url`` to ``dest`` atomically (see :class:`Downloader` for the options)."""
    return Downloader(url, Path(dest), **kwargs).run()


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    match = _CONTENT_RANGE.match(header or "")
    if not match:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (int(total) if total.isdigit() else None)
