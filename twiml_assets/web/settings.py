"""Web app settings from the environment, validated once at start-up.

=========================  =====================================  ==============================
variable                   meaning                                default
=========================  =====================================  ==============================
DAGSTER_GRAPHQL_URL        Dagster webserver's GraphQL endpoint   http://127.0.0.1:3000/graphql
TWIML_STORAGE_ROOT         the storage root the pipeline writes   data
TWIML_WEB_MAX_UPLOAD_MB    largest accepted upload, in MiB        500
TWIML_WEB_UPLOAD_TYPES     accepted containers (by content)       all: mp3,wav,flac,ogg,opus,
                                                                  m4a,aac,webm
TWIML_WEB_POLL_SECONDS     how often a page polls run progress    2
=========================  =====================================  ==============================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from twiml_assets.uploads import DEFAULT_TYPES, UploadLimits

DEFAULT_GRAPHQL_URL = "http://127.0.0.1:3000/graphql"


def redact_url(url: str) -> str:
    """``url`` without user:password and query (safe for logs and pages)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class WebSettings:
    """Everything the app needs; the storage root and Dagster URL never reach a page whole."""

    graphql_url: str = DEFAULT_GRAPHQL_URL
    storage_root: str | None = None
    limits: UploadLimits = field(default_factory=UploadLimits)
    poll_seconds: float = 2.0
    graphql_timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> WebSettings:
        env = os.environ if env is None else env
        try:
            max_mb = float(env.get("TWIML_WEB_MAX_UPLOAD_MB") or 500)
            poll = float(env.get("TWIML_WEB_POLL_SECONDS") or 2)
        except ValueError as exc:
            raise ValueError(f"TWIML_WEB_MAX_UPLOAD_MB / TWIML_WEB_POLL_SECONDS: {exc}") from None
        types = tuple(
            t.strip().lower().lstrip(".")
            for t in (env.get("TWIML_WEB_UPLOAD_TYPES") or ",".join(DEFAULT_TYPES)).split(",")
            if t.strip()
        )
        values: dict[str, object] = {
            "graphql_url": env.get("DAGSTER_GRAPHQL_URL") or DEFAULT_GRAPHQL_URL,
            "storage_root": env.get("TWIML_STORAGE_ROOT") or None,
            "limits": UploadLimits(max_bytes=int(max_mb * 1024 * 1024), types=types),
            "poll_seconds": max(0.5, poll),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
