"""The audio stage: raw_audio, the episode's audio in storage (downloaded once, verified)."""

import tempfile
import time
from pathlib import Path

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from resources.failures import STEP_RETRY, permanent, transient
from resources.storage import StorageResource, clean_relpath
from twiml_assets.asset_io import GROUP_INGEST, load_episode
from twiml_assets.audio.download import DownloadError, audio_extension, audio_files, download_audio
from twiml_assets.feed.assets import episode_metadata
from twiml_assets.feed.partitions import episode_partitions
from twiml_assets.layout import EpisodeFiles


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
    side = EpisodeFiles(key).audio_sidecar
    if not (storage.exists(side) and storage.exists(rel)):
        return None
    record = storage.read_json(side)
    intact = not storage.is_local or storage.local_path(rel).stat().st_size == record.get("size")
    return record if intact and record.get("url") == url and record.get("path") == rel else None


@asset(
    partitions_def=episode_partitions,
    retry_policy=STEP_RETRY,
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
    rel = EpisodeFiles(key).audio(audio_extension(episode.audio_url, episode.audio_type))

    record = None if config.force_download else _reusable(storage, key, rel, episode.audio_url)
    reused = record is not None
    if reused:
        context.log.info(f"{key}: audio already downloaded ({record['size']} bytes); reusing it")
    else:
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
    staging = Path(tempfile.gettempdir()) / "twiml-transcribe-downloads"
    dest = (Path(storage.root).expanduser() if storage.is_local else staging) / clean_relpath(rel)
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
        raise (transient if exc.transient else permanent)(str(exc)) from exc
    if not storage.is_local:
        storage.put_file(rel, dest)
        dest.unlink(missing_ok=True)
    record = result.sidecar(key, rel)
    storage.write_json(EpisodeFiles(key).audio_sidecar, record)
    context.log.info(f"{key}: {result.size} bytes, sha256 {result.sha256[:12]}…")
    return record
