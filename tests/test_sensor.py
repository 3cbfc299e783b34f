"""The feed sensor against a real HTTP server and a real (temporary) Dagster instance."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import (
    DagsterRun,
    DagsterRunStatus,
    SensorResult,
    build_sensor_context,
    instance_for_test,
)
from dagster._core.test_utils import create_run_for_test

from resources.storage import StorageResource
from twiml_assets.catchup import ledger
from twiml_assets.catchup.status import episode_statuses
from twiml_assets.demo.feed_server import DemoEpisode, render_rss
from twiml_assets.feed.catalog import CATALOG
from twiml_assets.feed.partitions import EPISODES
from twiml_assets.feed.resource import FeedResource
from twiml_assets.feed.sensor import CatchUpSettings, FeedCursor, build_feed_sensor
from twiml_assets.jobs import EPISODE_JOB


def episodes(numbers) -> list[DemoEpisode]:
    return [
        DemoEpisode(
            number=n,
            title=f"Episode {n} - #{n}",
            description="",
            filename=f"audio/{n}.mp3",
            size=1000,
            duration=60.0,
            published=f"Mon, {n:02d} Jan 2024 10:00:00 +0000",
            guid=f"guid-{n}",
        )
        for n in numbers
    ]


class Harness:
    """One sensor, one instance, one storage root; ``tick()`` applies partition requests."""

    def __init__(self, server, instance, root: Path, **catch_up):
        self.server = server
        self.instance = instance
        self.storage = StorageResource(root=str(root))
        self.feed = FeedResource(url=server.url("feed.xml"), retries=0, backoff_seconds=0.01)
        self.catch_up = CatchUpSettings(**{"max_runs_per_tick": 2, **catch_up})
        self.sensor = build_feed_sensor(minimum_interval_seconds=30)
        self.cursor: str | None = None
        self.runs: dict[str, DagsterRun] = {}

    def publish(self, numbers, **kwargs) -> None:
        self.server.put("feed.xml", render_rss(episodes(numbers), self.server.base_url, **kwargs))

    def tick(self) -> SensorResult:
        context = build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={"feed": self.feed, "storage": self.storage, "catch_up": self.catch_up},
        )
        result = self.sensor(context)
        assert isinstance(result, SensorResult)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, request.partition_keys
            )
        if result.cursor is not None:
            self.cursor = result.cursor
        for request in result.run_requests or []:  # what the daemon would launch: running runs
            tags = {**request.tags, "dagster/partition": request.partition_key}
            self.runs[request.partition_key] = create_run_for_test(
                self.instance,
                job_name=EPISODE_JOB,
                status=DagsterRunStatus.STARTED,
                tags={**tags, "dagster/run_key": request.run_key},
            )
        return result

    def fail(
        self, key: str, kind: str = "transient", reason: str = "HTTP 503", recorded: bool = True
    ) -> DagsterRun:
        """The episode's run fails, and the failure sensor records it in the ledger."""
        run = self.runs.pop(key)
        self.instance.report_run_failed(run)
        if recorded:
            attempt = ledger.Attempt(run.run_id, ledger.now(), kind, reason)
            ledger.record(self.storage, key, attempt)
        return run

    @property
    def partitions(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions(EPISODES))

    def feed_requests(self) -> list[dict[str, str]]:
        return self.server.requests_to("/feed.xml")


@pytest.fixture
def harness(http_server, tmp_path: Path):
    with instance_for_test() as instance:
        yield Harness(http_server, instance, tmp_path / "data")


def requested(result: SensorResult) -> list[str]:
    """The episodes requested, checking each run key is ``{key}#{attempt}``."""
    for r in result.run_requests or []:
        assert r.run_key == f"{r.partition_key}#{r.tags['twiml/attempt']}"
    return [r.partition_key for r in result.run_requests or []]


def test_new_feed_adds_partitions_and_catches_up_newest_first(harness: Harness) -> None:
    harness.publish([1, 2, 3])
    first = harness.tick()
    assert harness.partitions == ["ep-1", "ep-2", "ep-3"]  # oldest first in the UI
    assert requested(first) == ["ep-3", "ep-2"]  # at most 2 per tick, newest first
    assert harness.storage.exists(CATALOG)
    state = FeedCursor.parse(harness.cursor)
    assert state.etag

    second = harness.tick()
    assert not second.dynamic_partitions_requests
    assert requested(second) == ["ep-1"]  # the catch-up goes on over ticks
    assert harness.feed_requests()[-1]["If-None-Match"] == state.etag

    third = harness.tick()
    assert (
        not third.run_requests
        and "0 new partitions, 0 runs requested" in third.skip_reason.skip_message
    )


def test_oldest_first_order(http_server, tmp_path: Path) -> None:
    with instance_for_test() as instance:
        h = Harness(
            http_server, instance, tmp_path / "d", order="oldest_first", max_runs_per_tick=1
        )
        h.publish([1, 2, 3])
        assert [requested(h.tick()) for _ in range(4)] == [["ep-1"], ["ep-2"], ["ep-3"], []]


