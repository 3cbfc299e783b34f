"""The podcast feed's content: parsing, the episode data model and episode keys.

Every Dagster partition is an episode key derived here, so the rules must be stable: the
same entry gets the same key on every tick, even as the feed grows. feedparser reads RSS
and Atom, well-formed or not, safely and alike. One bad entry is skipped with a reason and
never fails the whole feed.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import reduce
from typing import Any
from urllib.parse import urlparse

import feedparser

from twiml_assets.http_policy import media_type
from twiml_assets.keys import rag_stem, validate_key

log = logging.getLogger(__name__)

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
    published: str | None = None  # ISO 8601 (UTC); None when missing or unreadable
    description: str = ""
    guid: str | None = None
    link: str | None = None
    transcript_url: str | None = None  # <podcast:transcript>: a possible reference
    author: str | None = None
    duration: float | None = None  # seconds: itunes:duration, else media:content's
    position: int = 0  # index in the feed document, the tie-breaker for ordering

    @property
    def rag_stem(self) -> str:
        return rag_stem(self.key)

    def info_json(self) -> dict[str, Any]:
        """``info/{n}.info.json`` for the RAG pipeline: the episode's RSS fields."""
        return {
            "episode": self.number if self.number is not None else self.key,
            "key": self.key,
            "title": self.title,
            "url": self.audio_url,
            **{k: getattr(self, k) for k in ("description", "published", "link", "guid", "author")},
        }


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """An entry that could not become an episode, and why (logged, shown in Dagster)."""

    position: int
    title: str | None
    reason: str


@dataclass(slots=True)
class ParsedFeed:
    """A parsed feed; its fields are in the order ``dump`` writes them to ``feed/catalog.json``."""

    title: str | None = None
    link: str | None = None
    parser: str = "feedparser"
    episodes: list[EpisodeInfo] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)

    def by_key(self) -> dict[str, EpisodeInfo]:
        return {e.key: e for e in self.episodes}

    def ordered(self, newest_first: bool = True) -> list[EpisodeInfo]:
        return order_episodes(self.episodes, newest_first=newest_first)


def order_episodes(episodes: Iterable[EpisodeInfo], newest_first: bool = True) -> list[EpisodeInfo]:
    """Sort by publication time (ISO strings of one zone sort so); undated ones by position."""
    oldest_first = sorted(episodes, key=lambda e: (e.published or "", -e.position))
    return oldest_first[::-1] if newest_first else oldest_first


# -- episode keys -----------------------------------------------------------------------------
def guid_key(guid: str) -> str:
    return "g-" + hashlib.sha1(guid.encode("utf-8")).hexdigest()[:12]


def _number(text: str | None) -> str | None:
    """A positive integer as a canonical string (``0623`` → ``623``), else None."""
    value = int(text) if text and text.strip().isdigit() else 0
    return str(value) if value > 0 else None


def episode_key(
    *,
    itunes_episode: str | None,
    title: str | None,
    link: str | None,
    guid: str | None,
) -> tuple[str, str | None]:
    """``(key, number)``, first match wins.

    itunes:episode → ``ep-<n>``; the title's ``#<n>`` (with a ``(N/M)`` part →
    ``ep-<n>.<N>``); a twimlai.com/talk|go/<n> link; else ``g-<sha1(guid)[:12]>``.
    """
    number = _number(itunes_episode)
    if number is None and title and (match := _TITLE_NUMBER.search(title)):
        number = _number(match.group(1))
        part = _TITLE_PART.search(title)
        if number is not None and part and int(part.group(1)) > 0:
            number = f"{number}.{int(part.group(1))}"
    if number is None and link and (match := _TWIML_LINK.search(link)):
        number = _number(match.group(1))
    if number is not None:
        return f"ep-{number}", number
    if not guid:
        raise ValueError("entry has no episode number and no guid/link/audio URL to key it by")
    return guid_key(guid), None


# -- parsing ----------------------------------------------------------------------------------
# feedparser keeps only the last of repeated unknown elements, named by the feed's own prefix.
# Registering the Podcasting 2.0 namespace with a handler keeps every <podcast:transcript>
# whatever prefix the feed declares (Media RSS's media:content is built in).
PODCAST_NAMESPACES = (
    "https://podcastindex.org/namespace/1.0",
    "https://github.com/Podcastindex-org/podcast-namespace/blob/main/docs/1.0.md",
)


def _start_podcast_transcript(parser: Any, attrs: dict[str, str]) -> None:
    parser._get_context().setdefault("podcast_transcripts", []).append(attrs)


_mixin = feedparser.mixin._FeedParserMixin
_mixin.namespaces.update(dict.fromkeys(PODCAST_NAMESPACES, "podcast"))
_mixin._matchnamespaces.update({k.lower(): v for k, v in _mixin.namespaces.items()})
_mixin._start_podcast_transcript = _start_podcast_transcript


