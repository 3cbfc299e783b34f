"""The Dagster code location: assets, checks, jobs, sensor and resources.

Loaded by ``dagster dev -w workspace.yaml`` (and ``dagster definitions validate``) as
module ``twiml_assets.definitions``. Resources are built from environment variables
with working defaults, so the same code runs the real TWIML feed, the offline demo
(``TWIML_FEED_URL`` pointing at 127.0.0.1) and the tests:

=========================  ====================================================  ==========
variable                   meaning                                               default
=========================  ====================================================  ==========
TWIML_FEED_URL             RSS/Atom feed to follow                               TWIML feed
TWIML_STORAGE_ROOT         local dir or s3://bucket/prefix for all outputs       data
TWIML_PROFILE              model profile of model_config.yml                     cpu-dev
TWIML_REFERENCES_DIR       reference dir, searched before <root>/references      none
TWIML_<M>_WARN / _ERROR    evaluation limits, M in WER DER CPWER WDER            see below
TWIML_SENSOR_INTERVAL      seconds between feed checks                           300
TWIML_SENSOR_STATUS        running | stopped (sensor's default state)            running
TWIML_MAX_RUNS_PER_TICK    runs the sensor requests per tick at most             3
TWIML_MAX_IN_FLIGHT        no new requests while this many runs are in flight    4
TWIML_CATCHUP_ORDER        newest_first | oldest_first                           newest_first
=========================  ====================================================  ==========

Evaluation limits (``EvaluationThresholds``): a check fails with WARN above ``_WARN`` and with
ERROR above ``_ERROR``; defaults WER 0.15/0.35, DER 0.15/0.35, cpWER 0.25/0.5, WDER 0.1/0.3.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dagster import Definitions, in_process_executor

from resources.asr import WhisperASR
from resources.diarisation import PyannoteDiariser
from resources.model_registry import profile_settings
from resources.storage import StorageResource
from twiml_assets.assets import ALL_ASSETS
from twiml_assets.assets.evaluation import EVALUATION_CHECKS, EvaluationThresholds
from twiml_assets.checks import ALL_CHECKS, QualityResource
from twiml_assets.feed import DEFAULT_FEED_URL, FeedResource
from twiml_assets.jobs import ALL_JOBS
from twiml_assets.sensors import CatchUpSettings, build_feed_sensor


class ConfigError(ValueError):
    """An environment variable has a value the code location cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number; unset it or use e.g. {default}"
        ) from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower().replace("-", "_") or default
    if raw not in choices:
        raise ConfigError(f"{name}={env.get(name)!r}: choose one of {', '.join(choices)}")
    return raw


def diariser_for_profile(profile: str | None) -> PyannoteDiariser:
    """The diariser with the ``diarisation`` section of a model_config.yml profile applied."""
    try:
        settings = profile_settings(profile, "diarisation")
    except ValueError as exc:
        raise ConfigError(f"TWIML_PROFILE: {exc}") from None
    fields = PyannoteDiariser.model_fields
    return PyannoteDiariser(**{k: v for k, v in settings.items() if k in fields})


def _thresholds(env: Mapping[str, str]) -> EvaluationThresholds:
    try:
        return EvaluationThresholds.from_env(env)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise ConfigError(f"evaluation limits: {exc}") from None


def resources_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The resources, configured from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    storage_kwargs = {"root": env["TWIML_STORAGE_ROOT"]} if env.get("TWIML_STORAGE_ROOT") else {}
    return {
        "feed": FeedResource(url=env.get("TWIML_FEED_URL") or DEFAULT_FEED_URL),
        "storage": StorageResource(**storage_kwargs),
        "asr": WhisperASR(profile=env.get("TWIML_PROFILE") or None),
        "diariser": diariser_for_profile(env.get("TWIML_PROFILE") or None),
        "quality": QualityResource(references_root=env.get("TWIML_REFERENCES_DIR") or None),
        "evaluation_thresholds": _thresholds(env),
        "catch_up": CatchUpSettings(
            max_runs_per_tick=_int(env, "TWIML_MAX_RUNS_PER_TICK", 3),
            max_in_flight=_int(env, "TWIML_MAX_IN_FLIGHT", 4),
            order=_choice(
                env, "TWIML_CATCHUP_ORDER", "newest_first", ("newest_first", "oldest_first")
            ),
        ),
    }


def build_definitions(
    resources: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Definitions:
    """Definitions with env-configured resources, any of them replaced by ``resources``."""
    env = os.environ if env is None else env
    merged = {**resources_from_env(env), **(resources or {})}
    sensor = build_feed_sensor(
        minimum_interval_seconds=_int(env, "TWIML_SENSOR_INTERVAL", 300, minimum=5),
        running_by_default=_choice(env, "TWIML_SENSOR_STATUS", "running", ("running", "stopped"))
        == "running",
    )
    return Definitions(
        assets=ALL_ASSETS,
        asset_checks=[*ALL_CHECKS, *EVALUATION_CHECKS],
        jobs=ALL_JOBS,
        sensors=[sensor],
        resources=merged,
        executor=in_process_executor,
    )


defs = build_definitions()
