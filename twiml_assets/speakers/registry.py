"""Known voices: ``speakers/registry.json`` in the storage root.

Every name keeps the voiceprints it was built from (``sources``: enrolment audio or a
confirmed label of an episode, ``{key}/{label}``), and its voice is their
talk-time-weighted mean. Keeping the sources, not only the mean, is what makes a
confirmation idempotent (confirming the same label twice counts once) and a rename
exact (the source moves from the old name to the new one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from twiml_assets.speakers.voiceprints import VoicePrint, cosine, unit

REGISTRY_VERSION = 1


def label_ref(key: str, label: str) -> str:
    """The source id of one label of one episode."""
    return f"{key}/{label}"


@dataclass(slots=True)
class Source:
    ref: str
    kind: str  # "enrol" or "confirmed"
    voice: VoicePrint
    added: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "kind": self.kind, "added": self.added, **self.voice.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Source:
        voice = VoicePrint.from_dict(data)
        return cls(data["ref"], data.get("kind", "confirmed"), voice, data.get("added", ""))


@dataclass(slots=True)
class SpeakerRegistry:
    """Names → voices; plain data, read from and written to storage by the service."""

    speakers: dict[str, list[Source]] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.speakers)

    def voice(self, name: str) -> np.ndarray:
        """Talk-time-weighted mean of the name's voiceprints, unit length."""
        sources = self.speakers[name]
        total = sum(max(s.voice.seconds, 1.0) * s.voice.embedding for s in sources)
        return unit(np.asarray(total, dtype=float))

    def confirmed_name(self, key: str, label: str) -> str | None:
        """The name a person gave this label of this episode, if any."""
        ref = label_ref(key, label)
        for name, sources in self.speakers.items():
            if any(s.ref == ref for s in sources):
                return name
        return None

    def similarities(self, embedding: np.ndarray) -> dict[str, float]:
        return {name: cosine(embedding, self.voice(name)) for name in self.speakers}

    def add(self, name: str, ref: str, kind: str, voice: VoicePrint) -> None:
        """Attach ``voice`` to ``name``; a source ref lives under one name only."""
        name = name.strip()
        if not name:
            raise ValueError("a speaker name cannot be empty")
        kept = {n: [s for s in sources if s.ref != ref] for n, sources in self.speakers.items()}
        self.speakers = {n: sources for n, sources in kept.items() if sources}
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.speakers.setdefault(name, []).append(Source(ref, kind, voice, now))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REGISTRY_VERSION,
            "speakers": {
                name: {"sources": [s.to_dict() for s in sources]}
                for name, sources in sorted(self.speakers.items())
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeakerRegistry:
        return cls(
            {
                name: [Source.from_dict(s) for s in entry.get("sources", [])]
                for name, entry in data.get("speakers", {}).items()
            }
        )
