"""HTTP-level safety for the web app: body size cap, same-origin POSTs, response headers.

Kept apart from the routes so each rule is visible in one place and testable alone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twiml_assets.audio.uploads import too_large

# Multipart framing and the small form fields on top of the file itself.
FORM_OVERHEAD = 64 * 1024

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
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def same_origin(request: Request) -> bool:
    """False for a cross-site browser POST (CSRF): Origin or Sec-Fetch-Site say so.

    Non-browser clients (curl, tests) send neither header and are allowed.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in {"same-origin", "none"}:
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin == "null":  # sandboxed or file:// documents
        return False
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower()


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


async def read_limited_form(request: Request, max_file_bytes: int) -> FormData:
    """Parse a multipart form, aborting once the body exceeds the limit.

    The declared Content-Length is checked first; a chunked or lying client is cut
    off by counting the bytes as they arrive, so an oversized upload never fills the
    disk with Starlette's spooled temporary files.
    """
    limit = max_file_bytes + FORM_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(max_file_bytes)
    received = 0
    receive = request.receive

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(max_file_bytes)
        return message

    limited = Request(request.scope, counting_receive)
    return await limited.form(max_files=1, max_fields=8)
