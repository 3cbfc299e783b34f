"""The settings one diarisation runs with, checked before any model loads.

Kept apart from the resource so the algorithm modules take plain, validated values and
never depend on Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ProgressCallback = Callable[[float, float], None]
"""Called with (seconds of audio done, total seconds)."""

OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class DiarisationSettings:
    """The fully resolved settings one diarisation runs with (tuned values as defaults)."""

    pipeline: str = OFFLINE
    device: str = "auto"
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    segmentation_step: float = 0.5
    speech_onset: float = 0.7
    speech_offset: float = 0.6
    change_threshold: float = 0.3
    overlap_threshold: float = 0.5
    embedding_window: float = 1.6
    embedding_step: float = 0.2
    clustering_threshold: float = 0.8
    merge_threshold: float = 0.09
    min_cluster_seconds: float = 3.0
    min_duration_on: float = 0.0
    min_duration_off: float = 0.3

    def validate(self) -> DiarisationSettings:
        """Fail early, with the fix in the message, on settings that cannot work."""
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None for automatic), got {value}")
        if (
            self.min_speakers is not None
            and self.max_speakers is not None
            and self.min_speakers > self.max_speakers
        ):
            raise ValueError(
                f"min_speakers ({self.min_speakers}) is greater than max_speakers "
                f"({self.max_speakers}); lower min_speakers or raise max_speakers"
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
