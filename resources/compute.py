"""Where the model step runs: in the run's process, or on a GPU worker through Dagster Pipes.

``local`` runs the step in the Dagster run's own process (the CLI, the demo, the tests).
The other backends start the same worker program elsewhere and read back what it reports:

- ``subprocess``: a child process on this machine (GPU memory is freed when the step ends;
  a native crash fails the step with the worker's stderr, not the run worker);
- ``modal``: a Modal function (``deploy/modal/app.py``), through dagster-modal;
- ``k8s``: a pod on Kubernetes, through dagster-k8s, from an image of ``deploy/Dockerfile.gpu``.

The backend is chosen by ``TWIML_COMPUTE`` (or the launchpad); the asset code is the same.
The worker program is named by its module, so this file imports no asset code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    Failure,
    InitResourceContext,
    MaterializeResult,
    PipesSubprocessClient,
    open_pipes_session,
)
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.pipes.client import PipesClientCompletedInvocation
from pydantic import Field

from resources.engine_check import EngineMissingError, installed, require_engine
from resources.failures import permanent, transient

Backend = Literal["local", "subprocess", "modal", "k8s"]
STDERR_TAIL_LINES = 30
WORKER_EXTRA = "model_step"
"""The Pipes extra that carries the worker's parameters (a JSON object)."""
PERMANENT_EXIT = 3
"""The worker's exit status for a failure no re-run can fix; its reason is on stderr."""
PERMANENT_PREFIX = "permanent failure: "
WORKER_UID = 1000
"""The worker image's user (``USER 1000:1000`` in deploy/Dockerfile.gpu)."""

# What each remote backend needs installed: (import name, pip name).
PACKAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "modal": (("modal", "modal"), ("dagster_modal", "dagster-modal")),
    "k8s": (("kubernetes", "kubernetes"), ("dagster_k8s", "dagster-k8s")),
}


class ComputeSetupError(RuntimeError):
    """The chosen backend cannot start: one line that names what is missing."""


