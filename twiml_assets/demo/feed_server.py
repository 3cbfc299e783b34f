"""An offline demo podcast: generated episodes, an RSS feed, and a local HTTP server.

``make run DEMO=1`` starts this server on 127.0.0.1 and points the feed resource at it,
so a new user sees partitions appear, runs launch and transcripts land with no
internet. The tests use the same server (it speaks ETag, Last-Modified and Range like
a podcast CDN) so the sensor and the downloader are exercised over real HTTP.

    python -m twiml_assets.demo.feed_server serve --dir .demo_feed --port 8765
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from twiml_assets.demo.http_server import CONTENT_TYPES, LocalHTTPServer, Resource
from twiml_assets.demo.synth import dialogue, synthesize_dialogue

DEFAULT_PORT = 8765
FEED_PATH = "/feed.xml"
MANIFEST = "episodes.json"
TITLE = "The Demo AI Podcast"

# Episodes 1..4 in this order, with different lines: the transcripts must visibly differ in the UI.
DEMO_EPISODES: tuple[dict[str, Any], ...] = (
    {
        "title": "Speech recognition on real recordings with Ada Example - #1",
        "description": "Why long audio is hard, and how voice activity detection helps.",
        "lines": dialogue("""
            HOST: Welcome to the demo podcast. Today we talk about speech recognition.
            GUEST: Thanks for having me. Long recordings are the hard part, because the model only
                hears thirty seconds at a time.
            HOST: How do you keep it from inventing words during silence?
            GUEST: Voice activity detection removes the silence before decoding, so the model only
                sees speech.
            HOST: Thank you for joining us.
        """),
    },
    {
        "title": "Who said what: speaker diarization with Ben Sample - #2",
        "description": "Finding the speakers in a conversation and attributing every word.",
        "lines": dialogue("""
            HOST: This is episode two of the demo podcast, about speaker diarization.
            GUEST: Diarization answers one question: who spoke when in the recording.
            HOST: And how does that become a transcript with names?
            GUEST: Every word gets the speaker whose turn overlaps it most, and then consecutive
                words of one speaker form a turn.
            HOST: Very clear. Thanks, Ben.
        """),
    },
    {
        "title": "Measuring transcripts with Cleo Placeholder - #3",
        "description": "Word error rate, diarization error rate, and reference transcripts.",
        "lines": dialogue("""
            HOST: Episode three is about measurement. How do we know a transcript is good?
            GUEST: Keep a few reference transcripts and compute the word error rate after every
                change.
            HOST: Is there a similar number for speakers?
            GUEST: Yes, the diarization error rate counts missed speech, false alarms and confused
                speakers.
            HOST: Great. See you next week.
        """),
    },
    {
        "title": "Running the pipeline on a schedule with Dev Demo - #4",
        "description": "A sensor keeps up with the feed and transcribes each new episode.",
        "lines": dialogue("""
            HOST: In this last episode we discuss automation.
            GUEST: A sensor reads the feed every few minutes and starts one run for each new
                episode.
            HOST: What happens when an episode fails?
            GUEST: It fails alone. The other episodes keep going and you can retry it later from the
                user interface.
        """),
    },
)
BASE_DATE = datetime(2024, 1, 8, 17, 0, tzinfo=UTC)


# -- generation -------------------------------------------------------------------------------
@dataclass(slots=True)
class DemoEpisode:
    """One generated episode as the feed lists it."""

    number: int
    title: str
    description: str
    filename: str
    size: int
    duration: float
    published: str
    guid: str


def generate_demo(directory: str | Path, *, force: bool = False) -> list[DemoEpisode]:
    """Synthesise the episodes (espeak-ng) and their references into ``directory``.

    Idempotent: existing audio is reused unless ``force``. References (RTTM turns and
    plain text) go to ``references/ep-<n>.*`` so the WER/DER checks have something to
    compare with in the demo.
    """
    directory = Path(directory)
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    (directory / "references").mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    known = {}
    if manifest_path.exists() and not force:
        known = {e["number"]: e for e in json.loads(manifest_path.read_text())["episodes"]}
    out: list[DemoEpisode] = []
    for number, spec in enumerate(DEMO_EPISODES, 1):
        filename = f"audio/demo-{number}.mp3"
        path = directory / filename
        previous = known.get(number)
        if previous and path.exists() and previous.get("filename") == filename:
            out.append(DemoEpisode(**previous))
            continue
        synth = synthesize_dialogue(path, spec["lines"], seed=number)
        key = f"ep-{number}"
        (directory / "references" / f"{key}.rttm").write_text(synth.rttm(key))
        (directory / "references" / f"{key}.txt").write_text(synth.text + "\n")
        published = BASE_DATE + timedelta(days=7 * (number - 1))
        out.append(
            DemoEpisode(
                number=number,
                title=spec["title"],
                description=spec["description"],
                filename=filename,
                size=path.stat().st_size,
                duration=round(synth.duration, 3),
                published=email.utils.format_datetime(published),
                guid=f"demo-podcast-{number}",
            )
        )
    manifest = {"title": TITLE, "episodes": [asdict(e) for e in out]}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def catalogue_entries(count: int) -> list[DemoEpisode]:
    """``count`` feed entries shaped like a long podcast back catalogue (title with guest and
    ``#n``, a long HTML description, distinct dates), without audio: what feed parsing
    tests and ``bench/feed.py`` run on."""
    return [
        DemoEpisode(
            number=i,
            title=f"Episode {i} with Guest {i} - #{i}",
            description=f"<p>About topic {i} &amp; more. " + "Filler words. " * 40 + "</p>",
            filename=f"audio/{i}.mp3",
            size=1000 + i,
            duration=3600.0,
            published=f"Mon, 01 Jan 2024 00:{i // 60 % 60:02d}:{i % 60:02d} +0000",
            guid=f"guid-{i}",
        )
        for i in range(1, count + 1)
    ]


def render_rss(
    episodes: Sequence[DemoEpisode], base_url: str, *, extra_items: Sequence[str] = ()
) -> bytes:
    """An RSS 2.0 + iTunes feed, newest first like real podcast feeds."""
    items = []
    for e in sorted(episodes, key=lambda e: e.number, reverse=True):
        mins, secs = divmod(int(round(e.duration)), 60)
        items.append(
            "    <item>\n"
            f"      <title>{escape(e.title)}</title>\n"
            f"      <link>{escape(base_url)}/episodes/{e.number}</link>\n"
            f'      <guid isPermaLink="false">{escape(e.guid)}</guid>\n'
            f"      <pubDate>{e.published}</pubDate>\n"
            f"      <description><![CDATA[<p>{e.description}</p>]]></description>\n"
            "      <itunes:author>Demo Host</itunes:author>\n"
            f"      <itunes:episode>{e.number}</itunes:episode>\n"
            f"      <itunes:duration>{mins:02d}:{secs:02d}</itunes:duration>\n"
            f'      <enclosure url="{escape(base_url)}/{e.filename}" length="{e.size}" '
            'type="audio/mpeg"/>\n'
            "    </item>\n"
        )
    items.extend(extra_items)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd">\n'
        "  <channel>\n"
        f"    <title>{escape(TITLE)}</title>\n"
        f"    <link>{escape(base_url)}/</link>\n"
        "    <description>Generated offline demo episodes (espeak-ng).</description>\n"
        + "".join(items)
        + "  </channel>\n</rss>\n"
    ).encode("utf-8")


class DemoFeed:
    """Renders the demo feed, optionally releasing one more episode every ``release_every`` s.

    A gradual release lets a user watch the sensor discover a new episode without
    touching anything.
    """

    def __init__(
        self,
        episodes: Sequence[DemoEpisode],
        base_url: str,
        initial: int | None = None,
        release_every: float = 0.0,
    ):
        self.episodes = sorted(episodes, key=lambda e: e.number)
        self.base_url = base_url
        self.initial = len(self.episodes) if initial is None else max(1, initial)
        self.release_every = release_every
        self.started = time.time()
        self._cache: dict[int, Resource] = {}

    def visible(self) -> int:
        if self.release_every <= 0:
            return len(self.episodes)
        extra = int((time.time() - self.started) // self.release_every)
        return min(len(self.episodes), self.initial + extra)

    def resource(self) -> Resource:
        count = self.visible()
        if count not in self._cache:
            released = self.started + max(0, count - self.initial) * self.release_every
            body = render_rss(self.episodes[:count], self.base_url)
            self._cache[count] = Resource(body, CONTENT_TYPES[".xml"], released)
        return self._cache[count]


def serve_demo(
    directory: str | Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    initial: int | None = None,
    release_every: float = 0.0,
    verbose: bool = False,
) -> LocalHTTPServer:
    """Generate (if needed) and start serving the demo feed; returns the running server."""
    episodes = generate_demo(directory)
    server = LocalHTTPServer(directory, host, port, verbose=verbose)
    feed = DemoFeed(episodes, server.base_url, initial, release_every)
    server.dynamic[FEED_PATH] = feed.resource
    return server.start()


def _watch_parent(pid: int, server: LocalHTTPServer) -> None:
    """Exit with the process that started us (scripts/run.sh stops us itself; this is for a
    run.sh that was SIGKILLed)."""
    while True:
        time.sleep(2)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            server.shutdown()
            return
        except PermissionError:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="synthesise the demo episodes and references")
    gen.add_argument("--dir", default=".demo_feed")
    gen.add_argument("--force", action="store_true")
    srv = sub.add_parser("serve", help="generate if needed, then serve the feed over HTTP")
    srv.add_argument("--dir", default=".demo_feed")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=DEFAULT_PORT)
    srv.add_argument("--initial", type=int, default=None, help="episodes listed at start")
    srv.add_argument(
        "--release-every", type=float, default=0.0, help="seconds between further episodes"
    )
    srv.add_argument("--parent-pid", type=int, default=None, help="exit when this pid exits")
    srv.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "generate":
        episodes = generate_demo(args.dir, force=args.force)
        for e in episodes:
            print(f"ep-{e.number}: {e.filename} ({e.duration:.1f} s, {e.size} bytes)")
        return 0

    try:
        server = serve_demo(
            args.dir, args.host, args.port, args.initial, args.release_every, args.verbose
        )
    except OSError as exc:
        print(f"demo feed: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"demo feed: serving {server.url(FEED_PATH)}", flush=True)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, server), daemon=True).start()
    try:
        while server._thread is not None and server._thread.is_alive():
            server._thread.join(timeout=1)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
