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
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from xml.sax.saxutils import escape

DEFAULT_PORT = 8765
FEED_PATH = "/feed.xml"
MANIFEST = "episodes.json"

# Different lines per episode: the transcripts must visibly differ in the UI.
DEMO_EPISODES: tuple[dict[str, Any], ...] = (
    {
        "number": 1,
        "title": "Speech recognition on real recordings with Ada Example - #1",
        "description": "Why long audio is hard, and how voice activity detection helps.",
        "lines": (
            ("HOST", "Welcome to the demo podcast. Today we talk about speech recognition."),
            (
                "GUEST",
                "Thanks for having me. Long recordings are the hard part, because the "
                "model only hears thirty seconds at a time.",
            ),
            ("HOST", "How do you keep it from inventing words during silence?"),
            (
                "GUEST",
                "Voice activity detection removes the silence before decoding, so the "
                "model only sees speech.",
            ),
            ("HOST", "Thank you for joining us."),
        ),
    },
    {
        "number": 2,
        "title": "Who said what: speaker diarization with Ben Sample - #2",
        "description": "Finding the speakers in a conversation and attributing every word.",
        "lines": (
            ("HOST", "This is episode two of the demo podcast, about speaker diarization."),
            ("GUEST", "Diarization answers one question: who spoke when in the recording."),
            ("HOST", "And how does that become a transcript with names?"),
            (
                "GUEST",
                "Every word gets the speaker whose turn overlaps it most, and then "
                "consecutive words of one speaker form a turn.",
            ),
            ("HOST", "Very clear. Thanks, Ben."),
        ),
    },
    {
        "number": 3,
        "title": "Measuring transcripts with Cleo Placeholder - #3",
        "description": "Word error rate, diarization error rate, and reference transcripts.",
        "lines": (
            ("HOST", "Episode three is about measurement. How do we know a transcript is good?"),
            (
                "GUEST",
                "Keep a few reference transcripts and compute the word error rate after "
                "every change.",
            ),
            ("HOST", "Is there a similar number for speakers?"),
            (
                "GUEST",
                "Yes, the diarization error rate counts missed speech, false alarms and "
                "confused speakers.",
            ),
            ("HOST", "Great. See you next week."),
        ),
    },
    {
        "number": 4,
        "title": "Running the pipeline on a schedule with Dev Demo - #4",
        "description": "A sensor keeps up with the feed and transcribes each new episode.",
        "lines": (
            ("HOST", "In this last episode we discuss automation."),
            (
                "GUEST",
                "A sensor reads the feed every few minutes and starts one run for "
                "each new episode.",
            ),
            ("HOST", "What happens when an episode fails?"),
            (
                "GUEST",
                "It fails alone. The other episodes keep going and you can retry it "
                "later from the user interface.",
            ),
        ),
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

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def generate_demo(
    directory: str | Path,
    episodes: Sequence[dict[str, Any]] = DEMO_EPISODES,
    *,
    audio_format: str = "mp3",
    force: bool = False,
) -> list[DemoEpisode]:
    """Synthesise the episodes (espeak-ng) and their references into ``directory``.

    Idempotent: existing audio is reused unless ``force``. References (RTTM turns and
    plain text) go to ``references/ep-<n>.*`` so the WER/DER checks have something to
    compare with in the demo.
    """
    from twiml_assets.demo.synth import synthesize_dialogue

    directory = Path(directory)
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    (directory / "references").mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    known = {}
    if manifest_path.exists() and not force:
        known = {e["number"]: e for e in json.loads(manifest_path.read_text())["episodes"]}
    out: list[DemoEpisode] = []
    for spec in episodes:
        number = int(spec["number"])
        filename = f"audio/demo-{number}.{audio_format}"
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
                description=spec.get("description", ""),
                filename=filename,
                size=path.stat().st_size,
                duration=round(synth.duration, 3),
                published=email.utils.format_datetime(published),
                guid=f"demo-podcast-{number}",
            )
        )
    manifest = {"title": "The Demo AI Podcast", "episodes": [e.to_dict() for e in out]}
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
    episodes: Sequence[DemoEpisode],
    base_url: str,
    *,
    title: str = "The Demo AI Podcast",
    extra_items: Sequence[str] = (),
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
        f"    <title>{escape(title)}</title>\n"
        f"    <link>{escape(base_url)}/</link>\n"
        "    <description>Generated offline demo episodes (espeak-ng).</description>\n"
        + "".join(items)
        + "  </channel>\n</rss>\n"
    ).encode("utf-8")


