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
LINKS_DIR = "links"
"""Upload ↔ published episode links, found by audio fingerprint (one record, both keys)."""
FAILURES_DIR = "failures"
"""One ledger per episode whose runs failed: every attempt, its kind and reason."""
FINGERPRINTS_DIR = "fingerprints"
"""Chromaprint fingerprints of the audio: links uploads to the feed's episodes."""
EVALUATION_SUMMARY_PNG = f"{EVALUATION_DIR}/summary.png"
EVALUATION_SUMMARY_CSV = f"{EVALUATION_DIR}/summary.csv"
EVALUATION_SUMMARY_MD = f"{EVALUATION_DIR}/summary.md"


def _path(template: str, doc: str | None = None) -> property:
    """A path property: ``template`` formatted with the episode's ``key`` and ``n``."""
    return property(lambda self: template.format(key=self.key, n=self.n), doc=doc)


@dataclass(frozen=True, slots=True)
class EpisodeFiles:
    """The relative paths of one episode's files."""

    key: str

    @property
    def n(self) -> str:
        return rag_stem(self.key)

    # -- ingest
    episode = _path("episodes/{key}.json", "The episode's feed entry (``EpisodeInfo``).")
    audio_sidecar = _path(AUDIO_DIR + "/{key}.json", "URL, size and sha256 of the stored audio.")
    fingerprint = _path(
        FINGERPRINTS_DIR + "/{key}.json", "The audio's chromaprint fingerprint (``Fingerprint``)."
    )

    def audio(self, suffix: str) -> str:
        """The stored audio, ``suffix`` being its extension with the dot (``.mp3``)."""
        return f"{AUDIO_DIR}/{self.key}{suffix}"

    # -- model outputs
    asr_result = _path("asr/{key}.asr.json")
    diarisation_result = _path("diarisation/{key}.json")
    rttm = _path("diarisation/{key}.rttm")
    record = _path("transcripts/{key}.json", "The full speaker transcript (model, turns, words).")
    # -- speaker names
    speaker_names = _path("speakers/{key}.json")
    voiceprints = _path("speakers/{key}" + VOICEPRINTS_SUFFIX)
    # -- RAG files and subtitles
    corrected = _path("transcripts/{n}.corrected.json")
    speakers = _path("asr/{n}.speakers.json", "Speaker label → name, for the RAG pipeline.")
    markdown = _path("markdown/{n}.md")
    info = _path("info/{n}.info.json")
    srt = _path("subtitles/{key}.srt")
    vtt = _path("subtitles/{key}.vtt")
    # -- evaluation
    evaluation = _path(EVALUATION_DIR + "/{key}.json", "Scores against the references.")
    reference_sidecar = _path(
        REFERENCES_DIR + "/{key}" + REFERENCE_SIDECAR_SUFFIX,
        "Outcome of fetching the feed's transcript (URL, format, status).",
    )

    failures = _path(FAILURES_DIR + "/{key}.json", "Failed attempts: kind, reason, run.")
    link = _path(LINKS_DIR + "/{key}.json", "The upload or published episode with this audio.")

    def reference(self, suffix: str) -> str:
        """A stored reference transcript (``suffix`` without the dot: ``srt``, ``txt``)."""
        return f"{REFERENCES_DIR}/{self.key}.{suffix}"

    comparison_markdown = _path("comparisons/{key}.md")
    comparison_csv = _path("comparisons/{key}.csv")
