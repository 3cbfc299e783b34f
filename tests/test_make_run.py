"""`make run` (scripts/run.sh): the README's first command, offline with DEMO=1; and that
nothing of it outlives Ctrl+C or a SIGTERM to make."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef

from tests.dagster_processes import REPO, dagster_env, free_port


@dataclasses.dataclass
class MakeRun:
    """A `make run DEMO=1` started by :func:`make_run_demo`."""

    proc: subprocess.Popen
    ui: int
    feed_port: int
    root: Path
    home: Path
    log: Path
    seen: list[psutil.Process] = dataclasses.field(default_factory=list)
    """Processes of its tree seen so far: the clean-up kills those still running."""

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_ui(self, within: float) -> None:
        import urllib.request

        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ui}/server_info", timeout=2):
                    return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"no Dagster UI after {within:.0f} s: {self.output()[-3000:]}")


def default_signal_handling() -> None:
    """In the child before exec: SIGINT, SIGTERM and SIGHUP back to their default action.

    This pytest process may ignore them, and an ignored signal stays ignored across exec
    (make then never sees a SIGTERM: it installs no handler for a signal ignored at start).
    SIGINT is ignored in a background job of a non-interactive shell, as CI may start the
    suite; then any in-process Dagster run (``capture_interrupts``) sets SIGTERM to SIGINT's
    handler on its way out, i.e. to ignored as well.
    """
    import signal

    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


@contextmanager
def make_run_demo(tmp_path: Path, **extra: str) -> Iterator[MakeRun]:
    """`make run DEMO=1` in a session of its own, as a terminal runs it (SIGINT not ignored),
    on free ports and temporary directories; `-o setup`: this venv is set up already. On the
    way out, whatever is still running of it is killed."""
    import signal

    ui, feed_port = free_port(), free_port()
    root, home, log = tmp_path / "data", tmp_path / "home", tmp_path / "run.log"
    env = dagster_env(
        home,
        DEMO="1",
        PORT=str(ui),
        DEMO_PORT=str(feed_port),
        DEMO_DIR=str(tmp_path / "demo"),
        DEMO_RELEASE_EVERY="3600",
        TWIML_STORAGE_ROOT=str(root),
        **extra,
    )
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # pytest under `make test`
        env.pop(name, None)
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["make", "-o", "setup", "run"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_signal_handling,  # as in a terminal or under a service manager
        )
    run = MakeRun(proc, ui, feed_port, root, home, log)
    try:
        yield run
    finally:
        if proc.poll() is None:
            run.seen += process_tree(proc.pid)
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C
            still_running(run.seen, within=30)
        for process in run.seen:
            with contextlib.suppress(psutil.Error):
                process.kill()  # psutil checks the pid was not reused
        proc.wait()


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants, grandchildren included, whatever their process group."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def command_line(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())
    return f"(pid {process.pid}, gone)"


def still_running(processes: list[psutil.Process], within: float) -> list[str]:
    """Waits up to ``within`` seconds for ``processes`` to end; returns those that did not,
    described. A zombie has ended (only its parent's wait is missing)."""
    deadline = time.monotonic() + within
    while True:
        left = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{process.pid} {command_line(process)[:120]}")
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def signal_states(processes: list[psutil.Process]) -> str:
    """Pending, blocked and caught signals and the wait channel of each process (bit masks
    from /proc): which of make and run.sh holds a signal it has not acted on."""
    lines = []
    for process in processes:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
            fields = ("State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
            masks = " ".join(line for line in status if line.startswith(fields))
            wchan = Path(f"/proc/{process.pid}/wchan").read_text()
            lines.append(f"{process.pid} {command_line(process)[:40]}: {masks} wchan={wchan}")
    return "\n".join(lines)


def stop_and_time(run: MakeRun, signal_it: Callable[[int], None]) -> float:
    """Signal a running `make run` and wait until no process of its tree is left (at most
    15 s, more would fail the test); returns how long that took."""
    tree = process_tree(run.proc.pid)
    run.seen += tree
    commands = " ".join(command_line(p) for p in tree)
    # The whole family is there: make, run.sh, dg dev and its children, the demo feed.
    for part in (
        "scripts/run.sh",
        "dg dev",
        "dagster_webserver",
        "dagster._daemon",
        "code-server start",
        "api grpc",
        "feed_server serve",
    ):
        assert part in commands, f"{part!r} is not running: {commands}"
    started = time.monotonic()
    signal_it(run.proc.pid)
    left = still_running(tree, within=15)
    took = time.monotonic() - started
    assert not left, (
        f"still running 15 s after the signal: {left}\n"
        f"{signal_states(tree[:2])}\n{run.output()[-3000:]}"
    )
    run.proc.wait(timeout=5)
    return took


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_make_run_demo_works_offline(tmp_path: Path) -> None:
    """`make run DEMO=1`: UI + daemon, demo feed on 127.0.0.1, a transcript lands; Ctrl+C
    (SIGINT to the terminal's process group) then stops every process of it within 15 s."""
    import signal
    import urllib.request

    with make_run_demo(tmp_path, TWIML_MAX_RUNS_PER_TICK="1", TWIML_GPU_WORKERS="2") as run:
        deadline = time.time() + 330
        while time.time() < deadline and not list(run.root.glob("transcripts/*.corrected.json")):
            assert run.proc.poll() is None, run.output()[-3000:]
            time.sleep(2)
        landed = sorted(p.name for p in run.root.glob("transcripts/*.corrected.json"))
        assert landed == ["3.corrected.json"], run.output()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{run.ui}/server_info", timeout=5) as resp:
            assert resp.status == 200
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(run.home))) as inst:
            assert list(inst.get_dynamic_partitions("episodes")) == ["ep-1", "ep-2", "ep-3"]
            # The gpu pool follows TWIML_GPU_WORKERS (run.sh sets it in the instance).
            assert inst.event_log_storage.get_concurrency_info("gpu").slot_count == 2

        took = stop_and_time(run, lambda pid: os.killpg(pid, signal.SIGINT))  # Ctrl+C
        print(f"Ctrl+C: all of `make run` stopped in {took:.1f} s")
    output = run.output()
    assert f"Dagster UI: http://127.0.0.1:{run.ui}" in output
    assert "Error 130" in output  # make saw run.sh end as interrupted
    with pytest.raises(OSError):  # the demo feed server went with it
        urllib.request.urlopen(f"http://127.0.0.1:{run.feed_port}/feed.xml", timeout=2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_make_run_stops_on_sigterm_to_make(tmp_path: Path) -> None:
    """SIGTERM to the `make` process alone (a service manager, `kill PID`) while a run is in
    progress: within 15 s no process of the tree is left, run worker and demo feed included."""
    import signal
    import urllib.request

    with make_run_demo(tmp_path, TWIML_MAX_RUNS_PER_TICK="1") as run:
        run.wait_for_ui(within=180)
        deadline = time.monotonic() + 120
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(run.home))) as inst:
            started = RunsFilter(statuses=[DagsterRunStatus.STARTED])
            while not inst.get_runs(started) and time.monotonic() < deadline:
                assert run.proc.poll() is None, run.output()[-3000:]
                time.sleep(1)
            assert inst.get_runs(started), f"no run started: {run.output()[-3000:]}"

        took = stop_and_time(run, lambda pid: os.kill(pid, signal.SIGTERM))
        print(f"SIGTERM to make: all of `make run` stopped in {took:.1f} s")
    assert "Error 143" in run.output()  # make passed SIGTERM on to run.sh, which stopped it all
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{run.feed_port}/feed.xml", timeout=2)
