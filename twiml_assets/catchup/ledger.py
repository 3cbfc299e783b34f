"""The failure ledger: every failed attempt of an episode, in storage next to its files.

``failures/{key}.json`` lists each failed run of the episode (when, transient or
permanent, why, which step). The failure sensor is its writer; the feed sensor reads it
to decide when to try again and when to give up; the web page and ``twiml-transcribe
status`` show it. It lives in storage rather than in the Dagster instance so that it
survives a new instance and is one file a person can read. ``retry`` keeps the history
but starts the count again, so a given-up episode is requested on the next tick.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from resources import schema
from resources.failures import Kind
from resources.storage import StorageResource
from twiml_assets.layout import FAILURES_DIR, EpisodeFiles

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Attempt:
    """One failed run."""

    run_id: str
    at: float  # epoch seconds
    kind: Kind
    reason: str
    step: str | None = None


@dataclass(slots=True)
class FailureLedger:
    """An episode's failed runs; those before ``counted_from`` were cleared by a retry."""

    key: str
    attempts: list[Attempt] = field(default_factory=list)
    counted_from: int = 0

    @property
    def counted(self) -> list[Attempt]:
        """The failures since the last ``retry`` (the ones the attempt limit counts)."""
        return self.attempts[self.counted_from :]

    @property
    def last(self) -> Attempt | None:
        return self.counted[-1] if self.counted else None

    @property
    def next_attempt(self) -> int:
        """The number of the next run (its run key is ``{key}#{n}``), over all history."""
        return len(self.attempts) + 1

    def gave_up(self, max_attempts: int) -> bool:
        """A permanent failure, or as many transient ones as the limit allows."""
        last = self.last
        return last is not None and (last.kind == "permanent" or len(self.counted) >= max_attempts)


def load(storage: StorageResource, key: str) -> FailureLedger | None:
    rel = EpisodeFiles(key).failures
    return schema.load(FailureLedger, storage.read_json(rel)) if storage.exists(rel) else None


def load_all(storage: StorageResource) -> dict[str, FailureLedger]:
    """Every episode's ledger (one listing, then one read per episode that ever failed)."""
    ledgers = {}
    for rel in storage.list(FAILURES_DIR + "/"):
        if not rel.endswith(".json"):
            continue
        try:
            ledger = schema.load(FailureLedger, storage.read_json(rel))
        except ValueError as exc:  # a hand-edited or foreign file: never stop the catch-up
            log.warning("ignoring unreadable failure ledger %s: %s", rel, exc)
            continue
        ledgers[ledger.key] = ledger
    return ledgers


def record(storage: StorageResource, key: str, attempt: Attempt) -> FailureLedger:
    """Add a failed run to the episode's ledger (once per run: re-recording is a no-op)."""
    ledger = load(storage, key) or FailureLedger(key)
    if all(a.run_id != attempt.run_id for a in ledger.attempts):
        ledger.attempts.append(attempt)
        _save(storage, ledger)
    return ledger


def retry(storage: StorageResource, key: str) -> FailureLedger | None:
    """Start the episode's attempt count again (after a fix): the sensor requests it anew."""
    ledger = load(storage, key)
    if ledger is not None and ledger.counted:
        ledger.counted_from = len(ledger.attempts)
        _save(storage, ledger)
    return ledger


def _save(storage: StorageResource, ledger: FailureLedger) -> None:
    storage.write_json(EpisodeFiles(ledger.key).failures, schema.dump(ledger))


def now() -> float:
    return round(time.time(), 3)
