"""Feed parsing, episode keys and the HTTP fetch (against a real server on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import pytest

from resources.schema import dump, load
from twiml_assets.demo.feed_server import catalogue_entries, render_rss
from twiml_assets.feed.resource import FeedResource
from twiml_assets.feed.source import (
    EpisodeInfo,
    FeedError,
    episode_key,
    guid_key,
    parse_feed,
    rag_stem,
)

ITUNES = 'xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"'
PODCAST = 'xmlns:podcast="https://podcastindex.org/namespace/1.0"'


def rss(*items: str, extra_ns: str = "") -> bytes:
    return (
        f'<?xml version="1.0"?><rss version="2.0" {ITUNES} {extra_ns}><channel>'
        "<title>Test feed</title><link>https://example.com</link>"
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def item(
    title: str = "An episode - #12",
    *,
    number: str | None = None,
    guid: str | None = "guid-1",
    link: str | None = None,
    date: str | None = "Mon, 06 Jan 2025 10:00:00 +0000",
    enclosure: str | None = '<enclosure url="https://cdn.example.com/a.mp3" length="1234" '
    'type="audio/mpeg"/>',
    extra: str = "",
) -> str:
    parts = [f"<title>{title}</title>"]
    if number is not None:
        parts.append(f"<itunes:episode>{number}</itunes:episode>")
    if guid is not None:
        parts.append(f"<guid>{guid}</guid>")
    if link is not None:
        parts.append(f"<link>{link}</link>")
    if date is not None:
        parts.append(f"<pubDate>{date}</pubDate>")
    if enclosure is not None:
        parts.append(enclosure)
    parts.append(extra)
    return "<item>" + "".join(parts) + "</item>"


# -- keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"itunes_episode": "623", "title": "Whatever #999"}, ("ep-623", "623")),
        ({"itunes_episode": "0623"}, ("ep-623", "623")),
        ({"itunes_episode": "n/a", "title": "Talk - #45"}, ("ep-45", "45")),
        ({"title": "Deep Learning Series #12 (2/3)"}, ("ep-12.2", "12.2")),
        ({"title": "TWiML Talk # 7"}, ("ep-7", "7")),
        ({"link": "https://twimlai.com/go/321"}, ("ep-321", "321")),
        ({"link": "https://twimlai.com/talk/88/"}, ("ep-88", "88")),
        ({"title": "Bonus: a live event", "guid": "abc"}, (guid_key("abc"), None)),
    ],
)
def test_episode_key_rules(kwargs: dict, expected: tuple[str, str | None]) -> None:
    args = {"itunes_episode": None, "title": None, "link": None, "guid": "fallback"}
    args.update(kwargs)
    assert episode_key(**args) == expected


def test_rag_stem_and_guid_key_shape() -> None:
    assert rag_stem("ep-623") == "623"
    assert rag_stem("ep-12.2") == "12.2"
    assert rag_stem("g-0123456789ab") == "g-0123456789ab"
    key = guid_key("some guid")
    assert key.startswith("g-") and len(key) == 14 and key == key.lower()


# -- parsing ----------------------------------------------------------------------------------
def test_parse_rss_fields() -> None:
    transcript = (
        '<podcast:transcript url="https://x.example/t.html" type="text/html"/>'
        '<podcast:transcript url="https://x.example/t.vtt" type="text/vtt"/>'
    )
    data = rss(
        item(
            "Agents in production with Jane Doe - #712",
            number="712",
            link="https://twimlai.com/podcast/twimlai/agents/",
            extra="<description><![CDATA[<p>Today we&#39;re joined by <b>Jane</b>.</p>]]>"
            "</description><itunes:author>Sam Charrington</itunes:author>"
            "<itunes:duration>1:02:03</itunes:duration>" + transcript,
        ),
        extra_ns=PODCAST,
    )
    feed = parse_feed(data)
    assert feed.title == "Test feed" and not feed.skipped
    (ep,) = feed.episodes
    assert ep.key == "ep-712" and ep.number == "712" and ep.rag_stem == "712"
    assert ep.audio_url == "https://cdn.example.com/a.mp3"
    assert ep.audio_type == "audio/mpeg" and ep.audio_length == 1234
    assert ep.published == "2025-01-06T10:00:00+00:00"
    assert ep.description == "Today we're joined by Jane ."
    assert ep.author == "Sam Charrington" and ep.duration == 3723.0
    assert ep.transcript_url == "https://x.example/t.vtt"
    assert load(EpisodeInfo, json.loads(json.dumps(dump(ep)))) == ep
    info = ep.info_json()
    assert info["episode"] == "712" and info["url"] == ep.audio_url and info["link"] == ep.link


def test_parse_atom_feed() -> None:
    data = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom cast</title>
<entry><title>Atom talk #5</title><id>urn:uuid:1</id><updated>2024-03-01T12:00:00Z</updated>
<link rel="alternate" href="https://example.com/5"/>
<link rel="enclosure" href="https://example.com/5.m4a" type="audio/mp4" length="99"/>
<summary>Five.</summary></entry></feed>"""
    (ep,) = parse_feed(data).episodes
    assert ep.key == "ep-5" and ep.audio_type == "audio/mp4" and ep.link == "https://example.com/5"
    assert ep.published == "2024-03-01T12:00:00+00:00"


