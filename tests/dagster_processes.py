"""Real Dagster processes for tests, started as users and the deployment start them: the
Dagster CLI, the code server of docker-compose.yml, the daemon; and a feed for them to read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from twiml_assets.demo.feed_server import DemoEpisode, render_rss

REPO = Path(__file__).resolve().parents[1]


BIN = Path(sys.executable).parent


PROJECT_LOCATION = "twiml_assets.definitions"


STANDIN_LOCATION = "tests.standin_definitions"  # the same definitions, stand-in models


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A Dagster CLI command in the repository, as a user runs it."""
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def cli_ok(args: list[str], env: dict[str, str]) -> None:
    proc = run_cli(args, env)
    assert proc.returncode == 0, f"{' '.join(args[:3])}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"


def dagster_env(home: Path, instance: Path = REPO / "dagster.yaml", **extra: str) -> dict[str, str]:
    """Environment for a Dagster CLI process with its own instance: the project's
    dagster.yaml (SQLite), or ``instance``, e.g. deploy/dagster.yaml (PostgreSQL)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(instance, home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIML_")}
    env.update({"DAGSTER_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})
    env.update(extra)
    return env


def publish(server, clips: list[Path], numbers: list[int] | None = None) -> list[str]:
    """Serve ``clips`` as episodes 1..n of a feed at /feed.xml; returns the episode keys."""
    numbers = numbers or list(range(1, len(clips) + 1))
    episodes = []
    for n, clip in zip(numbers, clips, strict=True):
        data = Path(clip).read_bytes()
        server.put(f"audio/{n}.mp3", data, "audio/mpeg")
        episodes.append(
            DemoEpisode(
                n,
                f"Test episode {n} - #{n}",
                f"About topic {n}.",
                f"audio/{n}.mp3",
                len(data),
                10.0,
                f"Mon, {n:02d} Jan 2024 10:00:00 +0000",
                f"guid-{n}",
            )
        )
    server.put("feed.xml", render_rss(episodes, server.base_url))
    return [f"ep-{n}" for n in numbers]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, condition, timeout: float, every: float = 1.0):
    """``condition()``'s first truthy value within ``timeout`` seconds, else a failure."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def start_code_server(
    env: dict[str, str], tmp_path: Path, module: str = STANDIN_LOCATION
) -> tuple[subprocess.Popen, Path, int]:
    """The `code` service of docker-compose.yml on 127.0.0.1, serving ``module`` instead of
    the project's code location (default: the stand-in models'), and deploy/workspace.yaml
    pointed at it; returns the server, the workspace file and the port."""
    # The instance's tables are made here, once: the code server and the CLI commands that
    # follow it would otherwise race to create them ("table ... already exists").
    with DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"])):
        pass
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    command = list(compose["services"]["code"]["command"])
    port = free_port()
    command[command.index("-h") + 1] = "127.0.0.1"
    command[command.index("-p") + 1] = str(port)
    assert command[command.index("-m") + 1] == PROJECT_LOCATION, command
    command[command.index("-m") + 1] = module
    workspace = yaml.safe_load((REPO / "deploy/workspace.yaml").read_text())
    workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=port)
    path = tmp_path / "workspace.yaml"
    path.write_text(yaml.safe_dump(workspace))
    log = (tmp_path / "code-server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / command[0]), *command[1:]],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # stop_group() stops its gRPC child and run workers too
    )
    return server, path, port


def wait_until_serving(server: subprocess.Popen, port: int, log: Path) -> None:
    """What the compose healthcheck (`dagster api grpc-health-check`) asks, in-process."""
    from dagster._grpc.client import DagsterGrpcClient

    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.time() + 120
    while time.time() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        if client.health_check_query() == "SERVING":
            return
        time.sleep(0.5)
    raise AssertionError(f"the code server is not serving: {log.read_text()[-3000:]}")


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def stop_group(process: subprocess.Popen) -> None:
    """Ctrl+C to a process started in a session of its own and all its children."""
    import signal

    os.killpg(process.pid, signal.SIGINT)
    deadline = time.time() + 60
    while time.time() < deadline:
        process.poll()  # reaps the leader once it exits
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break  # the whole group is gone
        time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start_daemon(
    env: dict[str, str],
    code_server: subprocess.Popen,
    workspace: Path,
    port: int,
    tmp_path: Path,
    module: str = STANDIN_LOCATION,
) -> subprocess.Popen:
    """The manual catch-up path's set-up: materialise feed_catalog (registers the
    partitions) from ``module`` (the code server's), the gpu pool's limit as the daemon's
    start command sets it (TWIML_GPU_WORKERS=1), then the daemon on the served code location."""
    materialize = ["asset", "materialize", "--select", "feed_catalog"]
    cli_ok([str(BIN / "dagster"), *materialize, "-m", module], env)
    cli_ok([str(BIN / "dagster"), "instance", "concurrency", "set", "gpu", "1"], env)
    wait_until_serving(code_server, port, tmp_path / "code-server.log")
    return subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
