"""The storage layout: every path of the archive, relative to the storage root.

One place for the layout the README's "Outputs" table describes, local and S3 alike.
``{n}`` is the episode number of the RAG pipeline's naming (``ep-623`` → ``623``); files
of uploads and unnumbered episodes use the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from twiml_assets.keys import rag_stem

CATALOG = "feed/catalog.json"
"""The feed snapshot the sensor and ``feed_catalog`` keep."""
AUDIO_DIR = "audio"
REFERENCES_DIR = "references"
REFERENCE_SIDECAR_SUFFIX = ".source.json"
SPEAKER_REGISTRY = "speakers/registry.json"
VOICEPRINTS_SUFFIX = ".embeddings.json"
EVALUATION_DIR = "evaluation"
EVALUATION_SUMMARY_PNG = f"{EVALUATION_DIR}/summary.png"
EVALUATION_SUMMARY_CSV = f"{EVALUATION_DIR}/summary.csv"
EVALUATION_SUMMARY_MD = f"{EVALUATION_DIR}/summary.md"


@dataclass(frozen=True, slots=True)
class EpisodeFiles:
    """The relative paths of one episode's files."""

    key: str

    @property
    def n(self) -> str:
        return rag_stem(self.key)

    # -- ingest
    @property
    def episode(self) -> str:
        """The episode's feed entry (``EpisodeInfo``)."""
        return f"episodes/{self.key}.json"

    @property
    def audio_sidecar(self) -> str:
        """URL, size and sha256 of the stored audio."""
        return f"{AUDIO_DIR}/{self.key}.json"

    def audio(self, suffix: str) -> str:
        """The stored audio, ``suffix`` being its extension with the dot (``.mp3``)."""
        return f"{AUDIO_DIR}/{self.key}{suffix}"

    # -- model outputs
    @property
    def asr_result(self) -> str:
        return f"asr/{self.key}.asr.json"

    @property
    def diarisation_result(self) -> str:
        return f"diarisation/{self.key}.json"

    @property
    def rttm(self) -> str:
        return f"diarisation/{self.key}.rttm"

    @property
    def record(self) -> str:
        """The full speaker transcript: model, config, timings, turns, words."""
        return f"transcripts/{self.key}.json"

    # -- speaker names
    @property
    def speaker_names(self) -> str:
        return f"speakers/{self.key}.json"

    @property
    def voiceprints(self) -> str:
        return f"speakers/{self.key}{VOICEPRINTS_SUFFIX}"

    # -- RAG files and subtitles
    @property
    def corrected(self) -> str:
        return f"transcripts/{self.n}.corrected.json"

    @property
    def speakers(self) -> str:
        """Speaker label → name, for the RAG pipeline."""
        return f"asr/{self.n}.speakers.json"

    @property
    def markdown(self) -> str:
        return f"markdown/{self.n}.md"

    @property
    def info(self) -> str:
        return f"info/{self.n}.info.json"

    @property
    def srt(self) -> str:
        return f"subtitles/{self.key}.srt"

    @property
    def vtt(self) -> str:
        return f"subtitles/{self.key}.vtt"

    # -- evaluation
    @property
    def evaluation(self) -> str:
        """Scores against the references, with their raw counts."""
        return f"{EVALUATION_DIR}/{self.key}.json"

    @property
    def reference_sidecar(self) -> str:
        """Outcome of fetching the feed's transcript (URL, format, status)."""
        return f"{REFERENCES_DIR}/{self.key}{REFERENCE_SIDECAR_SUFFIX}"

    def reference(self, suffix: str) -> str:
        """A stored reference transcript (``suffix`` without the dot: ``srt``, ``txt``)."""
        return f"{REFERENCES_DIR}/{self.key}.{suffix}"

    @property
    def comparison_markdown(self) -> str:
        return f"comparisons/{self.key}.md"

    @property
    def comparison_csv(self) -> str:
        return f"comparisons/{self.key}.csv"
