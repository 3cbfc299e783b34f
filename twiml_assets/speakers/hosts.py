"""Host detection without enrolment: the voice that recurs across episodes.

A podcast's host speaks in nearly every episode and guests rarely return, so on a back
catalogue the voice found (cosine >= the match threshold) in the most episodes is the
host. It is only proposed once it recurs in ``min_episodes`` episodes and in at least
``min_share`` of those available, so one or two transcribed episodes never crown a
guest; and when two different voices recur equally often (a co-host, or a demo feed
where the same two voices speak every time) nothing is proposed, since nothing tells
which one is the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twiml_assets.speakers.voiceprints import MATCH_THRESHOLD, VoicePrint, unit

MIN_EPISODES = 3
MIN_SHARE = 0.5


@dataclass(slots=True)
class RecurringVoice:
    """A voice heard in ``episodes`` of ``total`` episodes; ``embedding`` is their mean."""

    embedding: np.ndarray
    episodes: list[str]
    total: int


def recurring_voice(
    prints: dict[str, dict[str, VoicePrint]],
    threshold: float = MATCH_THRESHOLD,
    min_episodes: int = MIN_EPISODES,
    min_share: float = MIN_SHARE,
) -> RecurringVoice | None:
    """The one voice present in the most episodes of ``prints`` (key → label → voiceprint)."""
    keys = sorted(k for k in prints if prints[k])
    if not keys:
        return None
    owner = np.array([i for i, k in enumerate(keys) for _ in prints[k]])
    emb = np.stack([vp.embedding for k in keys for vp in prints[k].values()])
    sims = emb @ emb.T  # (labels, labels); one label per episode counts, the closest
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    best_per_episode = np.maximum.reduceat(sims, starts, axis=1)  # (labels, episodes)
    hits = best_per_episode >= threshold
    counts = hits.sum(axis=1)
    top = int(counts.max())
    if top < min_episodes or top < min_share * len(keys):
        return None
    leaders = np.flatnonzero(counts == top)
    anchor = leaders[np.argmax(np.where(hits[leaders], best_per_episode[leaders], 0).sum(axis=1))]
    if any(sims[anchor, other] < threshold for other in leaders):
        return None  # two different voices recur equally often: ambiguous
    members = [
        int(np.flatnonzero(owner == e)[np.argmax(sims[anchor, owner == e])])
        for e in np.flatnonzero(hits[anchor])
    ]
    return RecurringVoice(
        unit(emb[members].mean(axis=0)), [keys[e] for e in np.flatnonzero(hits[anchor])], len(keys)
    )
