"""The Dagster code location: loading as `dagster dev` does, materialisation, backfills.

Everything runs against real HTTP on 127.0.0.1 and real Dagster instances (temporary
DAGSTER_HOMEs); the slow in-process tests load the offline models (tiny.en + the offline
diariser) and transcribe short generated dialogues.

The daemon tests (the PostgreSQL backfill and the hung run) are about orchestration, so
their code server serves ``tests.standin_definitions``: the project's definitions with the
stand-in models of ``tests/standin_models.py`` (no torch, no CTranslate2, a model step of
a quarter of the audio's length, the audio decoded for real). A model load in every run
worker cost more than half of the backfill's CPU and is none of what they check; the
in-process tests here, ``tests/test_golden_outputs.py`` and ``tests/test_long_audio.py``
run the real models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter, instance_for_test
from dagster._core.instance.ref import InstanceRef

from resources.quality import QualityResource
from resources.storage import StorageResource
from twiml_assets.demo.feed_server import DemoEpisode, render_rss
from twiml_assets.feed.resource import FeedResource
from twiml_assets.jobs import PER_EPISODE_ASSETS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PER_EPISODE = list(PER_EPISODE_ASSETS)
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


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# -- loading ----------------------------------------------------------------------------------
def test_definitions_validate_as_dagster_dev_loads_them(tmp_path: Path) -> None:
    env = dagster_env(tmp_path / "home", TWIML_STORAGE_ROOT=str(tmp_path / "data"))
    proc = run_cli([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All code locations passed validation" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("command", "expected"),
    [(["check", "defs"], "All definitions loaded successfully"), (["list", "defs"], "raw_audio")],
)
def test_dg_loads_the_project(tmp_path: Path, command: list[str], expected: str) -> None:
    """`dg check defs` / `dg list defs` from the project's [tool.dg] settings."""
    env = dagster_env(tmp_path / "home", TWIML_STORAGE_ROOT=str(tmp_path / "data"))
    env["COLUMNS"] = "200"
    proc = run_cli([str(BIN / "dg"), *command], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expected in proc.stdout + proc.stderr


def test_asset_graph_pools_checks_and_executor() -> None:
    from twiml_assets.definitions import defs as load_defs

    defs = load_defs()  # @dg.definitions: loaded the way dg dev and dagster dev load it

    repo = defs.get_repository_def()
    graph = repo.asset_graph
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "feed_catalog",
        "evaluation_summary",
        "model_comparison",
        "failed_episodes",  # reported by the feed sensor, not materialised by a run
        *PER_EPISODE,
    }
    for key in [*PER_EPISODE, "model_comparison"]:
        partitions = graph.get(AssetKey(key)).partitions_def
        assert partitions is not None and partitions.name == "episodes"
    for key in PER_EPISODE:  # transient failures are retried inside the run
        policy = defs.get_assets_def(AssetKey(key)).op.retry_policy
        retries = 1 if key in ("transcript", "diarisation") else 3  # a retry re-transcribes
        assert policy is not None and policy.max_retries == retries, key
    assert graph.get(AssetKey("feed_catalog")).partitions_def is None
    assert graph.get(AssetKey("evaluation_summary")).partitions_def is None

    model_step = defs.get_assets_def(AssetKey("transcript"))
    assert model_step is defs.get_assets_def(AssetKey("diarisation"))  # one step, one decode
    assert model_step.op.pool == "gpu"

    job = defs.resolve_job_def("episode_pipeline")
    assert job.executor_def.name == "in_process"
    blocking = {
        spec.name
        for checks in repo.asset_checks_defs_by_key.values()
        for spec in checks.check_specs
        if spec.blocking
    }
    assert blocking == {
        "transcript_not_empty",
        "has_speakers",
        "timestamps_valid",
        "speech_covered_by_words",
    }
    # Every check is per episode: partitioned like the asset it checks, and subsettable so
    # one check can be re-run alone.
    assert len(graph.asset_check_keys) == 8
    for check_key in graph.asset_check_keys:
        assert graph.get(check_key).partitions_def.name == "episodes", check_key
    assert all(c.can_subset for c in repo.asset_checks_defs_by_key.values())
    sensors = {s.name: s for s in repo.sensor_defs}
    assert set(sensors) == {
        "episode_feed_sensor",
        "episode_failure_sensor",
        "episode_cancel_sensor",
    }
    assert sensors["episode_feed_sensor"].job_name == "episode_pipeline"
    assert set(defs.resources) >= {"feed", "storage", "asr", "diariser", "quality", "catch_up"}