class ComputeResource(ConfigurableResource):
    """The model step's compute backend and its settings (env ``TWIML_COMPUTE`` and friends)."""

    backend: Backend = Field(
        default="local",
        description="local (in the run process), subprocess, modal or k8s (env TWIML_COMPUTE).",
    )
    python: str | None = Field(
        default=None,
        description="subprocess: the interpreter that runs the worker (default: this one).",
    )
    modal_app: str = Field(
        default="deploy/modal/app.py",
        description="modal: the Modal app file, relative to the code location's working "
        "directory (the repository's root under `dg dev` and docker-compose).",
    )
    modal_gpu: str = Field(
        default="L4", description="modal: the GPU type (L4, A10G, A100, H100; env TWIML_MODAL_GPU)."
    )
    k8s_image: str | None = Field(
        default=None, description="k8s: the worker image, built from deploy/Dockerfile.gpu."
    )
    k8s_namespace: str | None = Field(default=None, description="k8s: namespace of the pods.")
    k8s_secrets: list[str] = Field(
        default_factory=lambda: ["twiml-storage", "twiml-hf"],
        description="k8s: Kubernetes secrets whose keys become the pod's environment.",
    )
    k8s_gpu_resource: str = Field(
        default="nvidia.com/gpu", description="k8s: the extended resource one worker requests."
    )
    k8s_node_selector: dict[str, str] = Field(
        default_factory=dict, description="k8s: node labels the worker pod must match."
    )
    k8s_service_account: str | None = Field(default=None, description="k8s: the pod's account.")
    timeout_seconds: float = Field(
        default=6 * 3600,
        gt=0,
        description="The longest one worker may run: the subprocess is killed, the k8s pod "
        "stopped by its deadline; on Modal it bounds `modal run`, retries included (the app's "
        "own per-attempt limit is TWIML_MODAL_TIMEOUT).",
    )

    @property
    def runs_in_process(self) -> bool:
        return self.backend == "local"

    def setup_for_execution(self, context: InitResourceContext) -> None:
        check_backend(self.backend, self.k8s_image)
        if self.backend == "local" or (self.backend == "subprocess" and self.python is None):
            # The model step runs in this interpreter (or a worker started from it).
            try:
                require_engine(
                    f"TWIML_COMPUTE={self.backend} runs the model step on this machine",
                    "run it on GPU workers (TWIML_COMPUTE=modal or k8s)",
                )
            except EngineMissingError as exc:
                raise ComputeSetupError(str(exc)) from None

    # -- running the worker ---------------------------------------------------------------
    def run_worker(
        self,
        context: AssetExecutionContext,
        module: str,
        params: Mapping[str, Any],
        modal_entrypoint: str,
    ) -> Iterator[MaterializeResult]:
        """Run ``python -m module`` on this backend; yield the materialisations it reported.

        On Modal, the app's local entrypoint ``modal_entrypoint`` stands for the module.
        """
        extras = {WORKER_EXTRA: dict(params)}
        if self.backend in ("modal", "k8s"):
            require_shared_storage(params, self.backend)
        if self.backend == "subprocess":
            invocation = self._run_subprocess(context, module, extras)
        elif self.backend == "modal":
            invocation = self._run_modal(context, extras, modal_entrypoint)
        elif self.backend == "k8s":
            invocation = self._run_k8s(context, module, extras)
        else:  # pragma: no cover - runs_in_process is checked by the caller
            raise ValueError(f"the {self.backend} backend runs no worker")
        yield from invocation.get_results()

    def _run_subprocess(
        self, context: AssetExecutionContext, module: str, extras: dict[str, Any]
    ) -> PipesClientCompletedInvocation:
        command = [self.python or sys.executable, "-m", module]
        return WorkerSubprocessClient(timeout_seconds=self.timeout_seconds).run(
            context=context, command=command, extras=extras
        )

    def _run_modal(
        self, context: AssetExecutionContext, extras: dict[str, Any], entrypoint: str
    ) -> PipesClientCompletedInvocation:
        from dagster_modal import ModalClient

        class WorkerModalClient(ModalClient, WorkerSubprocessClient):
            """dagster-modal's ``modal run``, with the worker's stderr tail and exit codes."""

        client = WorkerModalClient(project_directory=os.getcwd())
        client.timeout_seconds = self.timeout_seconds
        bin_dir = str(Path(sys.executable).parent)  # `modal` next to this interpreter
        return client.run(
            func_ref=f"{self.modal_app}::{entrypoint}",
            context=context,
            extras=extras,
            env={
                "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                "TWIML_MODAL_GPU": self.modal_gpu,
            },
        )

    def _run_k8s(
        self, context: AssetExecutionContext, module: str, extras: dict[str, Any]
    ) -> PipesClientCompletedInvocation:
        from dagster_k8s import PipesK8sClient

        return PipesK8sClient().run(
            context=context,
            extras=extras,
            namespace=self.k8s_namespace,
            pod_wait_timeout=self.timeout_seconds,
            **self.pod_arguments(module),
        )

    def pod_arguments(self, module: str) -> dict[str, Any]:
        """The worker pod: the image, one GPU, secrets as environment, never restarted.

        ``PipesK8sClient`` adds the Pipes variables to the first container's environment.
        """
        container: dict[str, Any] = {
            "resources": {"limits": {self.k8s_gpu_resource: "1"}},
            # Optional: a gpu-offline worker needs no Hugging Face token, and a missing
            # storage secret fails in the worker with the storage error, not a stuck pod.
            "env_from": [
                {"secret_ref": {"name": name, "optional": True}} for name in self.k8s_secrets
            ],
        }
        spec: dict[str, Any] = {
            "containers": [container],
            "restart_policy": "Never",
            # A hung worker is stopped by Kubernetes, freeing its GPU (and the step's slot).
            "active_deadline_seconds": int(self.timeout_seconds),
            # GPU nodes are usually tainted so that only pods asking for a GPU land there.
            "tolerations": [
                {"key": self.k8s_gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
            ],
            # The image's user (deploy/Dockerfile.gpu); fs_group makes a volume mounted for
            # the hub caches (/home/twiml/.cache) writable by it.
            "security_context": {
                "run_as_non_root": True,
                "run_as_user": WORKER_UID,
                "fs_group": WORKER_UID,
            },
        }
        if self.k8s_node_selector:
            spec["node_selector"] = dict(self.k8s_node_selector)
        if self.k8s_service_account:
            spec["service_account_name"] = self.k8s_service_account
        return {
            "image": self.k8s_image,
            "command": worker_command(module),
            "base_pod_spec": spec,
            "base_pod_meta": {"labels": {"app.kubernetes.io/name": "twiml-transcribe-worker"}},
        }


def require_shared_storage(params: Mapping[str, Any], backend: str) -> None:
    """A remote worker cannot read this machine's files: its storage must be ``s3://``."""
    root = (params.get("storage") or {}).get("root")
    if root is not None and not str(root).startswith("s3://"):
        raise permanent(
            f"the {backend} compute backend needs shared storage, and the storage "
            f"root is {root!r}: set TWIML_STORAGE_ROOT to s3://bucket/prefix (a remote worker "
            "cannot read this machine's files)"
        )


def worker_command(module: str) -> list[str]:
    """The worker's command line inside an image (its ``python`` is the project's)."""
    return ["python", "-m", module]


# -- set-up checks ----------------------------------------------------------------------------
def check_backend(backend: str, k8s_image: str | None = None) -> None:
    """Raise ComputeSetupError, one line, when ``backend`` lacks a package or credentials."""
    for module, pip_name in PACKAGES.get(backend, ()):
        if not installed(module):
            raise ComputeSetupError(
                f"TWIML_COMPUTE={backend} needs the {pip_name} package, which is not installed: "
                f"pip install '.[{backend}]' from the repository root"
            )
    if backend == "modal" and not _modal_credentials():
        raise ComputeSetupError(
            "TWIML_COMPUTE=modal needs Modal credentials: set MODAL_TOKEN_ID and "
            "MODAL_TOKEN_SECRET, or run `modal token new` (writes ~/.modal.toml)"
        )
    if backend == "k8s":
        if not k8s_image:
            raise ComputeSetupError(
                "TWIML_COMPUTE=k8s needs the worker image: set TWIML_K8S_IMAGE to an image "
                "built from deploy/Dockerfile.gpu"
            )
        if not _k8s_credentials():
            raise ComputeSetupError(
                "TWIML_COMPUTE=k8s needs cluster credentials: run inside the cluster, or set "
                "KUBECONFIG (or create ~/.kube/config)"
            )


def _modal_credentials() -> bool:
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    config = Path(os.environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")
    return config.is_file() and "token_id" in config.read_text(errors="replace")


def _k8s_credentials() -> bool:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    paths = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    return any(Path(p).is_file() for p in paths.split(os.pathsep) if p)


# -- the subprocess backend -------------------------------------------------------------------
class WorkerSubprocessClient(PipesSubprocessClient):
    """PipesSubprocessClient that keeps the worker's stderr tail for the failure message.

    stderr still reaches the run's compute log line by line; when the worker dies (a
    native crash, SIGKILL, the OOM killer) the step fails with its exit signal and the
    last lines it wrote, so the reason is in the Dagster event log, not only in a file.
    """

    def __init__(self, timeout_seconds: float = 6 * 3600, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout_seconds = timeout_seconds

    def run(  # type: ignore[override]
        self,
        *,
        context: AssetExecutionContext,
        command: Sequence[str],
        extras: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PipesClientCompletedInvocation:
        with open_pipes_session(
            context=context,
            context_injector=self.context_injector,
            message_reader=self.message_reader,
            extras=extras,
        ) as session:
            process = subprocess.Popen(
                list(command),
                cwd=self.cwd,
                env={**os.environ, **self.env, **(env or {}), **session.get_bootstrap_env_vars()},
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,  # its own process group: its children stop with it
            )
            context.log.info(f"model step worker started: pid {process.pid}")
            tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
            reader = threading.Thread(target=_tee, args=(process.stderr, tail), daemon=True)
            reader.start()
            try:
                returncode = process.wait(timeout=self.timeout_seconds)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
                reader.join(timeout=5)
                raise Failure(
                    description=f"model step worker ran past {self.timeout_seconds:.0f} s "
                    "and was killed" + _describe_tail(tail)
                ) from None
            except DagsterExecutionInterruptedError:
                context.log.info("model step interrupted: stopping the worker (SIGINT)")
                _signal_group(process, signal.SIGINT)
                try:
                    process.wait(timeout=self.termination_timeout_seconds)
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
                    process.wait()
                raise
            reader.join(timeout=5)
            _signal_group(process, signal.SIGKILL)  # children the worker left behind, if any
            if returncode == PERMANENT_EXIT:
                reasons = [line for line in tail if line.startswith(PERMANENT_PREFIX)]
                if reasons:
                    reason = reasons[-1].removeprefix(PERMANENT_PREFIX)
                    raise permanent(reason)
            if returncode != 0:  # killed, out of memory, crashed: worth another try
                raise transient(exit_reason(returncode) + _describe_tail(tail))
        return PipesClientCompletedInvocation(session)


def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
    """Signal the worker's process group (the worker and, say, its per-config children)."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def _tee(stream: IO[str] | None, tail: deque[str]) -> None:
    """Copy the worker's stderr to ours (the compute log) and keep its last lines."""
    if stream is None:
        return
    for line in stream:
        sys.stderr.write(line)
        if line.strip():
            tail.append(line.rstrip())
    sys.stderr.flush()


def exit_reason(returncode: int) -> str:
    """Why the worker stopped, in words: ``killed by SIGKILL`` or ``exited with status 3``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:  # a real-time signal has no name
            name = f"signal {-returncode}"
        hint = " (out of memory, or killed by an operator)" if name == "SIGKILL" else ""
        return f"model step worker was killed by {name}{hint}; the step can be re-run"
    return f"model step worker exited with status {returncode}"


def _describe_tail(tail: Iterable[str]) -> str:
    lines = list(tail)
    return ". Last lines of its stderr:\n" + "\n".join(lines) if lines else ""
