"""Where the model step runs: in the run's process, or a Pipes worker (subprocess, k8s, Modal).

The subprocess backend runs for real (the worker program on the offline models); the
Kubernetes backend is checked up to the pod it would create, and a backend without its
package or credentials must fail at resource set-up with one line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dagster import instance_for_test

from resources.compute import (
    WORKER_UID,
    ComputeResource,
    ComputeSetupError,
    check_backend,
    exit_reason,
    worker_command,
)
from resources.storage import StorageResource
from twiml_assets.feed.resource import FeedResource
from twiml_assets.speech import worker

from .dagster_processes import publish
from .test_dagster_assets import materialisations

MODEL_STEP_ASSETS = ("transcript", "diarisation")
TIMING_METADATA = {"asr_seconds", "decode_seconds", "diarisation_seconds", "real_time_factor"}
SAME_FILES = ("transcripts/1.corrected.json", "markdown/1.md", "subtitles/ep-1.srt")


def episode_job(feed_url: str, root: Path, compute: ComputeResource):
    from twiml_assets.definitions import build_definitions

    defs = build_definitions(
        resources={
            "feed": FeedResource(url=feed_url),
            "storage": StorageResource(root=str(root)),
            "compute": compute,
        },
        env={},
    )
    return defs.resolve_job_def("episode_pipeline")


def comparable(metadata: dict[str, Any], root: Path) -> dict[str, Any]:
    """Metadata without timings, with paths relative to the storage root."""
    out = {}
    for name, value in metadata.items():
        if name in TIMING_METADATA:
            continue
        out[name] = value.replace(str(root), "<root>") if isinstance(value, str) else value
    return out


def worker_pids() -> list[int]:
    """Processes running the model step's worker program (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if worker.MODULE.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


# -- the subprocess backend, end to end --------------------------------------------------------
@pytest.mark.slow
def test_subprocess_worker_gives_the_same_outputs_and_metadata_as_local(
    http_server, tmp_path: Path, short_episodes
) -> None:
    (key,) = publish(http_server, [short_episodes[0].audio_path])
    metadata, logs, computed = {}, {}, {}
    for backend in ("local", "subprocess"):
        root = tmp_path / backend
        job = episode_job(http_server.url("feed.xml"), root, ComputeResource(backend=backend))
        with instance_for_test() as instance:
            instance.add_dynamic_partitions("episodes", [key])
            result = job.execute_in_process(
                partition_key=key, instance=instance, raise_on_error=False
            )
            assert result.success, [e.message for e in result.all_events if e.is_failure]
            logs[backend] = [e.message for e in instance.all_logs(result.run_id)]
        meta = materialisations(result)
        metadata[backend] = {a: comparable(meta[a], root) for a in MODEL_STEP_ASSETS}
        computed[backend] = meta["speaker_names"]["embeddings_computed"]

    # The same files, byte for byte: the worker ran the same step on the same settings.
    for rel in SAME_FILES:
        local, remote = (tmp_path / b / rel for b in ("local", "subprocess"))
        assert local.read_bytes() == remote.read_bytes(), rel
    # The same materialisations, with the same metadata (timings aside), through Pipes.
    assert metadata["subprocess"] == metadata["local"]
    assert metadata["subprocess"]["transcript"]["words"] > 10
    assert metadata["subprocess"]["transcript"]["config"]["model"] == "tiny.en"
    assert metadata["subprocess"]["diarisation"]["path:rttm"] == "<root>/diarisation/ep-1.rttm"
    # Progress came back as Pipes log messages, and the worker said where it ran.
    assert any(m.startswith(f"{key}: decoded ") for m in logs["subprocess"])
    assert any("model step on the subprocess backend" in m for m in logs["subprocess"])
    assert any(m.startswith("model step worker started: pid") for m in logs["subprocess"])
    # The worker stored the voiceprints (it has the engine; a slim control plane may not), so
    # speaker_names only read them; in the run's process, speaker_names computed them.
    assert computed == {"local": True, "subprocess": False}
    assert any(m == f"{key}: voiceprints of 2 speaker(s) stored" for m in logs["subprocess"])
    prints = {
        b: json.loads((tmp_path / b / "speakers" / f"{key}.embeddings.json").read_text())
        for b in ("local", "subprocess")
    }
    assert prints["local"]["labels"].keys() == prints["subprocess"]["labels"].keys()
    for label, local_print in prints["local"]["labels"].items():
        remote_print = prints["subprocess"]["labels"][label]
        assert np.allclose(local_print["embedding"], remote_print["embedding"], atol=1e-4), label


