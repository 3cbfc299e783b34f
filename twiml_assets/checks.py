"""Asset checks: integrity gates before the RAG files, and quality against references.

The integrity checks are *blocking*: if one fails, rag_outputs and subtitles do not run
for that episode, so the RAG pipeline never ingests an empty, speakerless or garbled
transcript. The reference checks (WER, DER) only warn, above the same soft limits as the
evaluation checks (``twiml_assets.thresholds``): a model that is worse than expected still
produces a usable transcript, and the number is what matters.

The measurements are plain functions over the stored files (no Dagster), so tests and
notebooks can call them directly.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    ConfigurableResource,
    MetadataValue,
    multi_asset_check,
)
from pydantic import Field

from resources.storage import StorageResource
from twiml_assets.outputs import RagPaths
from twiml_assets.references import find_references as _find_references
from twiml_assets.references import load_references
from twiml_assets.thresholds import EvaluationThresholds

# By key, not by import: the evaluation assets import this module for QualityResource.
SPEAKER_TRANSCRIPT = AssetKey("speaker_transcript")


class QualityResource(ConfigurableResource):
    """Thresholds of the checks and where reference transcripts live."""

    references_root: str | None = Field(
        default=None,
        description="Directory of references named {key}.* or {n}.* (rttm, stm, "
        "corrected.json, md, srt, vtt, txt, Podcasting 2.0 json), searched before the "
        "storage root's references/ (always searched: feed transcripts are downloaded "
        "there); env TWIML_REFERENCES_DIR.",
    )
    min_speech_seconds: float = Field(
        default=1.0, description="Below this much detected speech an episode counts as silent."
    )
    min_speech_coverage: float = Field(
        default=0.9, description="Share of detected speech that recognised words must cover."
    )
    word_gap_seconds: float = Field(
        default=1.5, description="Pauses between words up to this long count as covered."
    )
    timestamp_tolerance: float = Field(
        default=0.5, description="Seconds a word may end past the audio's end."
    )
    der_collar: float = Field(
        default=0.5, description="DER forgiveness collar in seconds (total width)."
    )


# -- pure measurements ------------------------------------------------------------------------
Interval = tuple[float, float]


def merge_intervals(intervals: Iterable[Interval], gap: float = 0.0) -> list[Interval]:
    """Union of intervals, bridging gaps up to ``gap`` seconds."""
    merged: list[list[float]] = []
    for start, end in sorted((s, e) for s, e in intervals if e > s):
        if merged and start <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def total(intervals: Sequence[Interval]) -> float:
    return sum(e - s for s, e in intervals)


def overlap(a: Sequence[Interval], b: Sequence[Interval]) -> float:
    """Length of the intersection of two sorted, disjoint interval lists."""
    i = j = 0
    out = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            out += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


@dataclass(slots=True)
class Outcome:
    """One check's verdict, before it becomes an AssetCheckResult."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def integrity_outcomes(record: dict[str, Any], quality: QualityResource) -> list[Outcome]:
    """The four integrity checks over a full record (``transcripts/{key}.json``)."""
    key = record.get("key", "?")
    duration = float(record.get("duration") or 0.0)
    utterances = record.get("utterances") or []
    words = [w for u in utterances for w in u.get("words", [])]
    texts = [str(w.get("word", "")).strip() for w in words]
    n_words = sum(1 for t in texts if t)
    turns = (record.get("diarisation") or {}).get("turns") or []
    speech = merge_intervals((float(t["start"]), float(t["end"])) for t in turns)
    speech_seconds = total(speech)
    has_speech = speech_seconds >= quality.min_speech_seconds or n_words > 0
    out: list[Outcome] = []

    if has_speech and n_words == 0:
        out.append(
            Outcome(
                "transcript_not_empty",
                False,
                f"{key}: {speech_seconds:.1f} s of speech detected but no words recognised; check "
                "the audio (music only? another language?) and the ASR model/language settings",
                {"speech_seconds": round(speech_seconds, 2), "words": 0},
            )
        )
    else:
        out.append(
            Outcome(
                "transcript_not_empty",
                True,
                f"{n_words} words" if n_words else "no speech detected, so no words expected",
                {"speech_seconds": round(speech_seconds, 2), "words": n_words},
            )
        )

    speakers = record.get("speakers") or []
    out.append(
        Outcome(
            "has_speakers",
            len(speakers) >= 1,
            f"{len(speakers)} speaker(s): {', '.join(speakers)}"
            if speakers
            else f"{key}: no speaker found; the audio is silent or not speech, so there is nothing "
            "for the RAG pipeline. Check the episode's audio",
            {"speakers": len(speakers)},
        )
    )

    problems: list[str] = []
    limit = duration + quality.timestamp_tolerance
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
    out.append(
        Outcome(
            "timestamps_valid",
            not problems,
            "timestamps increase and lie inside the audio"
            if not problems
            else f"{key}: "
            + "; ".join(problems[:5])
            + " (re-run the transcript; report if it persists)",
            {"duration_s": round(duration, 2), "problems": len(problems)},
        )
    )

    covered = merge_intervals(
        ((float(w["start"]), float(w["end"])) for w in words), gap=quality.word_gap_seconds
    )
    silent = speech_seconds < quality.min_speech_seconds
    coverage = 1.0 if silent else overlap(speech, covered) / speech_seconds
    out.append(
        Outcome(
            "speech_covered_by_words",
            coverage >= quality.min_speech_coverage,
            f"words cover {coverage:.0%} of {speech_seconds:.1f} s of detected speech "
            f"(minimum {quality.min_speech_coverage:.0%})"
            + (
                ""
                if coverage >= quality.min_speech_coverage
                else f"; {key}: the ASR skipped speech (VAD too aggressive? hallucination loop?) "
                "or diarisation marked noise as speech"
            ),
            {
                "coverage": round(coverage, 4),
                "speech_seconds": round(speech_seconds, 2),
                "covered_seconds": round(overlap(speech, covered), 2),
            },
        )
    )
    return out


