"""Where reference transcripts come from: the one lookup that checks, evaluation and comparison use.

Two sources, in this order:

1. Files someone put there: ``{key}.<fmt>`` or ``{n}.<fmt>`` (``n`` the episode number, the
   RAG pipeline's naming) in the configured references directory (``QualityResource.
   references_root``, env ``TWIML_REFERENCES_DIR``) and in the storage root's ``references/``.
   Both are searched because the second is also where downloaded transcripts land, whatever
   the first is set to.
2. The publisher's own transcript, the Podcasting 2.0 ``<podcast:transcript>`` tag of the feed
   item (``EpisodeInfo.transcript_url``), downloaded *once* into ``references/{key}.<ext>`` in
   storage with a ``references/{key}.source.json`` sidecar (URL, format, outcome), so later
   runs read the stored copy and an unusable transcript is not fetched again and again.

Formats: everything ``evaluation.references`` reads, plus the Podcasting 2.0 JSON transcript
(``{"segments": [{"speaker", "startTime", "endTime", "body"}]}``), loaded here. HTML
transcripts are stored as plain text (``.txt``), since only their words are usable.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests

from evaluation.references import (
    UNKNOWN_SPEAKER,
    Reference,
    ReferenceFormatError,
    load_reference,
)
from resources.schema import Utterance
from resources.storage import StorageResource
from twiml_assets.feed import USER_AGENT
from twiml_assets.keys import rag_stem

log = logging.getLogger(__name__)

#: Reference file endings, best first: richer formats (text + speakers + times) win ties.
REFERENCE_SUFFIXES: tuple[str, ...] = (
    "corrected.json",
    "stm",
    "rttm",
    "json",
    "srt",
    "vtt",
    "md",
    "txt",
    "text",
)
STORAGE_DIR = "references"
SIDECAR_SUFFIX = ".source.json"
MAX_TRANSCRIPT_BYTES = 20 * 1024 * 1024
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)


# -- lookup -----------------------------------------------------------------------------------
def _suffix_of(name: str, stems: Iterable[str]) -> str | None:
    """The reference suffix of ``name`` for one of ``stems``, or None when it is not one."""
    if name.endswith(".speakers.json") or name.endswith(SIDECAR_SUFFIX):
        return None
    for stem in stems:
        if name.startswith(stem + "."):
            rest = name[len(stem) + 1 :]
            if rest in REFERENCE_SUFFIXES:
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
    if references_root:
        root = Path(references_root).expanduser()
        if root.is_dir():
            for p in root.iterdir():
                suffix = _suffix_of(p.name, stems) if p.is_file() else None
                if suffix is not None:
                    found.append((0, REFERENCE_SUFFIXES.index(suffix), p.name, p))
    for rel in storage.list(STORAGE_DIR):
        name = rel[len(STORAGE_DIR) + 1 :]
        suffix = None if "/" in name else _suffix_of(name, stems)
        if suffix is not None:
            found.append((1, REFERENCE_SUFFIXES.index(suffix), name, storage.local_path(rel)))
    unique: dict[Path, Path] = {}
    for *_, path in sorted(found):
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


# -- loading ----------------------------------------------------------------------------------
def load_podcast_json(path: str | Path) -> Reference:
    """A Podcasting 2.0 JSON transcript: ``{"segments": [{speaker, startTime, endTime, body}]}``.

    One utterance per segment (publishers often emit one segment per word; the metrics
    merge a speaker's abutting turns themselves). ``speaker`` is optional in the spec: a
    file with none gives WER only.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReferenceFormatError(path, f"invalid JSON ({exc})") from exc
    segments = data.get("segments") if isinstance(data, dict) else None
    if not isinstance(segments, list):
        raise ReferenceFormatError(path, "expected a Podcasting 2.0 object with 'segments'")
    utterances: list[Utterance] = []
    timed = True
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict) or "body" not in seg:
            raise ReferenceFormatError(path, f"segment {i} is not an object with 'body'")
        try:
            start = float(seg.get("startTime", 0.0))
            end = float(seg.get("endTime", start))
        except (TypeError, ValueError) as exc:
            raise ReferenceFormatError(path, f"segment {i}: bad startTime/endTime") from exc
        timed = timed and "startTime" in seg and "endTime" in seg
        speaker = str(seg.get("speaker") or "").strip() or UNKNOWN_SPEAKER
        text = " ".join(str(seg["body"]).split())
        utterances.append(Utterance(speaker, start, end, text_override=text))
    if not utterances:
        raise ReferenceFormatError(path, "no transcript segments")
    return Reference(
        utterances=utterances,
        has_speakers=any(u.speaker != UNKNOWN_SPEAKER for u in utterances),
        has_timestamps=timed,
        has_words=False,
        source=str(path),
        format="podcast-json",
    )


