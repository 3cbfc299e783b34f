"""The quality checks: integrity gates before the RAG files, and limits on the evaluation.

The integrity checks are *blocking*: if one fails, rag_outputs and subtitles do not run
for that episode, so the RAG pipeline never ingests an empty, speakerless or garbled
transcript. The evaluation checks judge the scores the ``evaluation`` asset stored (WER,
DER, cpWER, WDER against the episode's references): above a metric's soft limit they warn,
above its hard limit they fail with ERROR. They never block: a transcript worse than
expected is still the best one there is, and the number is what a person needs.

Every check is partitioned by episode, like the asset it checks: each episode keeps its own
check status (the UI does not show whatever the last episode got), and one check can be
re-run alone for one episode (both multi-checks can subset).

The measurements are plain functions over the stored files (no Dagster), so tests and
notebooks can call them directly.
"""

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    PreviewWarning,
    multi_asset_check,
)

from evaluation.reports import METRICS, metric_value
from resources.intervals import merge_intervals, overlap, total
from resources.quality import QualityResource, judge
from resources.storage import StorageResource
from twiml_assets.asset_io import read_json_or_fail
from twiml_assets.feed.partitions import episode_partitions
from twiml_assets.layout import EpisodeFiles

# By key, not by import: the checks must not import the asset modules.
SPEAKER_TRANSCRIPT = AssetKey("speaker_transcript")
EVALUATION = AssetKey("evaluation")


# -- pure measurements ------------------------------------------------------------------------
@dataclass(slots=True)
class Outcome:
    """One check's verdict, before it becomes an AssetCheckResult."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _timestamp_problems(utterances: list[dict[str, Any]], limit: float) -> list[str]:
    """Turns or words that go back in time or lie outside ``[0, limit]`` (the first few)."""
    problems: list[str] = []
    previous_start = -1.0
    for u in utterances:
        if float(u["start"]) + 1e-3 < previous_start:
            problems.append(f"turn at {u['start']} s starts before the previous turn")
        previous_start = float(u["start"])
        word_start = -1.0
        for w in u.get("words", []):
            s, e = float(w["start"]), float(w["end"])
            if s < 0 or e < s - 1e-3 or e > limit:
                problems.append(f"word {w.get('word')!r} at {s:.2f}-{e:.2f} s is invalid")
            if s + 1e-3 < word_start:
                problems.append(f"word {w.get('word')!r} at {s:.2f} s goes back in time")
            word_start = s
        if len(problems) >= 5:
            break
    return problems


def integrity_outcomes(record: dict[str, Any], quality: QualityResource) -> list[Outcome]:
    """The four integrity checks over a full record (``transcripts/{key}.json``)."""
    key = record.get("key", "?")
    duration = float(record.get("duration") or 0.0)
    utterances = record.get("utterances") or []
    speakers = record.get("speakers") or []
    words = [w for u in utterances for w in u.get("words", [])]
    n_words = sum(1 for w in words if str(w.get("word", "")).strip())
    turns = (record.get("diarisation") or {}).get("turns") or []
    speech = merge_intervals((t["start"], t["end"]) for t in turns)
    speech_seconds = total(speech)
    silent = speech_seconds < quality.min_speech_seconds
    empty = n_words == 0 and not silent
    problems = _timestamp_problems(utterances, duration + quality.timestamp_tolerance)
    covered = merge_intervals(((w["start"], w["end"]) for w in words), gap=quality.word_gap_seconds)
    coverage = 1.0 if silent else overlap(speech, covered) / speech_seconds
    covers = coverage >= quality.min_speech_coverage
    return [
        Outcome(
            "transcript_not_empty",
            not empty,
            f"{key}: {speech_seconds:.1f} s of speech detected but no words recognised; check "
            "the audio (music only? another language?) and the ASR model/language settings"
            if empty
            else f"{n_words} words"
            if n_words
            else "no speech detected, so no words expected",
            {"speech_seconds": round(speech_seconds, 2), "words": n_words},
        ),
        Outcome(
            "has_speakers",
            len(speakers) >= 1,
            f"{len(speakers)} speaker(s): {', '.join(speakers)}"
            if speakers
            else f"{key}: no speaker found; the audio is silent or not speech, so there is nothing "
            "for the RAG pipeline. Check the episode's audio",
            {"speakers": len(speakers)},
        ),
        Outcome(
            "timestamps_valid",
            not problems,
            f"{key}: {'; '.join(problems[:5])} (re-run the transcript; report if it persists)"
            if problems
            else "timestamps increase and lie inside the audio",
            {"duration_s": round(duration, 2), "problems": len(problems)},
        ),
        Outcome(
            "speech_covered_by_words",
            covers,
            f"words cover {coverage:.0%} of {speech_seconds:.1f} s of detected speech "
            f"(minimum {quality.min_speech_coverage:.0%})"
            + (
                ""
                if covers
                else f"; {key}: the ASR skipped speech (VAD too aggressive? hallucination loop?) "
                "or diarisation marked noise as speech"
            ),
            {
                "coverage": round(coverage, 4),
                "speech_seconds": round(speech_seconds, 2),
                "covered_seconds": round(overlap(speech, covered), 2),
            },
        ),
    ]


# -- Dagster checks ---------------------------------------------------------------------------
def episode_check(name: str, asset: AssetKey, **kwargs: Any) -> AssetCheckSpec:
    """A check spec partitioned by episode (the partitions of the asset it checks), so each
    episode's result is recorded, shown and re-run on its own.

    A partitions_def on an AssetCheckSpec is a preview feature in Dagster 1.13: its
    PreviewWarning is silenced here, for this one construction, and nowhere else.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Specifying a partitions_def on an AssetCheckSpec",
            category=PreviewWarning,
        )
        return AssetCheckSpec(name, asset=asset, partitions_def=episode_partitions, **kwargs)