def test_resources_come_from_the_environment() -> None:
    from twiml_assets.definitions import resources_from_env

    env = {
        "TWIML_FEED_URL": "http://127.0.0.1:9/feed.xml",
        "TWIML_STORAGE_ROOT": "/tmp/somewhere",
        "TWIML_MAX_RUNS_PER_TICK": "7",
        "TWIML_CATCHUP_ORDER": "oldest-first",
        "TWIML_REFERENCES_DIR": "/refs",
    }
    resources = resources_from_env(env)
    assert resources["feed"].url == env["TWIML_FEED_URL"]
    assert resources["storage"].root == "/tmp/somewhere"
    assert resources["catch_up"].max_runs_per_tick == 7
    assert resources["catch_up"].order == "oldest_first"
    assert resources["quality"].references_root == "/refs"
    defaults = resources_from_env({})
    assert defaults["feed"].url == "https://feeds.megaphone.fm/MLN2155636147"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TWIML_MAX_RUNS_PER_TICK": "lots"},
            "TWIML_MAX_RUNS_PER_TICK='lots': Input should be a valid integer",
        ),
        ({"TWIML_CATCHUP_ORDER": "random"}, "TWIML_CATCHUP_ORDER='random': Input should be "),
        ({"TWIML_SENSOR_INTERVAL": "1"}, "TWIML_SENSOR_INTERVAL='1': Input should be greater"),
        ({"TWIML_PROFILE": "nope"}, "unknown profile 'nope'"),
    ],
)
def test_bad_configuration_is_a_clear_error(env: dict[str, str], message: str) -> None:
    from twiml_assets.definitions import ConfigError, build_definitions

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_definitions(env=env)


def test_dagster_yaml_sets_the_gpu_pool_and_run_monitoring(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    home = tmp_path / "home"
    dagster_env(home)
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as inst:
        pools = inst.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1 and pools.pool_granularity.value == "op"
        assert inst.run_monitoring_enabled
        assert inst.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    assert config["run_monitoring"]["enabled"] is True


def test_missing_audio_fails_the_episode_with_a_clear_message(http_server, tmp_path: Path) -> None:
    """A 404 enclosure stops the run at raw_audio, before any model is loaded."""
    from twiml_assets.definitions import build_definitions

    episode = DemoEpisode(
        5, "Gone - #5", "", "audio/gone.mp3", 1, 1.0, "Mon, 01 Jan 2024 10:00:00 +0000", "g5"
    )
    http_server.put("feed.xml", render_rss([episode], http_server.base_url))
    defs = build_definitions(
        resources={
            "feed": FeedResource(url=http_server.url("feed.xml")),
            "storage": StorageResource(root=str(tmp_path / "data")),
        },
        env={},
    )
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", ["ep-5"])
        result = defs.resolve_job_def("episode_pipeline").execute_in_process(
            partition_key="ep-5", instance=instance, raise_on_error=False
        )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "raw_audio"
    message = failure.event_specific_data.error.message
    assert "ep-5" in message and "HTTP 404" in message
    assert (tmp_path / "data" / "episodes" / "ep-5.json").exists()  # metadata from the key alone


# -- full materialisation (offline models) ----------------------------------------------------
def materialisations(result) -> dict[str, dict[str, Any]]:
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        out[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    return out


def check_results(result, key: str) -> dict[str, Any]:
    """The run's check evaluations by check name; each must be recorded for episode ``key``."""
    evaluations = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert evaluations and {c.partition for c in evaluations} == {key}
    return {c.check_name: c for c in evaluations}


def check_status_by_episode(instance, check: str, asset: str = "speaker_transcript"):
    """What the instance records per episode for one check (the UI's per-partition
    status): ``{partition: (latest execution status, run id)}``."""
    from dagster import AssetCheckKey

    infos = instance.event_log_storage.get_asset_check_partition_info(
        [AssetCheckKey(AssetKey(asset), check)]
    )
    return {
        i.partition_key: (i.latest_execution_status.value, i.latest_planned_run_id) for i in infos
    }


def rerun_check(defs, check: str, key: str, instance, asset: str = "speaker_transcript"):
    """One check alone for one episode, as the UI launches it: the implicit asset job
    subset to that check, for partition ``key``."""
    from dagster import AssetCheckKey

    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_check_selection={AssetCheckKey(AssetKey(asset), check)}
    )
    return job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)


