"""A small local HTTP server that speaks like a podcast CDN: ETag, Last-Modified, Range.

The demo feed and the tests serve feeds and audio with it, so the sensor, the downloader
and the web page are exercised over real HTTP without the internet.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


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
        validators = {"ETag": etag, "Last-Modified": last_modified}
        if self._not_modified(etag, resource.last_modified):
            self.send_headers(304, {**validators, "Content-Length": "0"})
            return
        body = resource.body
        status, start, end = 200, 0, len(body) - 1
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range in {etag, last_modified}):
            parsed = self._parse_range(wanted, len(body))
            if parsed is None:
                self.send_headers(
                    416, {"Content-Range": f"bytes */{len(body)}", "Content-Length": "0"}
                )
                return
            status, (start, end) = 206, parsed
        headers = {"Content-Type": resource.content_type, "Content-Length": str(end - start + 1)}
        headers |= {**validators, "Accept-Ranges": "bytes"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
        self.send_headers(status, headers)
        if not head:
            self.wfile.write(body[start : end + 1])

    def send_headers(self, status: int, headers: dict[str, str]) -> None:
        """The status line and ``headers``, in order, with no body yet."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

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
        self.send_headers(status, {"Content-Type": content_type, "Content-Length": str(len(data))})
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
