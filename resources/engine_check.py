"""Whether the speech engine (the ``engine`` extra) is installed in this interpreter.

The control-plane image leaves the engine out (no torch, pyannote or CTranslate2) when the
model step runs on Modal or in GPU pods. Whatever would need it there fails early, at
resource set-up, with one line that says what to install, instead of an ImportError deep in
a step.
"""

from __future__ import annotations

import importlib.util

ENGINE_MODULES = ("faster_whisper", "ctranslate2", "pyannote.audio", "torch", "resemblyzer")
INSTALL_HINT = "pip install '.[engine]' from the repository root (scripts/setup.sh installs it)"


class EngineMissingError(RuntimeError):
    """The speech engine is needed here and is not installed: one line, what to install."""


def missing_engine_modules() -> list[str]:
    """The engine's top-level modules that this interpreter cannot import."""
    return [name for name in ENGINE_MODULES if not installed(name)]


def require_engine(why: str, otherwise: str = "") -> None:
    """Raise :class:`EngineMissingError` when any engine module is missing.

    ``why`` says what needed it, e.g. ``"TWIML_COMPUTE=local runs the model step on this
    machine"``; ``otherwise``, the other way out, if there is one.
    """
    missing = missing_engine_modules()
    if missing:
        raise EngineMissingError(
            f"{why}, which needs the speech engine ({', '.join(missing)} not installed): "
            f"{INSTALL_HINT}" + (f"; or {otherwise}" if otherwise else "")
        )


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ValueError, ModuleNotFoundError):  # a parent package missing, or set to None
        return False
