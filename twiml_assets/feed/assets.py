"""The feed stage: feed_catalog (every episode of the feed) and episode_metadata per episode."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from resources.failures import STEP_RETRY, permanent, transient
from resources.schema import dump
from resources.storage import StorageResource
from twiml_assets.asset_io import GROUP_FEED, GROUP_INGEST
from twiml_assets.feed.catalog import CATALOG, find_episode, save_catalog
from twiml_assets.feed.partitions import EPISODES, episode_partitions
from twiml_assets.feed.resource import FeedResource
from twiml_assets.feed.source import FeedError, parse_feed
from twiml_assets.layout import EpisodeFiles


def _catalog_table(episodes: list, limit: int = 15) -> str:
    rows = ["| key | published | title |", "|---|---|---|"]
    for e in episodes[:limit]:
        title = e.title.replace("|", "\\|")
        rows.append(f"| {e.key} | {(e.published or '')[:10]} | {title} |")
    if len(episodes) > limit:
        rows.append(f"| … | | {len(episodes) - limit} more |")
    return "\n".join(rows)


@asset(group_name=GROUP_FEED, kinds={"rss"})
def feed_catalog(
    context: AssetExecutionContext, feed: FeedResource, storage: StorageResource
) -> MaterializeResult:
    """Every episode in the feed, as ``feed/catalog.json``; registers missing partitions.

    The sensor keeps this snapshot current on its own; materialise it by hand to see the
    feed (or to create the partitions for a backfill while the sensor is off).
    """
    try:
        started = time.perf_counter()
        response = feed.fetch()
        assert response.body is not None
        parse_started = time.perf_counter()
        parsed = parse_feed(response.body)
        parse_seconds = time.perf_counter() - parse_started
    except FeedError as exc:
        raise transient(str(exc)) from exc
    uri = save_catalog(storage, parsed, response)
    for s in parsed.skipped:
        context.log.warning(f"skipped feed entry #{s.position} {s.title!r}: {s.reason}")

    existing = set(context.instance.get_dynamic_partitions(EPISODES))
    new_keys = [e.key for e in parsed.ordered(newest_first=False) if e.key not in existing]
    if new_keys:
        context.instance.add_dynamic_partitions(EPISODES, new_keys)
        context.log.info(f"registered {len(new_keys)} new episode partitions")
    newest = parsed.ordered(newest_first=True)
    return MaterializeResult(
        metadata={
            "feed_url": MetadataValue.url(feed.url),
            "feed_title": parsed.title or "",
            "episodes": len(parsed.episodes),
            "skipped_entries": len(parsed.skipped),
            "skipped": MetadataValue.md(
                "\n".join(f"- #{s.position} {s.title!r}: {s.reason}" for s in parsed.skipped)
                or "_none_"
            ),
            "new_partitions": len(new_keys),
            "newest": newest[0].key if newest else "",
            "etag": response.etag or "",
            "bytes": len(response.body),
            "fetch_seconds": round(parse_started - started, 3),
            "parse_seconds": round(parse_seconds, 4),
            "parser": parsed.parser,
            "preview": MetadataValue.md(_catalog_table(newest)),
            f"path:{CATALOG}": MetadataValue.path(uri),
        }
    )


@asset(
    partitions_def=episode_partitions,
    retry_policy=STEP_RETRY,
    group_name=GROUP_INGEST,
    kinds={"rss"},
)
def episode_metadata(
    context: AssetExecutionContext, feed: FeedResource, storage: StorageResource
) -> MaterializeResult:
    """The episode's feed entry (audio URL, title, number, date…), found from the key alone.

    Re-materialising refreshes it from the feed, e.g. after the publisher moved the audio.
    """
    key = context.partition_key
    try:
        episode, source = find_episode(storage, feed, key)
    except LookupError as exc:
        raise permanent(str(exc)) from exc
    if source != "feed":
        context.log.warning(f"{key}: using the {source} copy of the episode metadata")
    uri = storage.write_json(EpisodeFiles(key).episode, dump(episode))
    return MaterializeResult(
        metadata={
            "title": episode.title,
            "number": episode.number or "",
            "published": episode.published or "",
            "audio_url": MetadataValue.url(episode.audio_url),
            "audio_type": episode.audio_type or "",
            "audio_length": episode.audio_length or 0,
            "feed_duration_s": episode.duration or 0.0,
            "link": MetadataValue.url(episode.link) if episode.link else "",
            "source": source,
            "description": MetadataValue.md(episode.description[:1000] or "_none_"),
            f"path:{EpisodeFiles(key).episode}": MetadataValue.path(uri),
        }
    )
