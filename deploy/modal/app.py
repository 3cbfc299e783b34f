"""The model step on a Modal GPU: the ``modal`` compute backend (``TWIML_COMPUTE=modal``).

Set-up, once (``pip install '.[modal]'`` from the repository root)::

    modal token new
    modal secret create twiml-storage AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        AWS_DEFAULT_REGION=... TWIML_STORAGE_ROOT=s3://bucket/prefix [TWIML_S3_ENDPOINT_URL=...]
    modal deploy deploy/modal/app.py               # optional, see TWIML_MODAL_DEPLOYED

and, only for gated hub models (the ``gpu-prod`` profile's diarisation pipeline)::

    modal secret create twiml-hf HF_TOKEN=hf_...
    export TWIML_MODAL_HF_SECRET=twiml-hf          # attaches it; unset, no HF secret is used

then start Dagster with ``TWIML_COMPUTE=modal`` (``TWIML_MODAL_GPU``: L4 by default). Each
model step runs ``modal run deploy/modal/app.py::run_model_step`` (dagster-modal): this
module's local entrypoint opens Dagster Pipes on the Dagster machine and calls
``ModelWorker.run_step`` in a GPU container, which runs the worker's
:func:`~twiml_assets.speech.worker.step_events` (the same function as the subprocess and
k8s backends); the events it yields stream back and are reported with
:func:`~twiml_assets.speech.worker.report`. Storage must be shared (``s3://``).

What the functions get (GPU, Volume, secrets, time limits) is plain data, :class:`Settings`
read from the environment and :data:`WORKER_OPTIONS` / :data:`COMPARISON_OPTIONS` made from
it; the image is :data:`IMAGE_RECIPE`, built by :func:`build_image`. The image installs the
locked dependencies with the ``engine`` extra (``uv sync --locked``, uv.lock), not the
project itself: its code is mounted at start-up.

Weights and hub caches live in the Volume ``twiml-models`` (mounted at ``/models``) and are
committed after a call that downloaded them. ``modal run`` makes a new app per step, whose
containers stop with it; with ``TWIML_MODAL_DEPLOYED=1`` the step calls the deployed app
instead (``modal deploy`` again after code changes), whose containers stay up for
``TWIML_MODAL_SCALEDOWN`` seconds (2 to 3600) with the models loaded. Other settings:
``TWIML_MODAL_VOLUME``, ``TWIML_MODAL_STORAGE_SECRET``, ``TWIML_MODAL_HF_SECRET``,
``TWIML_MODAL_TIMEOUT`` (seconds) and ``TWIML_MODAL_RETRIES``. Importing this module needs
no network and no credentials.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import modal

APP_NAME = "twiml-transcribe"
GPU_TYPES = ("L4", "A10G", "A100", "A100-80GB", "H100", "L40S", "T4")
# CUDA 12 with cuDNN 9: what CTranslate2 4.x (faster-whisper) loads; torch brings its own.
CUDA_IMAGE = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04"
PYTHON_VERSION = "3.11"
UV_VERSION = "0.13.8"
# gcc: webrtcvad (resemblyzer's VAD) is source-only and compiles at install.
APT_PACKAGES = ("ffmpeg", "libsndfile1", "gcc", "libc6-dev")
ENGINE_EXTRA = "engine"
"""The optional dependencies the GPU container needs besides the core (the speech engine)."""
MODELS_MOUNT = "/models"
CACHE_ENV = {
    "HF_HOME": f"{MODELS_MOUNT}/huggingface",  # faster-whisper and pyannote hub downloads
    "TORCH_HOME": f"{MODELS_MOUNT}/torch",
    "XDG_CACHE_HOME": f"{MODELS_MOUNT}/cache",
    "TWIML_MODELS_DIR": f"{MODELS_MOUNT}/twiml",  # the offline segmentation checkpoint
    # The locked venv has no pip; add_python's interpreter has (scripts/fetch_models.py).
    "TWIML_PIP_PYTHON": "/usr/local/bin/python3",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PIP_NO_CACHE_DIR": "1",
    "PYTHONUNBUFFERED": "1",
}
DEFAULT_PROFILE = "gpu-prod"
"""What a container warms when called without engine settings (env TWIML_PROFILE)."""
FETCH_SCRIPT = "/root/scripts/fetch_models.py"
NO_HF_SECRET_HINT = (
    "this Modal app has no Hugging Face token: create a secret with "
    "`modal secret create twiml-hf HF_TOKEN=hf_...` and set TWIML_MODAL_HF_SECRET=twiml-hf "
    "where `modal run` starts (and `modal deploy` with TWIML_MODAL_DEPLOYED=1), or use the "
    "gpu-offline profile (deploy/README.md)"
)

# Here (``modal run``, tests) the project is two levels up; in a container this file is
# /root/app.py, next to the packages, and the local paths below are never read.
_HERE = Path(__file__).resolve()
ROOT = _HERE.parents[2] if len(_HERE.parents) > 2 else _HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's packages, also for add_local_python_source


def gpu_type(value: str | None) -> str:
    """The Modal GPU type for ``TWIML_MODAL_GPU`` (default L4); an unknown one is an error."""
    wanted = (value or "L4").strip()
    for name in GPU_TYPES:
        if wanted.upper() == name:
            return name
    raise ValueError(f"TWIML_MODAL_GPU={wanted!r} is not one of {', '.join(GPU_TYPES)}")


def env_seconds(
    name: str,
    default: int,
    minimum: int = 1,
    maximum: int = 24 * 3600,
    environ: Mapping[str, str] = os.environ,
) -> int:
    """A whole number of seconds from the environment, ``minimum`` to ``maximum``."""
    raw = environ.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if not minimum <= value <= maximum:
        raise ValueError(
            f"{name}={raw!r} must be a whole number of seconds from {minimum} to {maximum}"
        )
    return value


# -- what the GPU functions get: plain data, from the environment ----------------------------
@dataclass(frozen=True)
class Settings:
    """The Modal settings of this app (``TWIML_MODAL_*``), as plain values."""

    gpu: str = "L4"
    volume: str = "twiml-models"
    storage_secret: str = "twiml-storage"
    hf_secret: str | None = None
    """The Modal secret with ``HF_TOKEN``: attached only when named (gated gpu-prod models)."""
    timeout: int = 3 * 3600
    scaledown_window: int = 300
    retries: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        return cls(
            gpu=gpu_type(environ.get("TWIML_MODAL_GPU")),
            volume=environ.get("TWIML_MODAL_VOLUME") or cls.volume,
            storage_secret=environ.get("TWIML_MODAL_STORAGE_SECRET") or cls.storage_secret,
            hf_secret=(environ.get("TWIML_MODAL_HF_SECRET") or "").strip() or None,
            timeout=env_seconds("TWIML_MODAL_TIMEOUT", cls.timeout, environ=environ),
            # Modal takes 2 s to 1 h.
            scaledown_window=env_seconds(
                "TWIML_MODAL_SCALEDOWN", cls.scaledown_window, 2, 3600, environ
            ),
            retries=int(environ.get("TWIML_MODAL_RETRIES") or cls.retries),
        )

    @property
    def secret_names(self) -> tuple[str, ...]:
        return (self.storage_secret, self.hf_secret) if self.hf_secret else (self.storage_secret,)

    def function_options(self) -> dict[str, Any]:
        """The keyword arguments both GPU functions take, with names for Modal's objects.

        No ``retries``: Modal applies no retry policy to generator methods, so
        :func:`remote_events` retries (per :data:`RETRIES`).
        """
        return {
            "gpu": self.gpu,
            "volumes": {MODELS_MOUNT: self.volume},
            "secrets": list(self.secret_names),
            "timeout": self.timeout,
        }


SETTINGS = Settings.from_env()
WORKER_OPTIONS: dict[str, Any] = {
    **SETTINGS.function_options(),
    "scaledown_window": SETTINGS.scaledown_window,
}
"""``@app.cls`` of :class:`ModelWorker`: containers stay warm ``scaledown_window`` seconds."""
COMPARISON_OPTIONS: dict[str, Any] = SETTINGS.function_options()
"""``@app.function`` of :func:`run_comparison`."""
RETRIES = modal.Retries(
    max_retries=SETTINGS.retries,
    initial_delay=10.0,
    backoff_coefficient=3.0,
    max_delay=60.0,
)
"""Retries of a failed call by :func:`run_model_step` (see :func:`remote_events`).

