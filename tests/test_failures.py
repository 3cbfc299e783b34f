"""Transient or permanent: the classification of each error kind, and the failure sensor
recording a real failed run in the episode's ledger."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from dagster import (
    DagsterEventType,
    Failure,
    build_run_status_sensor_context,
    instance_for_test,
)
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._utils.error import serializable_error_info_from_exc_info

from resources.audio import AudioDecodeError
from resources.failures import KIND_KEY, classify, classify_error_info, permanent, transient
from resources.storage import StorageError, StorageResource, StorageUnavailableError
from twiml_assets.audio.download import DownloadError, NotAudioError, download_audio
from twiml_assets.audio.fingerprint import ChromaprintMissingError, FingerprintDecodeError
from twiml_assets.catchup import ledger
from twiml_assets.catchup.sensors import REASON_TAG, build_failure_sensors
from twiml_assets.catchup.status import EpisodeState, RetryRules, episode_statuses
from twiml_assets.demo.feed_server import DemoEpisode, render_rss
from twiml_assets.feed.resource import FeedResource


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:  # noqa: BLE001 - returning what was raised
        return exc


TRANSIENT = {
    "connection refused": requests.ConnectionError("refused"),
    "read timeout": requests.ReadTimeout("read timed out"),
    "body cut off": requests.exceptions.ChunkedEncodingError("connection broken"),
    "connection reset": ConnectionResetError(errno.ECONNRESET, "reset by peer"),
    "S3 endpoint down": EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
    "S3 connect timeout": ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"),
    "S3 read timeout": ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
    "storage unavailable": StorageUnavailableError("cannot reach S3"),
    "download 5xx": DownloadError("ep-1: HTTP 503 after 4 attempts", transient=True),
    "worker killed": DagsterExecutionInterruptedError("interrupted"),
    "explicit": transient("model step worker was killed by SIGKILL"),
    "wrapped cause": chained(RuntimeError("step failed"), TimeoutError("timed out")),
    "unknown error": ValueError("something nobody foresaw"),
}
PERMANENT = {
    "download 404": DownloadError("ep-1: HTTP 404 Not Found"),
    "not audio": NotAudioError("ep-1: an HTML page instead of audio"),
    "undecodable": AudioDecodeError("cannot decode ep-1"),
    "not fingerprintable": FingerprintDecodeError("cannot decode audio/ep-1.mp3 to fingerprint it"),
    "no libchromaprint": ChromaprintMissingError("libchromaprint is not installed"),
    "not found in storage": StorageError("not found in storage: s3://b/x"),
    "TLS refused": requests.exceptions.SSLError("certificate verify failed"),
    "explicit": permanent("ep-1: no speech"),
    "no retries": Failure("a missing upstream file", allow_retries=False),
    "wrapped cause": chained(RuntimeError("step failed"), AudioDecodeError("bad frames")),
}


def serialised(exc: BaseException):
    """The error as a run's event log keeps it (raised, so it has a traceback)."""
    try:
        raise exc
    except BaseException:  # noqa: BLE001
        return serializable_error_info_from_exc_info(sys.exc_info())


@pytest.mark.parametrize("name", TRANSIENT)
def test_transient_errors(name: str) -> None:
    exc = TRANSIENT[name]
    assert classify(exc).kind == "transient"
    # The failure sensor sees the serialised error (class names only) and agrees.
    meta = exc.metadata if isinstance(exc, Failure) else None
    assert classify_error_info(serialised(exc), meta).kind == "transient"


@pytest.mark.parametrize("name", PERMANENT)
def test_permanent_errors(name: str) -> None:
    exc = PERMANENT[name]
    assert classify(exc).kind == "permanent"
    # allow_retries and DownloadError.transient are not serialised: steps raise
    # permanent()/transient() for those, whose kind travels in the metadata.
    if name not in ("no retries", "download 404"):
        meta = exc.metadata if isinstance(exc, Failure) else None
        assert classify_error_info(serialised(exc), meta).kind == "permanent"


def test_failures_carry_their_kind_and_the_retry_policy_follows_it() -> None:
    assert permanent("x").allow_retries is False
    assert transient("x").allow_retries is True
    assert permanent("x").metadata[KIND_KEY].value == "permanent"
    assert classify(permanent("ep-9: HTTP 410 Gone")).reason == "ep-9: HTTP 410 Gone"


@pytest.mark.parametrize(
    ("status", "kind"), [(404, "permanent"), (410, "permanent"), (503, "transient")]
)
def test_a_download_failure_over_http_has_its_kind(
    http_server, tmp_path: Path, status: int, kind: str
) -> None:
    def answer(handler) -> bool:
        handler.send_plain(status, "no")
        return True

    http_server.hooks["/audio.mp3"] = answer
    with pytest.raises(DownloadError) as raised:
        download_audio(http_server.url("audio.mp3"), tmp_path / "a.mp3", retries=0, backoff=0.01)
    assert classify(raised.value).kind == kind
    assert f"HTTP {status}" in str(raised.value)