def test_unchanged_feed_is_a_304_and_requests_nothing(harness: Harness) -> None:
    harness.publish([1, 2])
    harness.tick()
    before = harness.cursor
    result = harness.tick()
    assert not result.run_requests and not result.dynamic_partitions_requests
    assert "unchanged" in result.skip_reason.skip_message
    assert harness.feed_requests()[-1].get("If-None-Match")
    assert json.loads(result.cursor)["etag"] == json.loads(before)["etag"]


def test_one_new_episode(harness: Harness) -> None:
    harness.publish([1, 2])
    harness.tick()
    harness.publish([1, 2, 3])
    result = harness.tick()
    (add,) = result.dynamic_partitions_requests
    assert list(add.partition_keys) == ["ep-3"]
    assert requested(result) == ["ep-3"]
    assert harness.partitions == ["ep-1", "ep-2", "ep-3"]


def test_episodes_with_a_transcript_are_not_requested(harness: Harness) -> None:
    harness.storage.write_json("transcripts/ep-2.json", {"key": "ep-2"})
    harness.publish([1, 2, 3])
    result = harness.tick()
    assert requested(result) == ["ep-3", "ep-1"]
    assert "ep-2" in harness.partitions  # still a partition, so a re-run stays one click away


def test_in_flight_runs_throttle_the_catch_up(harness: Harness) -> None:
    harness.catch_up = CatchUpSettings(max_runs_per_tick=5, max_in_flight=3)
    for _ in range(2):
        create_run_for_test(harness.instance, job_name=EPISODE_JOB, status=DagsterRunStatus.STARTED)
    harness.publish([1, 2, 3, 4])
    assert requested(harness.tick()) == ["ep-4"]  # 3 in flight at most: 2 + 1


def test_malformed_feed_skips_the_tick_without_crashing(harness: Harness) -> None:
    harness.publish([1])
    harness.tick()
    cursor = harness.cursor
    harness.server.put("feed.xml", "<html><body>502 Bad Gateway</body></html>", "text/html")
    result = harness.tick()
    assert not result.run_requests and not result.dynamic_partitions_requests
    assert "feed unavailable" in result.skip_reason.skip_message
    assert result.cursor is None and harness.cursor == cursor  # retried next tick as if new
    assert harness.partitions == ["ep-1"]


def test_malformed_entries_are_skipped_and_the_rest_processed(harness: Harness) -> None:
    bad = (
        "<item><title>No audio - #99</title><guid>x</guid></item>\n"
        "<item><title>Broken enclosure - #98</title><enclosure url='' type='audio/mpeg'/></item>\n"
    )
    harness.publish([1, 2], extra_items=[bad])
    result = harness.tick()
    assert harness.partitions == ["ep-1", "ep-2"]
    assert sorted(requested(result)) == ["ep-1", "ep-2"]
    catalog = harness.storage.read_json(CATALOG)
    assert {s["title"] for s in catalog["skipped"]} == {"No audio - #99", "Broken enclosure - #98"}


def test_feed_404_is_reported_and_nothing_changes(harness: Harness) -> None:
    result = harness.tick()  # nothing published at /feed.xml
    assert "HTTP 404" in result.skip_reason.skip_message
    assert harness.partitions == [] and harness.cursor is None
    harness.publish([1])
    assert requested(harness.tick()) == ["ep-1"]  # recovers on the next tick


def test_changed_feed_url_drops_the_old_validators(harness: Harness, http_server) -> None:
    harness.publish([1])
    harness.tick()
    http_server.put("other.xml", render_rss(episodes([7]), http_server.base_url))
    harness.feed = FeedResource(url=http_server.url("other.xml"), retries=0)
    result = harness.tick()
    assert "If-None-Match" not in http_server.requests_to("/other.xml")[0]
    assert requested(result) == ["ep-7"]


# -- failures: re-requests after the cool-down, the attempt limit, one run per episode ------
def test_a_transient_failure_is_requested_again_after_the_cool_down_until_the_limit(
    http_server, tmp_path: Path
) -> None:
    with instance_for_test() as instance:
        h = Harness(http_server, instance, tmp_path / "d", retry_cooldown_seconds=1.0)
        h.publish([1])
        assert requested(h.tick()) == ["ep-1"]
        assert requested(h.tick()) == []  # running: one run per episode
        for attempt in (2, 3):
            h.fail("ep-1")
            assert requested(h.tick()) == []  # cooling down
            time.sleep(1.1)
            result = h.tick()
            assert requested(result) == ["ep-1"]
            assert result.run_requests[0].run_key == f"ep-1#{attempt}"
        h.fail("ep-1")  # the third failure: max_attempts (3) reached
        time.sleep(1.1)
        result = h.tick()
        assert requested(result) == [] and "1 given_up" in result.skip_reason.skip_message
        status = episode_statuses(instance, h.storage, h.catch_up.rules)["ep-1"]
        assert (status.state, status.attempts, status.reason) == ("given_up", 3, "HTTP 503")

        # After a fix: `twiml-transcribe retry ep-1` starts the count again.
        ledger.retry(h.storage, "ep-1")
        result = h.tick()
        assert [r.run_key for r in result.run_requests] == ["ep-1#4"]


