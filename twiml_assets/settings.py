"""The code location's settings from ``TWIML_*`` environment variables, validated once.

One pydantic model, so every variable has one type, one default and one error message;
``definitions.py`` turns it into resources and the sensor. Empty variables count as unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from resources.quality import EvaluationLimits
from twiml_assets.feed.resource import DEFAULT_FEED_URL

PREFIX = "TWIML_"
OTHER_NAMES = ("DAGSTER_GRAPHQL_URL",)  # Dagster's own name for the webserver's endpoint
SECRET_NAMES = {"TWIML_WEB_SECRET"}  # never repeated in an error message


class ConfigError(ValueError):
    """An environment variable has a value the code location cannot use."""


class PlatformSettings(EvaluationLimits):
    """``TWIML_<FIELD>`` for each field (``TWIML_FEED_URL``, ...); the web app's too."""

    model_config = ConfigDict(
        alias_generator=lambda name: PREFIX + name.upper(), populate_by_name=True, extra="ignore"
    )

    feed_url: str = DEFAULT_FEED_URL
    storage_root: str | None = None
    profile: str | None = None
    references_dir: str | None = None
    sensor_interval: int = Field(default=300, ge=5)
    sensor_status: Literal["running", "stopped"] = "running"
    max_runs_per_tick: int = Field(default=3, ge=0)
    max_in_flight: int = Field(default=4, ge=0)
    catchup_order: Literal["newest_first", "oldest_first"] = "newest_first"
    max_attempts: int = Field(default=3, ge=1)
    retry_cooldown: float = Field(default=900.0, ge=0)
    compute: Literal["local", "subprocess", "modal", "k8s"] = "local"
    # subprocess: another interpreter for the worker, e.g. an environment with the engine
    # beside a control plane without it (bench/images.sh: the worker image's python).
    worker_python: str | None = None
    modal_gpu: str = "L4"
    k8s_image: str | None = None
    k8s_namespace: str | None = None
    web_max_upload_mb: float = Field(default=500.0, gt=0)
    web_upload_types: str | None = None
    web_poll_seconds: float = Field(default=2.0, ge=0.5)
    # Sign-in (docs/web.md, "Sign-in"): staff accounts, sessions, limits, audit, proxy mode.
    web_users_file: str = ".twiml_web/users.json"
    web_audit_file: str | None = None  # default: audit.jsonl next to the users file
    web_secret: SecretStr | None = Field(default=None, min_length=32)
    web_public_read: bool = True
    web_session_hours: float = Field(default=12.0, gt=0)
    web_cookie_secure: bool = False
    web_uploads_per_hour: int = Field(default=20, ge=0)
    web_login_max_failures: int = Field(default=5, ge=1)
    web_login_window_seconds: float = Field(default=900.0, gt=0)
    web_proxy_user_header: str | None = None
    web_trusted_proxies: str | None = None
    web_public_url: str | None = None  # the origin people open; loopback names when unset
    dagster_graphql_url: str = Field(
        default="http://127.0.0.1:3000/graphql", alias="DAGSTER_GRAPHQL_URL"
    )

    @model_validator(mode="before")
    @classmethod
    def _unset_empty(cls, values: Any) -> Any:
        if isinstance(values, Mapping):
            return {k: v for k, v in values.items() if not (isinstance(v, str) and not v.strip())}
        return values

    @field_validator("sensor_status", "catchup_order", "compute", mode="before")
    @classmethod
    def _lenient_choice(cls, value: Any) -> Any:
        return value.strip().lower().replace("-", "_") if isinstance(value, str) else value

    def evaluation_limits(self) -> dict[str, float]:
        """The quality resource's share of the settings."""
        return self.model_dump(include=set(EvaluationLimits.model_fields))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PlatformSettings:
        """Settings from ``env`` (default: the process environment), or a ConfigError."""
        env = os.environ if env is None else env
        try:
            ours = {k: v for k, v in env.items() if k.startswith(PREFIX) or k in OTHER_NAMES}
            return cls.model_validate(ours)
        except ValidationError as exc:
            raise ConfigError("; ".join(_describe(e, env) for e in exc.errors())) from None


def _describe(error: Any, env: Mapping[str, str]) -> str:
    """``TWIML_X='value': what is wrong`` for one validation error."""
    name = str(error["loc"][0]) if error["loc"] else ""
    if name in SECRET_NAMES:
        return f"{name}: {error['msg']}"
    return f"{name}={env[name]!r}: {error['msg']}" if name in env else error["msg"]
