"""The deploy images, built with podman and run from their own filesystems.

Used by ``bench/images.py`` (``bench/images.sh``) and the slow test
``tests/test_images.py``. Three facts of this kind of machine shape it:

- No container registry can be reached, so the base image is Debian bookworm made here
  with ``mmdebstrap`` and ``podman import``, passed to the Dockerfiles as ``BASE``.
- Inside a build, pip and uv see the TLS-intercepting proxy: the host's CA bundle goes in
  as the build secret ``ca`` (read-only, not stored in a layer). The host's uv cache goes in
  as a volume, so packages the host already downloaded are not downloaded again.
- ``podman run`` is refused (crun cannot set ``RLIMIT_NOFILE``/``RLIMIT_NPROC`` here), so an
  image's commands run in a chroot of its container's filesystem (``podman mount``), each
  in a private mount namespace (``unshare``) with /proc, /dev, a scratch /tmp and the shared
  work directory at /mnt (TMPDIR=/mnt/tmp). The worker image's root is mounted at /srv
  inside the control plane's, and the model step's subprocess backend runs its python there
  (``chroot /srv``).
  The network is the host's, so the processes reach PostgreSQL and the feed on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "localhost/twiml-debian-bookworm:base"
CONTROL_PLANE_IMAGE = "localhost/twiml-transcribe:local"
CONTROL_PLANE_ENGINE_IMAGE = "localhost/twiml-transcribe-engine:local"
WORKER_IMAGE = "localhost/twiml-transcribe-worker:local"
CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
UV_CACHE = Path(os.environ.get("UV_CACHE_DIR") or Path.home() / ".cache" / "uv")
IMAGE_PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOT_AVAILABLE = (
    "podman, mmdebstrap and unshare are needed to build and run the images here: "
    "apt-get install podman mmdebstrap (scripts/setup.sh installs them)"
)


class ImageToolsMissing(RuntimeError):
    """podman or mmdebstrap is not installed: one line that says how to install them."""


def tools_available() -> bool:
    return all(shutil.which(tool) for tool in ("podman", "mmdebstrap", "unshare", "chroot"))


def _podman(*args: str, timeout: float = 1800) -> str:
    if not tools_available():
        raise ImageToolsMissing(NOT_AVAILABLE)
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} failed: {proc.stderr[-3000:]}")
    return proc.stdout.strip()


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], capture_output=True).returncode == 0


def build_base(workdir: Path) -> float:
    """Debian bookworm (minbase) as a local image; seconds taken (0 when it exists)."""
    if image_exists(BASE_IMAGE):
        return 0.0
    started = time.monotonic()
    tarball = workdir / "bookworm.tar"
    subprocess.run(
        ["mmdebstrap", "--variant=minbase", "--include=ca-certificates", "bookworm", str(tarball)],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    _podman("import", str(tarball), BASE_IMAGE)
    tarball.unlink()
    return time.monotonic() - started


def build_image(dockerfile: str, tag: str, log: Path, extras: str | None = None) -> float:
    """``podman build`` of one of deploy/'s Dockerfiles on the local base; seconds taken."""
    command = [
        "podman", "build", "--isolation=chroot", "--network=host",
        "-f", dockerfile, "-t", tag, "--build-arg", f"BASE={BASE_IMAGE}",
    ]  # fmt: skip
    if extras is not None:
        command += ["--build-arg", f"EXTRAS={extras}"]
    if CA_BUNDLE.is_file():
        command += ["--secret", f"id=ca,src={CA_BUNDLE}"]
    if UV_CACHE.is_dir():
        command += ["--volume", f"{UV_CACHE}:/uv-cache", "--build-arg", "UV_CACHE_DIR=/uv-cache"]
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [*command, str(REPO)], stdout=out, stderr=subprocess.STDOUT, timeout=3600
        )
    if proc.returncode != 0:
        raise RuntimeError(f"building {tag} failed:\n{log.read_text()[-4000:]}")
    return time.monotonic() - started


def prune_build_cache() -> None:
    """Drop untagged images: the build stages (an engine image's is about 10 GB)."""
    _podman("image", "prune", "--force")


