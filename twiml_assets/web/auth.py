"""Who is asking: signed session cookies, CSRF tokens, and the trusted-proxy user header.

- A session is an itsdangerous-signed cookie ``{"u": name, "s": id, "c": csrf, "h": hash
  tag}`` (HttpOnly, SameSite=Lax, Path=/, Max-Age, Secure on https). ``h`` ties it to the
  user's current password hash, so removing a user or replacing a password ends their
  sessions; signing out records ``s`` as ended (``EndedSessions``, kept on disk), so a
  copy of the cookie stops working too.
- Every POST carries a CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``):
  the session's random ``c``; for the sign-in form, the token of a signed pre-session
  cookie; for a proxy user (no session), a signed, timed token of the user name.
- Behind a trusted proxy (``TWIML_WEB_TRUSTED_PROXIES``) the user may come from
  ``TWIML_WEB_PROXY_USER_HEADER``, and ``X-Forwarded-Proto``/``-For`` are believed; from any
  other peer those headers are ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import HTTPException
from itsdangerous import BadData, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from twiml_assets.web.settings import WebSettings
from twiml_assets.web.users import NAME_RE, UsersError, UserStore, write_private

log = logging.getLogger(__name__)

SESSION_COOKIE = "twiml_session"
LOGIN_COOKIE = "twiml_login"
LOGIN_COOKIE_SECONDS = 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
OPEN_PATHS = ("/login", "/logout", "/healthz")  # reachable without signing in (and /static)
UNSAFE_NEXT = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True, slots=True)
class Viewer:
    """The person behind a request: ``name`` None when anonymous; ``via`` session or proxy."""

    name: str | None = None
    via: str = ""
    csrf: str = ""
    session: str = ""  # the session id (``s``) of a cookie session

    @property
    def signed_in(self) -> bool:
        return self.name is not None


ANONYMOUS = Viewer()


class SignInRequired(Exception):
    """The route needs a signed-in user; answered 401 (JSON) or 303 to /login (pages)."""

    def __init__(self, next_path: str = "/"):
        super().__init__("sign in first")
        self.next_path = next_path


def safe_next(value: str | None) -> str:
    """``value`` if it is a path on this site (not ``//host``, ``/\\host``, a URL), else ``/``."""
    if not value or len(value) > 2000 or not value.startswith("/") or UNSAFE_NEXT.search(value):
        return "/"
    parts = urlsplit(value)
    if value.startswith("//") or parts.scheme or parts.netloc:
        return "/"
    if parts.path in ("/login", "/logout"):
        return "/"
    return value


def load_secret(settings: WebSettings) -> str:
    """``TWIML_WEB_SECRET``, else the generated one kept next to the users file (0600)."""
    if settings.secret:
        return settings.secret
    path: Path = settings.secret_file
    try:
        secret = path.read_text(encoding="utf-8").strip()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(32)
    write_private(path, secret + "\n")
    log.warning(
        "TWIML_WEB_SECRET is unset: generated a session signing secret in %s (kept for restarts)",
        path,
    )
    return secret


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in ``text``; an IPv4-mapped IPv6 one (``::ffff:10.0.0.2``, what a
    dual-stack socket reports for an IPv4 client) as the IPv4 address it carries."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class EndedSessions:
    """Session ids ended by signing out, each kept until its cookie would have expired.

    A signed cookie is valid wherever it is copied to; this list is what makes signing out
    end it on the server. It is written (0600, atomically) to a file next to the users file
    on every sign-out and read at start, so a restart does not bring an ended session back.
    """

    def __init__(self, path: Path, lifetime: float, clock: Callable[[], float] = time.time):
        self.path, self.lifetime, self.clock = Path(path), lifetime, clock
        self._lock = threading.Lock()
        self._ended = self._read()

    def _read(self) -> dict[str, float]:
        """{id: expiry}; an unreadable file is logged and taken as empty (the next sign-out
        rewrites it)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("cannot read the ended sessions %s: %s", self.path, exc)
            return {}
        ended = data.get("ended") if isinstance(data, dict) else None
        if not isinstance(ended, dict):
            log.error('%s: expected {"ended": {...}}', self.path)
            return {}
        now = self.clock()
        return {
            str(k): float(v) for k, v in ended.items() if isinstance(v, int | float) and v > now
        }

    def __contains__(self, session: str) -> bool:
        with self._lock:
            return session in self._ended

    def end(self, session: str) -> None:
        """Refuse ``session`` from now on; a failed write is logged (ended until a restart)."""
        with self._lock:
            now = self.clock()
            self._ended = {k: v for k, v in self._ended.items() if v > now}
            self._ended[session] = now + self.lifetime
            try:  # under the lock: two sign-outs at once cannot write in the wrong order
                write_private(self.path, json.dumps({"ended": self._ended}, indent=1) + "\n")
            except OSError as exc:
                log.error("cannot write the ended sessions %s: %s", self.path, exc)


class Auth:
    """Sessions, CSRF and proxy trust for one app; its state is the users file and the ended
    sessions."""

    def __init__(self, settings: WebSettings, users: UserStore, secret: str):
        self.settings = settings
        self.users = users
        self.ended = EndedSessions(settings.ended_sessions_file, settings.session_seconds)
        self._secret = secret.encode()
        self.sessions = URLSafeTimedSerializer(secret, salt="twiml-session")
        self.login_tokens = URLSafeTimedSerializer(secret, salt="twiml-login-form")
        self.proxy_tokens = URLSafeTimedSerializer(secret, salt="twiml-proxy-csrf")

    # -- addresses and transport ----------------------------------------------------------
    def peer(self, request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def from_trusted_proxy(self, request: Request) -> bool:
        ip = _ip(self.peer(request))
        return ip is not None and any(ip in net for net in self.settings.trusted_proxies)

    def address(self, request: Request) -> str:
        """The client's address: the peer, or the proxy's last ``X-Forwarded-For`` entry
        (IPv4-mapped addresses as IPv4, so one client has one rate-limit key)."""
        if self.from_trusted_proxy(request):
            forwarded = _ip(request.headers.get("x-forwarded-for", "").split(",")[-1])
            if forwarded is not None:
                return str(forwarded)
        peer = self.peer(request)
        ip = _ip(peer)
        return str(ip) if ip is not None else peer

    def scheme(self, request: Request) -> str:
        """http or https as the browser sees it: https from a trusted proxy's
        ``X-Forwarded-Proto``, else the URL's scheme."""
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        if proto == "https" and self.from_trusted_proxy(request):
            return "https"
        return request.url.scheme

    def is_https(self, request: Request) -> bool:
        return self.settings.cookie_secure or self.scheme(request) == "https"

    # -- who is asking ------------------------------------------------------------------
    def viewer(self, request: Request) -> Viewer:
        """The request's user (computed once per request)."""
        cached = getattr(request.state, "viewer", None)
        if cached is None:
            cached = request.state.viewer = self._viewer(request)
        return cached

    def _viewer(self, request: Request) -> Viewer:
        header = self.settings.proxy_user_header
        if header and self.settings.trusted_proxies and self.from_trusted_proxy(request):
            name = request.headers.get(header, "").strip().lower()
            if NAME_RE.match(name):
                return Viewer(name, "proxy", self.proxy_tokens.dumps(name))
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return ANONYMOUS
        try:
            data = self.sessions.loads(raw, max_age=self.settings.session_seconds)
            name, session, csrf, tag = data["u"], data["s"], data["c"], data["h"]
        except (BadData, KeyError, TypeError):
            return ANONYMOUS
        if not isinstance(session, str) or session in self.ended:
            return ANONYMOUS
        try:
            user = self.users.get(name)
        except UsersError:
            user = None
        if user is None or not hmac.compare_digest(tag, self.hash_tag(user.password_hash)):
            return ANONYMOUS
        return Viewer(user.name, "session", csrf, session)

    def require_user(self, request: Request, next_path: str = "/") -> Viewer:
        viewer = self.viewer(request)
        if not viewer.signed_in:
            raise SignInRequired(next_path)
        return viewer

    def hash_tag(self, password_hash: str) -> str:
        return hmac.new(self._secret, password_hash.encode(), hashlib.sha256).hexdigest()[:16]

    # -- CSRF -----------------------------------------------------------------------------
    def check_csrf(self, viewer: Viewer, sent: object) -> None:
        """Raise 403 unless ``sent`` is ``viewer``'s CSRF token."""
        ok = False
        if isinstance(sent, str) and sent and viewer.signed_in:
            if viewer.via == "proxy":
                try:
                    name = self.proxy_tokens.loads(sent, max_age=self.settings.session_seconds)
                    ok = isinstance(name, str) and hmac.compare_digest(
                        name.encode(), str(viewer.name).encode()
                    )
                except BadData:
                    ok = False
            else:
                ok = hmac.compare_digest(sent.encode(), viewer.csrf.encode())
        if not ok:
            raise HTTPException(403, "missing or invalid CSRF token; reload the page and retry")

    def login_token(self, request: Request) -> tuple[str, str | None]:
        """(the sign-in form's token, a new pre-session cookie value or None to keep it)."""
        token = self._login_cookie_token(request)
        if token:
            return token, None
        token = secrets.token_urlsafe(32)
        return token, self.login_tokens.dumps(token)

    def check_login_token(self, request: Request, sent: object) -> bool:
        token = self._login_cookie_token(request)
        return bool(
            token and isinstance(sent, str) and hmac.compare_digest(sent.encode(), token.encode())
        )

    def _login_cookie_token(self, request: Request) -> str | None:
        raw = request.cookies.get(LOGIN_COOKIE)
        if not raw:
            return None
        try:
            token = self.login_tokens.loads(raw, max_age=LOGIN_COOKIE_SECONDS)
        except BadData:
            return None
        return token if isinstance(token, str) else None

    # -- cookies --------------------------------------------------------------------------
    def set_cookie(
        self, response: Response, request: Request, name: str, value: str, max_age: int
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.is_https(request),
        )

    def clear_cookie(self, response: Response, request: Request, name: str) -> None:
        response.delete_cookie(
            name, path="/", httponly=True, samesite="lax", secure=self.is_https(request)
        )

    def start_session(self, response: Response, request: Request, name: str) -> None:
        """A fresh session (new CSRF token: nothing from before sign-in carries over)."""
        user = self.users.get(name)
        if user is None:
            raise SignInRequired()
        value = self.sessions.dumps(
            {
                "u": user.name,
                "s": secrets.token_urlsafe(16),
                "c": secrets.token_urlsafe(32),
                "h": self.hash_tag(user.password_hash),
            }
        )
        self.set_cookie(
            response, request, SESSION_COOKIE, value, int(self.settings.session_seconds)
        )
        self.clear_cookie(response, request, LOGIN_COOKIE)

    def end_session(self, response: Response, request: Request, viewer: Viewer) -> None:
        """Sign out: the session ends on the server (copies of the cookie too), the cookie goes."""
        if viewer.session:
            self.ended.end(viewer.session)
        self.clear_cookie(response, request, SESSION_COOKIE)
