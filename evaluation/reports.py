"""Per-episode evaluation records and the corpus summary built from them (no Dagster).

One episode's record (``evaluation/{key}.json``) keeps every metric's raw counts next to its
rate, because a corpus score must be pooled (summed errors over summed reference words or
seconds), never averaged over episodes: a 2-minute trailer would otherwise weigh as much as a
2-hour interview. Each metric uses the first reference that can give it (e.g. WER from a
``.txt``, DER from an ``.rttm``), and says which one it used.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.metrics import (
    DerResult,
    WerResult,
    WordErrors,
    diarisation_error_rate,
    summed,
    word_error_rate,
)
from evaluation.references import Reference
from evaluation.speaker_metrics import WderResult, cp_word_error_rate, word_diarisation_error_rate
from resources.schema import SpeakerTranscript, SpeakerTurn

if TYPE_CHECKING:
    import pandas as pd

METRICS = ("wer", "der", "cpwer", "wder")
SUMMARY_COLUMNS = (
    "episode has_reference wer der cpwer wder reference_words hypothesis_words "
    "reference_speech_s reference_speakers hypothesis_speakers asr_model diarisation_model "
    "evaluated_at"
).split()


def _first(
    references: Sequence[tuple[Path, Reference]], *needs: str
) -> tuple[Reference, dict[str, str]] | None:
    """The first reference with every capability in ``needs`` (``has_text``, …), and the
    fields that name it in the record."""
    for path, ref in references:
        if all(getattr(ref, need) for need in needs) and (
            "has_text" not in needs or ref.text.strip()
        ):
            return ref, {"reference": path.name, "reference_format": ref.format}
    return None


def evaluate_episode(
    key: str,
    hypothesis: SpeakerTranscript,
    references: Sequence[tuple[Path, Reference]],
    hypothesis_turns: Sequence[SpeakerTurn] | None = None,
    collar: float = 0.5,
    models: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Every metric the references allow; ``None`` for those they do not.

    ``hypothesis_turns`` are the diarisation's own turns (what DER should judge); without
    them the transcript's utterance spans stand in. ``collar`` is pyannote's total width.
    ``models`` (``asr_model``, ``diarisation_model``) label the record for the summary.
    """
    record: dict[str, Any] = {
        "key": key,
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "has_reference": bool(references),
        "references": [
            {
                "name": path.name,
                "format": ref.format,
                "has_text": ref.has_text,
                "has_speakers": ref.has_speakers,
                "has_timestamps": ref.has_timestamps,
                "speakers": len(ref.speakers) if ref.has_speakers else None,
            }
            for path, ref in references
        ],
        "hypothesis": {
            "words": len(hypothesis.text.split()),
            "speakers": len(hypothesis.speakers),
            "duration": round(hypothesis.duration, 3),
            **(models or {}),
        },
        **{name: None for name in METRICS},
    }
    if found := _first(references, "has_text"):
        ref, source = found
        record["wer"] = _entry("wer", word_error_rate(ref.text, hypothesis.text), source)
    if found := _first(references, "has_timestamps", "has_speakers"):
        ref, source = found
        if hypothesis_turns is None:
            hypothesis_turns = [
                SpeakerTurn(u.start, u.end, u.speaker) for u in hypothesis.utterances
            ]
        der = diarisation_error_rate(ref.turns, hypothesis_turns, collar=collar)
        record["der"] = _entry("der", der, source)
    if found := _first(references, "has_speakers", "has_text"):
        ref, source = found
        record["cpwer"] = _entry("cpwer", cp_word_error_rate(ref, hypothesis.utterances), source)
        wder = word_diarisation_error_rate(ref.speaker_words, hypothesis.words)
        record["wder"] = _entry("wder", wder, source, "aligned_words", "wrong_speaker_words")
    return record


def _entry(metric: str, result: Any, source: dict[str, str], *also: str) -> dict[str, Any]:
    """A metric's part of the record: the rate first, its counts and the properties ``also``,
    then the reference it came from."""
    values = {metric: getattr(result, metric), **asdict(result)}
    return values | {name: getattr(result, name) for name in also} | source


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    """The rate of ``metric`` in an episode record, or None when it was not computed."""
    entry = record.get(metric)
    return None if not entry else float(entry[metric])