Modal restarts an input whose container was preempted by itself, but it applies no
``retries=`` policy to generator methods, so the entrypoint retries other failures.
"""


@cache
def modal_volume(name: str) -> modal.Volume:
    return modal.Volume.from_name(name, create_if_missing=True)


def modal_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with Modal's Volume and Secret objects in place of their names."""
    return {
        **options,
        "volumes": {path: modal_volume(name) for path, name in options["volumes"].items()},
        "secrets": [modal.Secret.from_name(name) for name in options["secrets"]],
    }


# -- the image: plain data, built by build_image ---------------------------------------------
@dataclass(frozen=True)
class ImageRecipe:
    """The GPU image, step by step (:func:`build_image`)."""

    base: str
    python: str
    apt_packages: tuple[str, ...]
    apt_env: dict[str, str]
    """Set (as ENV) before the apt layer: no prompt (tzdata) can stop the build."""
    project_dir: Path
    """Where pyproject.toml and uv.lock are: ``uv sync --locked`` installs the locked
    dependencies (not the project) with :attr:`extras`."""
    extras: tuple[str, ...]
    uv_options: str
    uv_version: str
    """The uv binary the build uses: the one scripts/setup.sh pins, which wrote uv.lock."""
    env: dict[str, str]
    local_files: dict[str, str] = field(default_factory=dict)
    """Local path -> container path, mounted at start-up."""
    local_packages: tuple[str, ...] = ()
    """The project's packages, mounted at start-up (Modal adds local files last)."""
    local_patterns: tuple[str, ...] = ("**/*.py", "**/*.yml")
    """Which files of :attr:`local_packages` are mounted (model_config.yml included)."""


