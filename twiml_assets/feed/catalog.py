"""The stored feed snapshot (``feed/catalog.json``) and episode lookup by key.

A run gets nothing but a partition key, so everything else must be found from it:
the episode's entry comes from the feed (fetched conditionally, so unchanged feeds
cost one 304), else from the last stored snapshot, else from the episode's own
``episodes/{key}.json`` of an earlier run (an episode removed from the feed can
still be re-processed).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from resources.schema import dump, load
from resources.storage import StorageError, StorageResource
from twiml_assets.feed.resource import FeedResource, FeedResponse
from twiml_assets.feed.source import EpisodeInfo, FeedError, ParsedFeed, parse_feed
from twiml_assets.layout import CATALOG, EpisodeFiles

log = logging.getLogger(__name__)


def save_catalog(storage: StorageResource, parsed: ParsedFeed, response: FeedResponse) -> str:
    """Write the snapshot with the HTTP validators that produced it (atomic)."""
    data: dict[str, Any] = {
        "url": response.url,
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "etag": response.etag,
        "last_modified": response.last_modified,
        "sha256": response.digest,
        **dump(parsed),
    }
    return storage.write_json(CATALOG, data)


def load_catalog(storage: StorageResource) -> tuple[ParsedFeed, dict[str, Any]] | None:
    """The stored snapshot and its header fields; None when missing or unreadable."""
    try:
        if not storage.exists(CATALOG):
            return None
        data = storage.read_json(CATALOG)
        return load(ParsedFeed, data), data
    except (StorageError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", CATALOG, exc)
        return None


def refresh_catalog(
    storage: StorageResource, feed: FeedResource, known: dict[str, Any] | None = None
) -> tuple[ParsedFeed, FeedResponse, bool]:
    """Fetch the feed conditionally; returns ``(parsed feed, response, changed)``.

    ``known`` holds the validators and sha256 of the last fetch of this URL (default: the
    stored snapshot's). A 304, or the same bytes again, reuses the snapshot; anything else
    is parsed and saved. Raises FeedError when the feed cannot be fetched or parsed.
    """
    stored = load_catalog(storage)
    if known is None:
        known = stored[1] if stored is not None and stored[1].get("url") == feed.url else {}
    # Validators only with a snapshot to fall back on: one request per tick, within its budget.
    validators = known if stored is not None else {}
    response = feed.fetch(
        etag=validators.get("etag"), last_modified=validators.get("last_modified")
    )
    if response.not_modified:
        if stored is None:
            raise FeedError(f"the feed {feed.url} answered 304 to an unconditional request")
        return stored[0], response, False
    assert response.body is not None
    if stored is not None and response.digest == known.get("sha256") == stored[1].get("sha256"):
        return stored[0], response, False  # a server without validators, the same bytes
    parsed = parse_feed(response.body)
    save_catalog(storage, parsed, response)
    return parsed, response, True


def find_episode(storage: StorageResource, feed: FeedResource, key: str) -> tuple[EpisodeInfo, str]:
    """The episode for ``key`` and where it was found (``feed``, ``catalog``, ``stored``).

    Raises LookupError with what to do when the key is nowhere.
    """
    rel = EpisodeFiles(key).episode
    # Uploads are never in a feed: no network round-trip (or retries offline).
    upload = key.startswith("up-") and storage.exists(rel)
    where = f"the feed {feed.url}"
    try:
        episode = None if upload else refresh_catalog(storage, feed)[0].by_key().get(key)
        if episode is not None:
            return episode, "feed"
    except FeedError as exc:
        where = f"the stored feed snapshot (the feed itself failed: {exc})"
        log.warning("%s: feed unavailable (%s); trying the stored snapshot", key, exc)
        stored = load_catalog(storage)
        if stored is not None and key in stored[0].by_key():
            return stored[0].by_key()[key], "catalog"
    if upload or storage.exists(rel):
        return load(EpisodeInfo, storage.read_json(rel)), "stored"
    raise LookupError(
        f"episode {key} is not in {where}, and no earlier run stored it. If the episode "
        "was removed from the feed, delete the partition; if the feed URL changed, set "
        "TWIML_FEED_URL (or the feed resource's url) and materialise feed_catalog"
    )
