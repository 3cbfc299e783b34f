"""The Modal app of the ``modal`` compute backend and the k8s worker image, checked offline.

No Modal account and no network: ``deploy/modal/app.py`` is imported as ``modal run``
imports it, and checked through the project's own data (``Settings``, ``WORKER_OPTIONS``,
``IMAGE_RECIPE``) and Modal's public API only: the options its decorators receive, the
image methods ``build_image`` calls, ``modal run --help``, methods run locally
(``.local()``), and the local entrypoints with Pipes and the remote call faked.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import os
import pickle
import re
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import modal
import pytest
from dagster import Failure

from resources.compute import (
    PERMANENT_EXIT,
    PERMANENT_PREFIX,
    WORKER_EXTRA,
    ComputeResource,
    worker_command,
)
from twiml_assets.speech import worker

ROOT = Path(__file__).resolve().parents[1]
APP_FILE = ROOT / "deploy" / "modal" / "app.py"
DOCKERFILE = ROOT / "deploy" / "Dockerfile.gpu"
REAL_MODELS_DIR = Path(
    os.environ.get("TWIML_MODELS_DIR") or Path.home() / ".cache" / "twiml-transcribe" / "models"
)
_names = itertools.count()

PARAMS = {
    "key": "ep1",
    "storage": {"root": "s3://bucket/twiml"},
    "asr": {"profile": "gpu-prod"},
    "diariser": {"pipeline": "offline", "device": "cuda"},
}
EVENTS = [
    {"log": "ep1: decoded 60.0 s of audio in 0.4 s"},
    {"asset": "transcript", "metadata": {"words": 120}},
    {"asset": "diarisation", "metadata": {"speakers": 2}},
]


@pytest.fixture(autouse=True)
def no_modal_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token anywhere (a call to Modal's servers would fail), default settings."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(home / ".modal.toml"))
    for name in list(os.environ):
        if name.startswith(("MODAL_TOKEN_", "TWIML_MODAL_")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("TWIML_PROFILE", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the app puts the checkout first


def load_app(monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    """Import deploy/modal/app.py from its path, as ``modal run`` does."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location(f"twiml_modal_app_{next(_names)}", APP_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def app_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_app(monkeypatch)


