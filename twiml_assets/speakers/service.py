"""Storage-level naming operations shared by the Dagster asset and the CLI.

Voiceprints (``speakers/{key}.embeddings.json``) are computed once from the decoded audio;
everything after works without audio. ``speakers/{key}.json`` holds every label's name (or
null), confidence and evidence; its ``names``, only those above the threshold, are what
the outputs use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from resources.engine_check import require_engine
from resources.environment import environment
from resources.schema import DiarisationResult, SpeakerTranscript, SpeakerTurn, load
from resources.storage import StorageResource
from twiml_assets.layout import SPEAKER_REGISTRY, VOICEPRINTS_SUFFIX, EpisodeFiles
from twiml_assets.speakers.assign import NAME_THRESHOLD, assign_names
from twiml_assets.speakers.hosts import MIN_EPISODES, recurring_voice
from twiml_assets.speakers.metadata import guest_names
from twiml_assets.speakers.registry import SpeakerRegistry, label_ref
from twiml_assets.speakers.voiceprints import (
    MATCH_THRESHOLD,
    VoicePrint,
    audio_voiceprint,
    label_voiceprints,
)


class NamingSettings(BaseModel):
    """Thresholds and the host's name; the ``speaker_names`` asset's config inherits them."""

    host_name: str | None = Field(
        default=None,
        description="The host's name for the recurring voice (empty: $TWIML_HOST_NAME, else "
        "the feed's itunes:author).",
    )
    match_threshold: float = Field(
        default=MATCH_THRESHOLD, description="Cosine similarity for two voices to be one."
    )
    name_threshold: float = Field(
        default=NAME_THRESHOLD, description="Confidence below which the label is kept."
    )
    min_host_episodes: int = Field(
        default=MIN_EPISODES, description="Episodes a voice must recur in to count as the host."
    )

    def naming(self) -> NamingSettings:
        """Just these settings (from a config that carries more fields)."""
        return NamingSettings(**{name: getattr(self, name) for name in NamingSettings.model_fields})


def _stored(storage: StorageResource, rel: str) -> Any:
    """The JSON document at ``rel``, or None when there is none (not written yet)."""
    return storage.read_json(rel) if storage.exists(rel) else None


# -- voiceprints -----------------------------------------------------------------------------
def read_voiceprints(storage: StorageResource, key: str) -> dict[str, VoicePrint] | None:
    data = _stored(storage, EpisodeFiles(key).voiceprints)
    if data is None:
        return None
    return {label: VoicePrint.from_dict(vp) for label, vp in data["labels"].items()}


def turns_digest(turns: Sequence[SpeakerTurn]) -> str:
    """What the voiceprints were made from: the diarisation's labels and times (to the ms)."""
    text = "\n".join(f"{t.speaker} {t.start:.3f} {t.end:.3f}" for t in turns)
    return hashlib.sha256(text.encode()).hexdigest()


def voiceprints_current(storage: StorageResource, key: str) -> bool:
    """Whether stored voiceprints exist and were made from the episode's present diarisation
    (a model step run again since, with other turns, makes them stale). Files written
    before the digest was recorded count as current."""
    data = _stored(storage, EpisodeFiles(key).voiceprints)
    if data is None:
        return False
    diar = _stored(storage, EpisodeFiles(key).diarisation_result)
    if "turns" not in data or diar is None:
        return True
    return data["turns"] == turns_digest(load(DiarisationResult, diar).turns)


def compute_voiceprints(
    storage: StorageResource, key: str, audio_rel: str, turns: Sequence[SpeakerTurn]
) -> dict[str, VoicePrint]:
    """Decode the episode's audio once, embed each label's turns, store the result."""
    from resources.audio import decode_audio

    require_engine(f"{key}: speaker_names computes the voiceprints in this process")

    waveform = decode_audio(storage.local_path(audio_rel), label=key)
    prints = label_voiceprints(waveform, turns)
    write_voiceprints(storage, key, prints, turns)
    return prints


def compute_episode_voiceprints(storage: StorageResource, key: str) -> dict[str, VoicePrint]:
    """The voiceprints of a stored episode from its audio (``raw_audio``) and diarisation
    turns, decoded again. A remote model step stores them as it goes
    (``speech.step.store_voiceprints``), so ``speaker_names`` needs this only after a local
    model step or with ``recompute_embeddings``."""
    from twiml_assets.asset_io import read_json_or_fail

    files = EpisodeFiles(key)
    audio = read_json_or_fail(storage, files.audio_sidecar, key, "raw_audio")
    diar = read_json_or_fail(storage, files.diarisation_result, key, "diarisation")
    return compute_voiceprints(storage, key, audio["path"], load(DiarisationResult, diar).turns)


def write_voiceprints(
    storage: StorageResource,
    key: str,
    prints: dict[str, VoicePrint],
    turns: Sequence[SpeakerTurn] | None = None,
) -> str:
    """``speakers/{key}.embeddings.json``: the voiceprints every later naming reuses, with
    the digest of the ``turns`` they were made from (:func:`voiceprints_current`)."""
    return storage.write_json(
        EpisodeFiles(key).voiceprints,
        {
            "key": key,
            "encoder": "resemblyzer GE2E (raw, unit mean over the label's turns)",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **({"turns": turns_digest(turns)} if turns is not None else {}),
            "labels": {label: vp.to_dict() for label, vp in sorted(prints.items())},
        },
    )


