"""The Modal app of the ``modal`` compute backend and the k8s worker image, checked offline.

No Modal account and no network: ``deploy/modal/app.py`` is imported as ``modal run``
imports it, its class is inspected through the objects Modal builds before it talks to
a server (private attributes, where Modal exposes nothing public), its methods run locally
(``.local()``) and the local entrypoint runs with Pipes and the remote call faked.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shlex
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
from modal._utils.async_utils import synchronizer
from modal_proto import api_pb2

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


# -- what Modal builds, read before anything talks to a server ---------------------------------
def closure(fn: Any) -> dict[str, Any]:
    """The variables a Modal loader closes over: the definition it sends to the server."""
    values = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
        try:
            values[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    return values


def service_function(cls: Any) -> Any:
    """The ``_Function`` behind an ``@app.cls`` class (its spec and its definition)."""
    return synchronizer._translate_in(cls)._class_service_function


def image_layers(image: Any) -> list[dict[str, Any]]:
    """The image's layers, top first: repr, Dockerfile commands and mounted files."""
    layers, todo = [], [synchronizer._translate_in(image)]
    while todo:
        layer = todo.pop()
        values = closure(layer._load)
        function = values.get("dockerfile_function")
        entries = values["mount"]._entries if "mount" in values else []
        layers.append(
            {
                "rep": layer._rep,
                "commands": function("2025.06").commands if function else [],
                "files": [str(to) for entry in entries for _, to in entry.get_files_to_upload()],
                "add_python": values.get("add_python"),
            }
        )
        todo += [d for d in (layer._deps() if layer._deps else []) if type(d).__name__ == "_Image"]
    return layers


def test_app_imports_offline_and_names_what_compute_resource_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``modal run deploy/modal/app.py::run_model_step`` resolves, by Modal's own CLI code."""
    from modal.cli.import_refs import import_and_filter, parse_import_ref

    compute = ComputeResource(backend="modal")
    assert (ROOT / compute.modal_app).resolve() == APP_FILE
    func_ref = f"{compute.modal_app}::{worker.MODAL_ENTRYPOINT}"
    monkeypatch.chdir(ROOT)
    try:
        runnable, commands, _ = import_and_filter(
            parse_import_ref(func_ref, command="modal run"), base_cmd="modal run"
        )
        module = sys.modules["app"]
    finally:
        sys.modules.pop("app", None)
    assert isinstance(runnable, modal.app.LocalEntrypoint)
    assert runnable.info.raw_f.__name__ == worker.MODAL_ENTRYPOINT == "run_model_step"
    assert runnable is module.run_model_step
    assert ["ModelWorker.run_step", "app.ModelWorker.run_step"] in [c.names for c in commands]
    assert module.app.name == "twiml-transcribe"


def test_worker_class_definition(app_module: ModuleType) -> None:
    """GPU, Volume, secrets, time limit, warm containers: what the server would be sent."""
    function = service_function(app_module.ModelWorker)
    spec = function._spec
    assert spec.gpus == "L4"
    assert {path: vol._name for path, vol in spec.volumes.items()} == {"/models": "twiml-models"}
    assert [secret._name for secret in spec.secrets] == ["twiml-storage", "twiml-hf"]
    assert spec.image is synchronizer._translate_in(app_module.image)

    definition = closure(function._load)
    assert definition["gpu"] == "L4"
    assert definition["timeout"] == 3 * 3600
    assert definition["scaledown_window"] == 300
    # Modal applies no retry policy to generator methods: the entrypoint retries instead.
    assert definition["retry_policy"] is None
    run_step = definition["method_definitions"]["run_step"]
    assert run_step.function_type == api_pb2.Function.FUNCTION_TYPE_GENERATOR
    assert app_module.RETRIES.max_retries == 2
    assert app_module.RETRIES.initial_delay.total_seconds() == 10
    assert [app_module.retry_delay(n) for n in (1, 2, 3)] == [10, 30, 60]

    user_cls = synchronizer._translate_in(app_module.ModelWorker)._user_cls
    assert "warm" in vars(user_cls) and "run_step" in vars(user_cls)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_app(
        monkeypatch,
        TWIML_MODAL_GPU="h100",
        TWIML_MODAL_VOLUME="weights",
        TWIML_MODAL_STORAGE_SECRET="s3-keys",
        TWIML_MODAL_HF_SECRET="hub",
        TWIML_MODAL_TIMEOUT="600",
        TWIML_MODAL_SCALEDOWN="60",
        TWIML_MODAL_RETRIES="0",
    )
    function = service_function(module.ModelWorker)
    assert module.GPU == function._spec.gpus == "H100"
    assert [vol._name for vol in function._spec.volumes.values()] == ["weights"]
    assert [secret._name for secret in function._spec.secrets] == ["s3-keys", "hub"]
    definition = closure(function._load)
    assert (definition["timeout"], definition["scaledown_window"]) == (600, 60)
    assert module.RETRIES.max_retries == 0


