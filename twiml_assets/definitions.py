"""The Dagster code location: assets, checks, jobs, sensor and resources.

Resources come from the ``TWIML_*`` environment variables (``twiml_assets.settings``) with
working defaults, so the same code runs the real TWIML feed, the offline demo and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Definitions, definitions, in_process_executor

from resources.asr import WhisperASR
from resources.compute import ComputeResource
from resources.diarisation import PyannoteDiariser
from resources.quality import QualityResource
from resources.storage import StorageResource
from twiml_assets.audio import definitions as audio
from twiml_assets.catchup import definitions as catchup
from twiml_assets.feed.definitions import definitions as feed_definitions
from twiml_assets.feed.resource import FeedResource
from twiml_assets.feed.sensor import CatchUpSettings
from twiml_assets.jobs import ALL_JOBS
from twiml_assets.outputs import definitions as outputs
from twiml_assets.quality import definitions as quality
from twiml_assets.settings import ConfigError, PlatformSettings
from twiml_assets.speakers import definitions as speakers
from twiml_assets.speech import definitions as speech


def resources_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The resources, configured from ``env`` (default: the process environment)."""
    return resources_from_settings(PlatformSettings.from_env(env))


def resources_from_settings(settings: PlatformSettings) -> dict[str, Any]:
    storage_kwargs = {"root": settings.storage_root} if settings.storage_root else {}
    try:
        quality = QualityResource(
            references_root=settings.references_dir, **settings.evaluation_limits()
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise ConfigError(f"evaluation limits: {exc}") from None
    try:  # the diarisation section of a model_config.yml profile
        diariser = PyannoteDiariser.for_profile(settings.profile)
    except ValueError as exc:
        raise ConfigError(f"TWIML_PROFILE: {exc}") from None
    return {
        "feed": FeedResource(url=settings.feed_url),
        "storage": StorageResource(**storage_kwargs),
        "asr": WhisperASR(profile=settings.profile),
        "compute": ComputeResource(
            backend=settings.compute,
            python=settings.worker_python,
            modal_gpu=settings.modal_gpu,
            k8s_image=settings.k8s_image,
            k8s_namespace=settings.k8s_namespace,
        ),
        "diariser": diariser,
        "quality": quality,
        "catch_up": CatchUpSettings(
            max_runs_per_tick=settings.max_runs_per_tick,
            max_in_flight=settings.max_in_flight,
            order=settings.catchup_order,
            max_attempts=settings.max_attempts,
            retry_cooldown_seconds=settings.retry_cooldown,
        ),
    }


def build_definitions(
    resources: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Definitions:
    """Every stage's definitions merged, with env-configured resources (any replaced by
    ``resources``)."""
    settings = PlatformSettings.from_env(env)
    return Definitions.merge(
        feed_definitions(settings),
        catchup.definitions(settings),
        audio.defs,
        speech.defs,
        speakers.defs,
        outputs.defs,
        quality.defs,
        Definitions(
            jobs=ALL_JOBS,
            resources={**resources_from_settings(settings), **(resources or {})},
            executor=in_process_executor,
        ),
    )


@definitions
def defs() -> Definitions:
    """The code location ``dg dev`` / ``dagster dev`` load (settings from the environment)."""
    return build_definitions()
