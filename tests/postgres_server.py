"""A real PostgreSQL server (initdb + pg_ctl) in a temporary directory, on 127.0.0.1.

The cluster trusts local connections (no password checks) and is thrown away at the end.
PostgreSQL refuses to run as root, so as root (CI, containers) every server command runs
as the unprivileged ``nobody`` user, which owns the temporary directory; as any other
user it runs as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg2

UNPRIVILEGED_USER = "nobody"
MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
    "/usr/lib/postgresql/*/bin: run scripts/setup.sh (it installs the `postgresql` package)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bin_dir() -> Path | None:
    """The directory with initdb and pg_ctl: PATH first, then Debian's versioned dirs."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # temporary directory: data/, the socket and the server log
    port: int
    user: str = "dagster"  # the cluster's superuser (initdb -U)
    host: str = "127.0.0.1"
    run_as: str | None = None  # the OS user that runs the server (None: this one)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        as_user = {}
        if self.run_as:  # drop root: setuid/setgid in the child, no supplementary groups
            entry = pwd.getpwnam(self.run_as)
            as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        proc = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            cwd=self.root,
            **as_user,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stdout}{proc.stderr}{log}")
        return proc

    def start(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        )
        # fsync off: a throwaway cluster need not survive a power cut, and tests run faster.
        options = f"-k {self.root} -p {self.port} -c listen_addresses={self.host} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log), "-o", options, "-w", "start"
        )

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, db_name: str = "postgres"):
        return psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=db_name)

    def create_database(self, name: str) -> str:
        conn = self.connect()
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def dagster_env(self, db_name: str) -> dict[str, str]:
        """The DAGSTER_PG_* variables deploy/dagster.yaml reads, for database ``db_name``."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": "unused-trust-auth",
            "DAGSTER_PG_DB": db_name,
        }


def start_server(port: int | None = None) -> PostgresServer:
    """initdb a fresh cluster in a new temporary directory and start it; raises if it can't."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError(MISSING)
    run_as = UNPRIVILEGED_USER if os.geteuid() == 0 else None
    # mkdtemp, not pytest's tmp_path: that one is private to root, and `nobody` must reach it.
    root = Path(tempfile.mkdtemp(prefix="pg-"))
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(bin_dir=bin_dir, root=root, port=port or free_port(), run_as=run_as)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
