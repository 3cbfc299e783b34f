"""The orchestration tests' code location: the project's, with stand-in models.

``dagster code-server start -m tests.standin_definitions`` serves the very definitions
``twiml_assets.definitions`` serves (``build_definitions``: the same assets, checks, jobs,
sensors, executor and env-configured resources), except that the ``asr`` and ``diariser``
resources are the stand-ins of ``tests/standin_models.py`` and speaker naming uses the
stand-in voice encoder. The model step is still the ``transcribe_and_diarise`` asset, in
the gpu pool, decoding the episode for real, writing the same files; it only loads no
model, so a run costs seconds instead of a model load per run worker. Used by
``tests/chaos_harness.py`` and ``tests/test_daemon_runs.py``.

``STANDIN_MODEL_PACE`` (default :data:`DEFAULT_PACE`): wall seconds the model step
spends per second of audio (split between the two stand-ins), so that a test can signal
the worker while it is in the model step.
"""

from __future__ import annotations

import os

import dagster as dg

from tests.standin_models import StandInASR, StandInDiariser, install_standin_voice_encoder
from twiml_assets.definitions import build_definitions
from twiml_assets.settings import PlatformSettings

MODULE = "tests.standin_definitions"
PACE_ENV = "STANDIN_MODEL_PACE"
DEFAULT_PACE = 0.25  # a 6 s episode: 1.5 s in the model step, and no model to load


def standin_resources(pace: float | None = None) -> dict[str, object]:
    """The stand-in ``asr`` and ``diariser``, on ``$TWIML_PROFILE``'s settings."""
    pace = float(os.environ.get(PACE_ENV, DEFAULT_PACE)) if pace is None else pace
    profile = PlatformSettings.from_env().profile
    return {
        "asr": StandInASR(profile=profile, seconds_per_audio_second=pace / 2),
        "diariser": StandInDiariser.for_profile(profile, seconds_per_audio_second=pace / 2),
    }


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded in the code server and in every run worker it starts."""
    install_standin_voice_encoder()
    return build_definitions(resources=standin_resources())
