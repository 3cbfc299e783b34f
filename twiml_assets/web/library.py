"""What the pages show, read from the storage layout only (never from Dagster's database).

Episodes are the feed snapshot plus stored entries not in it (uploads, episodes removed
from the feed). An episode is *done* when its full record exists; queued, running or
failed come from its latest Dagster run. Every path here is built from a valid key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from resources.schema import load
from resources.storage import StorageError, StorageResource
from twiml_assets.asset_io import format_clock
from twiml_assets.audio.download import MEDIA_TYPES, audio_files, is_audio_of
from twiml_assets.catchup import ledger
from twiml_assets.catchup.ledger import FailureLedger
from twiml_assets.catchup.status import RetryRules, finished_keys, last_files
from twiml_assets.feed.catalog import load_catalog
from twiml_assets.feed.source import EpisodeInfo, order_episodes
from twiml_assets.keys import is_valid_key
from twiml_assets.layout import EpisodeFiles
from twiml_assets.outputs import renderers
from twiml_assets.outputs.files import transcript_from_record
from twiml_assets.speakers.service import with_names
from twiml_assets.web.dagster_client import RunInfo

log = logging.getLogger(__name__)

STATUSES = ("not started", "queued", "running", "done", "failed", "given up")
# What reading a record that lacks a field or has one of the wrong type raises (pydantic's
# ValidationError is a ValueError).
DAMAGE = (KeyError, IndexError, TypeError, ValueError, AttributeError)
T = TypeVar("T")


class DamagedTranscriptError(Exception):
    """A done episode's stored record cannot be read: the pages say which file, not why."""

    def __init__(self, key: str):
        self.key, self.path = key, EpisodeFiles(key).record
        super().__init__(
            f"the stored transcript of {key} ({self.path}) is damaged and cannot be shown; "
            "transcribe the episode again to remake it"
        )


class DownloadFormat(NamedTuple):
    """A transcript file the browser can download, by its suffix: link text and MIME type."""

    label: str
    media_type: str


FORMATS = {
    "md": DownloadFormat("Markdown", "text/markdown; charset=utf-8"),
    "json": DownloadFormat("JSON", "application/json"),
    "srt": DownloadFormat("SRT subtitles", "application/x-subrip; charset=utf-8"),
    "vtt": DownloadFormat("WebVTT subtitles", "text/vtt; charset=utf-8"),
}


def episode_status(
    done: bool,
    run: RunInfo | None,
    failures: FailureLedger | None = None,
    max_attempts: int = RetryRules.max_attempts,
) -> str:
    """One of STATUSES: an active run wins (a re-run shows as running), then the transcript,
    then the failure ledger (given up: permanent, or out of attempts)."""
    if run is not None and run.active:
        return run.phase
    if done:
        return "done"
    if failures is not None and failures.last is not None:
        return "given up" if failures.gave_up(max_attempts) else "failed"
    # An ended run left no transcript: it failed, or a check stopped it.
    return "not started" if run is None else "failed"


def failure_json(failures: FailureLedger | None) -> dict[str, Any] | None:
    """The last counted failure for the page: kind, reason, attempts."""
    last = failures.last if failures else None
    if failures is None or last is None:
        return None
    return {
        "attempts": len(failures.counted),
        "kind": last.kind,
        "reason": last.reason,
        "step": last.step,
    }


@dataclass(frozen=True, slots=True)
class Turn:
    """One speaker turn as the episode page shows it."""

    name: str
    index: int
    start: float
    end: float
    text: str

    @property
    def clock(self) -> str:
        return format_clock(self.start)


@dataclass(frozen=True, slots=True)
class TranscriptView:
    turns: list[Turn]
    speakers: list[str]
    model: str