def _selected(context: AssetCheckExecutionContext, asset: AssetKey, name: str) -> bool:
    """Whether this run asked for check ``name``: all of them in episode_pipeline, one when
    a single check is re-run for an episode."""
    return AssetCheckKey(asset, name) in context.selected_asset_check_keys


INTEGRITY = {
    "transcript_not_empty": "Words exist whenever speech was detected.",
    "has_speakers": "At least one speaker was found.",
    "timestamps_valid": "Turn and word times never go back and lie inside the audio.",
    "speech_covered_by_words": "Recognised words cover at least 90 % of the detected speech.",
}


@multi_asset_check(
    specs=[
        episode_check(name, SPEAKER_TRANSCRIPT, blocking=True, description=text)
        for name, text in INTEGRITY.items()
    ],
    name="transcript_integrity",
    can_subset=True,
)
def transcript_integrity(
    context: AssetCheckExecutionContext, storage: StorageResource, quality: QualityResource
) -> Iterator[AssetCheckResult]:
    """Blocking gates before rag_outputs/subtitles (severity ERROR)."""
    key = context.partition_key
    record = storage.read_json(EpisodeFiles(key).record)
    for outcome in integrity_outcomes(record, quality):
        if not _selected(context, SPEAKER_TRANSCRIPT, outcome.name):
            continue
        yield AssetCheckResult(
            asset_key=SPEAKER_TRANSCRIPT,
            check_name=outcome.name,
            passed=outcome.passed,
            severity=AssetCheckSeverity.ERROR,
            description=outcome.description,
            metadata={"episode": key, **outcome.metadata},
        )


CHECK_NAMES = {metric: f"{metric}_within_limits" for metric in METRICS}
_CHECK_TEXT = {
    "wer": "Word error rate against the reference text",
    "der": "Diarisation error rate against reference speaker turns",
    "cpwer": "Speaker-attributed WER (concatenated minimum-permutation)",
    "wder": "Share of correctly recognised words given to the wrong speaker",
}
_NEEDS = {
    "wer": "a reference with text",
    "der": "a reference with timed speaker turns",
    "cpwer": "a reference with text by speaker",
    "wder": "a reference with text by speaker",
}


@multi_asset_check(
    specs=[
        episode_check(
            CHECK_NAMES[m],
            EVALUATION,
            description=f"{_CHECK_TEXT[m]}: WARN above {m}_warn, ERROR above {m}_error "
            "(quality resource); passes when there is no reference.",
        )
        for m in METRICS
    ],
    name="evaluation_limits",
    can_subset=True,
)
def evaluation_limits(
    context: AssetCheckExecutionContext, storage: StorageResource, quality: QualityResource
) -> Iterator[AssetCheckResult]:
    """Each metric the evaluation stored for the episode against its WARN and ERROR limits.

    The stored record is judged, not recomputed, so limits can be changed and the checks
    re-run alone.
    """
    key = context.partition_key
    result = read_json_or_fail(storage, EpisodeFiles(key).evaluation, key, "evaluation")
    for metric in METRICS:
        if not _selected(context, EVALUATION, CHECK_NAMES[metric]):
            continue
        warn, error = quality.limits(metric)
        value = metric_value(result, metric)
        limits = {"episode": key, "warn_above": warn, "error_above": error}
        if value is None:
            yield AssetCheckResult(
                check_name=CHECK_NAMES[metric],
                passed=True,
                severity=AssetCheckSeverity.WARN,
                description=f"{key}: no {metric.upper()}: needs {_NEEDS[metric]}",
                metadata={"has_reference": result["has_reference"], **limits},
            )
            continue
        passed, severity = judge(value, warn, error)
        verdict = "within limits" if passed else f"above the {severity.value} limit"
        entry = result[metric]
        yield AssetCheckResult(
            check_name=CHECK_NAMES[metric],
            passed=passed,
            severity=severity,
            description=f"{key}: {metric.upper()} {value:.1%} against {entry['reference']} "
            f"({verdict}; warn above {warn:.0%}, error above {error:.0%})",
            metadata={metric: round(value, 4), "reference": entry["reference"], **limits},
        )


ALL_CHECKS = [transcript_integrity, evaluation_limits]
