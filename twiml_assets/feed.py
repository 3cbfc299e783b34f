"""The podcast feed: HTTP fetch with conditional requests, fast parsing, and episode keys.

Every Dagster partition is an episode key derived here (DESIGN.md, "Episode keys"), so
the rules must be stable: the same entry gets the same key on every tick, even as the
feed grows. Parsing uses ElementTree (an 800-entry feed parses in tens of milliseconds;
feedparser takes seconds) and falls back to feedparser only for XML that is not
well-formed. One bad entry is skipped with a reason and never fails the whole feed.
"""

from __future__ import annotations

import hashlib
import html
import logging
import random
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
from dagster import ConfigurableResource
from pydantic import Field

from twiml_assets.keys import rag_stem, validate_key

__all__ = [
    "DEFAULT_FEED_URL",
    "EpisodeInfo",
    "FeedError",
    "FeedResource",
    "FeedResponse",
    "ParsedFeed",
    "SkippedEntry",
    "episode_key",
    "parse_feed",
    "rag_stem",
]

log = logging.getLogger(__name__)

DEFAULT_FEED_URL = "https://feeds.megaphone.fm/MLN2155636147"
USER_AGENT = "twiml-transcribe/0.1 (podcast transcription; +https://twimlai.com)"

NS = {
    "itunes": "http://www.itunes.com/dtds/podcast-1.0.dtd",
    "content": "http://purl.org/rss/1.0/modules/content/",
    "atom": "http://www.w3.org/2005/Atom",
    "podcast": "https://podcastindex.org/namespace/1.0",
    "media": "http://search.yahoo.com/mrss/",
    "dc": "http://purl.org/dc/elements/1.1/",
}


def _q(prefix: str, name: str) -> str:
    """ElementTree's qualified name: ``{namespace-uri}name``."""
    return "{" + NS[prefix] + "}" + name


_ITUNES = _q("itunes", "")
_ATOM = _q("atom", "")

