"""Web app settings: the ``web_*`` fields and ``DAGSTER_GRAPHQL_URL`` of the platform settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, urlunsplit

from twiml_assets.audio.uploads import DEFAULT_TYPES, UploadLimits
from twiml_assets.settings import PlatformSettings


def redact_url(url: str) -> str:
    """``url`` without user:password and query (safe for logs and pages)."""
    parts = urlsplit(url)
    host = f"{parts.hostname or ''}:{parts.port}" if parts.port else parts.hostname or ""
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class WebSettings:
    """Everything the app needs; the storage root and Dagster URL never reach a page whole."""

    graphql_url: str = PlatformSettings.model_fields["dagster_graphql_url"].default
    storage_root: str | None = None
    limits: UploadLimits = field(default_factory=UploadLimits)
    poll_seconds: float = 2.0
    graphql_timeout: float = 10.0
    max_attempts: int = PlatformSettings.model_fields["max_attempts"].default

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
        )
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
