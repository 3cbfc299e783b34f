"""HTTP-level safety for the web app: body size caps, this site's Host and Origin, headers."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.datastructures import FormData, Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twiml_assets.audio.uploads import too_large
from twiml_assets.web.settings import DEFAULT_PORTS, parse_public_url

log = logging.getLogger(__name__)

# Multipart framing and the small form fields on top of the file itself.
FORM_OVERHEAD = 64 * 1024
SMALL_FORM = 16 * 1024

DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "²" and "٣"
HOST_RE = re.compile(r"(?P<name>[a-z0-9._-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
WRONG_HOST = (
    "This server does not answer to that host name. Open it at its own address; the operator "
    "sets it with TWIML_WEB_PUBLIC_URL."
)
Origin = tuple[str, str, int]  # scheme, host, port: what two URLs must share to be one site

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


class SecurityHeaders:
    """Pure ASGI middleware adding SECURITY_HEADERS to every response (streams untouched)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def whole_number(text: str, max_digits: int) -> int | None:
    """``text`` as an int when it is 1 to ``max_digits`` ASCII digits, else None.

    ``str.isdigit`` accepts ``"²"``, which ``int`` refuses, and ``int`` refuses more than
    4300 digits: both were 500s.
    """
    if len(text) > max_digits or not DIGITS.fullmatch(text):
        return None
    return int(text)


def split_host(host: str) -> tuple[str, int | None] | None:
    """(lower-case name, port or None) of a Host header; None when it is not a bare host[:port]."""
    match = HOST_RE.fullmatch(host.strip().lower())
    if match is None:
        return None
    port = match["port"]
    return match["name"].strip("[]"), int(port) if port else None


def is_loopback(name: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: names a page on another site cannot make a browser
    send as Host (a DNS-rebinding page sends its own name)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_origin(url: str) -> Origin | None:
    """(scheme, host, port) of an ``Origin`` header or http(s) URL, the default port filled in."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


class Site:
    """Where this app is served: the origin of TWIML_WEB_PUBLIC_URL, and loopback names.

    Every request's Host must be one of these (``AllowedHosts``), else a DNS-rebinding page
    could talk to the app under its own name; a POST's ``Origin`` must be the public
    origin, or, for a loopback Host, the request's own origin (scheme, host and port).
    ``scheme_of`` says http or https as the browser sees it (a trusted proxy's
    ``X-Forwarded-Proto`` included).
    """

    def __init__(self, public_url: str | None, scheme_of: Callable[[Request], str]):
        self.public = parse_origin(parse_public_url(public_url) or "")
        self.scheme_of = scheme_of

    def allows(self, host: str) -> bool:
        """True when the Host header ``host`` names this site."""
        split = split_host(host)
        if split is None:
            return False
        name, port = split
        if self.public is not None and name == self.public[1]:
            return (port or DEFAULT_PORTS[self.public[0]]) == self.public[2]
        return is_loopback(name)

    def origins(self, request: Request) -> set[Origin]:
        """The origins a same-site POST may come from: the public one, and a loopback Host's."""
        allowed = {self.public} if self.public else set()
        split = split_host(request.headers.get("host", ""))
        if split is not None and is_loopback(split[0]):
            scheme = self.scheme_of(request)
            allowed.add((scheme, split[0], split[1] or DEFAULT_PORTS.get(scheme, 80)))
        return allowed

    def same_origin(self, request: Request) -> None:
        """Dependency refusing a cross-site browser POST (CSRF) that Origin or Sec-Fetch-Site
        reveal; ``Origin: null`` (a sandboxed or file:// document) is cross-site too.

        Non-browser clients (curl, tests) send neither header and are allowed.
        """
        fetch_site = request.headers.get("sec-fetch-site", "none")
        origin = request.headers.get("origin")
        cross = origin is not None and parse_origin(origin) not in self.origins(request)
        if cross or fetch_site not in {"same-origin", "none"}:
            raise HTTPException(403, "cross-site request refused")


class AllowedHosts:
    """Pure ASGI middleware answering 400 to a request whose Host is not ``site``'s."""

    def __init__(self, app: ASGIApp, site: Site):
        self.app, self.site = app, site

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if not self.site.allows(host):
                log.info("refused a request for host %r: not this site's", host[:100])
                await PlainTextResponse(WRONG_HOST, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _capped(request: Request, limit: int, error: Callable[[], Exception]) -> Request:
    """``request`` with a body that raises ``error()`` once more than ``limit`` bytes arrive.

    The declared Content-Length is checked first; a chunked or lying client is cut off
    by counting the bytes as they arrive.
    """
    declared = request.headers.get("content-length", "").lstrip("0")
    if DIGITS.fullmatch(declared) and (len(declared) > 18 or int(declared) > limit):
        raise error()
    received = 0
    receive = request.receive

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise error()
        return message

    return Request(request.scope, counting_receive)


async def read_limited_form(request: Request, max_file_bytes: int) -> FormData:
    """Parse a multipart form, aborting once the body exceeds the limit.

    An oversized upload never fills the disk with Starlette's spooled temporary files.
    """
    limited = _capped(request, max_file_bytes + FORM_OVERHEAD, lambda: too_large(max_file_bytes))
    return await limited.form(max_files=1, max_fields=8)


def has_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind in {"application/x-www-form-urlencoded", "multipart/form-data"}


async def read_small_form(request: Request) -> FormData:
    """A form of a few text fields (sign-in, sign-out, Transcribe), at most SMALL_FORM bytes."""
    if not has_form(request):
        return FormData()
    limited = _capped(request, SMALL_FORM, lambda: HTTPException(413, "the form is too large"))
    return await limited.form(max_files=0, max_fields=8)