def image_config(tag: str) -> tuple[str, dict[str, str]]:
    """The image's WORKDIR (where its commands start) and ENV."""
    import json

    config = json.loads(_podman("image", "inspect", "--format", "{{json .Config}}", tag))
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return config.get("WorkingDir") or "/", env


def image_size(tag: str) -> int:
    """The image's size in bytes, as podman reports it (all its layers, base included)."""
    return int(_podman("image", "inspect", "--format", "{{.Size}}", tag))


@contextlib.contextmanager
def container_root(tag: str) -> Iterator[Path]:
    """A writable root filesystem of ``tag``: a created (never started) container, mounted."""
    container = _podman("create", tag)
    try:
        yield Path(_podman("mount", container))
    finally:
        subprocess.run(["podman", "umount", container], capture_output=True)
        subprocess.run(["podman", "rm", "-f", container], capture_output=True)


# -- processes in an image's filesystem -------------------------------------------------------
@dataclass
class ImageStack:
    """The control plane's root (and the worker's), the shared work directory and /tmp."""

    control_plane: Path
    work: Path
    worker: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Set for every command, on top of the image's own ENV (``image_env``)."""
    workdir: str = "/opt/dagster/app"
    """Where commands start: the control-plane image's WORKDIR."""
    image_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        tag: str,
        root: Path,
        work: Path,
        worker_tag: str | None = None,
        worker_root: Path | None = None,
    ) -> ImageStack:
        """The stack of image ``tag`` mounted at ``root``: its WORKDIR and ENV, as a
        container of it would have them (and the worker image's ENV for its python)."""
        workdir, image_env = image_config(tag)
        worker_env = image_config(worker_tag)[1] if worker_tag else {}
        return cls(root, work, worker_root, workdir=workdir, image_env=image_env,
                   worker_env=worker_env)  # fmt: skip

    @property
    def share(self) -> Path:
        return self.work / "mnt"

    @property
    def tmp(self) -> Path:
        return self.work / "tmp"

    def prepare(self) -> None:
        for folder in (self.share, self.tmp, self.share / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o1777)

    def _mounts(self, root: Path, own_tmp: bool = True) -> list[str]:
        """/proc, /dev and the shared /mnt in ``root``; a scratch /tmp where ``own_tmp``
        (not in the worker's root, which may be this machine's own: files that both sides
        read, the Pipes context and messages, go to TMPDIR=/mnt/tmp, the same in both)."""
        r = shlex.quote(str(root))
        mounts = [
            f"mount -t proc proc {r}/proc",
            f"mount --rbind /dev {r}/dev",
            f"mount --bind {shlex.quote(str(self.share))} {r}/mnt",
        ]
        if own_tmp:
            mounts.append(f"mount --bind {shlex.quote(str(self.tmp))} {r}/tmp")
        return mounts

    def command(self, argv: list[str], env: Mapping[str, str] | None = None) -> list[str]:
        """``argv`` as the control-plane image runs it, in a mount namespace of its own."""
        self.prepare()
        steps = self._mounts(self.control_plane)
        if self.worker is not None:
            steps += self._mounts(self.worker, own_tmp=False)
            steps.append(f"mount --rbind {shlex.quote(str(self.worker))} "
                         f"{shlex.quote(str(self.control_plane))}/srv")  # fmt: skip
        variables = {
            "PATH": IMAGE_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            **self.image_env,
            "TMPDIR": "/mnt/tmp",  # seen at the same path by the worker (see _mounts)
            **self.env,
            **(env or {}),
        }
        chroot = ["chroot", str(self.control_plane), "env", "-i"]
        chroot += [f"{k}={v}" for k, v in variables.items()]
        chroot += ["sh", "-c", f'cd {shlex.quote(self.workdir)} && exec "$@"', "sh", *argv]
        script = " && ".join([*steps, "exec " + shlex.join(chroot)])
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]

    def run(self, argv: list[str], timeout: float = 600, **env: str) -> str:
        proc = subprocess.run(
            self.command(argv, env), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}")  # fmt: skip
        return proc.stdout

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        with (self.work / f"{name}.log").open("w") as log:  # the child keeps its own copy
            return subprocess.Popen(
                self.command(argv, env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def write_worker_python(self, python: str = "/opt/venv/bin/python", **env: str) -> str:
        """The subprocess backend's interpreter: ``python`` in the worker's root (mounted at
        /srv), by default the worker image's, with that image's ENV and ``env`` on top (the
        Pipes variables the backend sets pass through)."""
        env = {
            "PATH": f"{Path(python).parent}:/usr/bin:/bin",
            **self.worker_env,
            "HF_HUB_OFFLINE": "1",
            **env,
        }
        self.prepare()
        script = self.share / "worker-python"
        script.write_text(
            "#!/bin/sh\n"
            "# The model step's worker in the worker's filesystem (mounted at /srv).\n"
            f"exec chroot /srv /usr/bin/env {shlex.join(f'{k}={v}' for k, v in env.items())} "
            f'{shlex.quote(python)} "$@"\n'
        )
        script.chmod(0o755)
        return "/mnt/worker-python"


def stop(process: subprocess.Popen) -> None:
    """SIGINT to the process group (its gRPC children and run workers too), then SIGKILL to
    whatever of the group is left, so that nothing keeps the image's mounts busy."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def workspace_for(port: int, path: Path) -> None:
    """deploy/workspace.yaml with the code server on this machine's loopback."""
    workspace = yaml.safe_load((REPO / "deploy/workspace.yaml").read_text())
    workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=port)
    path.write_text(yaml.safe_dump(workspace))


# -- the demo episode through the daemon ------------------------------------------------------
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def compose_command(service: str) -> list[str]:
    """docker-compose.yml's command of ``service``, with compose's ``$$`` unescaped."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return [part.replace("$$", "$") for part in compose["services"][service]["command"]]


def with_option(command: list[str], flag: str, value: str) -> list[str]:
    command = list(command)
    command[command.index(flag) + 1] = value
    return command


def wait_until(what: str, condition, timeout: float, logs=lambda: "") -> object:
    """``condition()`` once it is truthy; else TimeoutError with ``logs()`` as they are then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(1)
    raise TimeoutError(f"{what} within {timeout:.0f} s\n{logs()}")


@dataclass
class DemoRun:
    """What one episode's run left: its status in PostgreSQL, its files, its failure."""

    status: str
    run_id: str
    seconds: float
    outputs: list[str]
    failure: str | None
    webserver_ok: bool
    worker_start_seconds: float | None = None
    """From the run's launch (RUN_STARTING) to its worker's first event (RUN_START): the
    process start, ``import twiml_assets.definitions`` and the instance, as in a run pod."""


def run_demo(
    stack: ImageStack,
    postgres,  # tests.postgres_server.PostgresServer
    feed_url: str,
    key: str,
    compute: str,
    timeout: float = 900,
) -> DemoRun:
    """The compose stack's code server, daemon and webserver from the images' filesystems,
    on ``postgres``; one backfill of ``key`` through the daemon; its outcome."""
    from tests.postgres_server import free_port

    stack.prepare()
    home = stack.share / "dagster_home"
    home.mkdir(exist_ok=True)
    image_home = stack.control_plane / "opt/dagster/dagster_home"
    shutil.copy(image_home / "dagster.yaml", home / "dagster.yaml")  # the image's instance
    db = postgres.create_database(f"images_{int(time.time())}")
    code_port, web_port = free_port(), free_port()
    workspace_for(code_port, stack.share / "workspace.yaml")
    stack.env.update(postgres.dagster_env(db))
    stack.env.update(
        DAGSTER_HOME="/mnt/dagster_home",
        TWIML_STORAGE_ROOT="/mnt/data",
        TWIML_FEED_URL=feed_url,
        TWIML_SENSOR_STATUS="stopped",
        TWIML_COMPUTE=compute,
        HF_HUB_OFFLINE="1",
    )
    if stack.worker is not None and "TWIML_WORKER_PYTHON" not in stack.env:
        stack.env["TWIML_WORKER_PYTHON"] = stack.write_worker_python()
    workspace = "/mnt/workspace.yaml"

    stack.run(["dagster", "instance", "migrate"])  # the tables, once, before the servers
    code = with_option(compose_command("code"), "-h", "127.0.0.1")
    processes = {"code": stack.start("code", with_option(code, "-p", str(code_port)))}
    try:
        health = ["dagster", "api", "grpc-health-check", "-p", str(code_port)]  # compose's check
        wait_until(
            "the code server serving",
            lambda: subprocess.run(stack.command(health), capture_output=True).returncode == 0,
            180,
            lambda: stack.log("code"),
        )
        # The catalogue registers the episodes as partitions (the sensor's job, stopped here).
        stack.run(["dagster", "asset", "materialize", "--select", "feed_catalog",
                   "-m", "twiml_assets.definitions"])  # fmt: skip
        daemon = compose_command("daemon")
        daemon[-1] = daemon[-1].replace("/opt/dagster/workspace.yaml", workspace)
        processes["daemon"] = stack.start("daemon", daemon, TWIML_GPU_WORKERS="1")
        web = with_option(compose_command("webserver"), "-h", "127.0.0.1")
        web = with_option(with_option(web, "-p", str(web_port)), "-w", workspace)
        processes["webserver"] = stack.start("webserver", web)

        started = time.monotonic()
        stack.run(["dagster", "job", "backfill", "-j", "episode_pipeline", "-w", workspace,
                   "--partitions", key, "--noprompt"])  # fmt: skip

        def finished_run() -> tuple[str, str] | None:
            conn = postgres.connect(db)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT run_id, status FROM runs WHERE pipeline_name = %s "
                                "ORDER BY id DESC", ("episode_pipeline",))  # fmt: skip
                    rows = cur.fetchall()
            finally:
                conn.close()
            return rows[0] if rows and rows[0][1] in FINISHED else None

        logs = lambda: "\n".join(f"== {n}\n{stack.log(n)}" for n in processes)  # noqa: E731
        run_id, status = wait_until("the run finished", finished_run, timeout, logs)
        seconds = time.monotonic() - started
        webserver_ok = _serves(web_port)
        failure = None if status == "SUCCESS" else _step_failure(postgres, db, run_id)
        worker_start = _worker_start_seconds(postgres, db, run_id)
    finally:
        for process in reversed(processes.values()):
            stop(process)
    data = stack.share / "data"
    outputs = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    return DemoRun(status, run_id, seconds, outputs, failure, webserver_ok, worker_start)


