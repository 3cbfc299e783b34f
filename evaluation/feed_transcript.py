"""The publisher's transcript (the feed item's ``<podcast:transcript>``) as a reference.

Downloaded once into ``references/{key}.<ext>`` with a ``references/{key}.source.json``
sidecar (URL, format, outcome), so later runs read the stored copy and an unusable
transcript is not fetched again and again. HTML transcripts are stored as plain text
(``.txt``), since only their words are usable.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests

from evaluation.loaders import load_reference
from resources.storage import StorageResource
from twiml_assets import http_policy
from twiml_assets.layout import EpisodeFiles

MAX_TRANSCRIPT_BYTES = 20 * 1024 * 1024


@dataclass(slots=True)
class FeedTranscript:
    """Outcome of fetching an episode's publisher transcript (also the sidecar's content)."""

    url: str
    status: str
    """``fetched`` (stored now), ``stored`` (an earlier fetch), ``unsupported``, ``failed``."""
    format: str | None = None
    path: str | None = None
    content_type: str | None = None
    bytes: int = 0
    message: str = ""
    fetched_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SRT_START = re.compile(r"^\s*\d+\s*\r?\n\s*\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}\s*-->")
_MIME_TYPES = {
    "vtt": "text/vtt",
    "srt": "application/x-subrip application/srt text/srt",
    "json": "application/json text/json",
    "html": "text/html application/xhtml+xml",
    "txt": "text/plain",
}
_TYPE_FORMATS = {mime: fmt for fmt, mimes in _MIME_TYPES.items() for mime in mimes.split()}
_URL_FORMATS = {f".{fmt}": fmt for fmt in _MIME_TYPES} | {".htm": "html"}


def detect_format(content_type: str | None, url: str, body: bytes) -> str | None:
    """``srt``, ``vtt``, ``json``, ``html`` or ``txt``, from the content, type and URL.

    The content decides first where it is unambiguous, because servers often send
    subtitles as ``text/plain`` or ``application/octet-stream``.
    """
    head = body[:2048].decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if head.startswith("WEBVTT"):
        return "vtt"
    if _SRT_START.match(head):
        return "srt"
    if head.startswith("{"):
        return "json"
    if head[:15].lower().startswith(("<!doctype html", "<html", "<body", "<p", "<div")):
        return "html"
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime in _TYPE_FORMATS:
        return _TYPE_FORMATS[mime]
    return _URL_FORMATS.get(Path(urlparse(url).path).suffix.lower())


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page, one line per block element; scripts and styles dropped."""

    BLOCKS = frozenset("p div br li h1 h2 h3 h4 h5 h6 tr section article blockquote dt dd".split())
    HIDDEN = ("script", "style", "head")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN and self.skip:
            self.skip -= 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:  # line breaks inside HTML text are plain spaces
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """Plain text of an HTML transcript: one non-blank line per paragraph."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line) + "\n"


def _get(url: str, timeout: tuple[float, float], max_bytes: int) -> tuple[bytes, str | None]:
    """The body and content type at ``url`` (http(s) or file), at most ``max_bytes``."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(url2pathname(parsed.path))
        if path.stat().st_size > max_bytes:
            raise ValueError(f"larger than {max_bytes} bytes")
        return path.read_bytes(), None
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {parsed.scheme!r}")
    with http_policy.session(timeout=timeout) as http, http.get(url, stream=True) as response:
        response.raise_for_status()
        body = bytearray()
        for chunk in response.iter_content(1 << 16):
            body.extend(chunk)
            if len(body) > max_bytes:
                raise ValueError(f"larger than {max_bytes} bytes")
        return bytes(body), response.headers.get("Content-Type")


def _decode(body: bytes, content_type: str | None) -> str:
    match = re.search(r"charset=([\w-]+)", content_type or "", re.IGNORECASE)
    try:
        return body.decode(match.group(1) if match else "utf-8-sig", errors="replace")
    except LookupError:  # an unknown charset name
        return body.decode("utf-8", errors="replace")


def fetch_feed_transcript(
    storage: StorageResource,
    key: str,
    url: str,
    *,
    timeout: tuple[float, float] = http_policy.DEFAULT_TIMEOUT,
    max_bytes: int = MAX_TRANSCRIPT_BYTES,
    force: bool = False,
) -> FeedTranscript:
    """Download the publisher's transcript into ``references/{key}.<ext>``, once.

    A previous outcome for the same URL (stored file, or a format we cannot use) is
    returned without a request. Network errors are returned as ``failed`` and *not*
    recorded, so a later run tries again; the caller decides whether to log them.
    """
    side = EpisodeFiles(key).reference_sidecar
    if not force and storage.exists(side):
        previous = FeedTranscript(**storage.read_json(side))
        if previous.url == url and (
            previous.status == "unsupported" or (previous.path and storage.exists(previous.path))
        ):
            if previous.status == "fetched":
                previous.status = "stored"
            return previous
    now = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        body, content_type = _get(url, timeout, max_bytes)
    except (requests.RequestException, OSError, ValueError) as exc:
        return FeedTranscript(url, "failed", message=f"{type(exc).__name__}: {exc}", fetched_at=now)

    result = FeedTranscript(
        url, "fetched", content_type=content_type, bytes=len(body), fetched_at=now
    )
    fmt = detect_format(content_type, url, body)
    if fmt is None:
        result.status, result.message = "unsupported", f"unknown transcript type {content_type!r}"
        storage.write_json(side, result.to_dict())
        return result
    data = html_to_text(_decode(body, content_type)).encode() if fmt == "html" else body
    ext = "txt" if fmt == "html" else fmt
    result.format, result.path = fmt, EpisodeFiles(key).reference(ext)
    storage.write_bytes(result.path, data)
    try:
        load_reference(storage.local_path(result.path))
    except (ValueError, OSError) as exc:
        storage.delete(result.path)
        result.status, result.path, result.message = "unsupported", None, str(exc)
    storage.write_json(side, result.to_dict())
    return result
