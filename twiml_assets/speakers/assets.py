"""Speaker naming as its own step: ``speaker_names``.

It runs after ``speaker_transcript`` and before the RAG files and subtitles, which
render with its names. The voiceprints (``speakers/{key}.embeddings.json``) are computed
once from the decoded audio and the diarisation turns, by the model step's worker where the
step runs remotely (the control plane may have no engine) and here otherwise; later runs
(the registry grew, a host became recognisable, a name was confirmed) reuse them while the
diarisation is the one they were made from, so re-naming the back catalogue (job
``speaker_naming_job``) never decodes or transcribes again.
"""

from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from resources.engine_check import EngineMissingError
from resources.failures import STEP_RETRY, permanent
from resources.storage import StorageResource
from twiml_assets.asset_io import GROUP_OUTPUTS, load_episode
from twiml_assets.feed.partitions import episode_partitions
from twiml_assets.layout import EpisodeFiles
from twiml_assets.speakers import service


class SpeakerNamesConfig(Config, service.NamingSettings):
    recompute_embeddings: bool = Field(
        default=False, description="Decode the audio again and recompute the voiceprints."
    )


@asset(
    partitions_def=episode_partitions,
    retry_policy=STEP_RETRY,
    deps=[AssetKey("speaker_transcript")],
    group_name=GROUP_OUTPUTS,
    kinds={"json"},
)
def speaker_names(
    context: AssetExecutionContext, config: SpeakerNamesConfig, storage: StorageResource
) -> MaterializeResult:
    """Label → name, confidence and evidence: ``speakers/{key}.json``."""
    key = context.partition_key
    episode = load_episode(storage, key)
    computed = False
    if config.recompute_embeddings or not service.voiceprints_current(storage, key):
        try:
            service.compute_episode_voiceprints(storage, key)
        except EngineMissingError as exc:  # a slim control plane: set-up, not the episode
            raise permanent(str(exc)) from exc
        computed = True
    # "" rather than None, so that name_episode does not read the feed entry again
    text = episode.title or "", episode.description or "", episode.author
    doc = service.name_episode(storage, key, config.naming(), *text)
    table = "\n".join(
        f"| {label} | {s['name'] or '—'} | {s['confidence']:.2f} | {s['evidence']} |"
        for label, s in doc["speakers"].items()
    )
    return MaterializeResult(
        metadata={
            "named": len(doc["names"]),
            "speakers": len(doc["speakers"]),
            "names": MetadataValue.json(doc["names"]),
            "guests_in_metadata": ", ".join(doc["guests_in_metadata"]) or "none",
            "embeddings_computed": computed,
            "table": MetadataValue.md(
                "| label | name | confidence | evidence |\n|---|---|---|---|\n" + table
            ),
            "path:names": MetadataValue.path(storage.uri(EpisodeFiles(key).speaker_names)),
        }
    )