def _serves(port: int) -> bool:
    import urllib.request

    with contextlib.suppress(OSError):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=10) as r:
            return r.status == 200
    return False


def _step_failure(postgres, db: str, run_id: str) -> str:
    """The run's step failures, as the event log in PostgreSQL has them."""
    conn = postgres.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT event FROM event_logs WHERE run_id = %s AND dagster_event_type IN "
                "('STEP_FAILURE', 'RESOURCE_INIT_FAILURE', 'RUN_FAILURE')",
                (run_id,),
            )
            return "\n".join(row[0] for row in cur.fetchall())
    finally:
        conn.close()


def _worker_start_seconds(postgres, db: str, run_id: str) -> float | None:
    conn = postgres.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT dagster_event_type, min(timestamp) FROM event_logs WHERE run_id = %s "
                "AND dagster_event_type IN ('PIPELINE_STARTING', 'PIPELINE_START') "
                "GROUP BY dagster_event_type",
                (run_id,),
            )
            times = dict(cur.fetchall())
    finally:
        conn.close()
    if {"PIPELINE_STARTING", "PIPELINE_START"} <= set(times):
        return (times["PIPELINE_START"] - times["PIPELINE_STARTING"]).total_seconds()
    return None


def import_seconds(stack: ImageStack) -> float:
    """``import twiml_assets.definitions`` in the control-plane image: a run pod's start."""
    code = "import time; t = time.perf_counter(); import twiml_assets.definitions; "
    out = stack.run(["python", "-c", code + "print(time.perf_counter() - t)"])
    return float(out.strip().splitlines()[-1])
