"""The speech engine as an extra: what runs without it (the control plane) and the one line
that says what to install where it is needed. tests/test_images.py builds the image that
leaves it out and runs it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dagster import build_init_resource_context

from resources.compute import ComputeResource, ComputeSetupError
from resources.engine_check import ENGINE_MODULES, EngineMissingError, require_engine

REPO = Path(__file__).resolve().parents[1]
CONTROL_PLANE_EXTRAS = ("postgres", "modal", "k8s")  # deploy/Dockerfile's EXTRAS
ENGINE_PACKAGES = {"torch", "ctranslate2", "faster-whisper", "pyannote-audio", "resemblyzer"}


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """This interpreter as the slim image has it: the engine's modules cannot be imported."""
    for module in ENGINE_MODULES:
        monkeypatch.setitem(sys.modules, module, None)


def test_require_engine_is_one_line_naming_what_to_install(no_engine) -> None:
    with pytest.raises(EngineMissingError) as raised:
        require_engine("this needs it", "do that instead")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("this needs it, which needs the speech engine (faster_whisper,")
    assert "pip install '.[engine]'" in message and message.endswith("; or do that instead")


def test_require_engine_passes_where_it_is_installed() -> None:
    require_engine("the test environment has the engine")


@pytest.mark.parametrize("backend", ["local", "subprocess"])
def test_a_model_step_here_without_the_engine_fails_at_set_up(no_engine, backend) -> None:
    with build_init_resource_context() as context, pytest.raises(ComputeSetupError) as raised:
        ComputeResource(backend=backend).setup_for_execution(context)
    assert str(raised.value).startswith(
        f"TWIML_COMPUTE={backend} runs the model step on this machine, which needs the speech "
    )
    assert str(raised.value).endswith("or run it on GPU workers (TWIML_COMPUTE=modal or k8s)")


def test_a_worker_in_another_environment_needs_no_engine_here(no_engine) -> None:
    """TWIML_WORKER_PYTHON: the worker's interpreter has the engine, this one need not."""
    with build_init_resource_context() as context:
        ComputeResource(backend="subprocess", python="/opt/engine/bin/python").setup_for_execution(
            context
        )


def test_the_cli_says_what_to_install_and_exits_2(no_engine, capsys, tmp_path: Path) -> None:
    from twiml_assets.cli import main

    assert main(["transcribe", str(tmp_path / "a.mp3"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: twiml-transcribe transcribe runs the models in this process")
    assert "pip install '.[engine]'" in err


def engine_only_modules() -> list[str]:
    """The top-level modules of every package the engine extra adds to the control plane's
    (torch, librosa, av, numba, ...): what the slim image lacks."""
    from importlib.metadata import packages_distributions

    only = locked_closure((*CONTROL_PLANE_EXTRAS, "engine")) - locked_closure(CONTROL_PLANE_EXTRAS)
    normal = {name.replace("_", "-").lower() for name in only}
    modules = [
        module  # only modules no control-plane package provides (pyannote.core stays)
        for module, dists in packages_distributions().items()
        if all(d.replace("_", "-").replace(".", "-").lower() in normal for d in dists)
        and module.isidentifier()
        and module not in sys.stdlib_module_names
    ]
    return sorted(set(modules) | set(ENGINE_MODULES))


def test_the_code_location_loads_without_the_engine() -> None:
    """What the slim control plane runs: the definitions, with every module of the engine
    extra's packages blocked."""
    blocked = engine_only_modules()
    assert {"torch", "librosa", "av", "faster_whisper", "ctranslate2", "numba"} <= set(blocked)
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        "import twiml_assets.definitions as d\n"
        "defs = d.defs() if callable(d.defs) else d.defs\n"
        "print(len(list(defs.resolve_all_asset_keys())))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 10


def locked_closure(extras: tuple[str, ...]) -> set[str]:
    """The packages uv.lock installs for the project with ``extras``."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    project = packages["twiml-transcribe"]
    deps = list(project.get("dependencies", []))
    for extra in extras:
        deps += project["optional-dependencies"][extra]
    seen: set[str] = set()
    while deps:
        dep = deps.pop()
        name = dep["name"]
        for extra in dep.get("extra", []):  # pkg[extra]: that package's extra too
            deps += packages[name].get("optional-dependencies", {}).get(extra, [])
        if name in seen or name == "twiml-transcribe":
            continue
        seen.add(name)
        deps += packages[name].get("dependencies", [])
    return seen


def test_the_locked_control_plane_has_no_engine_package() -> None:
    control_plane = locked_closure(CONTROL_PLANE_EXTRAS)
    assert not control_plane & ENGINE_PACKAGES, control_plane & ENGINE_PACKAGES
    assert not any(name.startswith("nvidia-") for name in control_plane)
    assert {"dagster", "dagster-postgres", "dagster-k8s", "dagster-modal"} <= control_plane
    assert ENGINE_PACKAGES <= locked_closure((*CONTROL_PLANE_EXTRAS, "engine"))
