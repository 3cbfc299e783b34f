"""The naming decision for one episode: label → name, confidence and evidence.

Evidence, strongest first, each label and each name used at most once: a person confirmed
this label (1.0); the voice matches a registered voice, then the recurring host voice
(cosine similarity); guests named in the title/description go to the longest unknown
talkers (see ``_assign_guests``). Below ``name_threshold`` the label stays ``SPEAKER_xx``,
the candidate kept as evidence: a wrong name in a RAG chunk is a false statement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from twiml_assets.speakers.hosts import RecurringVoice
from twiml_assets.speakers.registry import SpeakerRegistry
from twiml_assets.speakers.voiceprints import MATCH_THRESHOLD, VoicePrint, cosine

NAME_THRESHOLD = 0.6
SINGLE_GUEST_CONFIDENCE = 0.9
ORDERED_GUESTS_CONFIDENCE = 0.7
MIN_GUEST_SECONDS = 1.0  # a label with less speech is a fragment, not a guest


@dataclass(slots=True)
class SpeakerName:
    """What is known about one label: ``name`` is None when nothing is confident enough."""

    label: str
    name: str | None
    confidence: float
    evidence: str
    candidate: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["label"]
        return {**data, "confidence": round(self.confidence, 4)}


def assign_names(
    key: str,
    prints: dict[str, VoicePrint],
    registry: SpeakerRegistry,
    guests: list[str],
    host: RecurringVoice | None = None,
    host_name: str | None = None,
    match_threshold: float = MATCH_THRESHOLD,
    name_threshold: float = NAME_THRESHOLD,
) -> dict[str, SpeakerName]:
    """Name the labels of one episode (see the module docstring for the rules)."""
    result: dict[str, SpeakerName] = {}
    used: set[str] = set()

    def give(label: str, name: str, confidence: float, evidence: str) -> None:
        result[label] = SpeakerName(label, name, confidence, evidence, name)
        used.add(name.casefold())

    for label in prints:
        name = registry.confirmed_name(key, label)
        if name is not None:
            give(label, name, 1.0, "confirmed for this episode")

    pairs = sorted(
        (
            (sim, label, name)
            for label, vp in prints.items()
            if label not in result
            for name, sim in registry.similarities(vp.embedding).items()
        ),
        reverse=True,
    )
    for sim, label, name in pairs:
        if sim < match_threshold:
            break
        if label not in result and name.casefold() not in used:
            give(label, name, sim, f"voice matches registered {name!r} (cosine {sim:.3f})")

    if host is not None and host_name and host_name.casefold() not in used:
        sims = {lb: cosine(vp.embedding, host.embedding) for lb, vp in prints.items()}
        free = {lb: s for lb, s in sims.items() if lb not in result and s >= match_threshold}
        if free:
            label = max(free, key=free.__getitem__)
            give(
                label,
                host_name,
                free[label],
                f"recurring voice: heard in {len(host.episodes)} of {host.total} episodes "
                f"(cosine {free[label]:.3f})",
            )

    _assign_guests(prints, result, [g for g in guests if g.casefold() not in used])

    for label in prints:
        result.setdefault(label, SpeakerName(label, None, 0.0, "no match"))
    for entry in result.values():
        if entry.name is not None and entry.confidence < name_threshold:
            entry.evidence += f"; below the threshold {name_threshold}, label kept"
            entry.name = None
    return dict(sorted(result.items()))


def _assign_guests(
    prints: dict[str, VoicePrint], result: dict[str, SpeakerName], guests: list[str]
) -> None:
    """Guests by elimination: talk time picks the voices, order of introduction the names."""
    unknown = sorted(
        (lb for lb in prints if lb not in result and prints[lb].seconds >= MIN_GUEST_SECONDS),
        key=lambda lb: -prints[lb].seconds,
    )
    if not guests or not unknown:
        return
    chosen = unknown[: len(guests)]
    left_out = unknown[len(guests) :]
    by_entry = sorted(chosen, key=lambda lb: prints[lb].first_start)
    for label, name in zip(by_entry, guests, strict=False):
        if len(unknown) == 1 and len(guests) == 1:
            confidence = SINGLE_GUEST_CONFIDENCE
            why = "the only unknown voice; the only guest named in the title/description"
        elif left_out:
            mine, rival = prints[label].seconds, prints[left_out[0]].seconds
            confidence = mine / (mine + rival)
            why = (
                f"guest named in the title/description; talks {mine:.0f} s against "
                f"{rival:.0f} s for the next unknown voice"
            )
        else:
            confidence = ORDERED_GUESTS_CONFIDENCE
            why = "guests matched to unknown voices in order of introduction"
        result[label] = SpeakerName(label, name, confidence, why, name)