def find_references(storage: StorageResource, quality: QualityResource, key: str) -> list[Path]:
    """Reference files for an episode (``twiml_assets.references.find_references``)."""
    return _find_references(storage, key, quality.references_root)


def reference_outcomes(
    key: str,
    hypothesis_text: str,
    hypothesis_turns: list[Any],
    references: list[Path],
    quality: QualityResource,
    thresholds: EvaluationThresholds | None = None,
) -> list[Outcome]:
    """WER and DER against the first reference that can give each, passing at or below
    the soft (``*_warn``) limits of ``thresholds`` (default: the default limits)."""
    from evaluation.metrics import diarisation_error_rate, word_error_rate

    thresholds = thresholds or EvaluationThresholds()
    loaded, errors = load_references(references)
    note = {"unreadable_references": MetadataValue.md("\n".join(errors))} if errors else {}
    where = (
        f"{quality.references_root} or the storage root's references/"
        if quality.references_root
        else "the storage root's references/"
    )

    out: list[Outcome] = []
    text_ref = next(((p, r) for p, r in loaded if r.has_text and r.text.strip()), None)
    if text_ref is None:
        out.append(
            Outcome(
                "wer_vs_reference",
                True,
                f"no text reference for {key} in {where}; nothing to compare",
                note,
            )
        )
    else:
        path, ref = text_ref
        result = word_error_rate(ref.text, hypothesis_text)
        out.append(
            Outcome(
                "wer_vs_reference",
                result.wer <= thresholds.wer_warn,
                f"WER {result.wer:.1%} against {path.name} (warn above {thresholds.wer_warn:.0%})",
                {
                    "wer": round(result.wer, 4),
                    **{k: v for k, v in result.to_dict().items() if k != "wer"},
                    "reference": str(path),
                    **note,
                },
            )
        )

    turn_ref = next(((p, r) for p, r in loaded if r.has_timestamps and r.has_speakers), None)
    if turn_ref is None:
        out.append(
            Outcome(
                "der_vs_reference",
                True,
                f"no speaker-turn reference for {key} in {where}; nothing to compare",
                note,
            )
        )
    else:
        path, ref = turn_ref
        result = diarisation_error_rate(ref.turns, hypothesis_turns, collar=quality.der_collar)
        out.append(
            Outcome(
                "der_vs_reference",
                result.der <= thresholds.der_warn,
                f"DER {result.der:.1%} against {path.name}, collar {quality.der_collar} s "
                f"(warn above {thresholds.der_warn:.0%})",
                {
                    "der": round(result.der, 4),
                    "missed": round(result.missed, 4),
                    "false_alarm": round(result.false_alarm, 4),
                    "confusion": round(result.confusion, 4),
                    "reference_speech_s": round(result.total, 2),
                    "reference": str(path),
                    **note,
                },
            )
        )
    return out


