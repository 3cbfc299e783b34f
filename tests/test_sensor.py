"""The feed sensor against a real HTTP server and a real (temporary) Dagster instance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import DagsterRunStatus, SensorResult, build_sensor_context, instance_for_test
from dagster._core.test_utils import create_run_for_test

from resources.storage import StorageResource
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
        return result

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
    keys = [r.partition_key for r in result.run_requests or []]
    assert keys == [r.run_key for r in result.run_requests or []]  # run_key = episode key
    return keys


def test_new_feed_adds_partitions_and_catches_up_newest_first(harness: Harness) -> None:
    harness.publish([1, 2, 3])
    first = harness.tick()
    assert harness.partitions == ["ep-1", "ep-2", "ep-3"]  # oldest first in the UI
    assert requested(first) == ["ep-3", "ep-2"]  # at most 2 per tick, newest first
    assert harness.storage.exists(CATALOG)
    state = FeedCursor.parse(harness.cursor)
    assert state.etag and state.requested == ["ep-3", "ep-2"]

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