# -- HTTP server ------------------------------------------------------------------------------
@dataclass(slots=True)
class Resource:
    """An in-memory response body with the validators a CDN would send."""

    body: bytes
    content_type: str
    last_modified: float = field(default_factory=time.time)

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha1(self.body).hexdigest()[:16] + '"'


CONTENT_TYPES = {
    ".xml": "application/rss+xml; charset=utf-8",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".rttm": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
Hook = Callable[["Handler"], bool]
"""A test hook: handle the request itself (return True) or let the server answer (False)."""


class Handler(BaseHTTPRequestHandler):
    """GET/HEAD with ETag, Last-Modified, If-None-Match/If-Modified-Since and single Ranges."""

    server: LocalHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._respond(head=True)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._respond(head=False)

    @property
    def route(self) -> str:
        return unquote(urlparse(self.path).path)

    def _respond(self, head: bool) -> None:
        self.server.log.append((self.command, self.route, dict(self.headers.items())))
        hook = self.server.hooks.get(self.route)
        if hook is not None and hook(self):
            return
        resource = self.server.lookup(self.route)
        if resource is None:
            self.send_plain(404, f"not found: {self.route}\n")
            return
        etag = resource.etag
        last_modified = email.utils.formatdate(resource.last_modified, usegmt=True)
        if self._not_modified(etag, resource.last_modified):
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = resource.body
        status, start, end = 200, 0, len(body) - 1
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range in {etag, last_modified}):
            parsed = self._parse_range(wanted, len(body))
            if parsed is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, (start, end) = 206, parsed
        self.send_response(status)
        self.send_header("Content-Type", resource.content_type)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        self.end_headers()
        if not head:
            self.wfile.write(body[start : end + 1])

    def _not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            return etag in {tag.strip() for tag in inm.split(",")} or inm.strip() == "*"
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                return False
            return int(mtime) <= int(since)
        return False

    @staticmethod
    def _parse_range(header: str, size: int) -> tuple[int, int] | None:
        match = _RANGE.match(header.strip())
        if not match or size == 0:
            return None
        first, last = match.groups()
        if first == "":
            if not last:
                return None
            start, end = max(0, size - int(last)), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            return None
        return start, end

    def send_plain(self, status: int, text: str, content_type: str = "text/plain") -> None:
        """Answer with a small body (also used by test hooks)."""
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class LocalHTTPServer(ThreadingHTTPServer):
    """Serves a directory plus in-memory routes on 127.0.0.1, in a background thread.

    In-memory routes win over files, so a test (or the demo's feed renderer) can change
    what ``/feed.xml`` returns between two requests.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        directory: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
    ):
        super().__init__((host, port), Handler)
        self.directory = Path(directory).resolve() if directory else None
        self.routes: dict[str, Resource] = {}
        self.dynamic: dict[str, Callable[[], Resource | None]] = {}
        self.hooks: dict[str, Hook] = {}
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.verbose = verbose
        self._thread: threading.Thread | None = None
        self._file_cache: dict[Path, tuple[float, int, Resource]] = {}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-response (a timeout, a cancelled run) is not an error."""
        if isinstance(sys.exc_info()[1], ConnectionError) and not self.verbose:
            return
        super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def put(
        self,
        path: str,
        body: bytes | str,
        content_type: str | None = None,
        last_modified: float | None = None,
    ) -> str:
        """Serve ``body`` at ``path``; returns its URL."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        ctype = content_type or CONTENT_TYPES.get(Path(path).suffix, "application/octet-stream")
        self.routes["/" + path.lstrip("/")] = Resource(data, ctype, last_modified or time.time())
        return self.url(path)

    def remove(self, path: str) -> None:
        self.routes.pop("/" + path.lstrip("/"), None)

    def lookup(self, route: str) -> Resource | None:
        if route in self.routes:
            return self.routes[route]
        if route in self.dynamic:
            return self.dynamic[route]()
        if self.directory is None:
            return None
        path = (self.directory / route.lstrip("/")).resolve()
        if not path.is_file() or self.directory not in path.parents:
            return None
        stat = path.stat()
        cached = self._file_cache.get(path)
        if cached and cached[:2] == (stat.st_mtime, stat.st_size):
            return cached[2]
        ctype = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        resource = Resource(path.read_bytes(), ctype, stat.st_mtime)
        self._file_cache[path] = (stat.st_mtime, stat.st_size, resource)
        return resource

    def requests_to(self, route: str) -> list[dict[str, str]]:
        """Headers of every request made to ``route`` (tests check conditional GETs)."""
        return [headers for _, path, headers in self.log if path == route]

    def start(self) -> LocalHTTPServer:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="demo-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LocalHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    """Exit with the process that started us (``exec dagster dev`` keeps the shell's pid)."""
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