def test_malformed_entries_are_skipped_with_reasons(caplog: pytest.LogCaptureFixture) -> None:
    data = rss(
        item("Good one - #1", guid="g1"),
        item("No audio - #2", guid="g2", enclosure=None),
        item(
            "Image only - #3",
            guid="g3",
            enclosure='<enclosure url="https://x.example/c.jpg" type="image/jpeg"/>',
        ),
        item(
            "Bad date and length - #4",
            guid="g4",
            date="not a date",
            enclosure='<enclosure url="https://x.example/4.mp3" length="big" type="audio/mpeg"/>',
        ),
        item("Empty URL - #5", guid="g5", enclosure='<enclosure url="" type="audio/mpeg"/>'),
    )
    with caplog.at_level(logging.WARNING, logger="twiml_assets.feed.source"):
        feed = parse_feed(data)
    assert [e.key for e in feed.episodes] == ["ep-1", "ep-4"]
    bad_date = feed.episodes[1]
    assert bad_date.published is None and bad_date.audio_length is None
    reasons = {s.title: s.reason for s in feed.skipped}
    assert reasons["No audio - #2"] == "no audio enclosure"
    assert "image/jpeg" in reasons["Image only - #3"]
    assert "no audio enclosure" in reasons["Empty URL - #5"]
    assert "No audio - #2" in caplog.text


def test_duplicate_numbers_keep_the_oldest_key() -> None:
    data = rss(
        item("New re-upload - #9", guid="new", date="Mon, 06 Jan 2025 10:00:00 +0000"),
        item("Original - #9", guid="old", date="Mon, 01 Jan 2024 10:00:00 +0000"),
    )
    keys = {e.title: e.key for e in parse_feed(data).episodes}
    assert keys["Original - #9"] == "ep-9"
    assert keys["New re-upload - #9"] == guid_key("new")


def test_not_well_formed_xml_is_parsed_leniently() -> None:
    broken = rss(item("Fine - #1", guid="a"), item("Broken & unescaped - #2", guid="b"))
    feed = parse_feed(broken)
    assert feed.parser == "feedparser"
    assert {e.key for e in feed.episodes} == {"ep-1", "ep-2"}


@pytest.mark.parametrize("prefix", ["podcast", "pc"])
def test_transcripts_and_media_content_whatever_the_xml_shape(prefix: str) -> None:
    extra = (
        f'<{prefix}:transcript url="https://x.example/t.json" type="application/json" '
        f'language="en" rel="captions"/><{prefix}:transcript url="https://x.example/t.html" '
        'type="text/html"/><media:group><media:content url="https://x.example/m.mp3" '
        'type="audio/mpeg" fileSize="77" duration="61.5"/></media:group>'
    )
    ns = f'{PODCAST.replace("podcast", prefix, 1)} xmlns:media="http://search.yahoo.com/mrss/"'
    good = rss(item("Media only - #8", enclosure=None, extra=extra), extra_ns=ns)
    broken = good.replace(b"#8</title>", b"#8 & more</title>")  # not well-formed XML
    (well,), (lenient,) = parse_feed(good).episodes, parse_feed(broken).episodes
    assert dataclasses.replace(lenient, title=well.title) == well
    assert well.transcript_url == "https://x.example/t.json"  # timed beats HTML, in any order
    assert (well.audio_url, well.audio_length, well.duration) == (
        "https://x.example/m.mp3",
        77,
        61.5,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<!DOCTYPE html><html><body>Not found</body></html>",
        b'{"error": "nope"}',
        b"<?xml version='1.0'?><note>hi</note>",
    ],
)
def test_non_feeds_raise_a_clear_error(body: bytes) -> None:
    with pytest.raises(FeedError, match="feed|RSS"):
        parse_feed(body)


