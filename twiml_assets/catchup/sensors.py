"""The failure sensors: why each failed run failed, written where people and the feed
sensor look.

For every failed (or cancelled) run of ``episode_pipeline`` they add an attempt to the
episode's ledger (transient or permanent, the failing step's reason), tag the run with
the kind and reason (visible in the UI's run list), and refresh the ``failed_episodes``
table. A tick that cannot reach storage raises, so Dagster evaluates the same run again
on the next tick: a failure is never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

from dagster import (
    AssetMaterialization,
    AssetSpec,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    MetadataValue,
    RunFailureSensorContext,
    RunStatusSensorContext,
    SensorDefinition,
    TableColumn,
    TableRecord,
    TableSchema,
    run_failure_sensor,
    run_status_sensor,
)

from resources.failures import KIND_KEY, Classified, classify_error_info, one_line
from resources.storage import StorageResource
from twiml_assets.catchup import ledger
from twiml_assets.catchup.status import (
    PARTITION_TAG,
    EpisodeState,
    EpisodeStatus,
    RetryRules,
    episode_statuses,
)
from twiml_assets.jobs import episode_pipeline

FAILED_EPISODES = "failed_episodes"
REASON_TAG = "twiml/failure_reason"
CANCELLED = Classified(
    "permanent", "cancelled by an operator; `twiml-transcribe retry KEY` requests it again"
)

failed_episodes = AssetSpec(
    FAILED_EPISODES,
    group_name="operations",
    kinds={"table"},
    description="Episodes whose last run failed: attempts, kind, reason, and whether the "
    "sensor will try again. Reported by the failure sensors, refreshed by the feed sensor.",
)


def step_failure(events: list[DagsterEvent]) -> tuple[Classified, str | None] | None:
    """The failure that stopped the run: a permanent one if any step had one, else the first."""
    found = []
    for event in events:
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        metadata = dict(user.metadata) if user and user.metadata else {}
        classified = classify_error_info(data.error if data else None, metadata)
        if user and user.description:
            classified = Classified(classified.kind, one_line(user.description))
        found.append((classified, event.step_key))
    permanent = [f for f in found if f[0].kind == "permanent"]
    return (permanent or found or [None])[0]


CRASH_TEXT = "Run execution process for"
"""The code server's engine event when a run's process died (``[DagsterApiServer] Run
execution process for … was terminated by signal 9 (SIGKILL).``); the run's failure event
only says it was failed from outside."""


def run_failure_reason(context: RunFailureSensorContext) -> str:
    """Why a run failed when no step did. Run monitoring cancels a run past its time limit
    before it marks it failed ("forcibly marked as failed"): the cancel message says why; a
    run whose process died has the code server's engine event saying how."""
    records = context.instance.get_records_for_run(
        context.dagster_run.run_id,
        of_type={DagsterEventType.RUN_CANCELING, DagsterEventType.ENGINE_EVENT},
    ).records
    entries = [r.event_log_entry for r in records if r.event_log_entry.message]
    cancels = [e.message for e in entries if e.dagster_event_type == DagsterEventType.RUN_CANCELING]
    crashes = [e.message[e.message.index(CRASH_TEXT) :] for e in entries if CRASH_TEXT in e.message]
    message = (cancels or crashes or [context.failure_event.message])[0]  # the first says why
    return one_line(message or "the run failed before any step did")


def failed_table_event(statuses: Mapping[str, EpisodeStatus]) -> AssetMaterialization:
    """``failed_episodes``: one row per failed or given-up episode."""
    rows = [s for s in statuses.values() if s.state in (EpisodeState.FAILED, EpisodeState.GIVEN_UP)]
    schema = TableSchema(
        columns=[
            TableColumn("episode", "string"),
            TableColumn("state", "string", description="failed: retried later; given_up: not"),
            TableColumn("attempts", "int"),
            TableColumn("kind", "string"),
            TableColumn("reason", "string"),
            TableColumn("run_id", "string"),
        ]
    )
    records = [
        TableRecord(
            {
                "episode": s.key,
                "state": s.state.value,
                "attempts": s.attempts,
                "kind": s.kind or "",
                "reason": s.reason or "",
                "run_id": s.run_id or "",
            }
        )
        for s in rows
    ]
    given_up = sum(1 for s in rows if s.state is EpisodeState.GIVEN_UP)
    return AssetMaterialization(
        asset_key=FAILED_EPISODES,
        description=f"{len(rows)} episode(s) failed, {given_up} given up",
        metadata={
            "episodes": MetadataValue.table(records, schema),
            "failed": len(rows) - given_up,
            "given_up": given_up,
        },
    )


def report_failed_table(
    instance: DagsterInstance, storage: StorageResource, rules: RetryRules
) -> None:
    statuses = episode_statuses(instance, storage, rules, keys=[])  # those that failed
    instance.report_runless_asset_event(failed_table_event(statuses))


def record_run(
    context: RunStatusSensorContext,
    storage: StorageResource,
    rules: RetryRules,
    classified: Classified,
    step: str | None,
) -> None:
    """The run's failure in its episode's ledger, on the run's tags and in the table."""
    run = context.dagster_run
    key = run.tags.get(PARTITION_TAG)
    if not key:
        return
    attempt = ledger.Attempt(run.run_id, ledger.now(), classified.kind, classified.reason, step)
    entry = ledger.record(storage, key, attempt)
    context.instance.add_run_tags(
        run.run_id, {KIND_KEY: classified.kind, REASON_TAG: classified.reason[:200]}
    )
    if entry.gave_up(rules.max_attempts):
        outcome = "given up until `twiml-transcribe retry` (or a run from the UI)"
    else:
        outcome = f"tried again after {rules.cooldown_seconds:.0f} s"
    context.log.warning(
        f"{key}: attempt {len(entry.counted)} of {rules.max_attempts} failed "
        f"({classified.kind}, step {step or '-'}): {classified.reason}; {outcome}"
    )
    report_failed_table(context.instance, storage, rules)


def build_failure_sensors(
    rules: RetryRules, minimum_interval_seconds: int = 30
) -> list[SensorDefinition]:
    """The two sensors (failed runs and cancelled runs), always running."""

    @run_failure_sensor(
        name="episode_failure_sensor",
        monitored_jobs=[episode_pipeline],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Records why an episode's run failed (transient or permanent) in its "
        "failure ledger, on the run's tags and in the failed_episodes table.",
    )
    def episode_failure_sensor(context: RunFailureSensorContext, storage: StorageResource) -> None:
        found = step_failure(context.get_step_failure_events())
        if found is None:  # no step failed: the worker died, the run timed out or crashed
            found = (Classified("transient", run_failure_reason(context)), None)
        record_run(context, storage, rules, *found)

    @run_status_sensor(
        name="episode_cancel_sensor",
        run_status=DagsterRunStatus.CANCELED,
        monitored_jobs=[episode_pipeline],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Records a cancelled episode run as given up (an operator's decision).",
    )
    def episode_cancel_sensor(context: RunStatusSensorContext, storage: StorageResource) -> None:
        record_run(context, storage, rules, CANCELLED, None)

    return [episode_failure_sensor, episode_cancel_sensor]