def decorated(monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[ModuleType, dict[str, Any]]:
    """Load the app and record what its ``@app.cls`` and ``@app.function`` were given."""
    given: dict[str, Any] = {}
    for method in ("cls", "function"):
        real = getattr(modal.App, method)

        def record(self: Any, *args: Any, _real: Any = real, _name: str = method, **kwargs: Any):
            given[_name] = kwargs
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(modal.App, method, record)
    module = load_app(monkeypatch, **env)
    return module, given


def names(options: dict[str, Any]) -> dict[str, Any]:
    """Decorator options with the names of Modal's objects (public ``.name``) in their place."""
    return {
        **options,
        "volumes": {path: vol.name for path, vol in options["volumes"].items()},
        "secrets": [secret.name for secret in options["secrets"]],
    }


# -- the entrypoints, as Modal's CLI resolves them ---------------------------------------------
def test_modal_run_finds_the_entrypoints_compute_resource_names() -> None:
    """``modal run deploy/modal/app.py::run_model_step`` resolves: Modal's CLI, offline."""
    from twiml_assets.quality import worker as comparison_worker

    compute = ComputeResource(backend="modal")
    assert (ROOT / compute.modal_app).resolve() == APP_FILE
    assert worker.MODAL_ENTRYPOINT == "run_model_step"
    assert comparison_worker.MODAL_ENTRYPOINT == "run_model_comparison"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    for entrypoint in (worker.MODAL_ENTRYPOINT, comparison_worker.MODAL_ENTRYPOINT):
        func_ref = f"{compute.modal_app}::{entrypoint}"
        done = subprocess.run(
            [sys.executable, "-m", "modal", "run", func_ref, "--help"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert func_ref in done.stdout


def test_the_entrypoints_are_the_project_functions(app_module: ModuleType) -> None:
    assert isinstance(app_module.run_model_step, modal.app.LocalEntrypoint)
    assert isinstance(app_module.run_model_comparison, modal.app.LocalEntrypoint)
    assert app_module.app.name == "twiml-transcribe"


# -- what the GPU functions get: the project's data, and what Modal's decorators receive -------
def test_function_options_are_what_the_decorators_get(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU, Volume, secrets, time limit, warm containers: what the server would be sent."""
    module, given = decorated(monkeypatch)
    assert module.SETTINGS == module.Settings()  # the defaults, no TWIML_MODAL_* set
    assert module.WORKER_OPTIONS == {
        "gpu": "L4",
        "volumes": {"/models": "twiml-models"},
        "secrets": ["twiml-storage"],
        "timeout": 3 * 3600,
        "scaledown_window": 300,
    }
    assert names(given["cls"]) == module.WORKER_OPTIONS
    comparison = {k: v for k, v in module.WORKER_OPTIONS.items() if k != "scaledown_window"}
    assert module.COMPARISON_OPTIONS == comparison == names(given["function"])
    # One Volume object, the one the container commits.
    assert given["cls"]["volumes"]["/models"] is module.volume
    assert given["function"]["volumes"]["/models"] is module.volume
    # Modal applies no retry policy to generator methods: the entrypoint retries instead.
    assert "retries" not in given["cls"] and "retries" not in given["function"]
    assert module.RETRIES.max_retries == 2
    assert module.RETRIES.initial_delay.total_seconds() == 10
    assert [module.retry_delay(n) for n in (1, 2, 3)] == [10, 30, 60]


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    module, given = decorated(
        monkeypatch,
        TWIML_MODAL_GPU="h100",
        TWIML_MODAL_VOLUME="weights",
        TWIML_MODAL_STORAGE_SECRET="s3-keys",
        TWIML_MODAL_HF_SECRET="hub",
        TWIML_MODAL_TIMEOUT="600",
        TWIML_MODAL_SCALEDOWN="60",
        TWIML_MODAL_RETRIES="0",
    )
    assert module.SETTINGS == module.Settings(
        gpu="H100",
        volume="weights",
        storage_secret="s3-keys",
        hf_secret="hub",
        timeout=600,
        scaledown_window=60,
        retries=0,
    )
    assert names(given["cls"]) == {
        "gpu": "H100",
        "volumes": {"/models": "weights"},
        "secrets": ["s3-keys", "hub"],
        "timeout": 600,
        "scaledown_window": 60,
    }
    assert names(given["function"])["secrets"] == ["s3-keys", "hub"]
    assert module.RETRIES.max_retries == 0


def test_the_hf_secret_is_attached_only_when_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without TWIML_MODAL_HF_SECRET no secret ``twiml-hf`` is needed (gpu-offline works);
    with it, both functions get it (gated gpu-prod models)."""
    module, given = decorated(monkeypatch)
    assert module.SETTINGS.hf_secret is None
    assert names(given["cls"])["secrets"] == names(given["function"])["secrets"]
    assert names(given["cls"])["secrets"] == ["twiml-storage"]
    for blank in ("", "  "):
        assert module.Settings.from_env({"TWIML_MODAL_HF_SECRET": blank}).secret_names == (
            "twiml-storage",
        )

    module, given = decorated(monkeypatch, TWIML_MODAL_HF_SECRET="twiml-hf")
    assert module.SETTINGS.secret_names == ("twiml-storage", "twiml-hf")
    assert names(given["cls"])["secrets"] == ["twiml-storage", "twiml-hf"]
    assert names(given["function"])["secrets"] == ["twiml-storage", "twiml-hf"]


def test_an_unknown_gpu_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError) as info:
        load_app(monkeypatch, TWIML_MODAL_GPU="V100")
    message = str(info.value)
    assert "\n" not in message and "TWIML_MODAL_GPU='V100'" in message
    assert message.endswith("L4, A10G, A100, A100-80GB, H100, L40S, T4")
    with pytest.raises(ValueError, match="TWIML_MODAL_TIMEOUT"):
        load_app(monkeypatch, TWIML_MODAL_GPU="A10G", TWIML_MODAL_TIMEOUT="three hours")


@pytest.mark.parametrize("value", ["1", "0", "3601", "five"])
def test_scaledown_outside_modals_range_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Modal takes a scale-down window of 2 s to 1 h; 1 used to pass here and fail there."""
    with pytest.raises(ValueError) as info:
        load_app(monkeypatch, TWIML_MODAL_SCALEDOWN=value)
    assert str(info.value) == (
        f"TWIML_MODAL_SCALEDOWN={value!r} must be a whole number of seconds from 2 to 3600"
    )


def test_scaledown_takes_the_ends_of_modals_range(app_module: ModuleType) -> None:
    settings = app_module.Settings.from_env
    assert settings({"TWIML_MODAL_SCALEDOWN": "2"}).scaledown_window == 2
    assert settings({"TWIML_MODAL_SCALEDOWN": "3600"}).scaledown_window == 3600
    assert app_module.env_seconds("X", 5, minimum=2, maximum=9, environ={}) == 5
    with pytest.raises(ValueError, match=r"^TWIML_MODAL_TIMEOUT='0' .* from 1 to 86400$"):
        settings({"TWIML_MODAL_TIMEOUT": "0"})


# -- the image: the recipe, and the image methods build_image calls ----------------------------
class RecordedImage:
    """Stands for ``modal.Image``: records each method ``build_image`` calls, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> RecordedImage:
            self.calls.append((name, args, kwargs))
            return self

        return call


@pytest.fixture
def image_calls(app_module: ModuleType) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    recorded = RecordedImage()
    assert app_module.build_image(app_module.IMAGE_RECIPE, images=recorded) is recorded
    return recorded.calls


def test_the_image_is_built_with_modals_public_methods(app_module: ModuleType, image_calls) -> None:
    """Each call fits the installed Modal's signature; the real image builds offline."""
    assert isinstance(app_module.image, modal.Image)
    for name, args, kwargs in image_calls:
        method = getattr(modal.Image, name)
        params = inspect.signature(method).parameters
        bound_args = (None, *args) if "self" in params else args
        inspect.signature(method).bind(*bound_args, **kwargs)


def test_image_cuda_python_and_a_noninteractive_apt_layer(
    app_module: ModuleType, image_calls
) -> None:
    """CUDA 12 + cuDNN 9 with Python 3.11; DEBIAN_FRONTEND set before apt-get runs."""
    recipe = app_module.IMAGE_RECIPE
    assert recipe.base == app_module.CUDA_IMAGE
    assert recipe.base.startswith("nvidia/cuda:12.") and "cudnn" in recipe.base
    assert image_calls[0] == ("from_registry", (recipe.base,), {"add_python": "3.11"})
    steps = [name for name, _, _ in image_calls]
    apt = steps.index("apt_install")
    set_before = {
        key: value
        for name, args, _ in image_calls[:apt]
        if name == "env"
        for key, value in args[0].items()
    }
    assert set_before.get("DEBIAN_FRONTEND") == "noninteractive"
    assert {"ffmpeg", "libsndfile1", "gcc"} <= set(image_calls[apt][1])


def test_image_installs_the_locked_dependencies_with_the_engine(
    app_module: ModuleType, image_calls
) -> None:
    """``uv sync --locked --extra engine`` from this checkout's pyproject.toml and uv.lock,
    with the uv that scripts/setup.sh pins (the one that wrote the lock)."""
    (sync,) = [(args, kwargs) for name, args, kwargs in image_calls if name == "uv_sync"]
    args, kwargs = sync
    assert Path(args[0]) == ROOT and (ROOT / "uv.lock").is_file()
    assert kwargs["extras"] == ["engine"] and kwargs["frozen"] is False
    assert "--locked" in kwargs["extra_options"].split()  # a stale lock stops the build
    setup = (ROOT / "scripts/setup.sh").read_text()
    assert f'UV_VERSION="{kwargs["uv_version"]}"' in setup
    assert not any(name.startswith("pip_install") for name, _, _ in image_calls)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (project,) = [p for p in lock["package"] if p["name"] == pyproject["name"]]
    for extra in kwargs["extras"]:
        assert extra in pyproject["optional-dependencies"]
        assert extra in project["optional-dependencies"]  # locked, so --locked installs it
    wanted = pyproject["dependencies"] + pyproject["optional-dependencies"]["engine"]
    installed = {re.match(r"[\w.-]+", dep).group(0).lower() for dep in wanted}
    assert {"dagster", "faster-whisper", "pyannote.audio", "torch", "resemblyzer"} <= installed
    # The locked venv has no pip; scripts/fetch_models.py takes add_python's pip.
    assert app_module.CACHE_ENV["TWIML_PIP_PYTHON"] == "/usr/local/bin/python3"
    assert "TWIML_PIP_PYTHON" in (ROOT / "scripts" / "fetch_models.py").read_text()


def test_image_caches_in_the_volume_and_mounts_the_code_last(
    app_module: ModuleType, image_calls
) -> None:
    """The code is mounted at start-up, on top of every build step (Modal 1.x's rule)."""
    recipe = app_module.IMAGE_RECIPE
    env = {k: v for name, args, _ in image_calls if name == "env" for k, v in args[0].items()}
    for name in ("HF_HOME", "TWIML_MODELS_DIR", "XDG_CACHE_HOME", "TORCH_HOME"):
        assert env[name].startswith(app_module.MODELS_MOUNT + "/")
    steps = [name for name, _, _ in image_calls]
    mounts = [i for i, name in enumerate(steps) if name.startswith("add_local")]
    assert mounts == list(range(len(steps) - len(mounts), len(steps)))
    files = {args for name, args, _ in image_calls if name == "add_local_file"}
    assert files == {(str(ROOT / "scripts" / "fetch_models.py"), app_module.FETCH_SCRIPT)}
    (packages,) = [(args, kw) for name, args, kw in image_calls if name.endswith("python_source")]
    modules, options = packages
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(modules) == {p.rstrip("*") for p in include["packages"]["find"]["include"]}
    assert set(modules) == set(recipe.local_packages)
    ignore = options["ignore"]
    for kept in ("twiml_assets/speech/worker.py", "resources/model_config.yml"):
        assert not ignore(Path(kept))
    assert ignore(Path("resources/__pycache__/compute.cpython-311.pyc"))


# -- the container side, run locally ---------------------------------------------------------
@pytest.fixture
def quiet_local_calls() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*executing locally.*")
        yield


@pytest.mark.usefixtures("quiet_local_calls")
def test_run_step_streams_the_workers_step_events(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU method is ``twiml_assets.speech.worker.step_events``, item for item."""
    received = []

    def fake_step_events(params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        received.append(params)
        yield from EVENTS

    warmed: list[str] = []
    monkeypatch.setattr(worker, "step_events", fake_step_events)
    monkeypatch.setattr(app_module, "warm_models", lambda engine: warmed.append(engine) or [])
    engine = app_module.engine_key(PARAMS)
    obj = app_module.ModelWorker(engine=engine)
    assert list(obj.run_step.local(PARAMS)) == EVENTS
    assert received == [PARAMS]
    assert warmed == [engine]  # @modal.enter, once per container
    assert list(obj.run_step.local(PARAMS)) == EVENTS and warmed == [engine]
    assert json.loads(engine) == {"asr": PARAMS["asr"], "diariser": PARAMS["diariser"]}


@pytest.mark.usefixtures("quiet_local_calls")
def test_downloads_are_committed_to_the_volume(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    commits: list[int] = []
    monkeypatch.setattr(app_module, "MODELS_MOUNT", str(tmp_path))
    monkeypatch.setattr(app_module, "volume", SimpleNamespace(commit=lambda: commits.append(1)))

    def download(name: str) -> None:
        (tmp_path / name).write_bytes(b"weights")

    def step_events(params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if params.get("download"):
            download(params["download"])
        if params.get("fail"):
            raise RuntimeError("CUDA error")
        yield {"log": "done"}

    monkeypatch.setattr(app_module, "warm_models", lambda engine: download("warm.bin"))
    monkeypatch.setattr(worker, "step_events", step_events)
    obj = app_module.ModelWorker(engine="")
    list(obj.run_step.local({}))
    assert commits == [1]  # the warm-up's download
    list(obj.run_step.local({}))
    assert commits == [1]  # nothing new: no commit
    list(obj.run_step.local({"download": "hub.bin"}))
    assert commits == [1, 1]
    with pytest.raises(RuntimeError, match="CUDA error"):
        list(obj.run_step.local({"download": "late.bin", "fail": True}))
    assert commits == [1, 1, 1]


@pytest.mark.usefixtures("quiet_local_calls")
def test_a_permanent_failure_keeps_its_type_and_reason(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Modal pickles the container's exception and re-raises it here as itself."""

    def step_events(params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield {"log": "decoding"}
        try:
            raise OSError("invalid data found when processing input")
        except OSError as exc:
            raise Failure(description="cannot decode ep1: broken", allow_retries=False) from exc

    monkeypatch.setattr(worker, "step_events", step_events)
    monkeypatch.setattr(app_module, "warm_models", lambda engine: [])
    with pytest.raises(Failure) as info:
        list(app_module.ModelWorker().run_step.local(PARAMS))
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is Failure
    assert (again.description, again.allow_retries) == ("cannot decode ep1: broken", False)


def test_warm_up_logs_and_goes_on(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_fetch() -> None:
        raise OSError("no network")

    monkeypatch.setattr(app_module, "ensure_offline_weights", no_fetch)
    engine = app_module.engine_key(
        {"asr": {"profile": "cpu-dev", "model": "no-such-model"}, "diariser": {"device": "cpu"}}
    )
    assert app_module.warm_models(engine) == ["offline weights", "ASR model", "diarisation models"]
    err = capsys.readouterr().err
    assert "offline weights not loaded (OSError: no network)" in err
    assert "no-such-model" in err
    assert app_module.warm_models('{"asr": {"profile": "nope"}}') == ["settings"]


def test_warm_up_loads_through_the_resources_a_call_builds(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same resources as ``worker.WorkerParams``, same methods: the same cache keys."""
    from resources.asr import WhisperASR
    from resources.diarisation import PyannoteDiariser

    loaded: list[Any] = []
    monkeypatch.setattr(app_module, "ensure_offline_weights", lambda: loaded.append("fetch"))
    monkeypatch.setattr(WhisperASR, "load", lambda self: loaded.append(self))
    monkeypatch.setattr(PyannoteDiariser, "diarise", lambda self, audio: loaded.append(audio))
    params = {
        "asr": WhisperASR(profile="gpu-prod", beam_size=2).model_dump(),
        "diariser": PyannoteDiariser.for_profile("gpu-offline").model_dump(exclude={"hf_token"}),
    }
    assert app_module.warm_models(app_module.engine_key(params)) == []
    fetch, asr, silence = loaded
    assert fetch == "fetch"
    assert asr == WhisperASR(**params["asr"])
    assert silence.shape == (16_000,) and not silence.any()  # diarise() returns after loading

    loaded.clear()  # no engine settings: the default profile (gpu-prod, or TWIML_PROFILE)
    app_module.warm_models("")
    assert loaded[1] == WhisperASR(profile="gpu-prod")
    monkeypatch.setenv("TWIML_PROFILE", "gpu-offline")
    loaded.clear()
    app_module.warm_models("")
    assert loaded[1] == WhisperASR(profile="gpu-offline")


@pytest.mark.slow
@pytest.mark.skipif(
    not (REAL_MODELS_DIR / "pyannote-segmentation" / "pytorch_model.bin").exists(),
    reason="offline weights not fetched (make setup)",
)
def test_warm_up_fills_the_caches_a_call_uses(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real models (cpu-dev): after the warm-up, the step's own loads are cache hits."""
    from resources.asr import WhisperASR, load_whisper_model
    from resources.diarisation import load_segmentation_model, load_speaker_encoder
    from resources.model_paths import resemblyzer_encoder, segmentation_checkpoint

    monkeypatch.setenv("TWIML_MODELS_DIR", str(REAL_MODELS_DIR))
    params = {"asr": WhisperASR(profile="cpu-dev").model_dump(), "diariser": {"device": "cpu"}}
    assert app_module.warm_models(app_module.engine_key(params)) == []
    caches = (load_whisper_model, load_segmentation_model, load_speaker_encoder)
    hits = [cache.cache_info().hits for cache in caches]
    WhisperASR(**params["asr"]).load()
    load_segmentation_model(str(segmentation_checkpoint()), "cpu")
    load_speaker_encoder(str(resemblyzer_encoder()), "cpu")
    assert [cache.cache_info().hits for cache in caches] == [n + 1 for n in hits]


# -- the local entrypoint, with Pipes and the remote call faked --------------------------------
class FakePipes:
    def __init__(self, extras: dict[str, Any]) -> None:
        self.extras = extras
        self.logs: list[tuple[str, str]] = []
        self.materializations: list[tuple[str, dict[str, Any]]] = []
        self.closed_with: BaseException | None = None
        self.log = SimpleNamespace(
            info=lambda text: self.logs.append(("info", text)),
            warning=lambda text: self.logs.append(("warning", text)),
        )

    def get_extra(self, key: str) -> Any:
        return self.extras[key]

    def report_asset_materialization(self, asset_key: str, metadata: dict[str, Any]) -> None:
        self.materializations.append((asset_key, metadata))


class FakeRemote:
    """``ModelWorker`` as the entrypoint sees it: ``Cls(engine=...).run_step.remote_gen``."""

    def __init__(self, *outcomes: list[dict[str, Any]] | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.engines: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def __call__(self, engine: str = "") -> Any:
        self.engines.append(engine)
        return SimpleNamespace(run_step=SimpleNamespace(remote_gen=self.remote_gen))

    def remote_gen(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.calls.append(params)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            yield {"log": "started"}
            raise outcome
        yield from outcome


@pytest.fixture
def entrypoint(app_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``run_model_step`` with ``remote``: returns (pipes, report calls)."""
    import dagster_pipes

    sleeps: list[float] = []
    monkeypatch.setattr(app_module.time, "sleep", sleeps.append)
    real_report = worker.report

    def run(remote: FakeRemote, params: dict[str, Any] = PARAMS) -> tuple[FakePipes, list[Any]]:
        pipes = FakePipes({WORKER_EXTRA: params})
        reports: list[Any] = []

        @contextmanager
        def open_dagster_pipes() -> Iterator[FakePipes]:
            try:
                yield pipes
            except BaseException as exc:
                pipes.closed_with = exc  # dagster-pipes reports it to Dagster
                raise

        def report(p: Any, events: Any) -> None:
            reports.append(p)
            real_report(p, events)

        monkeypatch.setattr(dagster_pipes, "open_dagster_pipes", open_dagster_pipes)
        monkeypatch.setattr(worker, "report", report)
        monkeypatch.setattr(app_module, "worker_class", lambda: remote)
        app_module.run_model_step()  # the registered entrypoint, as modal run calls it
        return pipes, reports

    run.sleeps = sleeps
    return run


def test_entrypoint_reports_the_remote_events_through_pipes(
    app_module: ModuleType, entrypoint: Any
) -> None:
    remote = FakeRemote(EVENTS)
    pipes, reports = entrypoint(remote)
    assert reports == [pipes]  # twiml_assets.speech.worker.report, as the worker's main()
    assert remote.calls == [PARAMS]
    assert remote.engines == [app_module.engine_key(PARAMS)]
    assert pipes.logs == [("info", EVENTS[0]["log"])]
    assert pipes.materializations == [
        ("transcript", {"words": 120}),
        ("diarisation", {"speakers": 2}),
    ]
    assert pipes.closed_with is None


def test_entrypoint_ends_a_permanent_failure_as_the_worker_does(
    entrypoint: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = FakeRemote(Failure(description="cannot decode ep1:\n broken", allow_retries=False))
    with pytest.raises(SystemExit) as info:
        entrypoint(remote)
    assert info.value.code == PERMANENT_EXIT
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"{PERMANENT_PREFIX}cannot decode ep1: broken"
    )
    assert len(remote.calls) == 1  # never retried


def test_entrypoint_retries_other_failures(entrypoint: Any) -> None:
    from modal.exception import FunctionTimeoutError

    remote = FakeRemote(RuntimeError("CUDA error: unspecified launch failure"), EVENTS)
    pipes, _ = entrypoint(remote)
    assert len(remote.calls) == 2 and entrypoint.sleeps == [10.0]
    assert any(level == "warning" and "retry 1 of 2" in text for level, text in pipes.logs)
    assert [asset for asset, _ in pipes.materializations] == ["transcript", "diarisation"]

    always = FakeRemote(ConnectionError("lost"))
    with pytest.raises(ConnectionError):
        entrypoint(always)
    assert len(always.calls) == 3

    timeout = FakeRemote(FunctionTimeoutError("ran past 10800 s"))
    with pytest.raises(FunctionTimeoutError):
        entrypoint(timeout)
    assert len(timeout.calls) == 1


def test_entrypoint_refuses_local_storage(
    entrypoint: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = FakeRemote(EVENTS)
    with pytest.raises(SystemExit) as info:
        entrypoint(remote, {**PARAMS, "storage": {"root": "data"}})
    assert info.value.code == PERMANENT_EXIT
    assert "set TWIML_STORAGE_ROOT to s3://" in capsys.readouterr().err
    assert remote.calls == []


def test_gpu_prod_without_a_hub_token_says_how_to_give_one(
    app_module: ModuleType,
    entrypoint: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No HF secret attached: a gated pipeline fails at once, naming TWIML_MODAL_HF_SECRET."""
    from resources.diarisation.models import HUB_HINT
    from resources.model_paths import ModelNotFoundError

    name = "pyannote/speaker-diarization-community-1"
    gated = ModelNotFoundError(
        f"pyannote pipeline {name!r} is not available: " + HUB_HINT.format(name=name)
    )
    remote = FakeRemote(gated)
    with pytest.raises(SystemExit) as info:
        entrypoint(remote)
    assert info.value.code == PERMANENT_EXIT
    reason = capsys.readouterr().err.strip().splitlines()[-1]
    assert reason.startswith(f"{PERMANENT_PREFIX}pyannote pipeline {name!r} is not available")
    assert "modal secret create twiml-hf HF_TOKEN=" in reason
    assert "TWIML_MODAL_HF_SECRET=twiml-hf" in reason and "gpu-offline" in reason
    assert len(remote.calls) == 1  # never retried

    # Another model error, or a token that is attached but refused: the error as it came.
    other = ModelNotFoundError("speaker encoder weights not found at /x: pip install resemblyzer")
    assert app_module.with_hub_token_hint(other) is other
    monkeypatch.setattr(app_module, "SETTINGS", app_module.Settings(hf_secret="twiml-hf"))
    assert app_module.with_hub_token_hint(gated) is gated


def test_deployed_app_on_request(app_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    assert app_module.worker_class() is app_module.ModelWorker
    monkeypatch.setenv("TWIML_MODAL_DEPLOYED", "1")
    deployed = app_module.worker_class()
    assert isinstance(deployed, modal.Cls) and deployed is not app_module.ModelWorker


def test_the_comparison_entrypoint_streams_the_comparison_workers_events(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_model_comparison`` is what the model_comparison asset's worker module stands
    for on Modal; its GPU function yields ``twiml_assets.quality.worker``'s events."""
    import dagster_pipes

    from twiml_assets.quality import worker as comparison_worker

    assert comparison_worker.MODAL_ENTRYPOINT == "run_model_comparison"
    assert isinstance(app_module.run_model_comparison, modal.app.LocalEntrypoint)
    events = [{"log": "cpu-dev done"}, {"asset": "model_comparison", "metadata": {"n": 2}}]
    monkeypatch.setattr(comparison_worker, "comparison_events", lambda params: iter(events))
    monkeypatch.setattr(app_module, "ensure_offline_weights", lambda: None)
    monkeypatch.setattr(app_module, "commit_if_changed", lambda before: False)
    assert list(app_module.run_comparison.local({"key": "ep-1"})) == events

    params = {"key": "ep-1", "storage": {"root": "s3://bucket/twiml"}}
    pipes = FakePipes({WORKER_EXTRA: params})
    calls: list[dict[str, Any]] = []

    def remote_gen(p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        calls.append(p)
        yield from events

    monkeypatch.setattr(app_module, "run_comparison", SimpleNamespace(remote_gen=remote_gen))

    @contextmanager
    def open_dagster_pipes() -> Iterator[FakePipes]:
        yield pipes

    monkeypatch.setattr(dagster_pipes, "open_dagster_pipes", open_dagster_pipes)
    app_module.run_model_comparison()
    assert calls == [params]
    assert pipes.logs == [("info", "cpu-dev done")]
    assert pipes.materializations == [("model_comparison", {"n": 2})]


# -- the Kubernetes worker image ---------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile.gpu, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#") and len(line.split(None, 1)) == 2
    ]


def test_gpu_dockerfile_runs_the_worker() -> None:
    """The pod's command is the image's CMD: the worker module, as ComputeResource names it."""
    instructions = dockerfile_instructions()
    commands = [json.loads(args) for op, args in instructions if op == "CMD"]
    assert commands[-1:] == [worker_command(worker.MODULE)]
    assert worker_command(worker.MODULE) == ["python", "-m", "twiml_assets.speech.worker"]
    assert not any(op == "ENTRYPOINT" for op, _ in instructions)
