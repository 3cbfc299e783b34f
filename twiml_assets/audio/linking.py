"""Match an upload's fingerprint to the episodes' fingerprints, whatever was added or cut.

The feed's MP3 is the master re-encoded, usually with an intro, ad breaks and an outro
added (or some of the start cut), so the two line up at a few different offsets, one per
stretch between the insertions. ``compare`` finds those offsets by voting with exact
matches of the items' top bits, then measures the bit agreement of the items at each
offset, smoothed over ≈2 s, and keeps the stretches that agree: each query item goes to
its best offset. Unrelated speech agrees on ≈50 % of the bits (chance); the same audio
re-encoded on 90-100 %.

``FingerprintIndex`` keeps many episodes in memory and finds the few worth comparing with
one sorted array of content-sampled keys, so a query against 800 hour-long episodes costs
well under the 2 s budget.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from twiml_assets.audio.fingerprint import ITEM_SECONDS, Fingerprint

KEY_SHIFT = 12
"""Items vote by their top 20 bits: exact matches of those survive re-encoding often
enough (measured: most items of a 64 kbit/s MP3) and are rare by chance."""
MAX_KEY_REPEATS = 64
"""A key found more often than this in a fingerprint is background (silence, hum): no vote."""
MAX_OFFSETS = 6
"""Offsets examined per pair: the main one and the stretches around a few ad breaks."""
MIN_VOTES = 4
"""Votes an offset needs to be examined at all: chance key matches rarely share an offset."""
SMOOTH_ITEMS = 16
"""Window of the agreement average: 16 items ≈ 2 s, long enough to be far from chance."""
STRETCH_AGREEMENT = 0.70
"""Smoothed agreement above which items belong to an aligned stretch (chance: 0.50 ± 0.03)."""
LINK_SIMILARITY = 0.78
"""Mean agreement a link needs. Measured (tests/test_fingerprint_linking.py): own variants
0.914-1.000 (lowest: 20 s cut, the items' grid falls half-way); wrong episodes up to 0.88,
but only on stretches of at most 8 s of shared sound, which the overlap rule refuses."""
MIN_OVERLAP_SECONDS = 30.0
"""Aligned audio a link needs (measured: own variants ≥ 125 s of 150 s, wrong ≤ 8 s).
Shared jingles, backchannels and ads (seconds to a minute) never link two different
episodes on their own, see ``min_overlap``."""
MIN_OVERLAP_FRACTION = 0.25
"""And at least this share of the shorter one, capped at half of it: a shared minute of
intro is far from a quarter of an hour-long episode."""

# Content-sampled index: an item is indexed when its key hashes to the low 1/8 of the range,
# the same rule for episodes and queries, so the same content is sampled in both.
SAMPLE_MULTIPLIER = np.uint32(0x9E3779B1)
SAMPLE_SHIFT = np.uint32(29)
OFFSET_BIN = 4
"""Index votes are counted per 4 items (≈0.5 s) of offset: resampling shifts items by ±1."""


@dataclass(frozen=True)
class Match:
    """How well a query lines up with one episode. ``query time + offset = episode time``."""

    key: str
    similarity: float
    overlap_seconds: float
    offset_seconds: float
    linked: bool


def min_overlap(query: Fingerprint, ref: Fingerprint) -> float:
    """Seconds of aligned audio a link needs between these two."""
    shorter = min(query.seconds, ref.seconds)
    return min(max(MIN_OVERLAP_SECONDS, MIN_OVERLAP_FRACTION * shorter), 0.5 * shorter)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint32 (bitwise: numpy 1.x has no bitwise_count)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * np.uint32(0x01010101)) & np.uint32(0xFFFFFFFF)) >> 24


def informative(items: np.ndarray) -> np.ndarray:
    """Items that carry evidence: not part of a run of identical items (silence, a tone)."""
    keep = np.ones(len(items), dtype=bool)
    if len(items) > 1:
        same = items[1:] == items[:-1]
        keep[1:] &= ~same
        keep[:-1] &= ~same
    return keep


def _voting_keys(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, positions) of the informative items whose key is not background."""
    positions = np.flatnonzero(informative(items))
    keys = items[positions] >> KEY_SHIFT
    if len(keys):
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        common = counts[inverse] > MAX_KEY_REPEATS
        keys, positions = keys[~common], positions[~common]
    return keys, positions


def _hits(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every exact match: (index into ``keys``, index into ``sorted_keys``), vectorised."""
    lo = np.searchsorted(sorted_keys, keys, side="left")
    counts = np.searchsorted(sorted_keys, keys, side="right") - lo
    total = int(counts.sum())
    query_index = np.repeat(np.arange(len(keys)), counts)
    first = np.repeat(lo - np.cumsum(counts) + counts, counts)
    return query_index, np.arange(total) + first


def _offset_votes(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate offsets (ref position - query position) and their votes, most voted first."""
    qk, qp = _voting_keys(query)
    rk, rp = _voting_keys(ref)
    if not len(qk) or not len(rk):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(rk, kind="stable")
    query_index, ref_index = _hits(rk[order], qk)
    if not len(ref_index):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    offsets = rp[order][ref_index].astype(np.int64) - qp[query_index]
    values, votes = np.unique(offsets, return_counts=True)
    # An offset and its neighbours (±1 item: a resampled grid) are one alignment.
    padded = np.zeros(len(values), np.int64)
    for shift in (-1, 1):
        j = np.searchsorted(values, values + shift)
        ok = (j < len(values)) & (values[np.minimum(j, len(values) - 1)] == values + shift)
        padded[ok] += votes[j[ok]]
    total = votes + padded
    order = np.argsort(-total, kind="stable")
    return values[order], total[order]


def _top_offsets(query: np.ndarray, ref: np.ndarray) -> list[int]:
    """A few well-voted offsets, at least 2 items apart (neighbours are the same alignment)."""
    values, votes = _offset_votes(query, ref)
    chosen: list[int] = []
    for value, vote in zip(values[: 20 * MAX_OFFSETS].tolist(), votes.tolist(), strict=False):
        if vote < MIN_VOTES or len(chosen) == MAX_OFFSETS:
            break
        if all(abs(value - c) > 1 for c in chosen):
            chosen.append(value)
    # The exact neighbours too: the best integer offset of a resampled copy may be either.
    extra = [c + d for c in chosen for d in (-1, 1)]
    return chosen + [e for e in extra if e not in chosen]


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average (edges averaged over what exists)."""
    kernel = np.ones(width)
    total = np.convolve(values, kernel, mode="same")
    count = np.convolve(np.ones(len(values)), kernel, mode="same")
    return total / count


def compare(query: Fingerprint, ref: Fingerprint, key: str = "") -> Match:
    """Align ``query`` with ``ref`` at every stretch that matches; how well, how much, where."""
    q, r = query.items, ref.items
    n = len(q)
    offsets = _top_offsets(q, r) if n and len(r) else []
    best = np.full(n, -1.0)  # smoothed agreement of each query item at its best offset
    raw = np.zeros(n)
    owner = np.full(n, -1, dtype=np.int64)
    useful = informative(q)
    for index, offset in enumerate(offsets):
        start, stop = max(0, -offset), min(n, len(r) - offset)
        if stop - start < SMOOTH_ITEMS:
            continue
        agreement = 1.0 - _popcount(q[start:stop] ^ r[start + offset : stop + offset]) / 32.0
        smooth = _smooth(agreement, SMOOTH_ITEMS)
        window = slice(start, stop)
        better = (smooth > best[window]) & (smooth >= STRETCH_AGREEMENT) & useful[window]
        best[window] = np.where(better, smooth, best[window])
        raw[window] = np.where(better, agreement, raw[window])
        owner[window] = np.where(better, index, owner[window])
    assigned = owner >= 0
    count = int(assigned.sum())
    if count == 0:
        return Match(key, 0.0, 0.0, 0.0, False)
    similarity = float(raw[assigned].mean())
    main = offsets[int(np.bincount(owner[assigned]).argmax())]
    overlap = count * ITEM_SECONDS
    linked = similarity >= LINK_SIMILARITY and overlap >= min_overlap(query, ref)
    return Match(
        key, round(similarity, 4), round(overlap, 2), round(main * ITEM_SECONDS, 2), linked
    )


def aligned_share(query: Fingerprint, ref: Fingerprint, offset_seconds: float) -> float:
    """Share of ``query``'s items that agree with ``ref`` at this one offset
    (``query time + offset = ref time``): how much of the query one shift explains."""
    n, offset = len(query.items), round(offset_seconds / ITEM_SECONDS)
    start, stop = max(0, -offset), min(n, len(ref.items) - offset)
    if not n or stop - start < SMOOTH_ITEMS:
        return 0.0
    q, r = query.items[start:stop], ref.items[start + offset : stop + offset]
    smooth = _smooth(1.0 - _popcount(q ^ r) / 32.0, SMOOTH_ITEMS)
    return float(np.count_nonzero(smooth >= STRETCH_AGREEMENT) / n)


def _sample(keys: np.ndarray) -> np.ndarray:
    """The content-defined sampling rule: the same key is sampled in every fingerprint."""
    return ((keys * SAMPLE_MULTIPLIER) >> SAMPLE_SHIFT) == 0


class _Snapshot(NamedTuple):
    """The index as of one build: sampled keys sorted, with their owners and positions."""

    keys: np.ndarray  # uint32, sorted
    owners: np.ndarray  # int32: position in ``names``
    positions: np.ndarray  # int32: item index in the owner's fingerprint
    names: list[str]
    fingerprints: dict[str, Fingerprint]


class FingerprintIndex:
    """Many episodes' fingerprints in memory, with a sorted array of sampled keys to find
    the few worth a full ``compare``. Reads are thread-safe: a change only marks the
    snapshot stale, the next read rebuilds it under a lock, and a read works on one
    snapshot throughout."""

    def __init__(self, fingerprints: dict[str, Fingerprint] | None = None):
        self._fps: dict[str, Fingerprint] = dict(fingerprints or {})
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    def add(self, key: str, fp: Fingerprint) -> None:
        with self._lock:
            self._fps[key] = fp
            self._snapshot = None

    def remove(self, key: str) -> None:
        with self._lock:
            self._fps.pop(key, None)
            self._snapshot = None

    def __len__(self) -> int:
        return len(self._fps)

    def __contains__(self, key: object) -> bool:
        return key in self._fps

    def get(self, key: str) -> Fingerprint | None:
        return self._fps.get(key)

    def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is not None:
            return snapshot
        with self._lock:
            if self._snapshot is None:
                self._snapshot = _build(dict(self._fps))
            return self._snapshot

    def memory_bytes(self) -> int:
        """Bytes of the sorted sampled keys plus the items kept for ``compare``."""
        snap = self._current()
        items = sum(fp.items.nbytes for fp in snap.fingerprints.values())
        return snap.keys.nbytes + snap.owners.nbytes + snap.positions.nbytes + items

    def candidates(self, query: Fingerprint, limit: int = 5) -> list[tuple[str, int]]:
        """Episodes by votes of the query's sampled keys at their best offset, most first."""
        return _candidates(self._current(), query, limit)

    def best(self, query: Fingerprint, limit: int = 3, exclude: Iterable[str] = ()) -> list[Match]:
        """Full comparisons with the best-voted candidates, most similar first."""
        skip = set(exclude)
        snap = self._current()
        found = _candidates(snap, query, limit + len(skip))
        fps = snap.fingerprints
        matches = [compare(query, fps[k], k) for k, _ in found if k not in skip]
        return sorted(matches, key=lambda m: m.similarity, reverse=True)[:limit]

    def match(self, query: Fingerprint, exclude: Iterable[str] = ()) -> Match | None:
        """The most similar episode that passes the link thresholds, or None."""
        linked = [m for m in self.best(query, limit=5, exclude=exclude) if m.linked]
        return linked[0] if linked else None


def _build(fps: dict[str, Fingerprint]) -> _Snapshot:
    """Sample every fingerprint's voting keys and sort them all into one array."""
    names = list(fps)
    keys, owners, positions = [], [], []
    for owner, name in enumerate(names):
        k, p = _voting_keys(fps[name].items)
        sampled = _sample(k)
        keys.append(k[sampled].astype(np.uint32))
        positions.append(p[sampled].astype(np.int32))
        owners.append(np.full(int(sampled.sum()), owner, dtype=np.int32))
    if not names:
        return _Snapshot(np.zeros(0, np.uint32), *2 * (np.zeros(0, np.int32),), names, fps)
    all_keys = np.concatenate(keys)
    order = np.argsort(all_keys, kind="stable")
    return _Snapshot(
        all_keys[order], np.concatenate(owners)[order], np.concatenate(positions)[order], names, fps
    )


def _candidates(snap: _Snapshot, query: Fingerprint, limit: int) -> list[tuple[str, int]]:
    """Votes per (episode, offset bin) from exact key hits; each episode's best bin."""
    qk, qp = _voting_keys(query.items)
    sampled = _sample(qk)
    qk, qp = qk[sampled], qp[sampled]
    if not len(snap.keys) or not len(qk):
        return []
    query_index, hits = _hits(snap.keys, qk)
    if not len(hits):
        return []
    offsets = snap.positions[hits].astype(np.int64) - qp[query_index]
    offset_bins = np.floor_divide(offsets, OFFSET_BIN) + (1 << 30)
    pairs, votes = np.unique(
        snap.owners[hits].astype(np.int64) << 32 | offset_bins, return_counts=True
    )
    best = np.zeros(len(snap.names), np.int64)
    np.maximum.at(best, pairs >> 32, votes)
    top = np.argsort(-best, kind="stable")[:limit]
    return [(snap.names[i], int(best[i])) for i in top if best[i] > 0]
