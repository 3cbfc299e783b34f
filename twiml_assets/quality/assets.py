"""Evaluation against references: evaluation (per episode), evaluation_summary (across
episodes) and model_comparison (configurations side by side)."""

import base64
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from evaluation.loaders import load_references
from evaluation.lookup import resolve_references
from evaluation.reports import (
    METRICS,
    chart_png,
    evaluate_episode,
    markdown_table,
    metric_value,
    pooled_scores,
    summary_table,
)
from resources.compute import ComputeResource
from resources.failures import STEP_RETRY
from resources.quality import QualityResource
from resources.schema import SpeakerTurn, load
from resources.storage import StorageResource
from twiml_assets.asset_io import (
    as_metadata,
    feed_transcript_url,
    files_metadata,
    read_json_or_fail,
    wire_table,
)
from twiml_assets.audio.assets import raw_audio
from twiml_assets.feed.partitions import episode_partitions
from twiml_assets.layout import (
    EVALUATION_DIR,
    EVALUATION_SUMMARY_CSV,
    EVALUATION_SUMMARY_MD,
    EVALUATION_SUMMARY_PNG,
    EpisodeFiles,
)
from twiml_assets.outputs.assets import speaker_transcript
from twiml_assets.outputs.files import transcript_from_record
from twiml_assets.quality.compare import ModelComparisonConfig
from twiml_assets.speech.assets import GPU_POOL

if TYPE_CHECKING:
    import pandas as pd

GROUP_EVALUATION = "evaluation"
#: Largest chart embedded in metadata as a data URI (larger ones are linked by path only).
MAX_INLINE_PNG_BYTES = 150_000


class EvaluationConfig(Config):
    """Per-run settings; where references live is the ``quality`` resource's business."""

    fetch_feed_transcript: bool = Field(
        default=True,
        description="Download the feed's <podcast:transcript> as a reference when an episode "
        "has no other (once; kept in references/ in storage).",
    )
    transcript_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Read timeout for that download."
    )


def _metric_metadata(result: dict[str, Any]) -> dict[str, Any]:
    """Rates and counts as flat numbers, so the UI can plot each over materialisations."""
    values = {metric: metric_value(result, metric) for metric in METRICS}
    out: dict[str, Any] = {m: round(v, 4) for m, v in values.items() if v is not None}
    if wer := result.get("wer"):
        names = ("reference_words", "substitutions", "deletions", "insertions")
        out.update({k: wer[k] for k in names})
    if der := result.get("der"):
        out["reference_speech_s"] = round(der["total"], 2)
        out.update({k: round(der[k], 4) for k in ("missed", "false_alarm", "confusion")})
    if wder := result.get("wder"):
        out.update({k: wder[k] for k in ("aligned_words", "wrong_speaker_words")})
    return out


def _references_md(result: dict[str, Any]) -> str:
    lines = [
        f"- `{r['name']}` ({r['format']}: "
        + ", ".join(k[4:] for k in ("has_text", "has_speakers", "has_timestamps") if r[k])
        + ")"
        for r in result["references"]
    ]
    lines += [f"- unreadable: {e}" for e in result.get("unreadable_references", [])]
    return "\n".join(lines) or "_no reference found_"


@asset(
    partitions_def=episode_partitions,
    retry_policy=STEP_RETRY,
    deps=[speaker_transcript],
    group_name=GROUP_EVALUATION,
    kinds={"json"},
)
def evaluation(
    context: AssetExecutionContext,
    config: EvaluationConfig,
    storage: StorageResource,
    quality: QualityResource,
) -> MaterializeResult:
    """WER, DER, cpWER and WDER against the episode's references: ``evaluation/{key}.json``.

    Each metric needs a reference that allows it (text: WER; timed turns: DER; text by
    speaker: cpWER, WDER). Without one it still materialises (``has_reference=False``), so
    the pipeline never fails for lack of a reference.
    """
    key = context.partition_key
    record = read_json_or_fail(storage, EpisodeFiles(key).record, key, "speaker_transcript")
    transcript = transcript_from_record(record)
    diarisation = record.get("diarisation") or {}
    turns = load(list[SpeakerTurn], diarisation.get("turns") or []) or None

    url = feed_transcript_url(storage, key) if config.fetch_feed_transcript else None
    timeout = config.transcript_timeout_seconds
    found, fetched = resolve_references(
        storage,
        key,
        quality.references_root,
        url,
        timeout=(min(10.0, timeout), timeout),
        warn=context.log.warning,
    )
    loaded, errors = load_references(found)
    for error in errors:
        context.log.warning(f"{key}: unreadable reference {error}")
    models = {
        "asr_model": (record.get("asr") or {}).get("model"),
        "diarisation_model": diarisation.get("model"),
    }
    result = evaluate_episode(key, transcript, loaded, turns, quality.der_collar, models)
    result["unreadable_references"] = errors
    result["feed_transcript"] = fetched.to_dict() if fetched else None
    uri = storage.write_json(EpisodeFiles(key).evaluation, result)
    return MaterializeResult(
        metadata={
            "has_reference": result["has_reference"],
            **_metric_metadata(result),
            "hypothesis_words": result["hypothesis"]["words"],
            "hypothesis_speakers": result["hypothesis"]["speakers"],
            "references": MetadataValue.md(_references_md(result)),
            "feed_transcript": fetched.status if fetched else "not needed",
            f"path:{EpisodeFiles(key).evaluation}": MetadataValue.path(uri),
        }
    )