def model_cache_misses() -> tuple[int, ...]:
    from resources.asr import load_whisper_model
    from resources.diarisation import load_segmentation_model, load_speaker_encoder

    return tuple(
        f.cache_info().misses
        for f in (load_whisper_model, load_segmentation_model, load_speaker_encoder)
    )


@pytest.mark.slow
def test_full_materialisation_is_complete_and_idempotent(
    http_server, tmp_path: Path, short_episodes
) -> None:
    from twiml_assets.definitions import build_definitions

    (key,) = publish(http_server, [short_episodes[0].audio_path])
    root = tmp_path / "data"
    refs = root / "references"
    refs.mkdir(parents=True)
    (refs / f"{key}.rttm").write_text(short_episodes[0].rttm(key))
    (refs / f"{key}.txt").write_text(short_episodes[0].text)
    defs = build_definitions(
        resources={
            "feed": FeedResource(url=http_server.url("feed.xml")),
            "storage": StorageResource(root=str(root)),
        },
        env={},
    )
    job = defs.resolve_job_def("episode_pipeline")
    misses_before = model_cache_misses()
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", [key])
        first = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        assert first.success, [e.message for e in first.all_events if e.is_failure]
        files_first = files_under(root)
        corrected_first = (root / "transcripts/1.corrected.json").read_text()
        misses_first = model_cache_misses()

        second = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        assert second.success

    # Every asset materialised, with the metadata the UI shows.
    meta = materialisations(first)
    assert set(meta) == set(PER_EPISODE)
    assert meta["episode_metadata"]["title"] == "Test episode 1 - #1"
    assert meta["raw_audio"]["sha256"] and meta["raw_audio"]["reused"] is False
    assert meta["transcript"]["words"] > 10 and 0 < meta["transcript"]["real_time_factor"]
    assert meta["transcript"]["model"] == "tiny.en" and meta["transcript"]["config"]["beam_size"]
    assert meta["diarisation"]["speakers"] >= 1
    st = meta["speaker_transcript"]
    assert st["duration_s"] == pytest.approx(short_episodes[0].duration, abs=0.3)
    assert st["word_count"] > 10 and st["speakers"] >= 1 and st["real_time_factor"] > 0
    assert "**SPEAKER_00**" in st["preview"]
    assert meta["rag_outputs"]["path:corrected_json"].endswith("transcripts/1.corrected.json")

    # The storage layout of DESIGN.md, and nothing else.
    assert files_first == [
        "asr/1.speakers.json",
        "asr/ep-1.asr.json",
        "audio/ep-1.json",
        "audio/ep-1.mp3",
        "diarisation/ep-1.json",
        "diarisation/ep-1.rttm",
        "episodes/ep-1.json",
        "evaluation/ep-1.json",
        "feed/catalog.json",
        "fingerprints/ep-1.json",
        "info/1.info.json",
        "markdown/1.md",
        "references/ep-1.rttm",
        "references/ep-1.txt",
        "speakers/ep-1.embeddings.json",
        "speakers/ep-1.json",
        "subtitles/ep-1.srt",
        "subtitles/ep-1.vtt",
        "transcripts/1.corrected.json",
        "transcripts/ep-1.json",
    ]
    corrected = json.loads(corrected_first)
    assert corrected["dialogs"] and corrected["speakers"][0] == "SPEAKER_00"
    info = json.loads((root / "info/1.info.json").read_text())
    assert info["episode"] == "1" and info["url"] == http_server.url("audio/1.mp3")

    # Checks: integrity gates passed; reference checks measured WER and DER.
    checks = check_results(first, key)
    for name in (
        "transcript_not_empty",
        "has_speakers",
        "timestamps_valid",
        "speech_covered_by_words",
    ):
        assert checks[name].passed, checks[name].description
    wer = checks["wer_within_limits"].metadata["wer"].value
    assert wer < 0.3 and meta["evaluation"]["wer"] == wer
    assert checks["wer_within_limits"].passed == (wer <= QualityResource().wer_warn)
    assert "der" in checks["der_within_limits"].metadata and "der" in meta["evaluation"]
    assert meta["evaluation"]["has_reference"] is True

    # Idempotent: same files, same content, the audio is not fetched again.
    assert files_under(root) == files_first
    assert (root / "transcripts/1.corrected.json").read_text() == corrected_first
    assert materialisations(second)["raw_audio"]["reused"] is True
    assert meta["audio_fingerprint"]["computed"] is True
    assert materialisations(second)["audio_fingerprint"]["computed"] is False
    assert len([h for h in http_server.requests_to("/audio/1.mp3")]) == 1

    # Models load once per process: the second run loaded nothing.
    assert model_cache_misses() == misses_first
    assert all(
        after - before <= 1 for before, after in zip(misses_before, misses_first, strict=True)
    )


