"""The production deployment's files: deploy/dagster.yaml (the PostgreSQL instance),
docker-compose.yml with deploy/Dockerfile and deploy/workspace.yaml, deploy/helm/values.yaml.

No Docker or Helm here: the files are parsed and cross-checked, the instance config is
validated by Dagster, and the daemon's start command runs against a real PostgreSQL server.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEPLOY_YAML = REPO / "deploy/dagster.yaml"
PG_ENV = {
    "DAGSTER_PG_HOST": "db.internal",
    "DAGSTER_PG_PORT": "6543",
    "DAGSTER_PG_USER": "twiml",
    "DAGSTER_PG_PASSWORD": "secret",
    "DAGSTER_PG_DB": "dagster_prod",
}
INSTANCE_ENV = sorted(PG_ENV)


def load(path: str) -> dict:
    return yaml.safe_load((REPO / path).read_text())


def deploy_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(DEPLOY_YAML, home / "dagster.yaml")
    return home


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# -- deploy/dagster.yaml ----------------------------------------------------------------------
def test_deploy_dagster_yaml_is_a_postgres_instance_with_the_queued_coordinator(
    tmp_path: Path, monkeypatch
) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    home = deploy_home(tmp_path)

    config, custom_class = dagster_instance_config(str(home))  # Dagster's own validation
    assert custom_class is None
    db = config["storage"]["postgres"]["postgres_db"]
    assert {k: v for k, v in db.items() if k != "scheme"} == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }
    assert db["scheme"] == "postgresql+psycopg2"  # the driver dagster-postgres installs

    ref = InstanceRef.from_dir(str(home))
    assert (ref.storage_data.module_name, ref.storage_data.class_name) == (
        "dagster_postgres",
        "DagsterPostgresStorage",
    )
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    assert ref.compute_logs_data.class_name == "LocalComputeLogManager"
    assert yaml.safe_load(ref.compute_logs_data.config_yaml)["base_dir"] == str(home / "storage")
    assert ref.settings["telemetry"] == {"enabled": False}

    # The URL dagster-postgres builds from the environment.
    from dagster_postgres.utils import pg_url_from_config

    resolved = yaml.safe_load(ref.storage_data.config_yaml)
    resolved["postgres_db"] = {
        k: PG_ENV[v["env"]] if isinstance(v, dict) else v
        for k, v in resolved["postgres_db"].items()
    }
    assert pg_url_from_config(resolved) == (
        "postgresql+psycopg2://twiml:secret@db.internal:6543/dagster_prod"
    )

    # The project instance's scheduling settings, unchanged; the run limit where Dagster
    # takes it alongside `concurrency: pools:` (not in run_coordinator's config).
    project = load("dagster.yaml")
    for key in ("concurrency", "run_monitoring", "run_retries", "sensors", "telemetry"):
        assert config[key] == project[key], key
    assert config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    assert "max_concurrent_runs" not in config["run_coordinator"].get("config", {})


def test_deploy_instance_names_a_missing_database_variable(tmp_path: Path, monkeypatch) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_PG_HOST")
    ref = InstanceRef.from_dir(str(deploy_home(tmp_path)))
    with pytest.raises(DagsterInvalidConfigError, match="DAGSTER_PG_HOST"):
        DagsterInstance.from_ref(ref)


def test_daemon_start_command_sets_the_gpu_pool_in_postgres(
    tmp_path: Path, postgres, monkeypatch
) -> None:
    """docker-compose.yml's daemon command, as its shell runs it, on a real server: the
    gpu limit comes from TWIML_GPU_WORKERS, then dagster-daemon takes over (a stub here)."""
    command = load("docker-compose.yml")["services"]["daemon"]["command"]
    assert command[:2] == ["sh", "-c"]
    script = command[2].replace("$$", "$")  # compose's escape for a literal $
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "dagster-daemon").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/daemon-args\n')
    (stubs / "dagster-daemon").chmod(0o755)

    db = postgres.create_database("daemon_command")
    for name, value in postgres.dagster_env(db).items():
        monkeypatch.setenv(name, value)
    home = deploy_home(tmp_path)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PATH": f"{stubs}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
        "TWIML_GPU_WORKERS": "3",
    }
    proc = subprocess.run(
        ["sh", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "daemon-args").read_text().split() == [
        "run",
        "-w",
        "/opt/dagster/workspace.yaml",
    ]

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as inst:
        assert inst.event_log_storage.get_concurrency_info("gpu").slot_count == 3
        concurrency = inst.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 2
        assert concurrency.pool_config.pool_granularity.value == "op"
        assert type(inst.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert inst.run_monitoring_enabled and inst.run_retries_enabled
    conn = postgres.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT "limit" FROM concurrency_limits WHERE concurrency_key = 'gpu'""")
            assert cur.fetchall() == [(3,)]
    finally:
        conn.close()