def test_a_permanent_failure_is_given_up_at_once_and_reported(harness: Harness) -> None:
    harness.catch_up = CatchUpSettings(max_runs_per_tick=2, retry_cooldown_seconds=0)
    harness.publish([1, 2])
    assert sorted(requested(harness.tick())) == ["ep-1", "ep-2"]
    harness.fail("ep-2", "permanent", "HTTP 404 Not Found: nothing is at this URL")
    result = harness.tick()
    assert requested(result) == []
    (table,) = result.asset_events  # the failed_episodes table changed
    rows = [r.data for r in table.metadata["episodes"].value.records]
    assert [(r["episode"], r["state"], r["kind"]) for r in rows] == [
        ("ep-2", "given_up", "permanent")
    ]
    assert "HTTP 404" in rows[0]["reason"]
    assert not harness.tick().asset_events  # unchanged: not reported again


def test_an_episode_a_backfill_is_running_is_not_requested(harness: Harness) -> None:
    harness.publish([1, 2])
    backfill = create_run_for_test(
        harness.instance,
        job_name=EPISODE_JOB,
        status=DagsterRunStatus.STARTED,
        tags={"dagster/partition": "ep-2", "dagster/backfill": "abc"},
    )
    assert requested(harness.tick()) == ["ep-1"]
    harness.instance.report_run_failed(backfill)  # no ledger entry: treated as never tried
    assert requested(harness.tick()) == ["ep-2"]


def test_fresh_episodes_overtake_the_catch_up_and_get_a_time_limit(harness: Harness) -> None:
    harness.catch_up = CatchUpSettings(max_runs_per_tick=2, max_in_flight=1)
    for _ in range(3):  # a backfill keeps the workers busy
        create_run_for_test(harness.instance, job_name=EPISODE_JOB, status=DagsterRunStatus.STARTED)
    fresh = episodes([3])[0]
    fresh.published = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    harness.server.put("feed.xml", render_rss([*episodes([1, 2]), fresh], harness.server.base_url))
    (request,) = harness.tick().run_requests  # in-flight limit reached: only the fresh one
    assert request.partition_key == "ep-3"
    assert request.tags["dagster/priority"] == "10"
    assert request.tags["dagster/max_runtime"] == str(int(3600 + 2 * 60.0))  # 60 s of audio


def test_a_lost_snapshot_is_fetched_whole_in_one_request(harness: Harness) -> None:
    """The cursor has validators but storage lost feed/catalog.json: no conditional request,
    so no 304 to follow with a second fetch (one request, one time budget per tick)."""
    harness.publish([1])
    harness.tick()
    harness.storage.delete(CATALOG)
    before = len(harness.feed_requests())
    harness.tick()
    (request,) = harness.feed_requests()[before:]
    assert "If-None-Match" not in request and harness.storage.exists(CATALOG)


def test_a_run_that_dagster_will_retry_is_not_requested_again(http_server, tmp_path: Path) -> None:
    """A crashed run's retry (run_retries) comes from Dagster; the sensor waits for it."""
    with instance_for_test() as instance:
        h = Harness(http_server, instance, tmp_path / "d", retry_cooldown_seconds=0)
        h.publish([1])
        requested(h.tick())
        run = h.runs["ep-1"]
        h.fail("ep-1", reason="Run execution process was terminated by signal 9 (SIGKILL)")
        instance.add_run_tags(run.run_id, {"dagster/will_retry": "true"})
        assert requested(h.tick()) == []
        instance.add_run_tags(run.run_id, {"dagster/will_retry": "false"})  # it gave up
        assert requested(h.tick()) == ["ep-1"]


def test_a_failed_run_the_failure_sensors_missed_is_recorded_and_retried(
    http_server, tmp_path: Path
) -> None:
    """Storage down during the failure sensor's tick: Dagster moves its cursor on anyway.
    The feed sensor finds the run by its run key, records it, and the episode goes on."""
    with instance_for_test() as instance:
        h = Harness(http_server, instance, tmp_path / "d", retry_cooldown_seconds=0)
        h.publish([1])
        requested(h.tick())
        run = h.fail("ep-1", recorded=False)
        assert requested(h.tick()) == []  # ep-1#1 is used: recorded now, not requested
        (attempt,) = ledger.load(h.storage, "ep-1").attempts
        assert (attempt.run_id, attempt.kind) == (run.run_id, "transient")
        assert instance.get_run_by_id(run.run_id).tags["twiml/failure_kind"] == "transient"
        result = h.tick()
        assert [r.run_key for r in result.run_requests] == ["ep-1#2"]
