"""Evaluation, free of Dagster: references, their lookup, metrics and reports.

``loaders`` turns any reference file into one ``Reference`` (``references``), with the
formats in ``formats`` and ``rag_formats``; ``lookup`` finds an episode's references and
``feed_transcript`` fetches the publisher's; ``metrics`` scores the pipeline's output and
``reports`` builds the per-episode record every caller scores with; ``normalise`` holds the
text normalisation both sides share. pyannote.metrics is imported only when DER is
computed, so importing this package is cheap.
"""

from evaluation.formats import load_podcast_json, load_rttm, load_stm, load_subtitles, load_text
from evaluation.loaders import load_reference, load_references
from evaluation.metrics import DerResult, WerResult, diarisation_error_rate, word_error_rate
from evaluation.normalise import normalise_text
from evaluation.rag_formats import load_rag_corrected, load_rag_markdown
from evaluation.references import Reference, ReferenceFormatError
from evaluation.speaker_metrics import (
    CpWerResult,
    WderResult,
    cp_word_error_rate,
    word_diarisation_error_rate,
)

__all__ = [
    "CpWerResult",
    "DerResult",
    "Reference",
    "ReferenceFormatError",
    "WderResult",
    "WerResult",
    "cp_word_error_rate",
    "diarisation_error_rate",
    "load_podcast_json",
    "load_rag_corrected",
    "load_rag_markdown",
    "load_reference",
    "load_references",
    "load_rttm",
    "load_stm",
    "load_subtitles",
    "load_text",
    "normalise_text",
    "word_diarisation_error_rate",
    "word_error_rate",
]
