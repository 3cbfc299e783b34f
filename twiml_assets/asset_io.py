"""Helpers the per-episode assets share: storage paths, loading by key, metadata.

Assets hand data to each other through files in the storage layout (``twiml_assets.layout``), not
through an IO manager: each asset writes its files and returns only metadata, and the
next one reads the files by partition key. A re-run, a backfill or the CLI therefore
sees the same files, and nothing large is pickled into Dagster's own storage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dagster import Failure, MetadataValue
from dagster._core.definitions.metadata.external_metadata import metadata_map_from_external

from resources.failures import permanent
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
        raise permanent(
            f"{key}: {storage.uri(rel)} is missing; materialise {producer} for this partition first"
        )
    return storage.read_json(rel)


def undecodable_audio(reason: str) -> Failure:
    """The permanent failure of an episode whose stored audio does not decode, saying what a
    person can do about it (the model step and ``audio_fingerprint`` both decode it)."""
    return permanent(
        f"{reason}. Re-materialise raw_audio with force_download=true if the "
        "download was damaged; if the source itself is broken, this episode cannot be "
        "transcribed until the publisher fixes it (the other episodes are unaffected)"
    )


def feed_transcript_url(storage: StorageResource, key: str) -> str | None:
    """The feed's transcript URL from stored episode metadata (uploads have none)."""
    rel = EpisodeFiles(key).episode
    return storage.read_json(rel).get("transcript_url") if storage.exists(rel) else None


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
    return as_metadata(wire_paths(files))


def rtf(seconds: float, duration: float) -> float:
    """Real-time factor: processing seconds per second of audio (lower is faster)."""
    return round(seconds / duration, 4) if duration > 0 else 0.0


def word_count(words: Iterable[Any]) -> int:
    return sum(1 for w in words if str(getattr(w, "text", "")).strip())


# -- metadata in Dagster Pipes' wire form (steps that can run in a Pipes worker) --------------
@dataclass(slots=True)
class StepOutput:
    """One materialisation of a step: asset name and metadata in Pipes' wire form."""

    asset: str
    metadata: dict[str, Any]

    def __post_init__(self) -> None:
        # JSON-plain, as Pipes sends it: numpy scalars (turn sums, model configs) become
        # Python numbers here, so in-process and remote metadata are the same values.
        self.metadata = json.loads(json.dumps(self.metadata, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON")


def typed(value: Any, kind: str) -> dict[str, Any]:
    """A metadata entry of an explicit Pipes type (``path``, ``json``, ``md``, ``table``)."""
    return {"raw_value": value, "type": kind}


def wire_paths(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """One ``path:<name>`` entry per written file, in wire form (see ``files_metadata``)."""
    return {f"path:{name}": typed(uri, "path") for name, uri in sorted(files.items())}


def wire_table(table: Any) -> dict[str, Any]:
    """A DataFrame as a Pipes ``table`` value (sortable in the UI); NaN becomes empty."""
    kinds = {"b": "bool", "i": "int", "f": "float"}
    return typed(
        {
            "records": table.astype(object).where(table.notna(), None).to_dict("records"),
            "schema": [
                {"name": c, "type": kinds.get(table[c].dtype.kind, "string")} for c in table.columns
            ],
        },
        "table",
    )


def as_metadata(metadata: Mapping[str, Any]) -> dict[str, MetadataValue]:
    """Wire-form metadata as Dagster values, by the conversion Pipes applies to a worker's."""
    return dict(
        metadata_map_from_external(
            {
                name: value
                if isinstance(value, dict) and "raw_value" in value
                else typed(value, "__infer__")
                for name, value in metadata.items()
            }
        )
    )