IMAGE_RECIPE = ImageRecipe(
    base=CUDA_IMAGE,
    python=PYTHON_VERSION,
    apt_packages=APT_PACKAGES,
    apt_env={"DEBIAN_FRONTEND": "noninteractive"},
    project_dir=ROOT,
    extras=(ENGINE_EXTRA,),
    # --locked: a uv.lock behind pyproject.toml stops the build (as scripts/setup.sh does),
    # instead of installing stale pins; --no-cache: no copy of every wheel left in the image.
    uv_options="--locked --no-cache",
    uv_version=UV_VERSION,
    env=CACHE_ENV,
    local_files={str(ROOT / "scripts" / "fetch_models.py"): FETCH_SCRIPT},
    local_packages=("twiml_assets", "resources", "evaluation"),
)


def build_image(recipe: ImageRecipe, images: Any = modal.Image) -> modal.Image:
    """The Modal image of ``recipe`` (``images``: ``modal.Image``, or a stand-in in tests)."""
    image = (
        images.from_registry(recipe.base, add_python=recipe.python)
        .env(dict(recipe.apt_env))
        .apt_install(*recipe.apt_packages)
        .uv_sync(
            str(recipe.project_dir),
            extras=list(recipe.extras),
            frozen=False,
            extra_options=recipe.uv_options,
            uv_version=recipe.uv_version,
        )
        .env(dict(recipe.env))
    )
    for local, remote in recipe.local_files.items():
        image = image.add_local_file(local, remote)
    return image.add_local_python_source(
        *recipe.local_packages, ignore=~modal.FilePatternMatcher(*recipe.local_patterns)
    )


image = build_image(IMAGE_RECIPE)
volume = modal_volume(SETTINGS.volume)
app = modal.App(APP_NAME, image=image)


def log(text: str) -> None:
    print(f"twiml-transcribe: {text}", file=sys.stderr, flush=True)


# -- in the container ------------------------------------------------------------------------
def volume_state() -> frozenset[tuple[str, int, int]]:
    """The files in the Volume (path, size, mtime): changed by a download."""
    found = set()
    for folder, _, files in os.walk(MODELS_MOUNT):
        for name in files:
            with_path = os.path.join(folder, name)
            try:
                st = os.lstat(with_path)
            except OSError:
                continue
            found.add((with_path, st.st_size, st.st_mtime_ns))
    return frozenset(found)