def clean_text(text: str | None) -> str:
    """HTML description → plain text (what a prompt or a reader wants)."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text or ""))).strip()


def parse_duration(text: str | None) -> float | None:
    """``itunes:duration``: seconds, ``MM:SS`` or ``HH:MM:SS``."""
    try:
        total = reduce(lambda total, part: total * 60 + float(part), (text or "").split(":"), 0.0)
    except ValueError:
        return None
    return total if total >= 0 else None


def is_audio_enclosure(url: str | None, mime: str | None) -> bool:
    if not url:
        return False
    mime = media_type(mime)
    if mime.startswith("audio/") or mime in {"video/mp4", "application/ogg"}:
        return True
    untyped = mime in {"", "application/octet-stream", "binary/octet-stream"}
    return untyped and bool(_AUDIO_EXT.search(urlparse(url).path + "?"))


def _preferred_transcript(transcripts: list[dict[str, str]]) -> str | None:
    """Prefer timed formats (JSON, VTT, SRT) over HTML/plain text; then document order."""
    rank = {"application/json": 0, "text/vtt": 1, "application/x-subrip": 2, "application/srt": 2}
    usable = [
        (rank.get(t.get("type", "").lower(), 9), i, t["url"])
        for i, t in enumerate(transcripts)
        if t.get("url")
    ]
    return min(usable)[2] if usable else None


def _build_episode(entry: dict[str, Any], position: int) -> EpisodeInfo:
    """One feedparser entry as an episode; raises ValueError with the reason it cannot be one.

    The audio is the first audio ``<enclosure>`` (Atom: ``link rel="enclosure"``), else the
    first audio ``<media:content>``.
    """
    # feedparser types an untyped Atom enclosure link text/html: no enclosure is a web page.
    found = [
        (e.get("href"), None if (t := e.get("type")) == "text/html" else t, e.get("length"), None)
        for e in entry.get("enclosures", [])
    ]
    found += [
        (m.get("url"), m.get("type"), m.get("filesize"), m.get("duration"))
        for m in entry.get("media_content", [])
    ]
    audio = [(u.strip(), t, n, d) for u, t, n, d in found if u and is_audio_enclosure(u.strip(), t)]
    if not audio:
        kinds = ", ".join(sorted({t or "unknown type" for _, t, _, _ in found}))
        raise ValueError(f"no audio enclosure (found {kinds})" if found else "no audio enclosure")
    url, mime, length, media_duration = audio[0]
    if urlparse(url).scheme not in {"http", "https", "file"}:
        raise ValueError(f"enclosure URL {url!r} is not http(s)")
    title = (entry.get("title") or entry.get("itunes_title") or "").strip() or None
    # ``link`` falls back to a permalink guid; only a real <link> counts.
    link = next((x["href"] for x in entry.get("links", []) if x.get("rel") == "alternate"), None)
    guid = entry.get("id") or None
    key, number = episode_key(
        itunes_episode=entry.get("itunes_episode"), title=title, link=link, guid=guid or link or url
    )
    validate_key(key)
    dated = entry.get("published_parsed") or dict.get(entry, "updated_parsed")  # no alias
    description = entry.get("summary") or next(
        (c.get("value") for c in entry.get("content", [])), None
    )
    return EpisodeInfo(
        key=key,
        number=number,
        title=title or f"Untitled episode ({key})",
        audio_url=url,
        audio_type=media_type(mime) or None,
        audio_length=int(length) or None if (length or "").strip().isdigit() else None,
        published=datetime(*dated[:6], tzinfo=UTC).isoformat() if dated else None,
        description=clean_text(description),
        guid=guid,
        link=link,
        transcript_url=_preferred_transcript(entry.get("podcast_transcripts", [])),
        author=entry.get("author"),
        duration=parse_duration(entry.get("itunes_duration") or media_duration),
        position=position,
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
            episode = replace(episode, key=alt, number=None)
        taken.add(episode.key)
        kept.append(episode)
    return sorted(kept, key=lambda e: e.position)


def parse_feed(data: bytes | str) -> ParsedFeed:
    """Parse RSS or Atom into episodes; raises FeedError if it is not a feed at all."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data.strip(b"\xef\xbb\xbf \t\r\n"):
        raise FeedError("the feed is empty (0 bytes of XML)")
    # A stream, never a str: feedparser would read a str that looks like a URL or path. We
    # reduce descriptions to plain text ourselves, so its HTML sanitising is not needed.
    parsed = feedparser.parse(io.BytesIO(data), sanitize_html=False, resolve_relative_uris=False)
    problem = parsed.get("bozo_exception")
    if not parsed.entries and (problem or not parsed.version):
        snippet = data[:80].decode("utf-8", "replace").replace("\n", " ")
        raise FeedError(
            f"not an RSS or Atom feed ({problem or 'no feed elements'}); it starts with "
            f"{snippet!r}. Check that the feed URL points at the podcast's RSS feed, not a web "
            "page, or wait for the publisher to fix it"
        )
    if problem:
        log.warning("the feed is not well-formed XML (%s); parsed it leniently", problem)
    episodes: list[EpisodeInfo] = []
    skipped: list[SkippedEntry] = []
    for position, entry in enumerate(parsed.entries):
        try:
            episodes.append(_build_episode(entry, position))
        except Exception as exc:  # noqa: BLE001 - one bad entry must never fail the feed
            skipped.append(
                SkippedEntry(position, entry.get("title"), str(exc) or type(exc).__name__)
            )
    for s in skipped:
        log.warning("skipped feed entry #%d %r: %s", s.position, s.title, s.reason)
    title, link = parsed.feed.get("title"), parsed.feed.get("link")
    return ParsedFeed(title, link, episodes=_resolve_duplicates(episodes, skipped), skipped=skipped)