@pytest.mark.slow
def test_silence_is_stopped_by_the_blocking_checks(http_server, tmp_path: Path) -> None:
    from twiml_assets.definitions import build_definitions
    from twiml_assets.demo.synth import synthesize_silence

    (key,) = publish(http_server, [synthesize_silence(tmp_path / "silence.mp3", 4.0)], [42])
    root = tmp_path / "data"
    defs = build_definitions(
        resources={
            "feed": FeedResource(url=http_server.url("feed.xml")),
            "storage": StorageResource(root=str(root)),
        },
        env={},
    )
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", [key])
        result = defs.resolve_job_def("episode_pipeline").execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False
        )
    checks = check_results(result, key)
    assert not checks["has_speakers"].passed
    assert "ep-42: no speaker found" in checks["has_speakers"].description
    assert "rag_outputs" not in materialisations(result)
    assert not (root / "transcripts/42.corrected.json").exists()
    # No speech is a permanent failure: the failure sensor gives the episode up at once.
    from twiml_assets.catchup.sensors import step_failure

    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    (classified, step) = step_failure(failures)
    assert classified.kind == "permanent", (step, classified)
    assert "has_speakers" in classified.reason or "no speaker" in classified.reason


@pytest.mark.slow
def test_each_episode_keeps_its_check_status_and_one_check_reruns_alone(
    http_server, tmp_path: Path, short_episodes
) -> None:
    """Two episodes in one instance, one passing the integrity checks and one silent: each
    keeps its own status (not the last run's), and one check re-runs for one episode."""
    from twiml_assets.definitions import build_definitions
    from twiml_assets.demo.synth import synthesize_silence

    silence = synthesize_silence(tmp_path / "silence.mp3", 4.0)
    good, silent = publish(http_server, [short_episodes[0].audio_path, silence], [1, 42])
    root = tmp_path / "data"
    defs = build_definitions(
        resources={
            "feed": FeedResource(url=http_server.url("feed.xml")),
            "storage": StorageResource(root=str(root)),
        },
        env={},
    )
    job = defs.resolve_job_def("episode_pipeline")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", [good, silent])
        runs = {
            key: job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
            for key in (good, silent)  # the failing episode last
        }
        assert runs[good].success and not runs[silent].success
        assert check_results(runs[good], good)["has_speakers"].passed
        assert not check_results(runs[silent], silent)["has_speakers"].passed
        assert "rag_outputs" in materialisations(runs[good])
        assert "rag_outputs" not in materialisations(runs[silent])  # blocked for ep-42 only

        # Per episode: ep-1 still passes although ep-42 ran after it and failed.
        assert check_status_by_episode(instance, "has_speakers") == {
            good: ("SUCCEEDED", runs[good].run_id),
            silent: ("FAILED", runs[silent].run_id),
        }

        # One check alone, for one episode: it runs and records for that episode only.
        before = {
            name: check_status_by_episode(instance, name)
            for name in ("timestamps_valid", "has_speakers")
        }
        again = rerun_check(defs, "timestamps_valid", silent, instance)
        assert again.success
        assert not again.get_asset_materialization_events()  # nothing re-materialised
        (evaluation,) = check_results(again, silent).values()
        assert evaluation.check_name == "timestamps_valid" and evaluation.passed
        assert again.dagster_run.tags["dagster/partition"] == silent
        assert check_status_by_episode(instance, "timestamps_valid") == {
            good: before["timestamps_valid"][good],
            silent: ("SUCCEEDED", again.run_id),
        }
        assert check_status_by_episode(instance, "has_speakers") == before["has_speakers"]


