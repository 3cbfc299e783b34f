"""The control-plane image, built here with podman from uv.lock and run from its own
filesystem against a real PostgreSQL (tests/image_stack.py says how, without `podman run`).

The whole of bench/images.sh (the worker image too, and a demo episode transcribed in it)
takes longer than CI allows: the worker image holds about 7 GB of CUDA torch. This test
builds the slim control plane (a few minutes with the uv cache that set-up filled) and
proves what only a built image can: it installs from the lock with no compiler problem, it
carries no speech engine, docker-compose.yml's code server, daemon and webserver start from
it on deploy/dagster.yaml, a run goes through the daemon, and a model step asked to run in
it fails at resource set-up with the one line that says what to install.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests import image_stack as images
from tests.dagster_processes import publish

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mount namespaces need root"),
]


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> str:
    assert images.tools_available(), images.NOT_AVAILABLE
    work = tmp_path_factory.mktemp("images")
    images.build_base(work)
    images.build_image("deploy/Dockerfile", images.CONTROL_PLANE_IMAGE, work / "build.log")
    return images.CONTROL_PLANE_IMAGE


def test_the_control_plane_image_carries_no_engine(control_plane: str, tmp_path: Path) -> None:
    with images.container_root(control_plane) as root:
        stack = images.ImageStack.of(control_plane, root, tmp_path)
        probe = (
            "import importlib.util as u; "
            "print(*[m for m in ('torch', 'ctranslate2', 'faster_whisper', 'pyannote.audio', "
            "'resemblyzer', 'dagster_postgres', 'dagster_k8s', 'dagster_modal') if u.find_spec(m)])"
        )
        assert stack.run(["python", "-c", probe]).split() == [
            "dagster_postgres",
            "dagster_k8s",
            "dagster_modal",
        ]
        # The instance and the workspace the compose services load, where they look for them.
        assert (root / "opt/dagster/dagster_home/dagster.yaml").read_text() == (
            images.REPO / "deploy/dagster.yaml"
        ).read_text()
        assert (root / "opt/dagster/workspace.yaml").is_file()
        assert images.import_seconds(stack) < 60
    assert images.image_size(control_plane) < 2.5e9  # with the engine: about 9 GB


def test_an_episode_goes_through_the_daemon_of_the_image_with_the_model_step_outside(
    control_plane: str, tmp_path: Path, http_server, short_episodes, postgres
) -> None:
    """docker-compose.yml's code server, daemon and webserver from the image, on
    deploy/dagster.yaml and PostgreSQL; the model step on the subprocess backend, its worker
    in this machine's environment (which has the engine), as a GPU worker would be: the
    rest of the episode (download, fingerprint, voiceprint naming, RAG files, subtitles)
    runs in the image."""
    from resources.model_paths import models_dir

    (key,) = publish(http_server, [short_episodes[0].audio_path])
    with images.container_root(control_plane) as root:
        stack = images.ImageStack.of(control_plane, root, tmp_path / "stack")
        stack.worker = Path("/")  # this machine's root: its environment has the engine
        stack.env["TWIML_WORKER_PYTHON"] = stack.write_worker_python(
            sys.executable, TWIML_MODELS_DIR=str(models_dir()), HOME=str(Path.home())
        )
        run = images.run_demo(
            stack, postgres, http_server.url("feed.xml"), key, "subprocess", timeout=420
        )
    assert run.status == "SUCCESS", run.failure
    assert run.webserver_ok
    assert {
        f"audio/{key}.mp3",
        f"transcripts/{key}.json",
        f"diarisation/{key}.rttm",
        f"speakers/{key}.embeddings.json",  # by the worker: the image cannot compute them
        f"speakers/{key}.json",
        f"subtitles/{key}.srt",
        "markdown/1.md",
    } <= set(run.outputs)


def test_a_model_step_in_the_image_fails_at_set_up_saying_what_to_install(
    control_plane: str, tmp_path: Path, http_server, short_episodes, postgres
) -> None:
    (key,) = publish(http_server, [short_episodes[0].audio_path])
    with images.container_root(control_plane) as root:
        stack = images.ImageStack.of(control_plane, root, tmp_path / "stack")
        run = images.run_demo(stack, postgres, http_server.url("feed.xml"), key, "local", 300)
    assert run.status == "FAILURE"
    assert "TWIML_COMPUTE=local runs the model step on this machine" in (run.failure or "")
    assert "pip install '.[engine]'" in (run.failure or "")
    assert run.outputs == ["feed/catalog.json"]  # feed_catalog ran in the image, then nothing
