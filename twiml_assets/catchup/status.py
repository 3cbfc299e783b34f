"""Each episode's status: missing, queued, running, done, failed or given up.

Three sources, each the truth for one thing: storage says what is done (the transcript
record; for an episode that ever failed, its RAG file and subtitles too) and what failed
(the ledger), the Dagster instance says what is queued or running. The feed sensor
requests what is ``missing`` or ``failed`` and due again; the web page, ``twiml-transcribe
status`` and the ``failed_episodes`` table show the rest.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from resources.storage import StorageResource
from twiml_assets.catchup import ledger as ledgers
from twiml_assets.catchup.ledger import FailureLedger
from twiml_assets.layout import EpisodeFiles

PARTITION_TAG = "dagster/partition"
QUEUED = (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED)
RUNNING = (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING)
IN_FLIGHT = [*QUEUED, *RUNNING]


class EpisodeState(StrEnum):
    MISSING = "missing"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # will be tried again after the cool-down
    GIVEN_UP = "given_up"  # permanent, or out of attempts: a person must act


@dataclass(frozen=True, slots=True)
class RetryRules:
    """When a failed episode is tried again (the feed sensor's catch-up settings)."""

    max_attempts: int = 3
    cooldown_seconds: float = 900.0


@dataclass(frozen=True, slots=True)
class EpisodeStatus:
    key: str
    state: EpisodeState
    attempts: int = 0  # failed runs counted against the limit
    kind: str | None = None  # of the last failure
    reason: str | None = None
    failed_at: float | None = None
    retry_at: float | None = None  # failed: when the sensor may request it again
    run_id: str | None = None  # the queued/running run, else the last failed one
    next_attempt: int = 1

    @property
    def due(self) -> bool:
        """The sensor may request it now."""
        if self.state is EpisodeState.MISSING:
            return True
        return self.state is EpisodeState.FAILED and (self.retry_at or 0) <= time.time()

    @property
    def label(self) -> str:
        """``failed (2 of 3): HTTP 503 …`` — one line for a page or a terminal."""
        if self.state in (EpisodeState.FAILED, EpisodeState.GIVEN_UP):
            name = "given up" if self.state is EpisodeState.GIVEN_UP else "failed"
            return f"{name} after {self.attempts} attempt(s), {self.kind}: {self.reason}"
        return self.state.value


def runs_in_flight(instance: DagsterInstance) -> dict[str, DagsterRun]:
    """Queued or running runs by episode key (any job with a partition)."""
    runs = instance.get_runs(RunsFilter(statuses=IN_FLIGHT))
    return {r.tags[PARTITION_TAG]: r for r in runs if PARTITION_TAG in r.tags}


def episode_status(
    key: str,
    done: bool,
    run: DagsterRun | None,
    ledger: FailureLedger | None,
    rules: RetryRules,
) -> EpisodeStatus:
    """One episode's status from what each source says about it."""
    last = ledger.last if ledger else None
    history = {
        "attempts": len(ledger.counted) if ledger else 0,
        "next_attempt": ledger.next_attempt if ledger else 1,
    }
    if last is not None:
        history.update(kind=last.kind, reason=last.reason, failed_at=last.at, run_id=last.run_id)
    if run is not None:
        queued = run.status in QUEUED
        state = EpisodeState.QUEUED if queued else EpisodeState.RUNNING
        return EpisodeStatus(key, state, **{**history, "run_id": run.run_id})
    if done:
        return EpisodeStatus(key, EpisodeState.DONE, **history)
    if last is None:
        return EpisodeStatus(key, EpisodeState.MISSING, **history)
    if ledger is not None and ledger.gave_up(rules.max_attempts):
        return EpisodeStatus(key, EpisodeState.GIVEN_UP, **history)
    return EpisodeStatus(
        key, EpisodeState.FAILED, retry_at=last.at + rules.cooldown_seconds, **history
    )


def last_files(key: str) -> tuple[str, str]:
    """The files a complete run writes last (the RAG file, the subtitles): an episode that
    ever failed is done only with these."""
    files = EpisodeFiles(key)
    return files.corrected, files.srt


def finished_keys(storage: StorageResource, failed: Iterable[str]) -> set[str]:
    """Episodes that are done: their transcript record exists, and for an episode that ever
    failed (``failed``), its RAG file and subtitles too. A run can fail after writing the
    record (a blocking check, S3 down while writing the RAG files): that is not done."""
    transcripts = set(storage.list("transcripts/"))
    records = {
        rel.removeprefix("transcripts/").removesuffix(".json")
        for rel in transcripts
        if not rel.endswith(".corrected.json") and "/" not in rel.removeprefix("transcripts/")
    }
    failed = set(failed) & records
    subtitles = set(storage.list("subtitles/")) if failed else set()

    def complete(key: str) -> bool:
        corrected, srt = last_files(key)
        return corrected in transcripts and srt in subtitles

    return {key for key in records if key not in failed or complete(key)}


def episode_statuses(
    instance: DagsterInstance | None,
    storage: StorageResource,
    rules: RetryRules,
    keys: Iterable[str] | None = None,
) -> dict[str, EpisodeStatus]:
    """The status of ``keys`` and of every episode that ever failed (uploads and episodes
    no longer in the feed included); default keys: every episode done or in flight.

    Without an instance (a notebook, the CLI with no DAGSTER_HOME) nothing is in flight.
    """
    failures = ledgers.load_all(storage)
    done = finished_keys(storage, failures)
    in_flight = runs_in_flight(instance) if instance is not None else {}
    if keys is None:
        keys = done | set(in_flight)
    keys = sorted(set(keys) | set(failures))
    return {
        key: episode_status(key, key in done, in_flight.get(key), failures.get(key), rules)
        for key in keys
    }
