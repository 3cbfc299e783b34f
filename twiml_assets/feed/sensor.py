"""The feed sensor: new episodes become partitions, untranscribed ones become runs.

Each tick fetches the feed conditionally (validators from the cursor), adds a partition
for every new key, and requests at most ``max_runs_per_tick`` runs for episodes that are
missing, or failed and due again (``twiml_assets.catchup.status``), so a long back
catalogue catches up over many ticks instead of queueing hundreds of runs at once;
``max_in_flight`` stops it from running ahead of the workers. Episodes with a run queued
or running are skipped: one run per episode at a time.

Run keys are ``{key}#{attempt}``: Dagster never launches the same attempt twice from this
sensor, and a transient failure recorded in the episode's ledger moves the key on, so the
episode is requested again after the cool-down, up to ``max_attempts`` times. Fresh
episodes (published in the last ``fresh_days``) overtake queued catch-up runs.
"""

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from dagster import MAX_RUNTIME_SECONDS_TAG as MAX_RUNTIME_TAG
from dagster import (
    AssetMaterialization,
    ConfigurableResource,
    DagsterInstance,
    DagsterRun,
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
from twiml_assets.catchup import ledger
from twiml_assets.catchup.sensors import failed_table_event, record_failed_run
from twiml_assets.catchup.status import (
    IN_FLIGHT,
    PARTITION_TAG,
    EpisodeState,
    EpisodeStatus,
    RetryRules,
    episode_statuses,
)
from twiml_assets.feed.catalog import refresh_catalog
from twiml_assets.feed.partitions import EPISODES, episode_partitions
from twiml_assets.feed.resource import FeedResource
from twiml_assets.feed.source import EpisodeInfo, FeedError
from twiml_assets.jobs import EPISODE_JOB, episode_pipeline

SENSOR_NAME = "episode_feed_sensor"
RUN_KEY_TAG = "dagster/run_key"
PRIORITY_TAG = "dagster/priority"  # the queued run coordinator launches higher first
ATTEMPT_TAG = "twiml/attempt"
FRESH_PRIORITY = 10
"""dagster/priority of fresh episodes' runs; backfills' and catch-up runs' is 0."""


class CatchUpSettings(ConfigurableResource):
    """How fast the sensor works through episodes that have no transcript yet, and how it
    tries failed ones again."""

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
        description="Request no catch-up run while this many pipeline runs are queued or "
        "running (0 = no limit; env TWIML_MAX_IN_FLIGHT). Fresh episodes are exempt.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Runs per episode before a transient failure is given up "
        "(env TWIML_MAX_ATTEMPTS); a permanent failure is given up at once.",
    )
    retry_cooldown_seconds: float = Field(
        default=900.0,
        ge=0,
        description="Wait after a transient failure before requesting the episode again "
        "(env TWIML_RETRY_COOLDOWN).",
    )
    fresh_days: float = Field(
        default=7.0,
        ge=0,
        description="Episodes published this recently are fresh: their runs overtake queued "
        "catch-up runs (dagster/priority) and ignore max_in_flight.",
    )
    runtime_base_seconds: float = Field(
        default=3600.0, gt=0, description="A run's time limit: this, plus the next field."
    )
    runtime_per_audio_second: float = Field(
        default=2.0,
        ge=0,
        description="Seconds of run time allowed per second of audio (the feed's duration); "
        "a run past its limit is failed and its gpu slot freed (dagster/max_runtime). The "
        "clock includes waiting for the gpu slot behind another episode, hence the margin.",
    )

    @property
    def rules(self) -> RetryRules:
        return RetryRules(self.max_attempts, self.retry_cooldown_seconds)

    def run_tags(self, episode: EpisodeInfo, attempt: int, fresh: bool) -> dict[str, str]:
        """The run's tags: episode, attempt, priority and its time limit."""
        tags = {
            "twiml/episode": episode.key,
            "twiml/title": episode.title[:63],
            ATTEMPT_TAG: str(attempt),
            PRIORITY_TAG: str(FRESH_PRIORITY if fresh else 0),
        }
        if episode.duration:
            limit = self.runtime_base_seconds + self.runtime_per_audio_second * episode.duration
            tags[MAX_RUNTIME_TAG] = str(int(limit))
        return tags


@dataclass(slots=True)
class FeedCursor:
    """What the sensor remembers between ticks (JSON in the sensor's cursor)."""

    url: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None
    failed_digest: str | None = None  # of the failed_episodes table last reported

    @classmethod
    def parse(cls, raw: str | None) -> "FeedCursor":
        """The cursor, or a fresh one when it is missing or unreadable."""
        try:
            data = json.loads(raw or "{}")
            data.pop("requested", None)  # an older cursor's list; the ledger replaced it
            return schema.load(cls, data)
        except ValueError:
            return cls()

    def dump(self) -> str:
        return json.dumps(schema.dump(self), separators=(",", ":"))


