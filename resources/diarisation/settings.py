"""The diarisation settings: one pydantic model, checked before any model loads.

``DiarisationFields`` declares every setting once, with its default and meaning; the
``PyannoteDiariser`` resource inherits them (so config, launchpad and notebook show the same
descriptions), and ``DiarisationSettings`` adds the checks. The checks live only on the
resolved settings because Dagster builds resources with placeholder values for ``EnvVar``.
The algorithm modules take ``DiarisationSettings`` and never depend on Dagster.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

OFFLINE = "offline"


class DiarisationFields(BaseModel):
    """Every diarisation setting, with the tuned values as defaults."""

    pipeline: str = Field(
        default=OFFLINE,
        description="'offline' (registry-shipped weights, no hub), a pyannote hub id such as "
        "'pyannote/speaker-diarization-community-1', or a local pipeline directory/config.yaml.",
    )
    device: str = Field(default="auto", description="auto (cuda if available), cpu or cuda.")
    num_speakers: int | None = Field(
        default=None, description="Exact number of speakers; None = estimate it."
    )
    min_speakers: int | None = Field(default=None, description="Lower bound on the speaker count.")
    max_speakers: int | None = Field(default=None, description="Upper bound on the speaker count.")
    segmentation_step: float = Field(
        default=0.5,
        description="Offline: seconds between 5 s segmentation windows (smaller = finer, slower).",
    )
    speech_onset: float = Field(
        default=0.7, description="Offline: speech starts where the speech activation exceeds this."
    )
    speech_offset: float = Field(
        default=0.6, description="Offline: speech ends where the activation drops below this."
    )
    change_threshold: float = Field(
        default=0.3,
        description="Offline: share of segmentation windows that must see a speaker change "
        "for speech to be cut there (lower = more, shorter segments).",
    )
    overlap_threshold: float = Field(
        default=0.5,
        description="Offline: share of segmentation windows that must hear two voices at once "
        "for a frame to get a second speaker (above 1 disables overlap).",
    )
    embedding_window: float = Field(
        default=1.6, description="Offline: seconds of audio per speaker embedding."
    )
    embedding_step: float = Field(
        default=0.2, description="Offline: seconds between speaker embeddings."
    )
    clustering_threshold: float = Field(
        default=0.8,
        description="Offline: cosine distance (whitened embeddings) cutting the first, "
        "deliberately over-split clustering.",
    )
    merge_threshold: float = Field(
        default=0.09,
        description="Offline: clusters whose GE2E centroids are closer than this cosine "
        "distance are one speaker (higher = fewer speakers).",
    )
    min_cluster_seconds: float = Field(
        default=3.0,
        description="Offline: clusters with less speech than this are folded into the nearest "
        "speaker instead of counting as one.",
    )
    min_duration_on: float = Field(default=0.0, description="Drop turns shorter than this (s).")
    min_duration_off: float = Field(
        default=0.3, description="Join one speaker's turns separated by less than this (s)."
    )


class DiarisationSettings(DiarisationFields):
    """The fully resolved settings one diarisation runs with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="after")
    def _check(self) -> DiarisationSettings:
        """Fail early, with the fix in the message, on settings that cannot work."""
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None for automatic), got {value}")
        low, high = self.min_speakers, self.max_speakers
        if low is not None and high is not None and low > high:
            raise ValueError(
                f"min_speakers ({low}) is greater than max_speakers ({high}); "
                "lower min_speakers or raise max_speakers"
            )
        if self.device not in {"auto", "cpu", "cuda"} and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.05 <= self.segmentation_step <= 5.0:
            raise ValueError(
                f"segmentation_step must be in [0.05, 5] s, got {self.segmentation_step}"
            )
        if not 0.0 < self.speech_offset <= self.speech_onset < 1.0:
            raise ValueError("need 0 < speech_offset <= speech_onset < 1")
        if not 0.3 <= self.embedding_window <= 5.0 or self.embedding_step <= 0:
            raise ValueError("embedding_window must be in [0.3, 5] s and embedding_step > 0")
        if not self.pipeline:
            raise ValueError("pipeline must be 'offline', a hub id or a local pipeline path")
        return self

    def speaker_bounds(self) -> tuple[int, int | None]:
        """(fewest, most) speakers allowed; num_speakers pins both."""
        if self.num_speakers is not None:
            return self.num_speakers, self.num_speakers
        return self.min_speakers or 1, self.max_speakers
