"""Download an episode's audio safely: stream, resume, verify, rename atomically.

Podcast CDNs drop connections, rate-limit, and sometimes answer an audio URL with an
HTML page. An episode download must therefore (1) never leave a half file where a
reader expects a whole one (stream to a hidden ``.part`` file, rename at the end),
(2) survive interruptions (the shared HTTP policy retries failed requests; a body cut
off mid-way is continued with ``Range``/``If-Range`` when the server allows it, otherwise
restarted), (3) refuse non-audio with a message that names the episode, and (4) record
size and sha256 so re-runs can reuse the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from twiml_assets import http_policy

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
NON_AUDIO_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/xhtml",
    "application/rss",
    "application/atom",
    "application/javascript",
    "image/",
)
EXTENSIONS = {
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/mpeg3": ".mp3",
    "audio/x-mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/m4a": ".m4a",
    "audio/aac": ".aac",
    "audio/x-aac": ".aac",
    "video/mp4": ".mp4",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
    "application/ogg": ".ogg",
    "audio/opus": ".opus",
    "audio/webm": ".webm",
}
#: Stored audio extension → the media type it is served with (the web player, downloads).
MEDIA_TYPES = {
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".mp4": "audio/mp4",
    ".aac": "audio/aac",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".webm": "audio/webm",
}
KNOWN_SUFFIXES = set(MEDIA_TYPES)
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")

ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes on disk, expected total or None)."""


class DownloadError(RuntimeError):
    """The audio could not be downloaded; the message names the episode and what to do."""


class NotAudioError(DownloadError):
    """The server answered with something that is not audio (an HTML page, JSON, …)."""


@dataclass(slots=True)
class DownloadResult:
    """What was downloaded, for the asset's metadata and the ``audio/{key}.json`` sidecar."""

    url: str
    path: str
    size: int
    sha256: str
    content_type: str | None
    etag: str | None
    last_modified: str | None
    attempts: int
    resumed: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def audio_extension(url: str, content_type: str | None = None) -> str:
    """File extension for the stored audio: from the URL path, else the MIME type, else .mp3."""
    suffix = Path(urlparse(url).path).suffix.lower()
    if suffix in KNOWN_SUFFIXES:
        return suffix
    mime = (content_type or "").split(";")[0].strip().lower()
    return EXTENSIONS.get(mime, ".mp3")


def looks_like_audio_type(content_type: str | None) -> bool:
    """False only for types that are clearly not audio; unknown/octet-stream is sniffed."""
    mime = (content_type or "").split(";")[0].strip().lower()
    return not any(mime.startswith(prefix) for prefix in NON_AUDIO_TYPES)