# -- Dagster checks ---------------------------------------------------------------------------
INTEGRITY = {
    "transcript_not_empty": "Words exist whenever speech was detected.",
    "has_speakers": "At least one speaker was found.",
    "timestamps_valid": "Turn and word times never go back and lie inside the audio.",
    "speech_covered_by_words": "Recognised words cover at least 90 % of the detected speech.",
}


@multi_asset_check(
    specs=[
        AssetCheckSpec(name, asset=SPEAKER_TRANSCRIPT, blocking=True, description=text)
        for name, text in INTEGRITY.items()
    ],
    name="transcript_integrity",
)
def transcript_integrity(
    context: AssetCheckExecutionContext, storage: StorageResource, quality: QualityResource
) -> Iterator[AssetCheckResult]:
    """Blocking gates before rag_outputs/subtitles (severity ERROR)."""
    key = context.partition_key
    record = storage.read_json(RagPaths(key).record)
    for outcome in integrity_outcomes(record, quality):
        yield AssetCheckResult(
            asset_key=SPEAKER_TRANSCRIPT,
            check_name=outcome.name,
            passed=outcome.passed,
            severity=AssetCheckSeverity.ERROR,
            description=outcome.description,
            metadata={"episode": key, **outcome.metadata},
        )


@multi_asset_check(
    specs=[
        AssetCheckSpec(
            "wer_vs_reference",
            asset=AssetKey("transcript"),
            description="Word error rate against a reference transcript, when one exists.",
        ),
        AssetCheckSpec(
            "der_vs_reference",
            asset=AssetKey("diarisation"),
            description="Diarisation error rate against reference turns, when they exist.",
        ),
    ],
    name="reference_quality",
)
def reference_quality(
    context: AssetCheckExecutionContext,
    storage: StorageResource,
    quality: QualityResource,
    evaluation_thresholds: EvaluationThresholds,
) -> Iterator[AssetCheckResult]:
    """WER/DER against references at the evaluation's soft limits (severity WARN: never
    blocks the outputs)."""
    from twiml_assets.outputs import asr_from_dict, diarisation_from_dict

    key = context.partition_key
    p = RagPaths(key)
    asr = asr_from_dict(storage.read_json(p.asr_result))
    diarisation = diarisation_from_dict(storage.read_json(p.diarisation_result))
    references = find_references(storage, quality, key)
    outcomes = reference_outcomes(
        key, asr.text, diarisation.turns, references, quality, evaluation_thresholds
    )
    targets = {
        "wer_vs_reference": AssetKey("transcript"),
        "der_vs_reference": AssetKey("diarisation"),
    }
    for outcome in outcomes:
        yield AssetCheckResult(
            asset_key=targets[outcome.name],
            check_name=outcome.name,
            passed=outcome.passed,
            severity=AssetCheckSeverity.WARN,
            description=outcome.description,
            metadata={"episode": key, "references": len(references), **outcome.metadata},
        )


ALL_CHECKS = [transcript_integrity, reference_quality]