_TITLE_NUMBER = re.compile(r"#\s*(\d{1,6})\b")
_TITLE_PART = re.compile(r"\(\s*(\d{1,3})\s*/\s*\d{1,3}\s*\)")
_TWIML_LINK = re.compile(r"twimlai\.com/(?:talk|go)/(\d{1,6})\b", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
_AUDIO_EXT = re.compile(r"\.(mp3|m4a|aac|mp4|wav|flac|ogg|oga|opus|webm)(?:$|\?)", re.IGNORECASE)


class FeedError(RuntimeError):
    """The feed could not be fetched or is not an RSS/Atom feed; the message says what to do."""


# -- data model -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EpisodeInfo:
    """One published episode, everything a run needs from the partition key alone."""

    key: str
    number: str | None
    title: str
    audio_url: str
    audio_type: str | None = None
    audio_length: int | None = None
    published: str | None = None
    """ISO 8601 (UTC) publication time, or None when the feed's date is missing/unreadable."""
    description: str = ""
    guid: str | None = None
    link: str | None = None
    transcript_url: str | None = None
    """Podcasting 2.0 ``<podcast:transcript>`` (a publisher transcript: a possible reference)."""
    author: str | None = None
    duration: float | None = None
    """``itunes:duration`` in seconds, when given."""
    position: int = 0
    """Index in the feed document (0 = first entry), the tie-breaker for ordering."""

    @property
    def rag_stem(self) -> str:
        return rag_stem(self.key)

    @property
    def published_at(self) -> datetime | None:
        return datetime.fromisoformat(self.published) if self.published else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeInfo:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def info_json(self) -> dict[str, Any]:
        """``info/{n}.info.json`` for the RAG pipeline (DESIGN.md: the RSS fields)."""
        return {
            "episode": self.number if self.number is not None else self.key,
            "key": self.key,
            "title": self.title,
            "url": self.audio_url,
            "description": self.description,
            "published": self.published,
            "link": self.link,
            "guid": self.guid,
            "author": self.author,
        }


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """An entry that could not become an episode, and why (logged, shown in Dagster)."""

    position: int
    title: str | None
    reason: str


@dataclass(slots=True)
class ParsedFeed:
    title: str | None
    link: str | None
    episodes: list[EpisodeInfo]
    skipped: list[SkippedEntry] = field(default_factory=list)
    parser: str = "etree"

    def by_key(self) -> dict[str, EpisodeInfo]:
        return {e.key: e for e in self.episodes}

    def ordered(self, newest_first: bool = True) -> list[EpisodeInfo]:
        return order_episodes(self.episodes, newest_first=newest_first)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "link": self.link,
            "parser": self.parser,
            "episodes": [e.to_dict() for e in self.episodes],
            "skipped": [asdict(s) for s in self.skipped],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParsedFeed:
        return cls(
            title=data.get("title"),
            link=data.get("link"),
            episodes=[EpisodeInfo.from_dict(e) for e in data.get("episodes", [])],
            skipped=[SkippedEntry(**s) for s in data.get("skipped", [])],
            parser=data.get("parser", "etree"),
        )


def order_episodes(episodes: Iterable[EpisodeInfo], newest_first: bool = True) -> list[EpisodeInfo]:
    """Sort by publication time; undated entries keep their feed position (feeds list newest first).

    Python's sort is stable and ISO strings of one time zone sort chronologically.
    """
    oldest_first = sorted(episodes, key=lambda e: (e.published or "", -e.position))
    return oldest_first[::-1] if newest_first else oldest_first


# -- episode keys -----------------------------------------------------------------------------
def guid_key(guid: str) -> str:
    return "g-" + hashlib.sha1(guid.encode("utf-8")).hexdigest()[:12]


def _number(text: str | None) -> str | None:
    """A positive integer as a canonical string (``0623`` → ``623``), else None."""
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return str(value) if value > 0 else None


def episode_key(
    *,
    itunes_episode: str | None,
    title: str | None,
    link: str | None,
    guid: str | None,
) -> tuple[str, str | None]:
    """``(key, number)`` by DESIGN.md's rules, first match wins.

    itunes:episode → ``ep-<n>``; the title's ``#<n>`` (with a ``(N/M)`` part →
    ``ep-<n>.<N>``); a twimlai.com/talk|go/<n> link; else ``g-<sha1(guid)[:12]>``.
    """
    number = _number(itunes_episode)
    if number is None and title:
        match = _TITLE_NUMBER.search(title)
        if match:
            number = _number(match.group(1))
            part = _TITLE_PART.search(title)
            if number is not None and part and int(part.group(1)) > 0:
                number = f"{number}.{int(part.group(1))}"
    if number is None and link:
        match = _TWIML_LINK.search(link)
        if match:
            number = _number(match.group(1))
    if number is not None:
        return f"ep-{number}", number
    if not guid:
        raise ValueError("entry has no episode number and no guid/link/audio URL to key it by")
    return guid_key(guid), None


# -- parsing ----------------------------------------------------------------------------------
@dataclass(slots=True)
class _RawEntry:
    """What both parsers extract from one ``<item>``/``<entry>`` before validation."""

    position: int
    title: str | None = None
    link: str | None = None
    guid: str | None = None
    itunes_episode: str | None = None
    enclosures: list[tuple[str | None, str | None, str | None]] = field(default_factory=list)
    published: str | None = None
    description: str | None = None
    author: str | None = None
    transcript_url: str | None = None
    duration: str | None = None


def clean_text(text: str | None) -> str:
    """HTML description → plain text (what a prompt or a reader wants)."""
    if not text:
        return ""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


def parse_date(text: str | None) -> str | None:
    """RFC 822 (RSS) or ISO 8601 (Atom) → ISO 8601 in UTC; None when unreadable."""
    if not text or not text.strip():
        return None
    text = text.strip()
    parsed: datetime | None = None
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="seconds")


def parse_duration(text: str | None) -> float | None:
    """``itunes:duration``: seconds, ``MM:SS`` or ``HH:MM:SS``."""
    if not text:
        return None
    try:
        total = 0.0
        for part in text.strip().split(":"):
            total = total * 60 + float(part)
        return total if total >= 0 else None
    except ValueError:
        return None


def is_audio_enclosure(url: str | None, mime: str | None) -> bool:
    if not url:
        return False
    if mime:
        mime = mime.lower().split(";")[0].strip()
        if mime.startswith("audio/") or mime in {"video/mp4", "application/ogg"}:
            return True
        if mime not in {"", "application/octet-stream", "binary/octet-stream"}:
            return False
    return bool(_AUDIO_EXT.search(urlparse(url).path + "?"))


def _text(element: ET.Element | None) -> str | None:
    if element is None:
        return None
    text = "".join(element.itertext()).strip()
    return text or None