def sniff_not_audio(head: bytes) -> str | None:
    """A description of what ``head`` is when it is clearly not audio, else None."""
    text = head[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if text.startswith(b"<?xml") or text.startswith(b"<rss") or text.startswith(b"<feed"):
        return "an XML document"
    if text.startswith((b"{", b"[")) and b"\x00" not in text:
        return "a JSON document"
    return None


def sha256_file(path: Path, chunk: int = CHUNK_SIZE) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def part_paths(dest: Path) -> tuple[Path, Path]:
    """Hidden ``.{name}.part`` (bytes so far) and its ``.json`` state (URL and validators)."""
    part = dest.with_name(f".{dest.name}.part")
    return part, part.with_name(part.name + ".json")


class Downloader:
    """Streams one URL to one destination; ``download_audio`` is the usual entry point.

    The session (:mod:`twiml_assets.http_policy`) retries failed requests; this class adds
    the outer loop that continues a partial file after a connection drops mid-body.
    """

    def __init__(
        self,
        url: str,
        dest: Path,
        *,
        label: str | None = None,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = http_policy.DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff: float = 1.0,
        chunk_size: int = CHUNK_SIZE,
        progress: ProgressCallback | None = None,
    ):
        self.url = url
        self.dest = Path(dest)
        self.label = label or self.dest.stem
        self.session = session or http_policy.session(retries=retries, backoff=backoff)
        self.timeout = timeout
        self.retries = retries
        self.chunk_size = chunk_size
        self.progress = progress
        self.part, self.state_path = part_paths(self.dest)
        self.content_type: str | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.resumed = False
        self.attempts = 0
        """HTTP requests made, the session's retries included."""

    # -- public ---------------------------------------------------------------------------
    def run(self) -> DownloadResult:
        scheme = urlparse(self.url).scheme
        if scheme not in {"http", "https"}:
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

    # -- one attempt ----------------------------------------------------------------------
    def _attempt(self) -> str:
        """One GET, streamed into the part file; why it stopped short, or "" when complete."""
        offset = self._resume_offset()
        headers = {"Accept": "audio/*, */*;q=0.5"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            validator = self._state().get("etag") or self._state().get("last_modified")
            if validator:
                headers["If-Range"] = validator
        try:
            resp = self.session.get(self.url, headers=headers, timeout=self.timeout, stream=True)
        except requests.RequestException as exc:  # the session's retries are spent
            self.attempts += self.retries + 1
            raise self._error(http_policy.describe(exc)) from exc
        with resp:
            self.attempts += http_policy.attempts(resp)
            status = resp.status_code
            if status == 416 and offset:
                # Our partial file does not fit the current object: start again.
                self._discard_part()
                return "HTTP 416 on resume; restarting from zero"
            if status >= 400:
                raise self._error(http_policy.describe(resp))
            self._check_type(resp.headers.get("Content-Type"), status)
            if status == 206 and offset:
                start, total = _content_range(resp.headers.get("Content-Range"))
                if start != offset:
                    self._discard_part()
                    return f"server resumed at byte {start}, not {offset}"
                mode = "ab"
                self.resumed = True
            else:
                # 200: full body (the server ignored Range, or the object changed).
                offset = 0
                mode = "wb"
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            self.content_type = resp.headers.get("Content-Type")
            self.etag = resp.headers.get("ETag")
            self.last_modified = resp.headers.get("Last-Modified")
            if mode == "wb":
                self._save_state()
            written = self._stream(resp, mode, offset, total)
        if total is not None and written < total:
            return f"connection closed at {written} of {total} bytes"
        if written == 0:
            self._discard_part()
            raise DownloadError(
                f"{self.label}: {self.url} returned an empty body (0 bytes); the enclosure is "
                "broken, check it in a browser"
            )
        return ""

    def _stream(self, resp: requests.Response, mode: str, offset: int, total: int | None) -> int:
        written = offset
        first = mode == "wb"
        with self.part.open(mode) as fh:
            for chunk in resp.iter_content(chunk_size=self.chunk_size):
                if not chunk:
                    continue
                if first:
                    self._check_head(chunk, resp.headers.get("Content-Type"))
                    first = False
                fh.write(chunk)
                written += len(chunk)
                if self.progress is not None:
                    self.progress(written, total)
            fh.flush()
            os.fsync(fh.fileno())
        return written

    # -- checks ---------------------------------------------------------------------------
    def _check_type(self, content_type: str | None, status: int) -> None:
        if not looks_like_audio_type(content_type):
            raise NotAudioError(
                f"{self.label}: {self.url} is not audio (HTTP {status}, Content-Type "
                f"{content_type}); the enclosure may point at a web page or need a login. "
                "Check the episode's <enclosure> URL in the feed"
            )

    def _check_head(self, head: bytes, content_type: str | None) -> None:
        what = sniff_not_audio(head)
        if what:
            self._discard_part()
            raise NotAudioError(
                f"{self.label}: {self.url} returned {what} instead of audio (Content-Type "
                f"{content_type}); the enclosure URL is broken or redirects to a web page. "
                "Check it in a browser; nothing was saved"
            )

    # -- state ----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        state = {"url": self.url, "etag": self.etag, "last_modified": self.last_modified}
        self.state_path.write_text(json.dumps(state))

    def _part_size(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def _resume_offset(self) -> int:
        """Bytes to resume from: only if the partial file is for this URL and has a validator."""
        size = self._part_size()
        if not size:
            return 0
        state = self._state()
        if state.get("url") != self.url or not (state.get("etag") or state.get("last_modified")):
            self._discard_part()
            return 0
        return size

    def _discard_part(self) -> None:
        self.part.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)

    def _finish(self, seconds: float) -> DownloadResult:
        size = self.part.stat().st_size
        digest = sha256_file(self.part)
        os.replace(self.part, self.dest)
        self.state_path.unlink(missing_ok=True)
        return DownloadResult(
            url=self.url,
            path=str(self.dest),
            size=size,
            sha256=digest,
            content_type=self.content_type,
            etag=self.etag,
            last_modified=self.last_modified,
            attempts=self.attempts,
            resumed=self.resumed,
            seconds=round(seconds, 3),
        )

    def _error(self, failure: http_policy.Failure | str) -> DownloadError:
        if isinstance(failure, http_policy.Failure) and not failure.transient:
            return DownloadError(
                f"{self.label}: downloading {self.url} failed with {failure}; re-materialise "
                "episode_metadata (it re-reads the feed for the current URL), then raw_audio"
            )
        return DownloadError(
            f"{self.label}: could not download {self.url} after {self.attempts} attempts "
            f"({failure}). {self._part_size()} bytes are kept in {self.part.name} and the next "
            "run resumes from there; re-materialise raw_audio for this episode later"
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
