"""The Dagster code location: loading as `dagster dev` does, in-process materialisation,
partitioned checks, the feed catalog.

Everything runs against real HTTP on 127.0.0.1 and real Dagster instances (temporary
DAGSTER_HOMEs); the slow tests load the offline models (tiny.en + the offline diariser) and
transcribe short generated dialogues. Runs through the daemon: ``tests/test_daemon_runs.py``;
`make run`: ``tests/test_make_run.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, instance_for_test
from dagster._core.instance.ref import InstanceRef

from resources.quality import QualityResource
from resources.storage import StorageResource
from tests.dagster_processes import BIN, REPO, dagster_env, publish, run_cli
from twiml_assets.demo.feed_server import DemoEpisode, render_rss
from twiml_assets.feed.resource import FeedResource
from twiml_assets.jobs import PER_EPISODE_ASSETS

PER_EPISODE = list(PER_EPISODE_ASSETS)


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