# -- docker-compose.yml, deploy/Dockerfile, deploy/workspace.yaml -----------------------------
def test_compose_wires_one_image_one_instance_and_the_code_server() -> None:
    compose = load("docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"postgres", "code", "webserver", "daemon"}
    dagster = {name: services[name] for name in ("code", "webserver", "daemon")}

    # One image, from deploy/Dockerfile, for the three Dagster services.
    for service in dagster.values():
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
        assert service["image"] == "twiml-transcribe:latest"
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}

    # The code server's port is the one the workspace of the webserver and daemon names.
    code = services["code"]["command"]
    assert code[:3] == ["dagster", "code-server", "start"]
    assert option(code, "-h") == "0.0.0.0" and option(code, "-m") == "twiml_assets.definitions"
    (location,) = load("deploy/workspace.yaml")["load_from"]
    assert location["grpc_server"]["host"] == "code"
    assert location["grpc_server"]["port"] == int(option(code, "-p"))
    assert location["grpc_server"]["location_name"] == "twiml_assets"
    assert services["code"]["healthcheck"]["test"][-1] == option(code, "-p")

    webserver = services["webserver"]["command"]
    assert webserver[0] == "dagster-webserver"
    assert option(webserver, "-w") == "/opt/dagster/workspace.yaml"
    assert services["webserver"]["ports"] == ["${DAGSTER_UI_PORT:-3000}:3000"]
    assert option(webserver, "-p") == "3000"
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["code"] == {"condition": "service_healthy"}

    # The daemon sets the gpu pool from TWIML_GPU_WORKERS, then execs the daemon.
    daemon = services["daemon"]["command"][2]
    set_gpu, start = (shlex.split(part) for part in daemon.split("&&"))
    assert set_gpu == [
        "dagster",
        "instance",
        "concurrency",
        "set",
        "gpu",
        "$${TWIML_GPU_WORKERS:-1}",
    ]
    assert start == ["exec", "dagster-daemon", "run", "-w", "/opt/dagster/workspace.yaml"]
    assert services["daemon"]["environment"]["TWIML_GPU_WORKERS"] == "${TWIML_GPU_WORKERS:-1}"

    # Same instance everywhere: the same PostgreSQL settings, those of the postgres service.
    pg_envs = [{k: s["environment"][k] for k in INSTANCE_ENV} for s in dagster.values()]
    assert pg_envs[0] == pg_envs[1] == pg_envs[2]
    pg = services["postgres"]
    assert pg["image"] == "postgres:15"
    assert pg_envs[0]["DAGSTER_PG_HOST"] == "postgres" and pg_envs[0]["DAGSTER_PG_PORT"] == "5432"
    assert pg["environment"]["POSTGRES_USER"] == pg_envs[0]["DAGSTER_PG_USER"]
    assert pg["environment"]["POSTGRES_PASSWORD"] == pg_envs[0]["DAGSTER_PG_PASSWORD"]
    assert pg["environment"]["POSTGRES_DB"] == pg_envs[0]["DAGSTER_PG_DB"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])

    # Secrets and settings from .env reach the code server, where runs execute.
    assert services["code"]["env_file"] in (".env", [".env"])
    # Compute logs: written by runs in the code server, read by the webserver.
    logs = "dagster-storage:/opt/dagster/dagster_home/storage"
    assert logs in services["code"]["volumes"] and logs in services["webserver"]["volumes"]
    assert set(compose["volumes"]) >= {"postgres-data", "dagster-storage"}


