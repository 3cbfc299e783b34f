"""The production deployment's files: deploy/dagster.yaml (the PostgreSQL instance),
docker-compose.yml with deploy/Dockerfile and deploy/workspace.yaml, deploy/helm/values.yaml.

No Docker or Helm here: the files are parsed and cross-checked, the instance config is
validated by Dagster, and the daemon's start command runs against a real PostgreSQL server.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

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


def dockerfile_lines(name: str) -> list[str]:
    text = (REPO / name).read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def stage_runs(lines: list[str], stage: str) -> str:
    """The RUN lines of the stage ``FROM ... AS stage``."""
    runs, inside = [], False
    for line in lines:
        if line.startswith("FROM "):
            inside = line.endswith(f" AS {stage}")
        elif inside and line.startswith("RUN"):
            runs.append(line)
    return " ".join(runs)


@pytest.mark.parametrize("dockerfile", ["deploy/Dockerfile", "deploy/Dockerfile.gpu"])
def test_images_install_the_lock_with_a_compiler_where_they_install(dockerfile: str) -> None:
    """Both images install from uv.lock (uv sync --locked), in a stage with gcc and the
    Python headers: webrtcvad, in the engine extra, is source-only (the control-plane image
    once stopped at "gcc: not found"). tests/test_images.py builds the control plane."""
    lines = dockerfile_lines(dockerfile)
    assert lines[0].startswith("ARG BASE=") and lines[1] == "FROM ${BASE} AS python"
    build = stage_runs(lines, "build")
    assert "uv sync --locked" in build and "pip install ." not in build
    assert "gcc" in build and "libc6-dev" in build and "python3.11-dev" in build
    assert "--mount=type=secret,id=ca" in build  # a TLS-intercepting proxy's CA, not stored
    assert any(line.startswith("COPY --from=build /opt/venv") for line in lines)
    # The project goes on top as a wheel, without dependencies: a code change is a small layer.
    assert "uv build --wheel --out-dir /dist" in build
    last_stage = " ".join(lines[max(i for i, x in enumerate(lines) if x.startswith("FROM")) :])
    assert "uv pip install --python /opt/venv/bin/python --no-deps" in last_stage


def test_the_control_plane_image_has_the_instance_and_no_engine_by_default() -> None:
    lines = dockerfile_lines("deploy/Dockerfile")
    assert "ARG BASE=python:3.11-slim" in lines
    assert "ARG EXTRAS=postgres,modal,k8s" in lines  # add ",engine" to run the step here
    run = " ".join(line for line in lines if line.startswith("RUN"))
    assert "ffmpeg" in run and "libchromaprint-tools" in run  # downloads, fingerprints
    assert "COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml" in lines
    assert "COPY deploy/workspace.yaml /opt/dagster/workspace.yaml" in lines
    assert "COPY deploy/modal deploy/modal" in lines  # `modal run deploy/modal/app.py`
    extras = load_pyproject()["project"]["optional-dependencies"]
    core = " ".join(load_pyproject()["project"]["dependencies"])
    for engine_package in ("torch", "faster-whisper", "pyannote.audio", "resemblyzer"):
        assert engine_package not in core
        assert any(dep.startswith(engine_package) for dep in extras["engine"])
    assert "engine" in extras["test"][0]  # make test and make run keep the engine
    # Built with the engine (EXTRAS=...,engine), it gets the offline weights, as the worker.
    build = stage_runs(lines, "build")
    assert "*,engine,*)" in build and "scripts/fetch_models.py" in build
    assert "COPY --from=build /opt/twiml/models /opt/twiml/models" in lines
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git", "data", ".tools"} <= set(ignored)


def test_the_worker_image_has_the_engine_and_the_offline_weights() -> None:
    lines = dockerfile_lines("deploy/Dockerfile.gpu")
    assert "--extra engine" in stage_runs(lines, "build")
    assert "scripts/fetch_models.py" in stage_runs(lines, "build")
    assert "COPY --from=build /opt/twiml/models /opt/twiml/models" in lines


def test_compose_k8s_override_gives_the_code_server_a_kubeconfig(tmp_path: Path) -> None:
    """TWIML_COMPUTE=k8s under compose: the code container had no kubeconfig, so the
    backend's credential check failed at set-up. The override mounts one where KUBECONFIG
    says, and the check finds it there."""
    from resources.compute import _k8s_credentials

    code = load("deploy/compose.k8s.yml")["services"]["code"]
    assert code["environment"]["TWIML_COMPUTE"] == "k8s"
    (volume,) = code["volumes"]
    source, target, mode = volume.rsplit(":", 2)
    assert source.startswith("${KUBECONFIG:?") and mode == "ro"
    assert target == code["environment"]["KUBECONFIG"]
    # The container's view: the file at the target path, KUBECONFIG naming it.
    mounted = tmp_path / target.lstrip("/")
    mounted.parent.mkdir(parents=True)
    mounted.write_text("apiVersion: v1\nkind: Config\n")
    env = {"KUBECONFIG": str(mounted), "HOME": str(tmp_path / "home")}
    with pytest.MonkeyPatch.context() as patch:
        for name in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
            patch.delenv(name, raising=False)
        patch.setenv("HOME", env["HOME"])
        assert not _k8s_credentials()  # the plain compose file: no credentials
        patch.setenv("KUBECONFIG", env["KUBECONFIG"])
        assert _k8s_credentials()
    readme = (REPO / "deploy/README.md").read_text()
    assert "docker compose -f docker-compose.yml -f deploy/compose.k8s.yml up -d" in readme


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

    coordinator = values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    assert (coordinator["module"], coordinator["class"]) == (
        "dagster._core.run_coordinator",
        "QueuedRunCoordinator",
    )
    # Run pods end; their logs must go where the webserver reads them (not pod-local files).
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    assert {"name": "twiml-storage"} in values["dagsterWebserver"]["envSecrets"]
    assert values["telemetry"] == {"enabled": False}


# The run settings of the instance: the sections of deploy/dagster.yaml that the Helm values
# must carry too.
RUN_SETTINGS = ("run_coordinator", "concurrency", "run_monitoring", "run_retries", "sensors")
K8S_DIFFERENCES = {
    # A run pod may first pull its image: a longer start timeout than docker-compose's.
    ("run_monitoring", "start_timeout_seconds"): 600,
}
"""The only run settings the Helm values may set differently from deploy/dagster.yaml."""
CHART_SECTIONS_OFF = (
    # The chart's own renderings of what additionalInstanceConfig carries: off, so that no
    # key is written twice (and none of theirs is dropped or defaulted by a template).
    ("concurrency", "enabled"),
    ("dagsterDaemon", "runMonitoring", "enabled"),
    ("dagsterDaemon", "runRetries", "enabled"),
)


def dig(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree.get(key, {}) if isinstance(tree, dict) else {}
    return tree


def flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict) and tree:
        out: dict[tuple[str, ...], Any] = {}
        for key, item in tree.items():
            out |= flatten(item, (*prefix, key))
        return out
    return {prefix: tree}


def helm_run_settings(values: dict) -> dict[str, Any]:
    """The run settings the chart writes into its dagster.yaml from ``values``.

    The run coordinator is a CustomRunCoordinator (module, class and config copied as they
    are), the rest additionalInstanceConfig (copied as it is); sensors are the chart's only
    section here, ``useThreads``/``numWorkers`` -> ``use_threads``/``num_workers``.
    """
    daemon = values.get("dagsterDaemon", {})
    out: dict[str, Any] = {}
    coordinator = daemon.get("runCoordinator", {})
    if daemon.get("enabled", True) and coordinator.get("enabled"):
        if coordinator.get("type") == "CustomRunCoordinator":
            out["run_coordinator"] = dict(coordinator["config"]["customRunCoordinator"])
        else:
            out["run_coordinator"] = {"<chart's queued coordinator>": coordinator}
    sensors = daemon.get("sensors", {})
    if sensors.get("useThreads"):
        out["sensors"] = {"use_threads": True, "num_workers": sensors.get("numWorkers")}
    for section, tree in (values.get("additionalInstanceConfig") or {}).items():
        out[section] = tree
    for path in CHART_SECTIONS_OFF:
        if dig(values, path) is not False:
            out[".".join(path)] = "<on: the chart writes this section too>"
    return out


def run_settings_differences(values: dict, instance: dict) -> list[str]:
    helm = flatten(helm_run_settings(values))
    local = flatten({k: instance.get(k, {}) for k in RUN_SETTINGS})
    wrong = []
    for path in sorted(set(helm) | set(local), key=str):
        expected = K8S_DIFFERENCES.get(path, local.get(path, "<absent>"))
        got = helm.get(path, "<absent>")
        if got != expected:
            wrong.append(f"{'.'.join(path)}: helm {got!r}, dagster.yaml {expected!r}")
    return wrong


def test_helm_values_set_every_run_limit_of_the_instance_and_no_other() -> None:
    values, instance = load("deploy/helm/values.yaml"), load("deploy/dagster.yaml")
    assert run_settings_differences(values, instance) == []
    # Their keys are those Dagster takes: the instance built from them validates.
    config = {k: v for k, v in instance.items() if k not in RUN_SETTINGS}
    config |= helm_run_settings(values)
    with pytest.MonkeyPatch.context() as patch:
        for name in INSTANCE_ENV:
            patch.setenv(name, "5432" if name.endswith("PORT") else "x")
        home = Path(tempfile.mkdtemp())
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        dagster_instance_config(str(home))  # raises DagsterInvalidConfigError


def test_a_run_limit_missing_from_the_helm_values_is_named() -> None:
    """The check above would have caught the two limits the values once dropped, a section
    the chart would write a second time, and a limit changed on one side only."""
    values, instance = load("deploy/helm/values.yaml"), load("deploy/dagster.yaml")
    extra = values["additionalInstanceConfig"]
    del extra["concurrency"]["runs"]["tag_concurrency_limits"]
    del extra["run_monitoring"]["max_runtime_seconds"]
    extra["concurrency"]["runs"]["max_concurrent_runs"] = 5
    values["dagsterDaemon"]["runRetries"]["enabled"] = True
    assert run_settings_differences(values, instance) == [
        "concurrency.runs.max_concurrent_runs: helm 5, dagster.yaml 2",
        "concurrency.runs.tag_concurrency_limits: helm '<absent>', dagster.yaml "
        "[{'key': 'dagster/partition', 'value': {'applyLimitPerUniqueValue': True}, 'limit': 1}]",
        "dagsterDaemon.runRetries.enabled: helm '<on: the chart writes this section too>', "
        "dagster.yaml '<absent>'",
        "run_monitoring.max_runtime_seconds: helm '<absent>', dagster.yaml 21600",
    ]
    instance["run_coordinator"]["config"]["user_code_failure_retry_delay"] = 10
    assert run_settings_differences(load("deploy/helm/values.yaml"), instance) == [
        "run_coordinator.config.user_code_failure_retry_delay: helm 60, dagster.yaml 10"
    ]


def test_the_helm_chart_is_pinned_to_the_locked_dagster() -> None:
    """The chart's version is Dagster's: its webserver and daemon must match our images'."""
    from importlib.metadata import version

    pinned = (REPO / "deploy/helm/CHART_VERSION").read_text().strip()
    assert pinned == version("dagster"), "move deploy/helm/CHART_VERSION with the lock"
    commands = (REPO / "deploy/README.md").read_text() + (
        REPO / "deploy/helm/values.yaml"
    ).read_text()
    installs = re.findall(r"helm upgrade --install[^\n]*", commands)
    assert installs and all('--version "$(cat deploy/helm/CHART_VERSION)"' in i for i in installs)


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
