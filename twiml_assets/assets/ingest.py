"""Feed and audio: feed_catalog (all episodes), episode_metadata and raw_audio per episode."""

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from resources.storage import StorageResource, clean_relpath
from twiml_assets.assets.common import (
    GROUP_FEED,
    GROUP_INGEST,
    audio_files,
    audio_sidecar_path,
    load_episode,
)
from twiml_assets.catalog import CATALOG_PATH, episode_path, find_episode, save_catalog
from twiml_assets.download import DownloadError, audio_extension, download_audio
from twiml_assets.feed import FeedError, FeedResource, parse_feed
from twiml_assets.partitions import EPISODES, episode_partitions


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
        raise Failure(description=str(exc), allow_retries=True) from exc
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
            f"path:{CATALOG_PATH}": MetadataValue.path(uri),
        }
    )


@asset(partitions_def=episode_partitions, group_name=GROUP_INGEST, kinds={"rss"})
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
        raise Failure(description=str(exc), allow_retries=False) from exc
    if source != "feed":
        context.log.warning(f"{key}: using the {source} copy of the episode metadata")
    uri = storage.write_json(episode_path(key), episode.to_dict())
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
            f"path:{episode_path(key)}": MetadataValue.path(uri),
        }
    )


class RawAudioConfig(Config):
    """Download settings; the URL itself always comes from episode_metadata."""

    force_download: bool = Field(
        default=False, description="Download again even when the stored audio matches."
    )
    retries: int = Field(default=4, description="Retries on network errors, 429 and 5xx.")
    timeout_seconds: float = Field(default=60.0, description="Connect/read timeout per request.")
    backoff_seconds: float = Field(default=2.0, description="First retry delay; doubles.")


def _reusable(storage: StorageResource, key: str, rel: str, url: str) -> dict | None:
    """The sidecar of an earlier complete download of the same URL, if the file is intact."""
    side = audio_sidecar_path(key)
    if not (storage.exists(side) and storage.exists(rel)):
        return None
    record = storage.read_json(side)
    if record.get("url") != url or record.get("path") != rel:
        return None
    if storage.is_local and storage.local_path(rel).stat().st_size != record.get("size"):
        return None
    return record


@asset(
    partitions_def=episode_partitions,
    deps=[episode_metadata],
    group_name=GROUP_INGEST,
    kinds={"audio"},
)
def raw_audio(
    context: AssetExecutionContext, config: RawAudioConfig, storage: StorageResource
) -> MaterializeResult:
    """The episode's audio file, ``audio/{key}.<ext>``, with its size and sha256.

    Streams to a hidden ``.part`` file, resumes after interruptions and renames at the
    end; an unchanged earlier download is reused, so re-runs cost nothing.
    """
    key = context.partition_key
    episode = load_episode(storage, key)
    rel = f"audio/{key}{audio_extension(episode.audio_url, episode.audio_type)}"

    record = None if config.force_download else _reusable(storage, key, rel, episode.audio_url)
    if record is not None:
        context.log.info(f"{key}: audio already downloaded ({record['size']} bytes); reusing it")
        reused = True
    else:
        reused = False
        record = _download(context, storage, key, rel, episode.audio_url, config)
        for stale in audio_files(storage, key):
            if stale != rel:
                storage.delete(stale)
        if episode.audio_length and abs(episode.audio_length - record["size"]) > 1024:
            context.log.warning(
                f"{key}: the feed says {episode.audio_length} bytes, the server sent "
                f"{record['size']} (feeds are often approximate; the audio is checked when decoded)"
            )
    return MaterializeResult(
        metadata={
            "size_bytes": record["size"],
            "size_mb": round(record["size"] / 1e6, 2),
            "sha256": record["sha256"],
            "url": MetadataValue.url(record["url"]),
            "content_type": record.get("content_type") or "",
            "reused": reused,
            "attempts": record.get("attempts", 0),
            "resumed": bool(record.get("resumed")),
            "download_seconds": record.get("seconds", 0.0),
            f"path:{rel}": MetadataValue.path(storage.uri(rel)),
        }
    )


def _download(
    context: AssetExecutionContext,
    storage: StorageResource,
    key: str,
    rel: str,
    url: str,
    config: RawAudioConfig,
) -> dict:
    """Download into the storage directory (local root) or a staging dir (S3), then record."""
    if storage.is_local:
        dest = Path(storage.root).expanduser() / clean_relpath(rel)
    else:
        dest = Path(tempfile.gettempdir()) / "twiml-transcribe-downloads" / clean_relpath(rel)
    last_report = [0.0]

    def progress(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last_report[0] >= 10:
            last_report[0] = now
            of = f" of {total / 1e6:.1f} MB" if total else ""
            context.log.info(f"{key}: downloaded {done / 1e6:.1f} MB{of}")

    try:
        result = download_audio(
            url,
            dest,
            label=key,
            retries=config.retries,
            timeout=(min(config.timeout_seconds, 30.0), config.timeout_seconds),
            backoff=config.backoff_seconds,
            progress=progress,
        )
    except DownloadError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    if not storage.is_local:
        storage.put_file(rel, dest)
        dest.unlink(missing_ok=True)
    record = {
        **result.to_dict(),
        "path": rel,
        "key": key,
        "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_json(audio_sidecar_path(key), record)
    context.log.info(f"{key}: {result.size} bytes, sha256 {result.sha256[:12]}…")
    return record
