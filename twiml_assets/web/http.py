"""HTTP-level safety for the web app: body size caps, same-origin POSTs, response headers."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.datastructures import FormData, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twiml_assets.audio.uploads import too_large

# Multipart framing and the small form fields on top of the file itself.
FORM_OVERHEAD = 64 * 1024
SMALL_FORM = 16 * 1024

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


def same_origin(request: Request) -> None:
    """Dependency refusing a cross-site browser POST (CSRF) that Origin or Sec-Fetch-Site reveal.

    Non-browser clients (curl, tests) send neither header and are allowed.
    """
    site = request.headers.get("sec-fetch-site", "none")
    origin = request.headers.get("origin")
    host = request.headers.get("host", "").lower()
    # "null": a sandboxed or file:// document
    cross = origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host)
    if cross or site not in {"same-origin", "none"}:
        raise HTTPException(403, "cross-site request refused")


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _capped(request: Request, limit: int, error: Callable[[], Exception]) -> Request:
    """``request`` with a body that raises ``error()`` once more than ``limit`` bytes arrive.

    The declared Content-Length is checked first; a chunked or lying client is cut off
    by counting the bytes as they arrive.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
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