@pytest.mark.slow
def test_a_killed_worker_is_retried_by_the_step_and_frees_the_gpu_slot(
    http_server, tmp_path: Path, short_episodes
) -> None:
    """SIGKILL (the OOM killer, an operator) to the worker mid-step: a transient failure,
    so the model step's retry policy runs it again in the same run, and the gpu slot is
    free for the retry and after."""
    (key,) = publish(http_server, [short_episodes[1].audio_path])
    root = tmp_path / "data"
    job = episode_job(http_server.url("feed.xml"), root, ComputeResource(backend="subprocess"))
    with instance_for_test() as instance:
        instance.event_log_storage.set_concurrency_slots("gpu", 1)
        instance.add_dynamic_partitions("episodes", [key])
        results: list[Any] = []
        run = threading.Thread(
            target=lambda: results.append(
                job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
            )
        )
        run.start()
        deadline = time.time() + 240
        while not (pids := worker_pids()) and time.time() < deadline:
            time.sleep(0.1)
        assert pids, "the worker never started"
        time.sleep(2.0)  # mid-step: the worker is importing the stack or loading models
        os.kill(pids[0], signal.SIGKILL)
        run.join(timeout=400)
        (result,) = results

        assert result.success
        (retry,) = [
            e
            for e in result.all_events
            if e.event_type_value == "STEP_UP_FOR_RETRY" and e.step_key == "transcribe_and_diarise"
        ]
        assert (
            "model step worker was killed by SIGKILL" in retry.event_specific_data.error.to_string()
        )
        # The gpu pool slot is free again (op granularity), and nothing waits.
        info = instance.event_log_storage.get_concurrency_info("gpu")
        assert info.active_slot_count == 0 and info.pending_step_count == 0
    assert json.loads((root / "transcripts/1.corrected.json").read_text())["dialogs"]
    assert not worker_pids()


# -- failures that need no models --------------------------------------------------------------
def test_a_remote_backend_needs_shared_storage() -> None:
    from dagster import Failure

    from resources.compute import require_shared_storage

    require_shared_storage({"storage": {"root": "s3://bucket/twiml"}}, "k8s")
    with pytest.raises(Failure) as raised:
        require_shared_storage({"storage": {"root": "data"}}, "k8s")
    assert "the k8s compute backend needs shared storage" in raised.value.description
    assert raised.value.allow_retries is False


def test_exit_reasons_are_in_words() -> None:
    assert exit_reason(-signal.SIGKILL).startswith("model step worker was killed by SIGKILL")
    assert "out of memory" in exit_reason(-signal.SIGKILL)
    assert exit_reason(-signal.SIGSEGV).startswith("model step worker was killed by SIGSEGV")
    assert exit_reason(1) == "model step worker exited with status 1"
    assert "killed by signal 40" in exit_reason(-40)  # a real-time signal has no name


def test_the_worker_reports_a_permanent_failure_with_its_reason(tmp_path: Path) -> None:
    """No upstream files: the worker exits with the permanent status and the reason."""
    from dagster import materialize

    from resources.asr import WhisperASR
    from resources.diarisation import PyannoteDiariser
    from twiml_assets.speech.assets import transcribe_and_diarise

    root = tmp_path / "data"
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", ["ep-9"])
        result = materialize(
            [transcribe_and_diarise],
            partition_key="ep-9",
            instance=instance,
            raise_on_error=False,
            resources={
                "storage": StorageResource(root=str(root)),
                "asr": WhisperASR(),
                "diariser": PyannoteDiariser(),
                "compute": ComputeResource(backend="subprocess"),
            },
        )
    failure = next(e for e in result.all_events if e.is_step_failure)
    error = failure.event_specific_data.error
    assert "ep-9: " in error.message and "materialise episode_metadata" in error.message
    assert "exited with status" not in error.message
    assert failure.event_specific_data.user_failure_data is not None


