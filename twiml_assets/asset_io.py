"""Helpers the per-episode assets share: storage paths, loading by key, metadata.

Assets hand data to each other through files in the storage layout (``twiml_assets.layout``), not
through an IO manager: each asset writes its files and returns only metadata, and the
next one reads the files by partition key. A re-run, a backfill or the CLI therefore
sees the same files, and nothing large is pickled into Dagster's own storage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dagster import Failure, MetadataValue

from resources.schema import SpeakerTranscript, load
from resources.storage import StorageResource
from twiml_assets.feed.source import EpisodeInfo
from twiml_assets.layout import EpisodeFiles

GROUP_FEED = "feed"
GROUP_INGEST = "ingest"
GROUP_MODELS = "models"
GROUP_OUTPUTS = "outputs"


def read_json_or_fail(storage: StorageResource, rel: str, key: str, producer: str) -> Any:
    """Read an upstream asset's file, or fail with the asset to materialise."""
    if not storage.exists(rel):
        raise Failure(
            description=f"{key}: {storage.uri(rel)} is missing; materialise {producer} "
            "for this partition first",
            allow_retries=False,
        )
    return storage.read_json(rel)


def load_episode(storage: StorageResource, key: str) -> EpisodeInfo:
    rel = EpisodeFiles(key).episode
    return load(EpisodeInfo, read_json_or_fail(storage, rel, key, "episode_metadata"))


def format_clock(seconds: float) -> str:
    """``h:mm:ss``, as the asset previews and the web pages show times."""
    seconds = max(0.0, float(seconds))
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def markdown_preview(transcript: SpeakerTranscript, turns: int = 6, width: int = 300) -> str:
    """The first turns as Markdown, for the asset's page in the UI."""
    lines = []
    for u in transcript.utterances[:turns]:
        text = u.text if len(u.text) <= width else u.text[: width - 1] + "…"
        lines.append(
            f"**{transcript.name_of(u.speaker)}** "
            f"_({format_clock(u.start)}–{format_clock(u.end)})_: {text}"
        )
    if len(transcript.utterances) > turns:
        lines.append(f"_… {len(transcript.utterances) - turns} more turns_")
    return "\n\n".join(lines) or "_(no speech)_"


def files_metadata(files: dict[str, str]) -> dict[str, MetadataValue]:
    """One ``path:<name>`` entry per written file (clickable paths in the UI)."""
    return {f"path:{name}": MetadataValue.path(uri) for name, uri in sorted(files.items())}


def rtf(seconds: float, duration: float) -> float:
    """Real-time factor: processing seconds per second of audio (lower is faster)."""
    return round(seconds / duration, 4) if duration > 0 else 0.0


def word_count(words: Iterable[Any]) -> int:
    return sum(1 for w in words if str(getattr(w, "text", "")).strip())