# -- the production instance: PostgreSQL, code server, daemon; a CLI backfill -----------------
def start_code_server(
    env: dict[str, str], tmp_path: Path, module: str = STANDIN_LOCATION
) -> tuple[subprocess.Popen, Path, int]:
    """The `code` service of docker-compose.yml on 127.0.0.1, serving ``module`` instead of
    the project's code location (default: the stand-in models'), and deploy/workspace.yaml
    pointed at it; returns the server, the workspace file and the port."""
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


def most_runs_at_once(spans: list[tuple[float, float]]) -> int:
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_postgres_instance_backfills_two_runs_at_a_time_and_a_corrupt_episode_fails_alone(
    http_server, tmp_path: Path, short_episodes, postgres, monkeypatch
) -> None:
    """deploy/dagster.yaml on a real PostgreSQL server, the code location served by
    docker-compose.yml's code-server command, the daemon's queue and gpu pool (the models
    are stand-ins: the queue, the pool and the decode failure are what is tested)."""
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + os.urandom(40_000))
    keys = publish(http_server, [e.audio_path for e in short_episodes] + [corrupt])
    root = tmp_path / "data"
    home = tmp_path / "home"
    db = postgres.create_database("backfill")
    for name, value in postgres.dagster_env(db).items():  # CLI processes and this one
        monkeypatch.setenv(name, value)
    env = dagster_env(
        home,
        REPO / "deploy/dagster.yaml",
        TWIML_FEED_URL=http_server.url("feed.xml"),
        TWIML_STORAGE_ROOT=str(root),
        TWIML_SENSOR_STATUS="stopped",
    )

    # The code server of the compose stack; the runs will execute in its processes
    # (DefaultRunLauncher). It loads the code location while the CLI commands below run.
    code_server, workspace, port = start_code_server(env, tmp_path)
    daemon = None
    try:
        daemon = start_daemon(env, code_server, workspace, port, tmp_path)
        # A backfill of any set of partitions, queued and launched by the daemon.
        cli_ok(
            [
                str(BIN / "dagster"),
                "job",
                "backfill",
                "-j",
                "episode_pipeline",
                "-w",
                str(workspace),
                "--partitions",
                ",".join(keys),
                "--noprompt",
            ],
            env,
        )
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as inst:
            pipeline = RunsFilter(job_name="episode_pipeline")
            deadline = time.time() + 540
            while time.time() < deadline:
                runs = inst.get_runs(pipeline)
                if len(runs) == len(keys) and all(r.is_finished for r in runs):
                    break
                time.sleep(2)
            runs = {r.tags["dagster/partition"]: r for r in inst.get_runs(pipeline)}
            statuses = {k: r.status for k, r in runs.items()}
            assert statuses == {
                "ep-1": DagsterRunStatus.SUCCESS,
                "ep-2": DagsterRunStatus.SUCCESS,
                "ep-3": DagsterRunStatus.SUCCESS,
                "ep-4": DagsterRunStatus.FAILURE,
            }, statuses
            failures = [
                e
                for e in inst.all_logs(runs["ep-4"].run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
            ]
            message = failures[0].dagster_event.event_specific_data.error.message
            assert "ep-4" in message and "decode" in message

            # The queue: runs overlapped, never more than concurrency.runs.max_concurrent_runs.
            limit = inst.get_concurrency_config().run_queue_config.max_concurrent_runs
            records = inst.get_run_records(pipeline)
            assert 2 <= most_runs_at_once([(r.start_time, r.end_time) for r in records]) <= limit

            # The gpu pool: model steps of different runs never overlapped.
            assert inst.event_log_storage.get_concurrency_info("gpu").slot_count == 1
            spans = []
            for run in runs.values():
                times = {
                    e.dagster_event.event_type_value: e.timestamp
                    for e in inst.all_logs(run.run_id)
                    if e.dagster_event
                    and e.step_key == "transcribe_and_diarise"
                    and e.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS")
                }
                if len(times) == 2:
                    spans.append((times["STEP_START"], times["STEP_SUCCESS"]))
            spans.sort()
            assert len(spans) == 3
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=60)
        stop_group(code_server)
    # Counted once every process has stopped: a run worker logs its last engine event
    # ("process exited") after the run is already marked finished.
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as inst:
        events = {r.run_id: len(inst.all_logs(r.run_id)) for r in runs.values()}

    # Runs and events are rows of the PostgreSQL server; no SQLite database was made.
    conn = postgres.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT run_id, status FROM runs WHERE pipeline_name = 'episode_pipeline'")
            assert dict(cur.fetchall()) == {r.run_id: r.status.value for r in runs.values()}
            cur.execute(
                "SELECT run_id, count(*) FROM event_logs WHERE run_id = ANY(%s) GROUP BY run_id",
                (list(events),),
            )
            assert dict(cur.fetchall()) == events
    finally:
        conn.close()
    assert all(n > 30 for n in events.values()), events
    assert not list(home.rglob("*.db")) and not (home / "history").exists()
    # Compute logs stay local files, under $DAGSTER_HOME/storage.
    assert all((home / "storage" / run_id).is_dir() for run_id in events)

    for n in (1, 2, 3):
        assert (root / f"transcripts/{n}.corrected.json").exists()
        # speaker_names: once three episodes are stored, the voice that speaks in all of
        # them is the host and takes the feed's itunes:author ("Demo Host"); episodes
        # named before that keep the label until speaker_naming_job re-runs them.
        header = (root / f"markdown/{n}.md").read_text().split(" _(", 1)[0]
        assert header in ("__SPEAKER_00__", "__Demo Host__")
    assert not (root / "transcripts/4.corrected.json").exists()