def stored_evaluations(storage: StorageResource) -> list[dict[str, Any]]:
    """Every ``evaluation/{key}.json`` in storage (the summary's own files excluded)."""
    names = {rel: rel[len(EVALUATION_DIR) + 1 :] for rel in storage.list(EVALUATION_DIR)}
    return [
        storage.read_json(rel)
        for rel, name in names.items()
        if "/" not in name and name.endswith(".json") and not name.startswith("summary.")
    ]


def table_metadata(table: "pd.DataFrame") -> MetadataValue:
    """A DataFrame as a Dagster table (sortable in the UI); NaN becomes empty."""
    return as_metadata({"table": wire_table(table)})["table"]


@asset(deps=[evaluation], group_name=GROUP_EVALUATION, kinds={"pandas", "png"})
def evaluation_summary(
    context: AssetExecutionContext, storage: StorageResource
) -> MaterializeResult:
    """All stored ``evaluation/*.json`` in one table, pooled corpus rates and a WER/DER chart.

    Materialise it after a backfill of ``evaluation``. Pooled rates sum errors over
    reference words or seconds (long episodes weigh more).
    """
    records = stored_evaluations(storage)
    table = summary_table(records)
    pooled = pooled_scores(records)
    files = {
        "csv": storage.write_text(EVALUATION_SUMMARY_CSV, table.to_csv(index=False)),
        "markdown": storage.write_text(
            EVALUATION_SUMMARY_MD, "# Evaluation summary\n\n" + markdown_table(table) + "\n"
        ),
    }
    metadata: dict[str, Any] = {
        "episodes": pooled["episodes"],
        "episodes_with_reference": pooled["episodes_with_reference"],
        **{f"pooled_{m}": round(pooled[m], 4) for m in METRICS if pooled[m] is not None},
        "reference_words": pooled["reference_words"],
        "reference_speech_s": pooled["reference_speech_s"],
        "table": table_metadata(table),
        "table_md": MetadataValue.md(markdown_table(table) if len(table) else "_no evaluations_"),
    }
    if pooled["episodes_with_reference"]:
        png = chart_png(table)
        files["chart"] = storage.write_bytes(EVALUATION_SUMMARY_PNG, png)
        if len(png) <= MAX_INLINE_PNG_BYTES:
            data = base64.b64encode(png).decode("ascii")
            metadata["chart"] = MetadataValue.md(f"![WER and DER](data:image/png;base64,{data})")
    else:
        context.log.info("no episode has a reference yet: no chart")
    return MaterializeResult(metadata={**metadata, **files_metadata(files)})


@asset(
    partitions_def=episode_partitions,
    deps=[raw_audio],
    group_name=GROUP_EVALUATION,
    kinds={"pandas"},
    pool=GPU_POOL,
)
def model_comparison(
    context: AssetExecutionContext,
    config: ModelComparisonConfig,
    storage: StorageResource,
    quality: QualityResource,
    compute: ComputeResource,
) -> Iterator[MaterializeResult]:
    """Engine configurations side by side on this episode: ``comparisons/{key}.md`` / ``.csv``.

    Each configuration runs in its own worker process (its own wall time and peak memory),
    here or, as the ``compute`` resource says, on a GPU worker through Dagster Pipes.
    Not part of the per-episode pipeline: run it from the UI or model_comparison_job.
    """
    from twiml_assets.quality import worker
    from twiml_assets.quality.compare import compare_episode

    key = context.partition_key
    if not compute.runs_in_process:
        params = worker.ComparisonParams.build(key, config, storage, quality)
        context.log.info(f"{key}: model comparison on the {compute.backend} backend")
        yield from compute.run_worker(
            context, worker.MODULE, params.model_dump(mode="json"), worker.MODAL_ENTRYPOINT
        )
        return
    output = compare_episode(key, config, storage, quality, context.log.info, context.log.warning)
    yield MaterializeResult(metadata=as_metadata(output.metadata))