def test_an_unknown_gpu_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError) as info:
        load_app(monkeypatch, TWIML_MODAL_GPU="V100")
    message = str(info.value)
    assert "\n" not in message and "TWIML_MODAL_GPU='V100'" in message
    assert message.endswith("L4, A10G, A100, A100-80GB, H100, L40S, T4")
    with pytest.raises(ValueError, match="TWIML_MODAL_TIMEOUT"):
        load_app(monkeypatch, TWIML_MODAL_GPU="A10G", TWIML_MODAL_TIMEOUT="three hours")


def test_image_cuda_python_stack_and_sources(app_module: ModuleType) -> None:
    """CUDA 12 + cuDNN 9 with Python 3.11, ffmpeg, pyproject's pins, then the code, mounted."""
    layers = image_layers(app_module.image)
    base = layers[-1]
    assert base["rep"] == f"Image.from_registry({app_module.CUDA_IMAGE!r})"
    assert app_module.CUDA_IMAGE.startswith("nvidia/cuda:12.") and "cudnn" in app_module.CUDA_IMAGE
    assert base["add_python"] == "3.11"
    commands = [command for layer in layers for command in layer["commands"]]
    apt = next(c for c in commands if c.startswith("RUN apt-get install"))
    assert {"ffmpeg", "libsndfile1"} <= set(apt.split())
    pip = next(c for c in commands if c.startswith("RUN python -m pip install"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(shlex.split(pip)[5:]) == set(pyproject["project"]["dependencies"])
    env = {c.split()[1].split("=")[0]: c.split("=", 1)[1] for c in commands if c.startswith("ENV")}
    for name in ("HF_HOME", "TWIML_MODELS_DIR", "XDG_CACHE_HOME"):
        assert env[name].startswith(app_module.MODELS_MOUNT + "/")

    # The code is mounted at start-up, on top of every build step (Modal 1.x's rule).
    mounted = [layer for layer in layers if layer["files"]]
    assert layers[: len(mounted)] == mounted and not any(m["commands"] for m in mounted)
    files = {f for layer in mounted for f in layer["files"]}
    assert {
        "/root/twiml_assets/speech/worker.py",
        "/root/twiml_assets/speech/step.py",
        "/root/resources/compute.py",
        "/root/resources/model_config.yml",
        "/root/evaluation/__init__.py",
        app_module.FETCH_SCRIPT,
    } <= files
    assert not any("__pycache__" in f for f in files)


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
    from modal._serialization import deserialize, serialize

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
    again = deserialize(serialize(info.value), None)
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
        app_module.run_model_step.info.raw_f()
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


def test_deployed_app_on_request(app_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    assert app_module.worker_class() is app_module.ModelWorker
    monkeypatch.setenv("TWIML_MODAL_DEPLOYED", "1")
    deployed = app_module.worker_class()
    assert isinstance(deployed, modal.Cls) and deployed is not app_module.ModelWorker


# -- the Kubernetes worker image ---------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile.gpu, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_gpu_dockerfile_runs_the_worker(app_module: ModuleType) -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for op, args in instructions if op == "FROM"]
    assert bases[0] == app_module.CUDA_IMAGE  # CUDA 12 + cuDNN 9, as on Modal
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs)  # the project, pinned by pyproject.toml
    assert "scripts/fetch_models.py" in runs  # offline weights baked in
    assert "ffmpeg" in runs and "libsndfile1" in runs
    copied = " ".join(args for op, args in instructions if op == "COPY")
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in packages["packages"]["find"]["include"]:
        assert package.rstrip("*") in copied
    commands = [json.loads(args) for op, args in instructions if op == "CMD"]
    assert commands == [worker_command(worker.MODULE)]
    assert worker.MODULE == "twiml_assets.speech.worker"
    assert not any(op == "ENTRYPOINT" for op, _ in instructions)
    user = [args for op, args in instructions if op == "USER"][-1]
    assert user.split(":")[0] not in {"0", "root"}
    env = " ".join(args for op, args in instructions if op == "ENV")
    assert "HF_HOME=" in env and "TWIML_MODELS_DIR=" in env


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

    monkeypatch.setattr(app_module.run_comparison, "remote_gen", remote_gen)

    @contextmanager
    def open_dagster_pipes() -> Iterator[FakePipes]:
        yield pipes

    monkeypatch.setattr(dagster_pipes, "open_dagster_pipes", open_dagster_pipes)
    app_module.run_model_comparison.info.raw_f()
    assert calls == [params]
    assert pipes.logs == [("info", "cpu-dev done")]
    assert pipes.materializations == [("model_comparison", {"n": 2})]