# -- corpus summary -----------------------------------------------------------------------------
def pooled_scores(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Corpus WER/DER/cpWER/WDER from summed counts, with the totals they are pooled over."""
    records = list(records)

    def entries(metric: str, cls: type) -> list[Any]:
        found = [r[metric] for r in records if r.get(metric)]
        return [cls(**{k: e[k] for k in cls.__dataclass_fields__ if k in e}) for e in found]

    wers, ders = entries("wer", WerResult), entries("der", DerResult)
    cps, wders = entries("cpwer", WordErrors), entries("wder", WderResult)
    wer, der, cp = WerResult.pooled(wers), DerResult.pooled(ders), WordErrors.total(cps)
    aligned, wrong = summed(wders, ("aligned_words", "wrong_speaker_words"))
    return {
        "episodes": len(records),
        "episodes_with_reference": sum(1 for r in records if r.get("has_reference")),
        "wer": wer.wer if wers else None,
        "reference_words": wer.reference_words,
        "wer_episodes": len(wers),
        "der": der.der if ders else None,
        "reference_speech_s": round(der.total, 3) if ders else 0.0,
        "der_episodes": len(ders),
        # cpWER and WDER over no words are 0.0 here (``rate`` would say 1.0 for cpWER)
        "cpwer": (cp.errors / cp.reference_words if cp.reference_words else 0.0) if cps else None,
        "cpwer_episodes": len(cps),
        "wder": (wrong / aligned if aligned else 0.0) if wders else None,
        "wder_episodes": len(wders),
    }


def summary_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per episode, in key order: rates, sizes, models."""
    import pandas as pd  # lazy: seconds off the start of every Dagster process

    rows = []
    for r in sorted(records, key=lambda r: str(r.get("key"))):
        hyp = r.get("hypothesis") or {}
        der = r.get("der") or {}
        wer = r.get("wer") or {}
        speakers = [x.get("speakers") or 0 for x in r.get("references") or []]
        rows.append(
            {
                "episode": r.get("key"),
                "has_reference": bool(r.get("has_reference")),
                **{m: metric_value(r, m) for m in METRICS},
                "reference_words": wer.get("reference_words"),
                "hypothesis_words": hyp.get("words"),
                "reference_speech_s": round(der["total"], 2) if der else None,
                "reference_speakers": max(speakers, default=0) or None,
                "hypothesis_speakers": hyp.get("speakers"),
                "asr_model": hyp.get("asr_model"),
                "diarisation_model": hyp.get("diarisation_model"),
                "evaluated_at": r.get("evaluated_at"),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def markdown_table(table: pd.DataFrame, float_columns: Sequence[str] = METRICS) -> str:
    """A Markdown table (rates to 3 places, blanks for missing), no extra dependency."""
    shown = table.astype(object).where(table.notna(), "")
    for col in float_columns:
        if col in shown:
            shown[col] = [f"{v:.3f}" if isinstance(v, float) else v for v in shown[col]]
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
        for row in shown.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def chart_png(table: pd.DataFrame, title: str = "WER and DER per episode") -> bytes:
    """A small bar chart (WER and DER per episode) as PNG bytes.

    Uses matplotlib's object API (no pyplot): no global figure state, safe in a worker
    thread, and no display backend needed.
    """
    import pandas as pd  # lazy: seconds off the start of every Dagster process
    from matplotlib.figure import Figure

    shown = table[table["has_reference"]] if "has_reference" in table else table
    episodes = [str(e) for e in shown["episode"]]
    width = max(4.0, min(12.0, 1.0 + 0.45 * len(episodes)))
    fig = Figure(figsize=(width, 2.8), dpi=80)
    ax = fig.add_subplot()
    positions = range(len(episodes))
    for offset, metric, color in ((-0.2, "wer", "#1f77b4"), (0.2, "der", "#ff7f0e")):
        values = [0.0 if pd.isna(v) else float(v) for v in shown[metric]]
        ax.bar(
            [p + offset for p in positions], values, width=0.4, label=metric.upper(), color=color
        )
    ax.set_xticks(list(positions), episodes, rotation=45 if len(episodes) > 6 else 0, fontsize=8)
    ax.set_ylabel("error rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