def test_800_entries_parse_completely() -> None:
    """Speed is measured in bench/feed.py (no timing assertions in unit tests)."""
    data = render_rss(catalogue_entries(800), "https://cdn.example.com")
    assert len(data) > 500_000
    feed = parse_feed(data)
    assert len(feed.episodes) == 800 and not feed.skipped
    assert len({e.key for e in feed.episodes}) == 800
    newest = feed.ordered(newest_first=True)
    assert newest[0].key == "ep-800" and newest[-1].key == "ep-1"


# -- HTTP -------------------------------------------------------------------------------------
def test_fetch_conditional_requests(http_server) -> None:
    http_server.put("feed.xml", render_rss(catalogue_entries(3), http_server.base_url))
    feed = FeedResource(url=http_server.url("feed.xml"), backoff_seconds=0.01)
    first = feed.fetch()
    assert first.status == 200 and first.etag and first.last_modified
    assert len(parse_feed(first.body).episodes) == 3

    again = feed.fetch(etag=first.etag, last_modified=first.last_modified)
    assert again.not_modified and again.body is None
    sent = http_server.requests_to("/feed.xml")[-1]
    assert sent["If-None-Match"] == first.etag
    assert sent["If-Modified-Since"] == first.last_modified

    # Last-Modified alone also works (servers without ETags).
    assert feed.fetch(last_modified=first.last_modified).not_modified

    http_server.put("feed.xml", render_rss(catalogue_entries(4), http_server.base_url))
    changed = feed.fetch(etag=first.etag, last_modified=first.last_modified)
    assert changed.status == 200 and changed.etag != first.etag
    assert len(parse_feed(changed.body).episodes) == 4


def test_fetch_404_is_a_clear_error_without_retries(http_server) -> None:
    feed = FeedResource(url=http_server.url("missing.xml"), retries=3, backoff_seconds=0.01)
    with pytest.raises(FeedError, match="HTTP 404.*TWIML_FEED_URL"):
        feed.fetch()
    assert len(http_server.requests_to("/missing.xml")) == 1


def test_fetch_retries_transient_errors(http_server) -> None:
    http_server.put("feed.xml", render_rss(catalogue_entries(2), http_server.base_url))
    failures = {"left": 2}

    def flaky(handler) -> bool:
        if failures["left"]:
            failures["left"] -= 1
            handler.send_plain(503, "busy")
            return True
        return False

    http_server.hooks["/feed.xml"] = flaky
    response = FeedResource(url=http_server.url("feed.xml"), backoff_seconds=0.01).fetch()
    assert response.status == 200
    assert len(http_server.requests_to("/feed.xml")) == 3


def test_fetch_times_out_and_gives_up(http_server) -> None:
    def slow(handler) -> bool:
        time.sleep(1.0)
        handler.send_plain(200, "late")
        return True

    http_server.hooks["/slow.xml"] = slow
    feed = FeedResource(
        url=http_server.url("slow.xml"), timeout_seconds=0.2, retries=1, backoff_seconds=0.01
    )
    with pytest.raises(FeedError, match="Read timed out.*did not answer in time.*tick retries"):
        feed.fetch()
    assert len(http_server.requests_to("/slow.xml")) == 2  # the first try and one retry


# -- the fetch's deadline: a sensor tick has 60 s, the fetch takes at most budget_seconds -------
@pytest.fixture
def release():
    """Set when the test ends: the hanging and trickling handlers below stop then."""
    import threading

    done = threading.Event()
    yield done
    done.set()


def fetch_time(feed: FeedResource, match: str) -> float:
    """Seconds until ``feed.fetch()`` raises a FeedError matching ``match``."""
    started = time.monotonic()
    with pytest.raises(FeedError, match=match):
        feed.fetch()
    return time.monotonic() - started


def test_fetch_budget_defaults_to_20_s() -> None:
    from twiml_assets.definitions import resources_from_env
    from twiml_assets.feed.resource import FETCH_BUDGET_SECONDS

    assert FETCH_BUDGET_SECONDS == 20.0
    assert FeedResource().budget_seconds == 20.0
    assert resources_from_env({})["feed"].budget_seconds == 20.0  # what the sensor gets