def all_voiceprints(storage: StorageResource) -> dict[str, dict[str, VoicePrint]]:
    """Every episode's stored voiceprints: key → label → voiceprint."""
    names = (rel.rsplit("/", 1)[-1] for rel in storage.list("speakers"))
    keys = [n.removesuffix(VOICEPRINTS_SUFFIX) for n in names if n.endswith(VOICEPRINTS_SUFFIX)]
    prints = {key: read_voiceprints(storage, key) for key in keys}
    return {key: labels for key, labels in prints.items() if labels}


# -- registry --------------------------------------------------------------------------------
def load_registry(storage: StorageResource) -> SpeakerRegistry:
    return SpeakerRegistry.from_dict(_stored(storage, SPEAKER_REGISTRY) or {})


def register(storage: StorageResource, name: str, ref: str, kind: str, voice: VoicePrint) -> None:
    """Attach ``voice`` to ``name`` in the stored registry (see ``SpeakerRegistry.add``)."""
    registry = load_registry(storage)
    registry.add(name, ref, kind, voice)
    storage.write_json(SPEAKER_REGISTRY, registry.to_dict())


def enroll(storage: StorageResource, name: str, audio: Sequence[str | Path]) -> VoicePrint:
    """Add a voice from single-speaker recordings of ``name`` to the registry."""
    from resources.audio import decode_audio

    voice = audio_voiceprint([decode_audio(Path(a)) for a in audio])
    ref = "enrol:" + ",".join(sorted(Path(a).name for a in audio))
    register(storage, name, ref, "enrol", voice)
    return voice


def confirm(storage: StorageResource, key: str, label: str, name: str) -> dict[str, Any]:
    """Record that ``label`` of episode ``key`` is ``name``; returns the new naming."""
    prints = read_voiceprints(storage, key)
    if prints is None:
        raise FileNotFoundError(
            f"{key}: no {EpisodeFiles(key).voiceprints}; "
            "materialise speaker_names for this episode first"
        )
    if label not in prints:
        raise KeyError(f"{key} has no speaker {label!r} (labels: {', '.join(sorted(prints))})")
    register(storage, name, label_ref(key, label), "confirmed", prints[label])
    return name_episode(storage, key)


# -- naming ----------------------------------------------------------------------------------
def name_episode(
    storage: StorageResource,
    key: str,
    settings: NamingSettings | None = None,
    title: str | None = None,
    description: str | None = None,
    author: str | None = None,
) -> dict[str, Any]:
    """Name the labels of ``key`` from stored voiceprints; writes ``speakers/{key}.json``."""
    settings = settings or NamingSettings()
    prints = read_voiceprints(storage, key)
    if prints is None:
        rel = EpisodeFiles(key).voiceprints
        raise FileNotFoundError(f"{key}: no {rel} (compute voiceprints first)")
    if title is None and description is None:  # from the stored feed entry, if any
        entry = _stored(storage, EpisodeFiles(key).episode) or {}
        title, description, author = (entry.get(k) for k in ("title", "description", "author"))
    host_name = settings.host_name or environment().host_name or author or None
    registry = load_registry(storage)
    match, cutoff = settings.match_threshold, settings.name_threshold
    host = recurring_voice(all_voiceprints(storage), match, settings.min_host_episodes)
    exclude = {host_name} if host_name else set()
    guests = guest_names(title, description, exclude)
    names = assign_names(key, prints, registry, guests, host, host_name, match, cutoff)
    doc = {
        "key": key,
        "names": {lb: n.name for lb, n in names.items() if n.name is not None},
        "speakers": {lb: n.to_dict() for lb, n in names.items()},
        "guests_in_metadata": guests,
        "host_name": host_name,
        "match_threshold": settings.match_threshold,
        "name_threshold": settings.name_threshold,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_json(EpisodeFiles(key).speaker_names, doc)
    return doc


def with_names(storage: StorageResource, transcript: SpeakerTranscript) -> SpeakerTranscript:
    """``transcript`` with the stored confident names applied (raw labels stay in ``speakers``)."""
    stored = _stored(storage, EpisodeFiles(transcript.key).speaker_names) or {}
    names = {**transcript.speaker_names, **stored.get("names", {})}
    transcript.speaker_names = {lb: n for lb, n in names.items() if lb in transcript.speakers}
    return transcript


def render_outputs(storage: StorageResource, key: str) -> dict[str, str]:
    """Re-write the RAG files and subtitles of ``key`` with its current names.

    What ``rag_outputs`` and ``subtitles`` do, for the CLI's confirm/rename without a
    Dagster run; returns {} when the episode has no transcript yet.
    """
    from twiml_assets.feed.source import EpisodeInfo
    from twiml_assets.outputs.files import (
        transcript_from_record,
        write_rag_outputs,
        write_subtitles,
    )

    record = _stored(storage, EpisodeFiles(key).record)
    if record is None:
        return {}
    transcript = with_names(storage, transcript_from_record(record))
    entry = _stored(storage, EpisodeFiles(key).episode)
    info = None if entry is None else load(EpisodeInfo, entry).info_json()
    return {
        **write_rag_outputs(storage, transcript, info=info),
        **write_subtitles(storage, transcript),
    }