def wait_for(what: str, condition, timeout: float, every: float = 1.0):
    """``condition()``'s first truthy value within ``timeout`` seconds, else a failure."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_hung_run_is_failed_at_its_time_limit_and_frees_the_gpu_slot(
    http_server, tmp_path: Path, short_episodes
) -> None:
    """The project's dagster.yaml (run monitoring) with a real code server and daemon: a run
    whose worker hangs in the model step is failed at its dagster/max_runtime, its gpu slot
    is freed, and the failure sensor records it as transient. (Stand-in models: the
    worker is stopped in the stand-in model step, which lasts a quarter of the audio.)"""
    import re
    import signal

    from twiml_assets.catchup import ledger

    (key,) = publish(http_server, [short_episodes[0].audio_path])
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    # Faster than production, so the test takes seconds: same settings otherwise.
    config["run_monitoring"].update(poll_interval_seconds=2, free_slots_after_run_end_seconds=1)
    config["run_retries"]["enabled"] = False
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    root, home = tmp_path / "data", tmp_path / "home"
    env = dagster_env(
        home,
        tmp_path / "dagster.yaml",
        TWIML_FEED_URL=http_server.url("feed.xml"),
        TWIML_STORAGE_ROOT=str(root),
        TWIML_SENSOR_STATUS="stopped",  # the feed sensor; the failure sensors always run
        TWIML_SENSOR_INTERVAL="5",
    )
    code_server, workspace, port = start_code_server(env, tmp_path)
    daemon, hung = None, None
    try:
        daemon = start_daemon(env, code_server, workspace, port, tmp_path)
        backfill = ["job", "backfill", "-j", "episode_pipeline", "-w", str(workspace)]
        tags = json.dumps({"dagster/max_runtime": "25"})
        cli_ok(
            [str(BIN / "dagster"), *backfill, "--partitions", key, "--tags", tags, "--noprompt"],
            env,
        )
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as inst:
            run = wait_for(
                "the run", lambda: inst.get_runs(RunsFilter(job_name="episode_pipeline")), 120
            )[0]

            def model_step_started() -> int | None:
                logs = inst.all_logs(run.run_id)
                started = any(
                    e.dagster_event
                    and e.step_key == "transcribe_and_diarise"
                    and e.dagster_event.event_type_value == "STEP_START"
                    for e in logs
                )
                pids = [re.search(r"pid: (\d+)", e.message or "") for e in logs]
                found = [int(m.group(1)) for m in pids if m]
                return found[0] if started and found else None

            hung = wait_for("the model step", model_step_started, 180, every=0.2)
            os.kill(hung, signal.SIGSTOP)  # the worker hangs, holding the gpu slot
            gpu = inst.event_log_storage.get_concurrency_info("gpu")
            assert gpu.claimed_slots and gpu.claimed_slots[0].run_id == run.run_id

            def finished():
                current = inst.get_run_by_id(run.run_id)
                return current if current.is_finished else None

            failed = wait_for("the run's time limit", finished, 120)
            assert failed.status == DagsterRunStatus.FAILURE
            messages = [e.message for e in inst.all_logs(run.run_id) if e.message]
            assert any("maximum runtime of 25 seconds" in m for m in messages), messages[-5:]
            wait_for(
                "the gpu slot to be freed",
                lambda: not inst.event_log_storage.get_concurrency_info("gpu").claimed_slots,
                60,
            )
            storage = StorageResource(root=str(root))
            entry = wait_for("the failure sensor", lambda: ledger.load(storage, key), 90)
            (attempt,) = entry.attempts
            assert attempt.kind == "transient" and "maximum runtime" in attempt.reason
    finally:
        if hung is not None:
            # Resumed, the worker answers the termination the daemon asked for and frees the
            # code server, which otherwise holds its stop on the stopped worker until it is
            # killed itself (a minute of stop_group); then it is killed all the same.
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung, signal.SIGCONT)
                deadline = time.time() + 15
                while time.time() < deadline and pid_alive(hung):
                    time.sleep(0.2)
                os.kill(hung, signal.SIGKILL)
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=60)
        stop_group(code_server)


def test_feed_catalog_registers_partitions(http_server, tmp_path: Path) -> None:
    """Materialising feed_catalog by hand is the manual catch-up path (sensor off)."""
    from dagster import materialize

    from twiml_assets.feed.assets import feed_catalog

    http_server.put(
        "feed.xml",
        render_rss(
            [
                DemoEpisode(
                    n,
                    f"E{n} - #{n}",
                    "",
                    f"a/{n}.mp3",
                    1,
                    1.0,
                    f"Mon, {n:02d} Jan 2024 10:00:00 +0000",
                    f"g{n}",
                )
                for n in (1, 2)
            ],
            http_server.base_url,
        ),
    )
    resources = {
        "feed": FeedResource(url=http_server.url("feed.xml")),
        "storage": StorageResource(root=str(tmp_path / "data")),
    }
    with instance_for_test() as instance:
        result = materialize([feed_catalog], resources=resources, instance=instance)
        assert list(instance.get_dynamic_partitions("episodes")) == ["ep-1", "ep-2"]
        meta = materialisations(result)["feed_catalog"]
        assert meta["episodes"] == 2 and meta["new_partitions"] == 2 and meta["newest"] == "ep-2"
        again = materialize([feed_catalog], resources=resources, instance=instance)
        assert materialisations(again)["feed_catalog"]["new_partitions"] == 0
    assert (tmp_path / "data" / "feed" / "catalog.json").exists()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
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
    assert not left, f"still running 15 s after the signal: {left}\n{run.output()[-3000:]}"
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
@pytest.mark.flaky(reruns=1)  # intermittent: the SIGTERM to make sometimes never reaches run.sh
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