def _is_podcast_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "segments" in data and "dialogs" not in data


def load_reference_file(path: str | Path) -> Reference:
    """Any supported reference: Podcasting 2.0 JSON here, the rest by ``load_reference``."""
    path = Path(path)
    if path.suffix.lower() == ".json" and _is_podcast_json(path):
        return load_podcast_json(path)
    return load_reference(path)


def load_references(paths: Iterable[Path]) -> tuple[list[tuple[Path, Reference]], list[str]]:
    """Load what can be loaded; the rest become ``"name: reason"`` lines (never an exception).

    A broken reference must not fail an episode: it is reported in metadata instead.
    """
    loaded: list[tuple[Path, Reference]] = []
    errors: list[str] = []
    for path in paths:
        try:
            loaded.append((path, load_reference_file(path)))
        except (ValueError, OSError) as exc:
            errors.append(f"{path.name}: {exc}")
    return loaded, errors


# -- the feed's <podcast:transcript> ----------------------------------------------------------
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


def sidecar_path(key: str) -> str:
    return f"{STORAGE_DIR}/{key}{SIDECAR_SUFFIX}"


_SRT_START = re.compile(r"^\s*\d+\s*\r?\n\s*\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}\s*-->")
_TYPE_FORMATS = {
    "text/vtt": "vtt",
    "application/x-subrip": "srt",
    "application/srt": "srt",
    "text/srt": "srt",
    "application/json": "json",
    "text/json": "json",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/plain": "txt",
}
_URL_FORMATS = {
    ".vtt": "vtt",
    ".srt": "srt",
    ".json": "json",
    ".html": "html",
    ".htm": "html",
    ".txt": "txt",
}


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

    BLOCKS = {
        "p",
        "div",
        "br",
        "li",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "tr",
        "section",
        "article",
        "blockquote",
        "dt",
        "dd",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head") and self.skip:
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
    with requests.get(
        url, timeout=timeout, stream=True, headers={"User-Agent": USER_AGENT}
    ) as response:
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
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    max_bytes: int = MAX_TRANSCRIPT_BYTES,
    force: bool = False,
) -> FeedTranscript:
    """Download the publisher's transcript into ``references/{key}.<ext>``, once.

    A previous outcome for the same URL (stored file, or a format we cannot use) is
    returned without a request. Network errors are returned as ``failed`` and *not*
    recorded, so a later run tries again; the caller decides whether to log them.
    """
    side = sidecar_path(key)
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
    result.format, result.path = fmt, f"{STORAGE_DIR}/{key}.{ext}"
    storage.write_bytes(result.path, data)
    try:
        load_reference_file(storage.local_path(result.path))
    except (ValueError, OSError) as exc:
        storage.delete(result.path)
        result.status, result.path, result.message = "unsupported", None, str(exc)
    storage.write_json(side, result.to_dict())
    return result


def resolve_references(
    storage: StorageResource,
    key: str,
    references_root: str | None = None,
    transcript_url: str | None = None,
    *,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[Path], FeedTranscript | None]:
    """References of an episode, fetching the feed's transcript when there is nothing else.

    Files someone provided take precedence over the publisher's transcript, which is
    therefore only downloaded for episodes without one.
    """
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
