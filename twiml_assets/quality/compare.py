"""Side-by-side model comparison: one recording under several engine configurations.

The audio is decoded once and saved as a NumPy array; each configuration then runs in
its own worker process that loads that array (never the audio file), so its wall time
and peak memory are its own and one configuration's models cannot skew another's.
A configuration is a profile name with optional overrides:
``cpu-dev``, ``cpu-fast``, ``cpu-dev:beam_size=1:compute_type=float32``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from dagster import Config, Failure
from pydantic import Field

from evaluation.loaders import load_references
from evaluation.lookup import resolve_references
from evaluation.references import Reference
from evaluation.reports import evaluate_episode, markdown_table, metric_value
from resources.asr import AsrSettings
from resources.audio import SAMPLE_RATE, decode_audio
from resources.model_registry import profile_settings
from resources.quality import QualityResource
from resources.schema import SpeakerTranscript, SpeakerTurn, Utterance, load
from resources.storage import StorageResource
from twiml_assets.asset_io import (
    StepOutput,
    feed_transcript_url,
    read_json_or_fail,
    typed,
    wire_paths,
    wire_table,
)
from twiml_assets.layout import EpisodeFiles

if TYPE_CHECKING:
    import pandas as pd

RATE_COLUMNS = ("wer", "der", "cpwer", "rtf", "asr_rtf", "diarisation_rtf")
COLUMNS = (
    "config model compute_type device beam_size batched speakers wer der cpwer rtf asr_rtf "
    "diarisation_rtf peak_rss_mb status"
).split()


class ModelComparisonConfig(Config):
    """Which engine configurations to compare on this episode's audio."""

    configs: str = Field(
        default="cpu-dev,cpu-fast",
        description="Comma-separated profiles with optional overrides, e.g. "
        "'cpu-dev,cpu-fast,cpu-dev:beam_size=1' (model_config.yml profiles).",
    )
    timeout_seconds: float = Field(
        default=3600.0, gt=0, description="Limit for one configuration's worker process."
    )
    use_reference: bool = Field(
        default=True, description="Score WER/DER/cpWER against the episode's reference."
    )


@dataclass(slots=True)
class ComparisonConfig:
    """One named configuration: the profile's settings with the overrides applied."""

    name: str
    asr: dict[str, Any] = field(default_factory=dict)
    diarisation: dict[str, Any] = field(default_factory=dict)


def parse_config(spec: str) -> ComparisonConfig:
    """``profile[:key=value]...``; ASR keys go to ASR, the rest to diarisation."""
    profile, *overrides = spec.strip().split(":")
    asr = {"profile": profile}
    diarisation = profile_settings(profile, "diarisation")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"bad override {item!r} in {spec!r}: expected key=value")
        value = yaml.safe_load(raw)
        if key in AsrSettings.model_fields:
            asr[key] = value
        else:
            diarisation[key] = value
    return ComparisonConfig(spec.strip(), asr, diarisation)


def parse_configs(specs: str) -> list[ComparisonConfig]:
    configs = [parse_config(s) for s in specs.split(",") if s.strip()]
    if not configs:
        raise ValueError("--configs needs at least one profile name")
    return configs


def run_worker(waveform_path: Path, config: ComparisonConfig, out: Path, timeout: float) -> dict:
    """Run one configuration in a fresh process and return what it reported."""
    spec = out.with_suffix(".config.json")
    spec.write_text(json.dumps({"asr": config.asr, "diarisation": config.diarisation}))
    worker = [sys.executable, "-m", "twiml_assets.quality.compare_worker"]
    args = [*worker, str(waveform_path), str(spec), str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"worker exited with {proc.returncode}"}
    return json.loads(out.read_text())


def score(
    report: dict, references: Sequence[tuple[Path, Reference]], collar: float
) -> dict[str, Any]:
    """WER, DER and cpWER of one worker report: the evaluation's own scoring."""
    utterances = load(list[Utterance], report["utterances"])
    turns = load(list[SpeakerTurn], report["turns"])
    duration = max((u.end for u in utterances), default=0.0)
    transcript = SpeakerTranscript("compare", duration, utterances, report["speakers"])
    record = evaluate_episode("compare", transcript, references, turns, collar)
    return {metric: metric_value(record, metric) for metric in ("wer", "der", "cpwer")}


