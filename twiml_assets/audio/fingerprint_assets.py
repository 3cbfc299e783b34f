"""audio_fingerprint: the Chromaprint fingerprint of each episode's audio, and its upload link.

Every episode and upload gets ``fingerprints/{key}.json``. A published episode whose
audio an upload already has (staff uploaded the master before it was published) is
linked to that upload here, in the run the feed sensor starts for it, before any model
runs; the model step then reuses the upload's transcript when it can
(``speech/reuse.py``).
"""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from resources.failures import STEP_RETRY, permanent_errors_fail_at_once
from resources.storage import StorageResource
from twiml_assets.asset_io import GROUP_INGEST, read_json_or_fail, undecodable_audio
from twiml_assets.audio.assets import raw_audio
from twiml_assets.audio.fingerprint import FingerprintDecodeError
from twiml_assets.audio.links import ensure_fingerprint, link_published_episode
from twiml_assets.feed.partitions import episode_partitions
from twiml_assets.layout import EpisodeFiles


@asset(
    partitions_def=episode_partitions,
    retry_policy=STEP_RETRY,
    deps=[raw_audio],
    group_name=GROUP_INGEST,
    kinds={"chromaprint"},
)
def audio_fingerprint(
    context: AssetExecutionContext, storage: StorageResource
) -> MaterializeResult:
    """``fingerprints/{key}.json`` (Chromaprint), and the link to the upload with this audio.

    Computed once per audio file (the record carries the audio's sha256); a re-run only
    looks for a link.
    """
    key = context.partition_key
    files = EpisodeFiles(key)
    audio = read_json_or_fail(storage, files.audio_sidecar, key, "raw_audio")
    started = time.perf_counter()
    with permanent_errors_fail_at_once():  # no libchromaprint: no retry
        try:
            fp, computed = ensure_fingerprint(storage, key, audio.get("sha256"), audio["path"])
        except FingerprintDecodeError as exc:
            raise undecodable_audio(f"cannot decode {key} ({audio['path']})") from exc
    seconds = time.perf_counter() - started
    if computed:
        context.log.info(f"{key}: fingerprinted {fp.duration:.0f} s of audio in {seconds:.1f} s")
    try:
        link = link_published_episode(storage, key, fp, audio.get("sha256"))
    except Exception as exc:  # noqa: BLE001 - a link is a bonus; the episode goes on without
        context.log.warning(f"{key}: could not look for an upload with this audio: {exc}")
        link = None
    metadata: dict[str, object] = {
        "duration_s": round(fp.duration, 2),
        "items": len(fp.items),
        "computed": computed,
        "fingerprint_seconds": round(seconds, 2),
        f"path:{files.fingerprint}": MetadataValue.path(storage.uri(files.fingerprint)),
    }
    if link is not None:
        context.log.info(
            f"{key}: same audio as upload {link.upload} (similarity {link.similarity:.2f}, "
            f"{link.episode_coverage:.0%} of the episode at one offset)"
        )
        metadata |= {
            "linked_upload": link.upload,
            "similarity": link.similarity,
            "episode_coverage": link.episode_coverage,
            "unaligned_seconds": round(link.unaligned_seconds, 2),
            "transcript_reusable": link.reusable,
        }
    return MaterializeResult(metadata=metadata)