def commit_if_changed(before: frozenset[tuple[str, int, int]]) -> bool:
    """Commit the Volume when something was written to it, so no later call downloads it."""
    if volume_state() == before:
        return False
    try:
        volume.commit()
    except Exception as exc:  # noqa: BLE001 - Modal commits on container exit as well
        log(f"could not commit the {SETTINGS.volume} volume now ({exc}); it is committed at exit")
        return False
    log(f"committed new weights to the {SETTINGS.volume} volume")
    return True


def engine_key(params: dict[str, Any]) -> str:
    """A call's engine settings, as the ``ModelWorker`` parameter (one warm pool per value)."""
    engine = {"asr": params.get("asr") or {}, "diariser": params.get("diariser") or {}}
    return json.dumps(engine, sort_keys=True, separators=(",", ":"))


def engine_resources(engine: str) -> tuple[Any, Any]:
    """The ASR and the diariser a call with this ``engine_key`` builds (worker.WorkerParams)."""
    from resources.asr import WhisperASR
    from resources.diarisation import PyannoteDiariser

    if engine:
        spec = json.loads(engine)
        return WhisperASR(**spec["asr"]), PyannoteDiariser(**spec["diariser"])
    profile = os.environ.get("TWIML_PROFILE") or DEFAULT_PROFILE
    return WhisperASR(profile=profile), PyannoteDiariser.for_profile(profile)


def ensure_offline_weights() -> None:
    """The offline segmentation checkpoint in the Volume (``scripts/fetch_models.py``)."""
    from resources.model_paths import segmentation_checkpoint

    if not segmentation_checkpoint(must_exist=False).exists():
        subprocess.run([sys.executable, FETCH_SCRIPT], check=True)


def warm_models(engine: str) -> list[str]:
    """Load the models of these engine settings into the per-process caches; what failed.

    A model that cannot load is logged and skipped: the call then fails with the real error.
    The diariser loads its models before it looks at the audio, and returns at once on a
    second of silence, so its cache keys are exactly those of a real call.
    """
    import numpy as np

    from resources.audio import SAMPLE_RATE

    failed: list[str] = []
    steps: list[tuple[str, Callable[[], Any]]] = [("offline weights", ensure_offline_weights)]
    try:
        asr, diariser = engine_resources(engine)
    except Exception as exc:  # noqa: BLE001 - the call will report the same error
        log(f"warm-up skipped: {type(exc).__name__}: {exc}")
        return ["settings"]
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    steps += [("ASR model", asr.load), ("diarisation models", lambda: diariser.diarise(silence))]
    for name, load in steps:
        started = time.perf_counter()
        try:
            load()
        except Exception as exc:  # noqa: BLE001 - tolerant by design
            failed.append(name)
            log(f"warm-up: {name} not loaded ({type(exc).__name__}: {exc})")
        else:
            log(f"warm-up: {name} ready in {time.perf_counter() - started:.1f} s")
    return failed