def test_fetch_of_a_server_failing_forever_stops_at_the_budget(http_server) -> None:
    def unavailable(handler) -> bool:
        handler.send_plain(503, "busy")
        return True

    http_server.hooks["/feed.xml"] = unavailable
    feed = FeedResource(
        url=http_server.url("feed.xml"), retries=1000, backoff_seconds=0.05, budget_seconds=2.0
    )
    took = fetch_time(
        feed,
        r"within 2 s, retries included: the feed was too slow \(HTTP 503.*"
        "the next sensor tick retries",
    )
    assert 1.0 < took < 3.0, took
    assert len(http_server.requests_to("/feed.xml")) > 3  # it did retry until the deadline


def test_fetch_of_a_server_that_never_answers_stops_at_the_budget(http_server, release) -> None:
    def hang(handler) -> bool:
        release.wait(60)
        return True

    http_server.hooks["/feed.xml"] = hang
    feed = FeedResource(url=http_server.url("feed.xml"), backoff_seconds=0.05, budget_seconds=2.0)
    took = fetch_time(feed, r"within 2 s.*too slow \(.*timed out.*next sensor tick retries")
    assert took < 3.0, took


def test_fetch_of_a_trickling_body_stops_at_the_budget(http_server, release) -> None:
    def trickle(handler) -> bool:
        handler.send_headers(200, {"Content-Type": "application/rss+xml", "Content-Length": "1000"})
        for _ in range(1000):  # a byte every 50 ms: never silent for a read timeout
            handler.wfile.write(b" ")
            handler.wfile.flush()
            if release.wait(0.05):
                break
        return True

    http_server.hooks["/feed.xml"] = trickle
    feed = FeedResource(url=http_server.url("feed.xml"), timeout_seconds=1.0, budget_seconds=2.0)
    took = fetch_time(feed, r"within 2 s.*too slow \(DeadlineExceeded.*next sensor tick retries")
    assert took < 3.0, took


def test_fetch_with_the_default_budget_is_over_within_20_s(http_server, release) -> None:
    """The defaults against a server that never answers: a 10 s read timeout, then a retry
    whose timeouts shrink to what is left of the 20 s (45 s or more before the budget)."""

    def hang(handler) -> bool:
        release.wait(60)
        return True

    http_server.hooks["/feed.xml"] = hang
    took = fetch_time(
        FeedResource(url=http_server.url("feed.xml")), r"within 20 s.*too slow.*tick retries"
    )
    assert 15.0 < took < 22.0, took
    assert len(http_server.requests_to("/feed.xml")) == 2


def test_fetch_local_file(tmp_path) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(render_rss(catalogue_entries(2), "https://cdn.example.com"))
    assert len(parse_feed(FeedResource(url=str(path)).fetch().body).episodes) == 2
    with pytest.raises(FeedError, match="cannot read"):
        FeedResource(url=str(tmp_path / "nope.xml")).fetch()


# -- episode lookup from the key alone (catalog.py) -------------------------------------------
def test_find_episode_from_feed_then_snapshot_then_stored_copy(http_server, tmp_path) -> None:
    from resources.storage import StorageResource
    from twiml_assets.feed.catalog import CATALOG, find_episode
    from twiml_assets.layout import EpisodeFiles

    storage = StorageResource(root=str(tmp_path / "data"))
    feed = FeedResource(url=http_server.url("feed.xml"), retries=0, backoff_seconds=0.01)
    http_server.put("feed.xml", render_rss(catalogue_entries(3), http_server.base_url))

    episode, source = find_episode(storage, feed, "ep-2")
    assert (episode.key, source) == ("ep-2", "feed") and storage.exists(CATALOG)
    assert find_episode(storage, feed, "ep-3")[1] == "feed"
    assert "If-None-Match" in http_server.requests_to("/feed.xml")[-1]  # 304, snapshot reused

    http_server.remove("feed.xml")  # the feed is gone (404): the snapshot still answers
    assert find_episode(storage, feed, "ep-1") == (episode_from(storage, "ep-1"), "catalog")

    storage.write_json(EpisodeFiles("ep-77").episode, {**dump(episode), "key": "ep-77"})
    assert find_episode(storage, feed, "ep-77")[1] == "stored"
    with pytest.raises(LookupError, match="ep-99 is not in the stored feed snapshot.*HTTP 404"):
        find_episode(storage, feed, "ep-99")


def episode_from(storage, key: str) -> EpisodeInfo:
    from twiml_assets.feed.catalog import load_catalog

    return load_catalog(storage)[0].by_key()[key]