def test_the_failure_sensor_records_a_failed_run_in_the_ledger(http_server, tmp_path: Path) -> None:
    """A 404 enclosure: a real run fails at raw_audio; the sensor records it as permanent."""
    from twiml_assets.definitions import build_definitions

    episode = DemoEpisode(
        5, "Gone - #5", "", "audio/gone.mp3", 1, 1.0, "Mon, 01 Jan 2024 10:00:00 +0000", "g5"
    )
    http_server.put("feed.xml", render_rss([episode], http_server.base_url))
    storage = StorageResource(root=str(tmp_path / "data"))
    resources = {"feed": FeedResource(url=http_server.url("feed.xml")), "storage": storage}
    defs = build_definitions(resources=resources, env={})
    rules = RetryRules(max_attempts=3, cooldown_seconds=60)
    sensor = next(s for s in build_failure_sensors(rules) if s.name == "episode_failure_sensor")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", ["ep-5"])
        result = defs.resolve_job_def("episode_pipeline").execute_in_process(
            partition_key="ep-5", instance=instance, raise_on_error=False
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        (event,) = [
            r.event_log_entry.dagster_event
            for r in instance.get_records_for_run(
                result.run_id, of_type=DagsterEventType.RUN_FAILURE
            ).records
        ]
        for _ in range(2):  # a re-evaluated tick records the run once
            context = build_run_status_sensor_context(
                sensor.name, event, instance, run, resources={"storage": storage}
            )
            sensor(context.for_run_failure())

        entry = ledger.load(storage, "ep-5")
        (attempt,) = entry.attempts
        assert (attempt.kind, attempt.step, attempt.run_id) == (
            "permanent",
            "raw_audio",
            run.run_id,
        )
        assert "HTTP 404" in attempt.reason and "ep-5" in attempt.reason
        tags = instance.get_run_by_id(run.run_id).tags
        assert tags["twiml/failure_kind"] == "permanent" and "HTTP 404" in tags[REASON_TAG]
        status = episode_statuses(instance, storage, rules)["ep-5"]
        assert status.state is EpisodeState.GIVEN_UP and status.attempts == 1


def test_status_and_retry_commands(tmp_path: Path, capsys, monkeypatch) -> None:
    from twiml_assets.cli import main

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    root = str(tmp_path / "data")
    storage = StorageResource(root=root)
    storage.write_json("transcripts/ep-1.json", {"key": "ep-1"})
    reason = "ep-2: HTTP 404 Not Found: nothing is at this URL"
    ledger.record(storage, "ep-2", ledger.Attempt("r1", ledger.now(), "permanent", reason))
    ledger.record(storage, "ep-3", ledger.Attempt("r2", ledger.now(), "transient", "HTTP 503"))

    assert main(["status", "--storage", root]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "1 done, 1 failed, 1 given_up"
    assert out[1:] == [
        f"ep-2\tgiven up after 1 attempt(s), permanent: {reason}",
        "ep-3\tfailed after 1 attempt(s), transient: HTTP 503",
    ]

    assert main(["retry", "--storage", root, "--all-given-up"]) == 0
    assert "ep-2: attempts start again (1 earlier failure(s) kept)" in capsys.readouterr().out
    statuses = episode_statuses(None, storage, RetryRules())
    assert statuses["ep-2"].state is EpisodeState.MISSING  # requested on the next tick
    assert statuses["ep-2"].next_attempt == 2  # a new run key: ep-2#2
    assert main(["retry", "--storage", root]) == 2


@pytest.mark.slow
def test_a_transient_download_failure_is_retried_by_the_step_and_recovers(
    http_server, tmp_path: Path, dialogue_mp3: Path
) -> None:
    """Two 503s, the downloader allowed no retries: the step's retry policy tries again."""
    from dagster import DagsterInstance, materialize

    from twiml_assets.audio.assets import raw_audio
    from twiml_assets.feed.assets import episode_metadata

    data = dialogue_mp3.read_bytes()
    http_server.put("audio/7.mp3", data, "audio/mpeg")
    episode = DemoEpisode(
        7, "Flaky - #7", "", "audio/7.mp3", len(data), 10.0, "Mon, 01 Jan 2024 10:00:00 +0000", "g7"
    )
    http_server.put("feed.xml", render_rss([episode], http_server.base_url))
    answers = iter([503, 503])

    def flaky(handler) -> bool:
        status = next(answers, None)
        if status is None:
            return False  # the server answers normally
        handler.send_plain(status, "busy")
        return True

    http_server.hooks["/audio/7.mp3"] = flaky
    storage = StorageResource(root=str(tmp_path / "data"))
    with instance_for_test() as instance:
        assert isinstance(instance, DagsterInstance)
        instance.add_dynamic_partitions("episodes", ["ep-7"])
        result = materialize(
            [episode_metadata, raw_audio],
            partition_key="ep-7",
            instance=instance,
            resources={"feed": FeedResource(url=http_server.url("feed.xml")), "storage": storage},
            run_config={"ops": {"raw_audio": {"config": {"retries": 0}}}},
        )
    assert result.success
    restarts = [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]
    assert [e.step_key for e in restarts] == ["raw_audio", "raw_audio"]
    assert storage.read_json("audio/ep-7.json")["size"] == len(data)


def test_a_run_failing_after_the_transcript_record_leaves_the_episode_unfinished(
    tmp_path: Path,
) -> None:
    """speaker_transcript writes transcripts/{key}.json before the blocking checks, the
    RAG files and the subtitles run: a failure after it must not count as done (a hole)."""
    storage = StorageResource(root=str(tmp_path / "data"))
    for key in ("ep-1", "ep-2", "ep-3", "ep-4"):
        storage.write_json(f"transcripts/{key}.json", {"key": key})

    def fail(key: str, kind: str, reason: str, step: str) -> None:
        ledger.record(storage, key, ledger.Attempt(f"run-{key}", ledger.now(), kind, reason, step))

    fail("ep-1", "permanent", "ep-1: no speaker found", "transcript_integrity")  # silence
    fail("ep-2", "transient", "StorageUnavailableError: cannot reach S3", "rag_outputs")
    fail("ep-3", "transient", "HTTP 503", "raw_audio")  # then a later run finished it
    storage.write_json("transcripts/3.corrected.json", {"dialogs": []})
    storage.write_text("subtitles/ep-3.srt", "")
    statuses = episode_statuses(None, storage, RetryRules(max_attempts=3, cooldown_seconds=0))
    assert {k: s.state for k, s in statuses.items()} == {
        "ep-1": EpisodeState.GIVEN_UP,
        "ep-2": EpisodeState.FAILED,
        "ep-3": EpisodeState.DONE,
        "ep-4": EpisodeState.DONE,  # never failed: the record is enough
    }
    assert statuses["ep-2"].due  # the feed sensor requests it again


def test_a_run_whose_process_died_is_recorded_with_how_it_died(tmp_path: Path) -> None:
    """The code server reports a dead run process in an engine event (SIGKILL, OOM): that,
    not "marked as failed from outside the execution context", is the ledger's reason."""
    from dagster import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    storage = StorageResource(root=str(tmp_path / "data"))
    rules = RetryRules(max_attempts=3, cooldown_seconds=60)
    sensor = next(s for s in build_failure_sensors(rules) if s.name == "episode_failure_sensor")
    with instance_for_test() as instance:
        run = create_run_for_test(
            instance,
            job_name="episode_pipeline",
            status=DagsterRunStatus.STARTED,
            tags={"dagster/partition": "ep-9"},
        )
        crash = f"Run execution process for {run.run_id} was terminated by signal 9 (SIGKILL)."
        instance.report_engine_event(crash, run, cls=type("DagsterApiServer", (), {}))
        instance.report_run_failed(run)
        (event,) = [
            r.event_log_entry.dagster_event
            for r in instance.get_records_for_run(
                run.run_id, of_type=DagsterEventType.RUN_FAILURE
            ).records
        ]
        run = instance.get_run_by_id(run.run_id)
        context = build_run_status_sensor_context(
            sensor.name, event, instance, run, resources={"storage": storage}
        )
        sensor(context.for_run_failure())
    (attempt,) = ledger.load(storage, "ep-9").attempts
    assert (attempt.kind, attempt.step, attempt.reason) == ("transient", None, crash)


def test_the_reason_is_the_innermost_error_not_dagsters_wrapper() -> None:
    class RetryRequestedFromPolicy(Exception):  # noqa: N818 - Dagster's name, by design
        pass

    inner = StorageUnavailableError("cannot reach S3 to write transcripts/ep-1.json")
    info = serialised(chained(RetryRequestedFromPolicy("Exceeded max_retries of 3"), inner))
    classified = classify_error_info(info)
    assert classified.kind == "transient"
    assert (
        classified.reason
        == "StorageUnavailableError: cannot reach S3 to write transcripts/ep-1.json"
    )


def test_a_permanent_error_raised_bare_fails_the_step_at_once() -> None:
    from resources.failures import permanent_errors_fail_at_once

    with pytest.raises(Failure) as raised, permanent_errors_fail_at_once():
        raise AudioDecodeError("cannot decode ep-1")
    assert raised.value.allow_retries is False
    with pytest.raises(StorageUnavailableError), permanent_errors_fail_at_once():
        raise StorageUnavailableError("S3 down")  # transient: the retry policy's business


def test_a_cancelled_run_that_never_started_counts_for_nothing(tmp_path: Path) -> None:
    from dagster import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    from twiml_assets.catchup.sensors import record_failed_run

    storage = StorageResource(root=str(tmp_path / "data"))
    with instance_for_test() as instance:
        run = create_run_for_test(
            instance,
            job_name="episode_pipeline",
            status=DagsterRunStatus.CANCELED,
            tags={"dagster/partition": "ep-1"},
        )
        assert record_failed_run(instance, storage, run) is None
        assert ledger.load(storage, "ep-1") is None


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