@app.cls(**modal_options(WORKER_OPTIONS))
class ModelWorker:
    """One GPU container: the models of one set of engine settings stay loaded in it."""

    # A real annotation (no ``from __future__ import annotations``): Modal reads its type.
    engine: str = modal.parameter(default="")

    @modal.enter()
    def warm(self) -> None:
        before = volume_state()
        warm_models(self.engine)
        commit_if_changed(before)

    @modal.method()
    def run_step(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The worker's step events for these Pipes parameters, streamed as they come."""
        from twiml_assets.speech import worker

        before = volume_state()
        try:
            yield from worker.step_events(params)
        finally:
            commit_if_changed(before)


# -- on the Dagster machine ------------------------------------------------------------------
def worker_class() -> Any:
    """This run's ``ModelWorker``, or the deployed app's with ``TWIML_MODAL_DEPLOYED=1``."""
    if (os.environ.get("TWIML_MODAL_DEPLOYED") or "").lower() in {"1", "true", "yes"}:
        return modal.Cls.from_name(APP_NAME, "ModelWorker")
    return ModelWorker


def retry_delay(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...) under :data:`RETRIES`."""
    delay = RETRIES.initial_delay.total_seconds() * RETRIES.backoff_coefficient ** (attempt - 1)
    return min(delay, RETRIES.max_delay.total_seconds())


def permanent_errors() -> tuple[type[BaseException], ...]:
    """Failures a retry cannot fix: the step's own, bad settings, the time limit."""
    from dagster import Failure
    from modal.exception import FunctionTimeoutError, InvalidError, NotFoundError

    from resources.model_paths import ModelNotFoundError

    return (
        Failure,
        ValueError,
        ModelNotFoundError,
        FunctionTimeoutError,
        InvalidError,
        NotFoundError,
    )


def with_hub_token_hint(exc: BaseException) -> BaseException:
    """``exc``, or a permanent failure that says how to give the app a Hugging Face token
    when a gated hub model could not load for want of one and no HF secret is attached."""
    from resources.failures import permanent
    from resources.model_paths import ModelNotFoundError

    if SETTINGS.hf_secret or not isinstance(exc, ModelNotFoundError) or "HF_TOKEN" not in str(exc):
        return exc
    return permanent(f"{' '.join(str(exc).split())}; {NO_HF_SECRET_HINT}")


def require_shared_storage(params: dict[str, Any]) -> None:
    """A Modal container cannot read this machine's files: the storage must be ``s3://``."""
    from resources.compute import require_shared_storage as require

    require(params, "modal")


def remote_events(
    params: dict[str, Any], warn: Callable[[str], Any] = log
) -> Iterator[dict[str, Any]]:
    """``ModelWorker.run_step`` in a GPU container, retried per :data:`RETRIES`."""
    require_shared_storage(params)
    worker = worker_class()(engine=engine_key(params))
    permanent = permanent_errors()
    attempt = 0
    while True:
        try:
            yield from worker.run_step.remote_gen(params)
            return
        except permanent as exc:
            hinted = with_hub_token_hint(exc)
            if hinted is exc:
                raise
            raise hinted from exc
        except Exception as exc:
            attempt += 1
            if attempt > RETRIES.max_retries:
                raise
            delay = retry_delay(attempt)
            warn(
                f"model step on Modal failed ({type(exc).__name__}: {exc}); "
                f"retry {attempt} of {RETRIES.max_retries} in {delay:.0f} s"
            )
            time.sleep(delay)


def model_step_main() -> None:
    """Open Dagster Pipes here and report what the GPU container's step yields.

    The same :func:`~twiml_assets.speech.worker.serve` as ``python -m
    twiml_assets.speech.worker``: a ``dagster.Failure`` (raised in the container, re-raised
    here by Modal as itself) ends ``modal run`` with the worker's permanent status and reason.
    """
    from twiml_assets.speech import worker

    status = worker.serve(lambda params, pipes: remote_events(params, warn=pipes.log.warning))
    if status:
        sys.exit(status)


run_model_step = app.local_entrypoint(name="run_model_step")(model_step_main)


# -- model_comparison: every configuration of one episode, in one GPU container ----------------
@app.function(**modal_options(COMPARISON_OPTIONS))
def run_comparison(params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The comparison worker's events (``twiml_assets.quality.worker``), streamed back.

    Each configuration loads its own models in its own process there, so there is nothing
    to keep warm; downloads still land in the Volume.
    """
    from twiml_assets.quality import worker

    before = volume_state()
    try:
        ensure_offline_weights()
        yield from worker.comparison_events(params)
    finally:
        commit_if_changed(before)


def comparison_main() -> None:
    """Like :func:`model_step_main`, for the ``model_comparison`` asset (no retries: a
    comparison is run by hand, and a failed configuration is a row of its table)."""
    from twiml_assets.speech import worker

    def events(params: dict[str, Any], _pipes: Any) -> Iterator[dict[str, Any]]:
        require_shared_storage(params)
        return run_comparison.remote_gen(params)

    status = worker.serve(events)
    if status:
        sys.exit(status)


run_model_comparison = app.local_entrypoint(name="run_model_comparison")(comparison_main)
