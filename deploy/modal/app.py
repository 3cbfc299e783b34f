"""The model step on a Modal GPU: the ``modal`` compute backend (``TWIML_COMPUTE=modal``).

Set-up, once (``pip install 'twiml-transcribe[modal]'``)::

    modal token new
    modal secret create twiml-storage AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        AWS_DEFAULT_REGION=... TWIML_STORAGE_ROOT=s3://bucket/prefix [TWIML_S3_ENDPOINT_URL=...]
    modal secret create twiml-hf HF_TOKEN=hf_...   # gated hub models (gpu-prod)
    modal deploy deploy/modal/app.py               # optional, see TWIML_MODAL_DEPLOYED

then start Dagster with ``TWIML_COMPUTE=modal`` (``TWIML_MODAL_GPU``: L4 by default). Each
model step runs ``modal run deploy/modal/app.py::run_model_step`` (dagster-modal): this
module's local entrypoint opens Dagster Pipes on the Dagster machine and calls
``ModelWorker.run_step`` in a GPU container, which runs the worker's
:func:`~twiml_assets.speech.worker.step_events` (the same function as the subprocess and
k8s backends); the events it yields stream back and are reported with
:func:`~twiml_assets.speech.worker.report`. Storage must be shared (``s3://``).

Weights and hub caches live in the Volume ``twiml-models`` (mounted at ``/models``) and are
committed after a call that downloaded them. ``modal run`` makes a new app per step, whose
containers stop with it; with ``TWIML_MODAL_DEPLOYED=1`` the step calls the deployed app
instead (``modal deploy`` again after code changes), whose containers stay up for
``TWIML_MODAL_SCALEDOWN`` seconds with the models loaded. Other settings: ``TWIML_MODAL_VOLUME``,
``TWIML_MODAL_STORAGE_SECRET``, ``TWIML_MODAL_HF_SECRET``, ``TWIML_MODAL_TIMEOUT`` (seconds)
and ``TWIML_MODAL_RETRIES``. Importing this module needs no network and no credentials.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import modal

APP_NAME = "twiml-transcribe"
GPU_TYPES = ("L4", "A10G", "A100", "A100-80GB", "H100", "L40S", "T4")
# CUDA 12 with cuDNN 9: what CTranslate2 4.x (faster-whisper) loads; torch brings its own.
CUDA_IMAGE = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04"
# gcc: webrtcvad (resemblyzer's VAD) is source-only and compiles at install.
APT_PACKAGES = ("ffmpeg", "libsndfile1", "gcc", "libc6-dev")
MODELS_MOUNT = "/models"
CACHE_ENV = {
    "HF_HOME": f"{MODELS_MOUNT}/huggingface",  # faster-whisper and pyannote hub downloads
    "TORCH_HOME": f"{MODELS_MOUNT}/torch",
    "XDG_CACHE_HOME": f"{MODELS_MOUNT}/cache",
    "TWIML_MODELS_DIR": f"{MODELS_MOUNT}/twiml",  # the offline segmentation checkpoint
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PIP_NO_CACHE_DIR": "1",
    "PYTHONUNBUFFERED": "1",
}
DEFAULT_PROFILE = "gpu-prod"
"""What a container warms when called without engine settings (env TWIML_PROFILE)."""
FETCH_SCRIPT = "/root/scripts/fetch_models.py"

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


def env_seconds(name: str, default: int, maximum: int = 24 * 3600) -> int:
    """A whole number of seconds from the environment, 1 to ``maximum``."""
    raw = os.environ.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise ValueError(f"{name}={raw!r} must be a whole number of seconds from 1 to {maximum}")
    return value


GPU = gpu_type(os.environ.get("TWIML_MODAL_GPU"))
VOLUME_NAME = os.environ.get("TWIML_MODAL_VOLUME") or "twiml-models"
STORAGE_SECRET = os.environ.get("TWIML_MODAL_STORAGE_SECRET") or "twiml-storage"
HF_SECRET = os.environ.get("TWIML_MODAL_HF_SECRET") or "twiml-hf"
TIMEOUT_S = env_seconds("TWIML_MODAL_TIMEOUT", 3 * 3600)
SCALEDOWN_S = env_seconds("TWIML_MODAL_SCALEDOWN", 300, maximum=3600)
RETRIES = modal.Retries(
    max_retries=int(os.environ.get("TWIML_MODAL_RETRIES") or 2),
    initial_delay=10.0,
    backoff_coefficient=3.0,
    max_delay=60.0,
)
"""Retries of a failed call by :func:`run_model_step` (see :func:`remote_events`).

Modal restarts an input whose container was preempted by itself, but it applies no
``retries=`` policy to generator methods, so the entrypoint retries other failures.
"""

image = (
    modal.Image.from_registry(CUDA_IMAGE, add_python="3.11")
    .apt_install(*APT_PACKAGES)
    # The project's pinned stack (dagster brings dagster-pipes), not the project itself:
    .pip_install_from_pyproject(str(ROOT / "pyproject.toml"))
    .env(CACHE_ENV)
    # Mounted at start-up (Modal adds local files last): the code, model_config.yml included.
    .add_local_file(ROOT / "scripts" / "fetch_models.py", FETCH_SCRIPT)
    .add_local_python_source(
        "twiml_assets",
        "resources",
        "evaluation",
        ignore=~modal.FilePatternMatcher("**/*.py", "**/*.yml"),
    )
)
volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
secrets = [modal.Secret.from_name(STORAGE_SECRET), modal.Secret.from_name(HF_SECRET)]
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
        log(f"could not commit the {VOLUME_NAME} volume now ({exc}); it is committed at exit")
        return False
    log(f"committed new weights to the {VOLUME_NAME} volume")
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


@app.cls(
    gpu=GPU,
    volumes={MODELS_MOUNT: volume},
    secrets=secrets,
    timeout=TIMEOUT_S,
    scaledown_window=SCALEDOWN_S,
)
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
        except permanent:
            raise
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


@app.local_entrypoint()
def run_model_step() -> None:
    """Open Dagster Pipes here and report what the GPU container's step yields.

    The same :func:`~twiml_assets.speech.worker.serve` as ``python -m
    twiml_assets.speech.worker``: a ``dagster.Failure`` (raised in the container, re-raised
    here by Modal as itself) ends ``modal run`` with the worker's permanent status and reason.
    """
    from twiml_assets.speech import worker

    status = worker.serve(lambda params, pipes: remote_events(params, warn=pipes.log.warning))
    if status:
        sys.exit(status)


# -- model_comparison: every configuration of one episode, in one GPU container ----------------
@app.function(gpu=GPU, volumes={MODELS_MOUNT: volume}, secrets=secrets, timeout=TIMEOUT_S)
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


@app.local_entrypoint()
def run_model_comparison() -> None:
    """Like :func:`run_model_step`, for the ``model_comparison`` asset (no retries: a
    comparison is run by hand, and a failed configuration is a row of its table)."""
    from twiml_assets.speech import worker

    def events(params: dict[str, Any], _pipes: Any) -> Iterator[dict[str, Any]]:
        require_shared_storage(params)
        return run_comparison.remote_gen(params)

    status = worker.serve(events)
    if status:
        sys.exit(status)
