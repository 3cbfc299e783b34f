"""What "good enough" means: where references live and the limits every quality check applies."""

from dagster import AssetCheckSeverity, ConfigurableResource
from pydantic import BaseModel, Field, model_validator


class EvaluationLimits(BaseModel):
    """Above ``<metric>_warn`` an evaluation check fails with WARN, above ``<metric>_error``
    with ERROR (env ``TWIML_<METRIC>_WARN`` / ``_ERROR``). Declared once for the quality
    resource and the platform settings. Defaults suit English podcast speech with a small model.
    """

    wer_warn: float = Field(default=0.15, ge=0, description="WER above this warns.")
    wer_error: float = Field(default=0.35, ge=0, description="WER above this is an error.")
    der_warn: float = Field(default=0.15, ge=0, description="DER above this warns.")
    der_error: float = Field(default=0.35, ge=0, description="DER above this is an error.")
    cpwer_warn: float = Field(default=0.25, ge=0, description="cpWER above this warns.")
    cpwer_error: float = Field(default=0.5, ge=0, description="cpWER above this is an error.")
    wder_warn: float = Field(default=0.1, ge=0, description="WDER above this warns.")
    wder_error: float = Field(default=0.3, ge=0, description="WDER above this is an error.")

    def limits(self, metric: str) -> tuple[float, float]:
        """(warn above, error above) for one of ``evaluation.reports.METRICS``."""
        return getattr(self, f"{metric}_warn"), getattr(self, f"{metric}_error")


class QualityResource(ConfigurableResource, EvaluationLimits):
    """Where reference transcripts live, and the limits every quality check applies."""

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

    @model_validator(mode="after")
    def _ordered(self) -> "QualityResource":
        from evaluation.reports import METRICS  # here: the web app's settings import this module

        for metric in METRICS:
            warn, error = self.limits(metric)
            if warn > error:
                raise ValueError(f"{metric}_warn={warn} is above {metric}_error={error}")
        return self


def judge(value: float, warn: float, error: float) -> tuple[bool, AssetCheckSeverity]:
    """Passed at or below ``warn``; WARN up to ``error``; ERROR above it."""
    if value > error:
        return False, AssetCheckSeverity.ERROR
    return value <= warn, AssetCheckSeverity.WARN