def _rss_entry(item: ET.Element, position: int) -> _RawEntry:
    raw = _RawEntry(position)
    raw.title = _text(item.find("title")) or _text(item.find(_ITUNES + "title"))
    raw.link = _text(item.find("link"))
    raw.guid = _text(item.find("guid"))
    raw.itunes_episode = _text(item.find(_ITUNES + "episode"))
    raw.enclosures = [
        (e.get("url"), e.get("type"), e.get("length")) for e in item.iter("enclosure")
    ]
    for media in item.iter(_q("media", "content")):
        raw.enclosures.append((media.get("url"), media.get("type"), media.get("fileSize")))
    raw.published = _text(item.find("pubDate")) or _text(item.find(_q("dc", "date")))
    raw.description = (
        _text(item.find("description"))
        or _text(item.find(_ITUNES + "summary"))
        or _text(item.find(_q("content", "encoded")))
    )
    raw.author = _text(item.find(_ITUNES + "author")) or _text(item.find("author"))
    raw.duration = _text(item.find(_ITUNES + "duration"))
    transcripts = list(item.iter(_q("podcast", "transcript")))
    raw.transcript_url = _preferred_transcript([(t.get("url"), t.get("type")) for t in transcripts])
    return raw


def _atom_entry(entry: ET.Element, position: int) -> _RawEntry:
    raw = _RawEntry(position)
    raw.title = _text(entry.find(_ATOM + "title"))
    raw.guid = _text(entry.find(_ATOM + "id"))
    for link in entry.iter(_ATOM + "link"):
        rel = link.get("rel", "alternate")
        if rel == "enclosure":
            raw.enclosures.append((link.get("href"), link.get("type"), link.get("length")))
        elif rel == "alternate" and raw.link is None:
            raw.link = link.get("href")
    raw.itunes_episode = _text(entry.find(_ITUNES + "episode"))
    raw.published = _text(entry.find(_ATOM + "published")) or _text(entry.find(_ATOM + "updated"))
    raw.description = _text(entry.find(_ATOM + "summary")) or _text(entry.find(_ATOM + "content"))
    author = entry.find(_ATOM + "author")
    raw.author = _text(author.find(_ATOM + "name")) if author is not None else None
    raw.duration = _text(entry.find(_ITUNES + "duration"))
    return raw


def _preferred_transcript(candidates: list[tuple[str | None, str | None]]) -> str | None:
    """Prefer timed formats (JSON, VTT, SRT) over HTML/plain text."""
    rank = {"application/json": 0, "text/vtt": 1, "application/x-subrip": 2, "application/srt": 2}
    usable = [(rank.get((t or "").lower(), 9), u) for u, t in candidates if u]
    return min(usable)[1] if usable else None


def _build_episode(raw: _RawEntry) -> EpisodeInfo:
    """Validate one raw entry; raises ValueError with the reason it cannot be used."""
    audio = [
        (u.strip(), t, n) for u, t, n in raw.enclosures if u and is_audio_enclosure(u.strip(), t)
    ]
    if not audio:
        if raw.enclosures:
            kinds = ", ".join(sorted({t or "unknown type" for _, t, _ in raw.enclosures}))
            raise ValueError(f"no audio enclosure (found {kinds})")
        raise ValueError("no audio enclosure")
    url, mime, length = audio[0]
    if urlparse(url).scheme not in {"http", "https", "file"}:
        raise ValueError(f"enclosure URL {url!r} is not http(s)")
    title = (raw.title or "").strip() or None
    guid = raw.guid or raw.link or url
    key, number = episode_key(
        itunes_episode=raw.itunes_episode, title=title, link=raw.link, guid=guid
    )
    validate_key(key)
    try:
        size = int(length) if length and int(length) > 0 else None
    except ValueError:
        size = None
    return EpisodeInfo(
        key=key,
        number=number,
        title=title or f"Untitled episode ({key})",
        audio_url=url,
        audio_type=(mime or "").split(";")[0].strip().lower() or None,
        audio_length=size,
        published=parse_date(raw.published),
        description=clean_text(raw.description),
        guid=raw.guid,
        link=raw.link,
        transcript_url=raw.transcript_url,
        author=raw.author,
        duration=parse_duration(raw.duration),
        position=raw.position,
    )


