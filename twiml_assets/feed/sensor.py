"""The feed sensor: new episodes become partitions, untranscribed ones become runs.

Each tick fetches the feed conditionally (validators from the cursor), adds a partition
for every new key, and requests at most ``max_runs_per_tick`` runs for episodes without a
transcript, so a long back catalogue catches up over many ticks instead of queueing
hundreds of runs at once; ``max_in_flight`` stops it from running ahead of the workers.

run_key = episode key: Dagster never launches the same key twice from this sensor, so
a re-run is a deliberate act (UI, backfill), never an accident of a cursor reset.
"""

import json
from dataclasses import dataclass, field
from typing import Literal

from dagster import (
    ConfigurableResource,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from pydantic import Field

from resources import schema
from resources.storage import StorageResource
from twiml_assets.feed.catalog import refresh_catalog
from twiml_assets.feed.partitions import EPISODES, episode_partitions
from twiml_assets.feed.resource import FeedResource
from twiml_assets.feed.source import FeedError
from twiml_assets.jobs import EPISODE_JOB, episode_pipeline
from twiml_assets.layout import EpisodeFiles

SENSOR_NAME = "episode_feed_sensor"
IN_FLIGHT = [DagsterRunStatus[s] for s in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")]


class CatchUpSettings(ConfigurableResource):
    """How fast the sensor works through episodes that have no transcript yet."""

    max_runs_per_tick: int = Field(
        default=3,
        ge=0,
        description="Runs requested per tick at most (env TWIML_MAX_RUNS_PER_TICK).",
    )
    order: Literal["newest_first", "oldest_first"] = Field(
        default="newest_first", description="Catch-up order (env TWIML_CATCHUP_ORDER)."
    )
    max_in_flight: int = Field(
        default=4,
        ge=0,
        description="Request nothing while this many pipeline runs are queued or running "
        "(0 = no limit; env TWIML_MAX_IN_FLIGHT).",
    )


@dataclass(slots=True)
class FeedCursor:
    """What the sensor remembers between ticks (JSON in the sensor's cursor)."""

    url: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None
    requested: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> "FeedCursor":
        """The cursor, or a fresh one when it is missing or unreadable."""
        try:
            return schema.load(cls, json.loads(raw or "{}"))
        except ValueError:
            return cls()

    def dump(self) -> str:
        return json.dumps(schema.dump(self), separators=(",", ":"))


def evaluate_feed(
    context: SensorEvaluationContext,
    feed: FeedResource,
    storage: StorageResource,
    catch_up: CatchUpSettings,
) -> SensorResult:
    """One tick (separate from the decorator so tests can call it with any context)."""
    state = FeedCursor.parse(context.cursor)
    known = schema.dump(state) if state.url == feed.url else {}
    try:
        parsed, response, changed = refresh_catalog(storage, feed, known)
    except FeedError as exc:
        context.log.error(f"feed tick skipped: {exc}")
        return SensorResult(skip_reason=SkipReason(f"feed unavailable: {exc}"))
    if not response.not_modified:
        state.url, state.etag, state.last_modified = feed.url, response.etag, response.last_modified
        state.sha256 = response.digest
    if changed:
        for s in parsed.skipped:
            context.log.warning(f"skipped feed entry #{s.position} {s.title!r}: {s.reason}")

    instance = context.instance
    existing = set(instance.get_dynamic_partitions(EPISODES))
    new_keys = [e.key for e in parsed.ordered(newest_first=False) if e.key not in existing]

    listing = set(storage.list("transcripts"))
    requested = set(state.requested)
    pending = [
        e
        for e in parsed.ordered(newest_first=catch_up.order == "newest_first")
        if e.key not in requested and EpisodeFiles(e.key).record not in listing
    ]
    budget = catch_up.max_runs_per_tick
    if catch_up.max_in_flight and pending:
        in_flight = instance.get_runs_count(RunsFilter(job_name=EPISODE_JOB, statuses=IN_FLIGHT))
        budget = min(budget, max(0, catch_up.max_in_flight - in_flight))
    batch = pending[:budget]
    run_requests = [
        RunRequest(
            partition_key=e.key,
            run_key=e.key,
            tags={"twiml/episode": e.key, "twiml/title": e.title[:63]},
        )
        for e in batch
    ]
    state.requested.extend(e.key for e in batch)

    summary = (
        f"{len(parsed.episodes)} episodes ({'changed' if changed else 'unchanged'}), "
        f"{len(new_keys)} new partitions, {len(batch)} runs requested, "
        f"{len(pending) - len(batch)} still waiting"
    )
    context.log.info(summary)
    partition_requests = [episode_partitions.build_add_request(new_keys)] if new_keys else []
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=partition_requests,
        skip_reason=None if run_requests or partition_requests else SkipReason(summary),
        cursor=state.dump(),
    )


def build_feed_sensor(
    minimum_interval_seconds: int = 300, running_by_default: bool = True
) -> SensorDefinition:
    """The sensor, with its interval and default status decided by the deployment."""
    return sensor(
        name=SENSOR_NAME,
        job=episode_pipeline,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING
        if running_by_default
        else DefaultSensorStatus.STOPPED,
        description="Adds a partition per new feed episode and requests a run for each "
        "episode without a transcript (a few per tick).",
    )(evaluate_feed)