def is_fresh(episode: EpisodeInfo, days: float, now: datetime) -> bool:
    """Published in the last ``days`` (undated episodes never are)."""
    if not episode.published or not days:
        return False
    try:
        published = datetime.fromisoformat(episode.published)
    except ValueError:
        return False
    if published.tzinfo is None:
        published = published.replace(tzinfo=UTC)
    return now - published <= timedelta(days=days)


def run_with_key(instance: DagsterInstance, run_key: str) -> DagsterRun | None:
    """The run this sensor launched with ``run_key``, if any (Dagster would skip a request
    with a used key; skipping it here keeps the tick's budget)."""
    runs = instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    return runs[0] if runs else None


def reconcile(context: SensorEvaluationContext, storage: StorageResource, run: DagsterRun) -> None:
    """Record a finished, unsuccessful run its episode's ledger lacks: the failure sensors
    missed it (storage down during their tick, a sensor stopped). Without this its used run
    key would hold the episode back for good."""
    key = run.tags.get(PARTITION_TAG, "")
    if run.status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
        return
    entry = ledger.load(storage, key)
    if entry is not None and any(a.run_id == run.run_id for a in entry.attempts):
        return  # recorded; the status will say what comes next
    recorded = record_failed_run(context.instance, storage, run)
    if recorded is not None:
        context.log.warning(f"{key}: recorded the failed run {run.run_id} the sensors missed")


RETRY_WAIT_SECONDS = 600.0
"""How long to wait for Dagster's re-execution of a crashed run before requesting anew."""


def retry_pending(instance: DagsterInstance, status: EpisodeStatus) -> bool:
    """Dagster's run retries will re-execute the episode's last failed run (a crashed
    worker): requesting it too would run the episode twice. Not forever: a retry that was
    never launched (its backfill cancelled, say) stops counting after a while."""
    if status.state is not EpisodeState.FAILED or status.run_id is None:
        return False
    run = instance.get_run_by_id(status.run_id)
    if run is None or not run.is_complete_and_waiting_to_retry:
        return False
    record = instance.get_run_record_by_id(run.run_id)
    ended = record.end_time if record is not None else None
    return ended is None or time.time() - ended < RETRY_WAIT_SECONDS


def rows(table: AssetMaterialization) -> int:
    """Episodes in a ``failed_episodes`` table."""
    return len(table.metadata["episodes"].value.records)


def table_digest(table: AssetMaterialization) -> str:
    """A short digest of the table's rows: report it again only when it changed."""
    records = [r.data for r in table.metadata["episodes"].value.records]
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]


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

    ordered = parsed.ordered(newest_first=catch_up.order == "newest_first")
    statuses = episode_statuses(instance, storage, catch_up.rules, [e.key for e in ordered])
    now = datetime.now(UTC)
    fresh = {e.key for e in ordered if is_fresh(e, catch_up.fresh_days, now)}
    pending = [e for e in ordered if statuses[e.key].due]
    pending.sort(key=lambda e: e.key not in fresh)  # stable: fresh first, order kept
    budget = catch_up.max_runs_per_tick
    if catch_up.max_in_flight and pending:
        in_flight = instance.get_runs_count(RunsFilter(job_name=EPISODE_JOB, statuses=IN_FLIGHT))
        budget = min(budget, max(0, catch_up.max_in_flight - in_flight))
    run_requests = []
    for episode in pending:  # fresh ones first: only max_runs_per_tick holds them back
        fresh_one = episode.key in fresh
        if len(run_requests) >= (catch_up.max_runs_per_tick if fresh_one else budget):
            continue
        attempt = statuses[episode.key].next_attempt
        run_key = f"{episode.key}#{attempt}"
        if (used := run_with_key(instance, run_key)) is not None:
            reconcile(context, storage, used)  # next tick's status counts it
            continue
        if retry_pending(instance, statuses[episode.key]):
            continue
        run_requests.append(
            RunRequest(
                partition_key=episode.key,
                run_key=run_key,
                tags=catch_up.run_tags(episode, attempt, fresh_one),
            )
        )

    counts = Counter(s.state.value for s in statuses.values())
    summary = (
        f"{len(parsed.episodes)} episodes ({'changed' if changed else 'unchanged'}), "
        f"{len(new_keys)} new partitions, {len(run_requests)} runs requested, "
        f"{len(pending) - len(run_requests)} still waiting; "
        + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    )
    context.log.info(summary)
    table = failed_table_event(statuses)
    digest = table_digest(table)
    # Report the table when it changed (an episode failed, or a failed one got done);
    # not an empty table on a first tick.
    changed_table = digest != state.failed_digest and (state.failed_digest or rows(table))
    asset_events = [table] if changed_table else []
    state.failed_digest = digest
    partition_requests = [episode_partitions.build_add_request(new_keys)] if new_keys else []
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=partition_requests,
        asset_events=asset_events,
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
