"""The failure sensors: why each failed run failed, written where people and the feed
sensor look.

For every failed (or cancelled) run of ``episode_pipeline`` they tag the run with the
kind and reason (visible in the UI's run list) and add an attempt to the episode's ledger
(transient or permanent, the failing step's reason). Everything is read back from the
instance (:func:`classify_run`), so the feed sensor records the same way a run these
sensors missed: Dagster moves a run status sensor's cursor past a run even when the tick
raised (storage down, say), and such a run would otherwise block its episode's run key.
The feed sensor reports the ``failed_episodes`` table.
"""

from __future__ import annotations

from collections.abc import Mapping

from dagster import (
    AssetMaterialization,
    AssetSpec,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
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
    "sensor will try again. Reported by the feed sensor when it changes.",
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


TIME_LIMIT_TEXT = "maximum runtime"
"""In run monitoring's cancel message for a run past its dagster/max_runtime."""


def _events(instance: DagsterInstance, run_id: str, *types: DagsterEventType) -> list:
    records = instance.get_records_for_run(run_id, of_type=set(types)).records
    return [r.event_log_entry for r in records]


def run_failure_reason(instance: DagsterInstance, run: DagsterRun) -> str:
    """Why a run failed when no step did. Run monitoring cancels a run past its time limit
    before it marks it failed ("forcibly marked as failed"): the cancel message says why; a
    run whose process died has the code server's engine event saying how."""
    entries = _events(
        instance,
        run.run_id,
        DagsterEventType.RUN_CANCELING,
        DagsterEventType.ENGINE_EVENT,
        DagsterEventType.RUN_FAILURE,
    )
    messages = [(e.dagster_event_type, e.message) for e in entries if e.message]
    cancels = [m for t, m in messages if t == DagsterEventType.RUN_CANCELING]
    crashes = [m[m.index(CRASH_TEXT) :] for _, m in messages if CRASH_TEXT in m]
    failures = [m for t, m in messages if t == DagsterEventType.RUN_FAILURE]
    message = (cancels or crashes or failures or [""])[0]  # the first says why
    return one_line(message or "the run failed before any step did")


def classify_run(instance: DagsterInstance, run: DagsterRun) -> tuple[Classified, str | None]:
    """A finished, unsuccessful run's failure kind, reason and failing step, from its events.

    A cancelled run is an operator's decision (given up), unless run monitoring cancelled it
    at its time limit (transient, like a hung worker).
    """
    if run.status == DagsterRunStatus.CANCELED:
        reason = run_failure_reason(instance, run)
        if TIME_LIMIT_TEXT in reason:
            return Classified("transient", reason), None
        return CANCELLED, None
    failed_steps = _events(instance, run.run_id, DagsterEventType.STEP_FAILURE)
    found = step_failure([e.dagster_event for e in failed_steps if e.dagster_event])
    if found is None:  # no step failed: the worker died, the run timed out or crashed
        return Classified("transient", run_failure_reason(instance, run)), None
    return found


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


def record_failed_run(
    instance: DagsterInstance, storage: StorageResource, run: DagsterRun
) -> tuple[ledger.FailureLedger, Classified, str | None] | None:
    """Tag the run with its failure (the instance: works while storage is down) and add it
    to its episode's ledger (once per run). None for a run of no episode, or a cancelled
    run that never started (queued runs cleared: nothing was tried)."""
    key = run.tags.get(PARTITION_TAG)
    if not key:
        return None
    record = instance.get_run_record_by_id(run.run_id)
    if run.status == DagsterRunStatus.CANCELED and (record is None or record.start_time is None):
        return None
    classified, step = classify_run(instance, run)
    instance.add_run_tags(
        run.run_id, {KIND_KEY: classified.kind, REASON_TAG: classified.reason[:200]}
    )
    attempt = ledger.Attempt(run.run_id, ledger.now(), classified.kind, classified.reason, step)
    return ledger.record(storage, key, attempt), classified, step


def record_run(
    context: RunStatusSensorContext, storage: StorageResource, rules: RetryRules
) -> None:
    """The sensor's run in its episode's ledger and on its tags, and a log line saying what
    happens next."""
    recorded = record_failed_run(context.instance, storage, context.dagster_run)
    if recorded is None:
        return
    entry, classified, step = recorded
    if entry.gave_up(rules.max_attempts):
        outcome = "given up until `twiml-transcribe retry` (or a run from the UI)"
    else:
        outcome = f"tried again after {rules.cooldown_seconds:.0f} s"
    context.log.warning(
        f"{entry.key}: attempt {len(entry.counted)} of {rules.max_attempts} failed "
        f"({classified.kind}, step {step or '-'}): {classified.reason}; {outcome}"
    )


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
        "failure ledger and on the run's tags.",
    )
    def episode_failure_sensor(context: RunFailureSensorContext, storage: StorageResource) -> None:
        record_run(context, storage, rules)

    @run_status_sensor(
        name="episode_cancel_sensor",
        run_status=DagsterRunStatus.CANCELED,
        monitored_jobs=[episode_pipeline],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Records a cancelled episode run: given up (an operator's decision), or "
        "transient when run monitoring cancelled it at its time limit.",
    )
    def episode_cancel_sensor(context: RunStatusSensorContext, storage: StorageResource) -> None:
        record_run(context, storage, rules)

    return [episode_failure_sensor, episode_cancel_sensor]