@pytest.mark.parametrize(
    ("backend", "hide", "message"),
    [
        ("modal", "modal", "TWIML_COMPUTE=modal needs the modal package"),
        ("modal", "dagster_modal", "TWIML_COMPUTE=modal needs the dagster-modal package"),
        ("modal", None, "TWIML_COMPUTE=modal needs Modal credentials: set MODAL_TOKEN_ID"),
        ("k8s", "kubernetes", "TWIML_COMPUTE=k8s needs the kubernetes package"),
        ("k8s", "dagster_k8s", "TWIML_COMPUTE=k8s needs the dagster-k8s package"),
        ("k8s", None, "TWIML_COMPUTE=k8s needs cluster credentials"),
    ],
)
def test_a_backend_without_its_package_or_credentials_is_one_line(
    monkeypatch, tmp_path: Path, backend: str, hide: str | None, message: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    if hide:
        monkeypatch.setitem(sys.modules, hide, None)
    with pytest.raises(ComputeSetupError) as raised:
        check_backend(backend, k8s_image="registry.example/twiml-worker:1")
    text = str(raised.value)
    assert text.startswith(message) and "\n" not in text


@pytest.mark.parametrize(
    ("backend", "hide", "pip_name"),
    [
        ("modal", "modal", "modal"),
        ("modal", "dagster_modal", "dagster-modal"),
        ("k8s", "kubernetes", "kubernetes"),
    ],
)
def test_a_missing_package_names_the_extra_to_install_from_the_checkout(
    monkeypatch, backend: str, hide: str, pip_name: str
) -> None:
    """The project is not on PyPI: the hint installs the extra from the repository root."""
    monkeypatch.setitem(sys.modules, hide, None)
    with pytest.raises(ComputeSetupError) as raised:
        check_backend(backend, k8s_image="registry.example/twiml-worker:1")
    assert str(raised.value) == (
        f"TWIML_COMPUTE={backend} needs the {pip_name} package, which is not installed: "
        f"pip install '.[{backend}]' from the repository root"
    )


def test_credentials_found_where_the_clients_look(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(ComputeSetupError, match="needs the worker image"):
        check_backend("k8s", k8s_image=None)
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube/config").write_text("apiVersion: v1\n")
    check_backend("k8s", k8s_image="img")
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-1")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-1")
    check_backend("modal")
    check_backend("local")


def test_a_missing_credential_fails_the_run_at_resource_set_up(monkeypatch, tmp_path: Path) -> None:
    """Through Dagster: the run fails before any step work, naming what is missing."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    from twiml_assets.definitions import build_definitions

    defs = build_definitions(
        resources={"storage": StorageResource(root=str(tmp_path / "data"))},
        env={"TWIML_COMPUTE": "modal"},
    )
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", ["ep-1"])
        result = defs.resolve_job_def("episode_pipeline").execute_in_process(
            partition_key="ep-1", instance=instance, raise_on_error=False
        )
    assert not result.success
    errors = [
        e.event_specific_data.error
        for e in result.all_events
        if e.is_failure and e.event_specific_data and getattr(e.event_specific_data, "error", None)
    ]
    causes = [c.message for err in errors for c in (err, err.cause) if c is not None]
    assert any("TWIML_COMPUTE=modal needs Modal credentials" in m for m in causes), causes


# -- Kubernetes: the pod the backend would create -----------------------------------------------
def test_the_k8s_pod_runs_the_worker_on_one_gpu_with_secrets_as_environment() -> None:
    from dagster_k8s.pipes import build_pod_body

    compute = ComputeResource(
        backend="k8s",
        k8s_image="registry.example/twiml-worker:1.0",
        k8s_namespace="twiml",
        k8s_secrets=["twiml-storage", "twiml-hf"],
        k8s_node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
    )
    arguments = compute.pod_arguments(worker.MODULE)
    pod = build_pod_body(
        pod_name="dagster-run-1-transcribe-and-diarise",
        env_vars={"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msg"},
        **arguments,
    )
    (container,) = pod.spec.containers
    assert container.image == "registry.example/twiml-worker:1.0"
    assert container.command == ["python", "-m", "twiml_assets.speech.worker"]
    assert container.command == worker_command(worker.MODULE)
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert [e.secret_ref.name for e in container.env_from] == ["twiml-storage", "twiml-hf"]
    assert all(e.secret_ref.optional for e in container.env_from)
    assert {e.name for e in container.env} == {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"}
    assert pod.spec.restart_policy == "Never"
    assert pod.spec.active_deadline_seconds == int(compute.timeout_seconds)
    assert pod.spec.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
    assert pod.metadata.labels["app.kubernetes.io/name"] == "twiml-transcribe-worker"
    # The image's non-root user; a volume for the hub caches is writable by it (fs_group).
    security = pod.spec.security_context
    assert security.run_as_non_root and security.run_as_user == security.fs_group == WORKER_UID
    dockerfile = (Path(__file__).parents[1] / "deploy/Dockerfile.gpu").read_text()
    assert f"USER {WORKER_UID}:{WORKER_UID}" in dockerfile.splitlines()


def test_worker_parameters_carry_the_run_settings_but_no_secret() -> None:
    from resources.asr import WhisperASR
    from resources.diarisation import PyannoteDiariser
    from twiml_assets.speech.step import ModelStepConfig

    params = worker.WorkerParams.build(
        "ep-7",
        ModelStepConfig(num_speakers=2),
        StorageResource(root="s3://bucket/prefix", endpoint_url="http://127.0.0.1:9000"),
        WhisperASR(profile="gpu-offline", beam_size=3),
        PyannoteDiariser(hf_token="hf_secret", num_speakers=2),
    ).model_dump(mode="json")
    assert params["key"] == "ep-7" and params["options"]["num_speakers"] == 2
    assert params["storage"]["root"] == "s3://bucket/prefix"
    assert params["asr"]["profile"] == "gpu-offline" and params["asr"]["beam_size"] == 3
    assert "hf_secret" not in json.dumps(params)
    rebuilt = worker.WorkerParams.model_validate(params)
    assert WhisperASR(**rebuilt.asr).settings().beam_size == 3


# -- Modal: dagster-modal's client, up to the `modal run` it starts ------------------------------
def test_the_modal_backend_runs_the_app_entrypoint_under_pipes(monkeypatch, tmp_path: Path) -> None:
    """``modal run deploy/modal/app.py::run_model_step`` is started with the Pipes variables;
    a stand-in for it (a Python process that speaks Pipes) reports a materialisation back."""
    import subprocess

    from dagster import asset, materialize

    import resources.compute as compute_module

    started: list[dict[str, Any]] = []
    stand_in = (
        "from dagster_pipes import open_dagster_pipes\n"
        "with open_dagster_pipes() as p:\n"
        "    p.log.info('step on ' + p.get_extra('model_step')['key'])\n"
        "    p.report_asset_materialization(metadata={'words': 3})\n"
    )

    popen = subprocess.Popen

    def fake_popen(command, **kwargs):
        started.append({"command": list(command), **kwargs})
        return popen([sys.executable, "-c", stand_in], **kwargs)

    monkeypatch.setattr(compute_module.subprocess, "Popen", fake_popen)

    @asset
    def transcript(context):
        compute = ComputeResource(backend="modal", modal_gpu="H100")
        yield from compute.run_worker(
            context, worker.MODULE, {"key": "ep-5"}, worker.MODAL_ENTRYPOINT
        )

    result = materialize([transcript], raise_on_error=False)
    assert result.success
    (call,) = started
    assert call["command"] == ["modal", "run", "deploy/modal/app.py::run_model_step"]
    assert call["cwd"] == os.getcwd()
    env = call["env"]
    assert env["TWIML_MODAL_GPU"] == "H100"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(env)
    (mat,) = result.asset_materializations_for_node("transcript")
    assert mat.metadata["words"].value == 3
