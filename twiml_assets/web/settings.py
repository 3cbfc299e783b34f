"""Web app settings: the ``web_*`` fields and ``DAGSTER_GRAPHQL_URL`` of the platform settings."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from twiml_assets.audio.uploads import DEFAULT_TYPES, UploadLimits
from twiml_assets.settings import PlatformSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_USERS_FILE = Path(PlatformSettings.model_fields["web_users_file"].default)
DEFAULT_PORTS = {"http": 80, "https": 443}


def redact_url(url: str) -> str:
    """``url`` without user:password and query (safe for logs and pages)."""
    parts = urlsplit(url)
    host = f"{parts.hostname or ''}:{parts.port}" if parts.port else parts.hostname or ""
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_networks(text: str | None) -> tuple[Network, ...]:
    """``10.0.0.5, 172.18.0.0/16, ::1`` as networks (a bare address is a /32 or /128)."""
    networks = []
    for item in (text or "").split(","):
        if item.strip():
            try:
                network = ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"TWIML_WEB_TRUSTED_PROXIES: {item.strip()[:50]!r} is not an IP address or "
                    "network"
                ) from None
            mapped = getattr(network.network_address, "ipv4_mapped", None)
            if mapped is not None and network.prefixlen >= 96:  # ::ffff:10.0.0.0/104
                network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
            networks.append(network)
    return tuple(networks)


def parse_public_url(text: str | None) -> str | None:
    """``HTTPS://Transcripts.example.org:443/`` as its origin, ``https://transcripts.example.org``.

    The Host header and a POST's Origin are checked against it (http.Site), so it must be
    an http(s) URL with a host name and nothing after it but ``/``.
    """
    text = (text or "").strip()
    if not text:
        return None
    parts = urlsplit(text)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    extra = "@" in parts.netloc or parts.path not in {"", "/"} or parts.query or parts.fragment
    if scheme not in DEFAULT_PORTS or not host or port == 0 or extra:
        raise ValueError(
            f"TWIML_WEB_PUBLIC_URL: {text[:100]!r} is not an origin like "
            "https://transcripts.example.org"
        )
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, DEFAULT_PORTS[scheme]) else "")


@dataclass(frozen=True, slots=True)
class WebSettings:
    """Everything the app needs; the storage root and Dagster URL never reach a page whole.

    ``users_file`` also places the generated session secret (``secret`` next to it), the
    ended sessions (``ended_sessions.json``) and, unless ``audit_file`` is set, the audit
    log (``audit.jsonl``). ``public_url`` is an origin (``parse_public_url``).
    """

    graphql_url: str = PlatformSettings.model_fields["dagster_graphql_url"].default
    storage_root: str | None = None
    limits: UploadLimits = field(default_factory=UploadLimits)
    poll_seconds: float = 2.0
    graphql_timeout: float = 10.0
    max_attempts: int = PlatformSettings.model_fields["max_attempts"].default
    users_file: Path = DEFAULT_USERS_FILE
    audit_file: Path | None = None
    secret: str | None = field(default=None, repr=False)
    public_read: bool = True
    session_seconds: float = 12 * 3600.0
    cookie_secure: bool = False
    uploads_per_hour: int = 20
    login_max_failures: int = 5
    login_window_seconds: float = 900.0
    proxy_user_header: str | None = None
    trusted_proxies: tuple[Network, ...] = ()
    public_url: str | None = None

    @property
    def secret_file(self) -> Path:
        return self.users_file.parent / "secret"

    @property
    def ended_sessions_file(self) -> Path:
        return self.users_file.parent / "ended_sessions.json"

    @property
    def audit_path(self) -> Path:
        return self.audit_file or self.users_file.parent / "audit.jsonl"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> WebSettings:
        """Settings from ``env`` (default: the process environment), ``overrides`` on top."""
        platform = PlatformSettings.from_env(env)
        types = (platform.web_upload_types or ",".join(DEFAULT_TYPES)).split(",")
        settings = cls(
            graphql_url=platform.dagster_graphql_url,
            storage_root=platform.storage_root,
            limits=UploadLimits(
                max_bytes=int(platform.web_max_upload_mb * 1024 * 1024),
                types=tuple(t.strip().lower().lstrip(".") for t in types if t.strip()),
            ),
            poll_seconds=platform.web_poll_seconds,
            max_attempts=platform.max_attempts,
            users_file=Path(platform.web_users_file).expanduser(),
            audit_file=Path(platform.web_audit_file).expanduser()
            if platform.web_audit_file
            else None,
            secret=platform.web_secret.get_secret_value() if platform.web_secret else None,
            public_read=platform.web_public_read,
            session_seconds=platform.web_session_hours * 3600,
            cookie_secure=platform.web_cookie_secure,
            uploads_per_hour=platform.web_uploads_per_hour,
            login_max_failures=platform.web_login_max_failures,
            login_window_seconds=platform.web_login_window_seconds,
            proxy_user_header=(platform.web_proxy_user_header or "").strip() or None,
            trusted_proxies=parse_networks(platform.web_trusted_proxies),
            public_url=parse_public_url(platform.web_public_url),
        )
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
