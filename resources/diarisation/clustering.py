"""Step 3 of the offline diariser: which segments share a voice, and how many voices.

Agglomerative clustering (average linkage, cosine) on the whitened embeddings of
segments of at least ``CLUSTER_MIN_SEGMENT`` s, cut at ``clustering_threshold`` to
over-split; clusters with less than ``min_cluster_seconds`` (and ``MIN_CLUSTER_SHARE``
of the speech) are dissolved; then clusters whose *raw* GE2E centroids (an absolute
scale, unlike the per-recording whitened one) are closer than ``merge_threshold`` are
merged. The number left is the speaker count, clamped to ``min_speakers``/
``max_speakers`` (``num_speakers`` skips the estimate). Every segment then goes to its
nearest raw centroid.
"""

from __future__ import annotations

import numpy as np

from resources.diarisation.embedding import Segments, unit_rows
from resources.diarisation.settings import DiarisationSettings

CLUSTER_MIN_SEGMENT = 1.0  # seconds; shorter segments embed too noisily to shape clusters
MAX_INITIAL_CLUSTERS = 40  # bound on the deliberately over-split first clustering
MIN_CLUSTER_SHARE = 0.03  # a speaker needs this share of the speech too (long recordings)
REFINE_PASSES = 2  # nearest-centroid passes after clustering


def cluster_segments(segments: Segments, s: DiarisationSettings) -> tuple[np.ndarray, int]:
    """A speaker index per segment, and the speaker count estimated before assignment."""
    from scipy.cluster.hierarchy import linkage

    n = len(segments.bounds)
    fewest, most = s.speaker_bounds()
    core = np.flatnonzero(segments.durations >= CLUSTER_MIN_SEGMENT)
    if len(core) < 2:
        core = np.arange(n)
    if len(core) < 2:
        return np.zeros(n, dtype=int), 1

    tree = linkage(segments.whitened[core], method="average", metric="cosine")
    if s.num_speakers is not None:
        core_labels = cut_tree(tree, min(s.num_speakers, len(core)))
    else:
        core_labels = over_cluster_then_merge(tree, segments, core, s)
        k = len(np.unique(core_labels[core_labels >= 0]))
        target = max(fewest, min(k, most if most is not None else k))
        if target != k:
            core_labels = cut_tree(tree, min(target, len(core)))
    labels = np.full(n, -1)
    labels[core] = core_labels
    estimated = len(np.unique(core_labels[core_labels >= 0]))
    return assign_to_centroids(segments, labels, fixed=s.num_speakers is not None), estimated


def cut_tree(tree: np.ndarray, k: int) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster

    return fcluster(tree, k, criterion="maxclust") - 1


def over_cluster_then_merge(
    tree: np.ndarray, segments: Segments, core: np.ndarray, s: DiarisationSettings
) -> np.ndarray:
    """Estimate the speakers: over-split, fold tiny clusters away, merge by GE2E centroid.

    Returns a cluster index per core segment (-1: folded away, assigned later).
    """
    from scipy.cluster.hierarchy import fcluster

    labels = fcluster(tree, s.clustering_threshold, criterion="distance") - 1
    if labels.max() + 1 > MAX_INITIAL_CLUSTERS:
        labels = fcluster(tree, MAX_INITIAL_CLUSTERS, criterion="maxclust") - 1
    seconds = np.bincount(labels, weights=segments.durations[core])
    keep = seconds >= max(s.min_cluster_seconds, MIN_CLUSTER_SHARE * seconds.sum())
    if not keep.any():
        keep[np.argmax(seconds)] = True
    labels = np.where(keep[labels], labels, -1)

    clusters = {c: [int(i) for i in np.flatnonzero(labels == c)] for c in np.flatnonzero(keep)}
    fewest, most = s.speaker_bounds()
    while len(clusters) > max(fewest, 1):
        names = list(clusters)
        centroids = unit_rows(
            np.array([segments.raw[core[clusters[c]]].sum(axis=0) for c in names])
        )
        distance = 1.0 - centroids @ centroids.T
        np.fill_diagonal(distance, np.inf)
        a, b = np.unravel_index(np.argmin(distance), distance.shape)
        too_many = most is not None and len(clusters) > most
        if distance[a, b] >= s.merge_threshold and not too_many:
            break
        clusters[names[a]].extend(clusters.pop(names[b]))
    out = np.full(len(core), -1)
    for new, members in enumerate(clusters.values()):
        out[members] = new
    return out


def assign_to_centroids(segments: Segments, labels: np.ndarray, fixed: bool) -> np.ndarray:
    """Give every segment its nearest speaker centroid, then refine the centroids.

    This runs on the raw GE2E vectors: the whitened space finds the groups, but centroids
    pooled over many segments are accurate on the encoder's own scale, and a single short
    segment is placed more reliably there than in the whitened space. With an automatic
    count a speaker may vanish in a pass; with a fixed count the previous assignment is
    kept when that would happen.
    """
    space = unit_rows(segments.raw)
    for _ in range(REFINE_PASSES):
        k = labels.max() + 1
        centroids = unit_rows(np.array([segments.raw[labels == c].sum(axis=0) for c in range(k)]))
        new = np.argmax(space @ centroids.T, axis=1)
        if fixed and len(np.unique(new)) < k:
            return np.where(labels >= 0, labels, new)
        labels = np.unique(new, return_inverse=True)[1]  # renumber if a speaker vanished
    return labels