def _resolve_duplicates(
    episodes: list[EpisodeInfo], skipped: list[SkippedEntry]
) -> list[EpisodeInfo]:
    """Keep keys unique and stable: the oldest entry keeps ``ep-<n>``, later ones get ``g-…``.

    Oldest-first matters: a new episode that reuses a number must not steal the key
    (and the transcripts) of an episode published long ago.
    """
    taken: set[str] = set()
    kept: list[EpisodeInfo] = []
    for episode in order_episodes(episodes, newest_first=False):
        if episode.key in taken:
            alt = guid_key(episode.guid or episode.audio_url)
            if alt in taken:
                skipped.append(
                    SkippedEntry(episode.position, episode.title, f"duplicate of {episode.key}")
                )
                continue
            log.warning("feed entry %r reuses key %s; keyed as %s", episode.title, episode.key, alt)
            episode = EpisodeInfo.from_dict({**episode.to_dict(), "key": alt, "number": None})
        taken.add(episode.key)
        kept.append(episode)
    return sorted(kept, key=lambda e: e.position)


def _finish(
    raws: Iterable[_RawEntry], title: str | None, link: str | None, parser: str
) -> ParsedFeed:
    episodes: list[EpisodeInfo] = []
    skipped: list[SkippedEntry] = []
    for raw in raws:
        try:
            episodes.append(_build_episode(raw))
        except Exception as exc:  # noqa: BLE001 - one bad entry must never fail the feed
            reason = str(exc) or type(exc).__name__
            skipped.append(SkippedEntry(raw.position, raw.title, reason))
    for s in skipped:
        log.warning("skipped feed entry #%d %r: %s", s.position, s.title, s.reason)
    return ParsedFeed(title, link, _resolve_duplicates(episodes, skipped), skipped, parser)