def compare(
    waveform: np.ndarray,
    configs: list[ComparisonConfig],
    references: Sequence[tuple[Path, Reference]] = (),
    collar: float = 0.5,
    timeout: float = 3600.0,
) -> pd.DataFrame:
    """One row per configuration: settings, quality metrics, speed and memory.

    Each metric is scored against the first of ``references`` that can give it, with DER's
    forgiveness ``collar`` (seconds, total width), exactly as the ``evaluation`` asset does.
    """
    import pandas as pd  # lazy: seconds off the start of every Dagster process

    duration = len(waveform) / SAMPLE_RATE
    rows = []
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        waveform_path = Path(tmp) / "waveform.npy"
        np.save(waveform_path, waveform)
        for i, config in enumerate(configs):
            report = run_worker(waveform_path, config, Path(tmp) / f"config{i}.json", timeout)
            row: dict[str, Any] = {"config": config.name}
            if "error" in report:
                rows.append({**row, "status": f"failed: {report['error']}"})
                continue
            asr = report["asr_config"]
            row.update(
                {k: asr[k] for k in ("model", "compute_type", "device", "beam_size", "batched")}
            )
            row.update(
                speakers=len(report["speakers"]),
                rtf=(report["asr_seconds"] + report["diarisation_seconds"]) / duration,
                asr_rtf=report["asr_seconds"] / duration,
                diarisation_rtf=report["diarisation_seconds"] / duration,
                peak_rss_mb=report["peak_rss_mb"],
                status="ok",
            )
            row.update(score(report, references, collar))
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def to_markdown(table: pd.DataFrame, title: str) -> str:
    """The table in Markdown (rates to 3 places, memory in whole MB) under a heading."""
    import pandas as pd  # lazy: seconds off the start of every Dagster process

    rss = table["peak_rss_mb"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    body = markdown_table(table.assign(peak_rss_mb=rss), RATE_COLUMNS)
    return f"# Model comparison: {title}\n\n{body}\n"


def write_report(storage: StorageResource, key: str, table: pd.DataFrame) -> dict[str, str]:
    """``comparisons/{key}.md`` and ``.csv`` under the storage root."""
    files = EpisodeFiles(key)
    return {
        "markdown": storage.write_text(files.comparison_markdown, to_markdown(table, key)),
        "csv": storage.write_text(files.comparison_csv, table.to_csv(index=False)),
    }


def compare_episode(
    key: str,
    config: ModelComparisonConfig,
    storage: StorageResource,
    quality: QualityResource,
    log: Callable[[str], None],
    warn: Callable[[str], None],
) -> StepOutput:
    """The ``model_comparison`` asset's work, here or in its Pipes worker: the report
    files and the materialisation's metadata (in Pipes' wire form)."""
    try:
        configs = parse_configs(config.configs)
    except ValueError as exc:
        raise Failure(f"configs={config.configs!r}: {exc}", allow_retries=False) from exc
    audio = read_json_or_fail(storage, EpisodeFiles(key).audio_sidecar, key, "raw_audio")
    waveform = decode_audio(storage.local_path(audio["path"]), label=key)

    references: list[tuple[Path, Reference]] = []
    if config.use_reference:
        found, _ = resolve_references(
            storage, key, quality.references_root, feed_transcript_url(storage, key), warn=warn
        )
        references = load_references(found)[0]
        log(f"{key}: scoring against {[p.name for p, _ in references]}")
    table = compare(
        waveform, configs, references, collar=quality.der_collar, timeout=config.timeout_seconds
    )
    del waveform
    files = write_report(storage, key, table)
    failed = [f"{row.config}: {row.status}" for row in table.itertuples() if row.status != "ok"]
    for failure in failed:
        warn(f"{key}: configuration {failure}")
    if len(failed) == len(table):
        raise Failure(
            f"{key}: every configuration failed: " + "; ".join(failed), allow_retries=False
        )
    return StepOutput(
        "model_comparison",
        {
            "configurations": len(table),
            "succeeded": len(table) - len(failed),
            "references": ", ".join(p.name for p, _ in references) or "none",
            "table": wire_table(table),
            "comparison": typed(to_markdown(table, key), "md"),
            **wire_paths(files),
        },
    )