class Library:
    """Read-only views of the storage root for the pages (uploads write via uploads.py)."""

    def __init__(self, storage: StorageResource):
        self.storage = storage
        self._stored: dict[str, EpisodeInfo] = {}

    def _stored_episode(self, key: str) -> EpisodeInfo | None:
        if key in self._stored:
            return self._stored[key]
        rel = EpisodeFiles(key).episode
        try:
            if not self.storage.exists(rel):
                return None
            episode = load(EpisodeInfo, self.storage.read_json(rel))
        except (StorageError, ValueError, TypeError) as exc:
            log.warning("unreadable %s: %s", rel, exc)
            return None
        if episode.key != key:
            return None
        self._stored[key] = episode
        return episode

    def episodes(self) -> list[EpisodeInfo]:
        """Feed episodes and stored-only ones (uploads), newest first."""
        loaded = load_catalog(self.storage)
        by_key = loaded[0].by_key() if loaded else {}
        for rel in self.storage.list("episodes"):
            key = rel.removeprefix("episodes/").removesuffix(".json")
            if rel.endswith(".json") and key not in by_key and is_valid_key(key):
                episode = self._stored_episode(key)
                if episode is not None:
                    by_key[key] = episode
        return order_episodes(by_key.values(), newest_first=True)

    def episode(self, key: str) -> EpisodeInfo | None:
        """The episode for a valid key: the stored entry (what runs use), else the catalog."""
        if not is_valid_key(key):
            return None
        if stored := self._stored_episode(key):
            return stored
        loaded = load_catalog(self.storage)
        return loaded[0].by_key().get(key) if loaded else None

    def done_keys(self) -> set[str]:
        """Episodes that are done (``catchup.status.finished_keys``): a listing or two, not
        one request per episode."""
        return finished_keys(self.storage, self.failures())

    def failures(self, key: str | None = None) -> dict[str, FailureLedger]:
        """Failure ledgers: every episode's (one listing), or ``key``'s alone."""
        try:
            if key is None:
                return ledger.load_all(self.storage)
            found = ledger.load(self.storage, key) if is_valid_key(key) else None
        except (StorageError, ValueError, TypeError) as exc:
            log.warning("unreadable failure ledger: %s", exc)
            return {}
        return {key: found} if found else {}

    def is_done(self, key: str) -> bool:
        if not is_valid_key(key) or not self.storage.exists(EpisodeFiles(key).record):
            return False
        if not self.failures(key):
            return True
        # It failed once: done only with its last files too.
        return all(self.storage.exists(rel) for rel in last_files(key))

    def record(self, key: str) -> dict[str, Any] | None:
        """The full record of a done episode (None if not done); DamagedTranscriptError when
        it is not JSON. A StorageError (storage down) passes through: that is a 503."""
        if not self.is_done(key):
            return None
        return self._readable(key, lambda: self.storage.read_json(EpisodeFiles(key).record))

    def _readable(self, key: str, read: Callable[[], T]) -> T:
        """``read()``, or DamagedTranscriptError if the record lacks a field, has one of the
        wrong type or is not JSON; the details go to the log, never to a page."""
        try:
            return read()
        except StorageError:
            raise
        except DAMAGE as exc:
            log.error("damaged %s: %s: %s", EpisodeFiles(key).record, type(exc).__name__, exc)
            raise DamagedTranscriptError(key) from exc

    def transcript(self, key: str) -> TranscriptView | None:
        record = self.record(key)
        if record is None:
            return None
        return self._readable(key, lambda: self._view(record))

    def _view(self, record: dict[str, Any]) -> TranscriptView:
        # Names decided by the speaker_names step (speakers/{key}.json) win over the record's.
        names = with_names(self.storage, transcript_from_record(record)).speaker_names
        speakers = list(record.get("speakers") or [])
        turns = []
        for u in record.get("utterances", []):
            label = u["speaker"]
            if label not in speakers:
                speakers.append(label)
            name, start, end = names.get(label) or label, float(u["start"]), float(u["end"])
            turns.append(Turn(name, speakers.index(label), start, end, u.get("text", "")))
        return TranscriptView(turns, speakers, str((record.get("asr") or {}).get("model", "")))

    def download(self, key: str, fmt: str) -> bytes | None:
        """The stored file of format ``fmt``, else rendered from the full record."""
        if fmt not in FORMATS or not self.is_done(key):
            return None
        paths = EpisodeFiles(key)
        stored = {"md": paths.markdown, "json": paths.corrected, "srt": paths.srt, "vtt": paths.vtt}
        try:
            if self.storage.exists(stored[fmt]):
                return self.storage.read_bytes(stored[fmt])
        except StorageError as exc:
            log.warning("cannot read %s: %s", stored[fmt], exc)
        record = self.record(key)
        if record is None:
            return None
        return self._readable(key, lambda: self._render(record, fmt))

    def _render(self, record: dict[str, Any], fmt: str) -> bytes:
        """The download of format ``fmt`` made from the full record, with the stored names."""
        transcript = with_names(self.storage, transcript_from_record(record))
        if fmt == "json":
            data = renderers.corrected_json(transcript)
            return (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
        render = {"md": renderers.markdown, "srt": renderers.srt, "vtt": renderers.vtt}[fmt]
        return render(transcript).encode("utf-8")

    def audio_relpath(self, key: str) -> str | None:
        """``audio/{key}<ext>`` as recorded by the sidecar, else found by listing."""
        if not is_valid_key(key):
            return None
        try:
            sidecar = EpisodeFiles(key).audio_sidecar
            if self.storage.exists(sidecar):
                rel = self.storage.read_json(sidecar).get("path")
                if isinstance(rel, str) and is_audio_of(rel, key) and self.storage.exists(rel):
                    return rel
            return next(iter(audio_files(self.storage, key)), None)
        except (StorageError, ValueError) as exc:
            log.warning("cannot look up the audio of %s: %s", key, exc)
        return None

    def audio_file(self, key: str) -> tuple[Path, str] | None:
        """A local file to stream (S3: cached locally once) and its MIME type."""
        rel = self.audio_relpath(key)
        if rel is None:
            return None
        try:
            path = self.storage.local_path(rel)
        except StorageError:
            return None
        return path, MEDIA_TYPES.get(Path(rel).suffix, "application/octet-stream")