def parse_feed(data: bytes | str) -> ParsedFeed:
    """Parse RSS 2.0 or Atom into episodes; raises FeedError if it is not a feed at all."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    stripped = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped:
        raise FeedError("the feed is empty (0 bytes of XML)")
    try:
        root = ET.fromstring(stripped)
    except ET.ParseError as exc:
        log.warning("feed is not well-formed XML (%s); parsing leniently with feedparser", exc)
        return _parse_with_feedparser(stripped, str(exc))

    if root.tag == "rss" or root.tag.endswith("}RDF"):
        channel = root.find("channel")
        if channel is None:
            raise FeedError("RSS document has no <channel>: not a podcast feed")
        items = channel.findall("item") or root.findall("item")
        raws = (_rss_entry(item, i) for i, item in enumerate(items))
        return _finish(raws, _text(channel.find("title")), _text(channel.find("link")), "etree")
    if root.tag == _ATOM + "feed":
        entries = root.findall(_ATOM + "entry")
        raws = (_atom_entry(entry, i) for i, entry in enumerate(entries))
        link = next((x.get("href") for x in root.findall(_ATOM + "link")), None)
        return _finish(raws, _text(root.find(_ATOM + "title")), link, "etree")
    raise FeedError(
        f"not an RSS or Atom feed (root element <{root.tag}>); check the feed URL points at "
        "the podcast's RSS feed, not a web page"
    )


def _parse_with_feedparser(data: bytes, error: str) -> ParsedFeed:
    import feedparser

    parsed = feedparser.parse(data)
    if not parsed.entries:
        snippet = data[:80].decode("utf-8", "replace").replace("\n", " ")
        raise FeedError(
            f"the feed is not valid RSS/Atom ({error}) and no episodes could be recovered; "
            f"it starts with {snippet!r}. Check the feed URL, or wait for the publisher to fix it"
        )
    raws = []
    for i, entry in enumerate(parsed.entries):
        raw = _RawEntry(i)
        raw.title = entry.get("title")
        raw.link = entry.get("link")
        raw.guid = entry.get("id")
        raw.itunes_episode = entry.get("itunes_episode")
        raw.enclosures = [
            (e.get("href") or e.get("url"), e.get("type"), e.get("length"))
            for e in entry.get("enclosures", [])
        ]
        raw.published = entry.get("published") or entry.get("updated")
        raw.description = entry.get("summary")
        raw.author = entry.get("author")
        raw.duration = entry.get("itunes_duration")
        raws.append(raw)
    feed = parsed.get("feed", {})
    return _finish(raws, feed.get("title"), feed.get("link"), "feedparser")


# -- fetching ---------------------------------------------------------------------------------
@dataclass(slots=True)
class FeedResponse:
    """One fetch of the feed. ``not_modified``: the server said 304 (body is None)."""

    url: str
    status: int
    body: bytes | None
    etag: str | None = None
    last_modified: str | None = None
    seconds: float = 0.0

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def digest(self) -> str | None:
        return hashlib.sha256(self.body).hexdigest() if self.body is not None else None


RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class FeedResource(ConfigurableResource):
    """Fetch and parse one podcast feed (RSS/Atom over http(s), or a local file path)."""

    url: str = Field(
        default=DEFAULT_FEED_URL, description="Feed URL (env TWIML_FEED_URL in definitions)."
    )
    timeout_seconds: float = Field(default=30.0, description="Connect and read timeout.")
    retries: int = Field(default=3, description="Retries on network errors, 429 and 5xx.")
    backoff_seconds: float = Field(default=1.0, description="First retry delay; doubles each time.")
    user_agent: str = Field(default=USER_AGENT, description="Sent as User-Agent.")
    max_bytes: int = Field(default=64 * 1024 * 1024, description="Refuse larger feed documents.")

    def fetch(self, etag: str | None = None, last_modified: str | None = None) -> FeedResponse:
        """GET the feed, conditionally when validators from the previous fetch are given."""
        parsed = urlparse(self.url)
        if parsed.scheme in {"", "file"}:
            return self._read_local(Path(parsed.path if parsed.scheme else self.url))
        if parsed.scheme not in {"http", "https"}:
            raise FeedError(f"unsupported feed URL {self.url!r}: use http(s):// or a file path")
        headers = {
            "User-Agent": self.user_agent,
            "Accept": "application/rss+xml, application/xml;q=0.9, */*;q=0.5",
        }
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt))
            started = time.perf_counter()
            try:
                with requests.get(
                    self.url, headers=headers, timeout=self.timeout_seconds, stream=True
                ) as resp:
                    if resp.status_code in RETRY_STATUS:
                        last_error = f"HTTP {resp.status_code} {resp.reason}"
                        continue
                    if resp.status_code == 304:
                        return FeedResponse(
                            self.url,
                            304,
                            None,
                            etag=resp.headers.get("ETag", etag),
                            last_modified=resp.headers.get("Last-Modified", last_modified),
                            seconds=time.perf_counter() - started,
                        )
                    if resp.status_code >= 400:
                        raise FeedError(self._http_error(resp.status_code, resp.reason))
                    body = self._read_body(resp)
                    return FeedResponse(
                        self.url,
                        resp.status_code,
                        body,
                        etag=resp.headers.get("ETag"),
                        last_modified=resp.headers.get("Last-Modified"),
                        seconds=time.perf_counter() - started,
                    )
            except requests.RequestException as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("feed fetch attempt %d failed: %s", attempt + 1, last_error)
        raise FeedError(
            f"could not fetch the feed {self.url} after {self.retries + 1} attempts "
            f"({last_error}); "
            "check the network and the URL (TWIML_FEED_URL); the next sensor tick retries"
        )

    def load(self) -> ParsedFeed:
        """Fetch (unconditionally) and parse."""
        response = self.fetch()
        assert response.body is not None
        return parse_feed(response.body)

    # -- helpers --------------------------------------------------------------------------
    def _delay(self, attempt: int) -> float:
        base = self.backoff_seconds * (2 ** (attempt - 1))
        return min(60.0, base) * (0.75 + 0.5 * random.random())

    def _read_body(self, resp: requests.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_content(chunk_size=1 << 16):
            size += len(chunk)
            if size > self.max_bytes:
                raise FeedError(
                    f"the feed at {self.url} is larger than {self.max_bytes} bytes; "
                    "raise max_bytes if this is really the feed"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _read_local(self, path: Path) -> FeedResponse:
        try:
            body = path.expanduser().read_bytes()
        except OSError as exc:
            raise FeedError(f"cannot read the feed file {path}: {exc.strerror or exc}") from exc
        return FeedResponse(str(path), 200, body)

    def _http_error(self, status: int, reason: str) -> str:
        hint = {
            404: "the feed has moved or the URL is wrong; set TWIML_FEED_URL to the current feed",
            410: "the publisher removed this feed; set TWIML_FEED_URL to the current feed",
            401: "the feed needs credentials, which this project does not send",
            403: "the server refused the request; check the URL or the User-Agent",
        }.get(status, "check the URL in a browser")
        return f"the feed {self.url} returned HTTP {status} {reason}: {hint}"