def test_dockerfile_builds_the_control_plane_image_with_the_deploy_instance() -> None:
    lines = [
        line.strip()
        for line in (REPO / "deploy/Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    run = " ".join(line for line in lines if line.startswith("RUN"))
    assert "ffmpeg" in run and '".[postgres,modal,k8s]"' in run
    assert "libchromaprint-tools" in run  # audio_fingerprint and the web uploads
    assert "ENV DAGSTER_HOME=/opt/dagster/dagster_home" in lines
    assert "COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml" in lines
    assert "COPY deploy/workspace.yaml /opt/dagster/workspace.yaml" in lines
    extras = load_pyproject()["project"]["optional-dependencies"]
    assert {"postgres", "modal", "k8s"} <= set(extras)
    assert any(dep.startswith("dagster-postgres") for dep in extras["postgres"])
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git", "data"} <= set(ignored)


def load_pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


# -- deploy/helm/values.yaml ------------------------------------------------------------------
def test_helm_values_use_k8s_runs_postgres_and_the_project_secrets() -> None:
    from resources.compute import ComputeResource

    values = load("deploy/helm/values.yaml")
    secrets = [{"name": "twiml-storage"}, {"name": "twiml-hf"}]
    assert [s["name"] for s in secrets] == ComputeResource().k8s_secrets  # the GPU pods' too

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert values["dagster-user-deployments"]["enabled"] is True
    code = load("docker-compose.yml")["services"]["code"]["command"]
    assert deployment["codeServerArgs"] == ["-m", option(code, "-m")]
    assert deployment["envSecrets"] == secrets
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["TWIML_COMPUTE"] == "k8s" and env["TWIML_K8S_IMAGE"]

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"] == secrets

    assert values["postgresql"]["enabled"] is True
    scheme = load("deploy/dagster.yaml")["storage"]["postgres"]["postgres_db"]["scheme"]
    assert values["postgresql"]["postgresqlScheme"] == scheme

    # The same queue, pool and retry settings as deploy/dagster.yaml, in the chart's keys.
    instance = load("deploy/dagster.yaml")
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"] == {"enabled": True, "type": "QueuedRunCoordinator"}
    assert values["concurrency"] == {
        "enabled": True,
        "pools": {
            "defaultLimit": instance["concurrency"]["pools"]["default_limit"],
            "granularity": instance["concurrency"]["pools"]["granularity"],
        },
        "runs": {"maxConcurrentRuns": instance["concurrency"]["runs"]["max_concurrent_runs"]},
    }
    assert daemon["runRetries"] == {
        "enabled": True,
        "maxRetries": instance["run_retries"]["max_retries"],
        "retryOnAssetOrOpFailure": instance["run_retries"]["retry_on_asset_or_op_failure"],
    }
    monitoring = instance["run_monitoring"]
    assert daemon["runMonitoring"]["enabled"] is True
    assert (
        daemon["runMonitoring"]["freeSlotsAfterRunEndSeconds"]
        == (monitoring["free_slots_after_run_end_seconds"])
    )
    assert daemon["runMonitoring"]["startTimeoutSeconds"] >= monitoring["start_timeout_seconds"]
    assert values["telemetry"] == {"enabled": False}


# -- the test server's binaries ----------------------------------------------------------------
def test_missing_postgres_binaries_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    """Without initdb the PostgreSQL tests fail (not skip), naming the fix."""
    from tests import postgres_server

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres_server.glob, "glob", lambda pattern: [])
    assert postgres_server.find_bin_dir() is None
    with pytest.raises(FileNotFoundError, match=r"initdb.*scripts/setup\.sh"):
        postgres_server.start_server()
    setup = (REPO / "scripts/setup.sh").read_text()
    assert "command -v initdb" in setup and "postgresql >/dev/null" in setup
