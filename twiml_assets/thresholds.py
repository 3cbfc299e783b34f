"""Limits of the quality checks: one set for every check that compares with a reference.

Above ``*_warn`` a metric's check fails with WARN, above ``*_error`` with ERROR. The quick
``reference_quality`` checks on the transcript and diarisation assets warn at the same soft
limits as the ``evaluation`` asset's ``*_within_limits`` checks, so an episode never reads
"fine" in one place and "worse than expected" in another.
"""

from collections.abc import Mapping

from dagster import AssetCheckSeverity, ConfigurableResource
from pydantic import Field, model_validator

from evaluation.reports import METRICS


class EvaluationThresholds(ConfigurableResource):
    """Limits of the evaluation checks: above ``*_warn`` a check fails with WARN, above
    ``*_error`` with ERROR. Defaults suit English podcast speech with a small model; set
    env ``TWIML_<METRIC>_WARN`` / ``TWIML_<METRIC>_ERROR`` (e.g. ``TWIML_WER_ERROR=0.25``)
    or override them in the launchpad."""

    wer_warn: float = Field(default=0.15, ge=0, description="WER above this warns.")
    wer_error: float = Field(default=0.35, ge=0, description="WER above this is an error.")
    der_warn: float = Field(default=0.15, ge=0, description="DER above this warns.")
    der_error: float = Field(default=0.35, ge=0, description="DER above this is an error.")
    cpwer_warn: float = Field(default=0.25, ge=0, description="cpWER above this warns.")
    cpwer_error: float = Field(default=0.5, ge=0, description="cpWER above this is an error.")
    wder_warn: float = Field(default=0.1, ge=0, description="WDER above this warns.")
    wder_error: float = Field(default=0.3, ge=0, description="WDER above this is an error.")

    @model_validator(mode="after")
    def _ordered(self) -> "EvaluationThresholds":
        for metric in METRICS:
            warn, error = self.limits(metric)
            if warn > error:
                raise ValueError(f"{metric}_warn={warn} is above {metric}_error={error}")
        return self

    def limits(self, metric: str) -> tuple[float, float]:
        return getattr(self, f"{metric}_warn"), getattr(self, f"{metric}_error")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "EvaluationThresholds":
        """Thresholds with any ``TWIML_<METRIC>_WARN|ERROR`` variables applied."""
        values: dict[str, float] = {}
        for metric in METRICS:
            for level in ("warn", "error"):
                name = f"TWIML_{metric.upper()}_{level.upper()}"
                raw = env.get(name, "").strip()
                if not raw:
                    continue
                try:
                    values[f"{metric}_{level}"] = float(raw)
                except ValueError:
                    raise ValueError(f"{name}={raw!r} is not a number, e.g. 0.25") from None
        return cls(**values)


def judge(value: float, warn: float, error: float) -> tuple[bool, AssetCheckSeverity]:
    """Passed at or below ``warn``; WARN up to ``error``; ERROR above it."""
    if value > error:
        return False, AssetCheckSeverity.ERROR
    return value <= warn, AssetCheckSeverity.WARN
