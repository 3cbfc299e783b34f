"""Evaluation: reference loaders and metrics (WER, DER, cpWER, WDER), free of Dagster.

``references`` turns any reference file into one ``Reference``; ``metrics`` scores the
pipeline's output against it; ``normalise`` holds the text normalisation both sides share.
pyannote.metrics is imported only when DER is computed, so importing this package is cheap.
"""

from evaluation.metrics import (
    CpWerResult,
    DerResult,
    WderResult,
    WerResult,
    cp_word_error_rate,
    diarisation_error_rate,
    word_diarisation_error_rate,
    word_error_rate,
)
from evaluation.normalise import normalise_text
from evaluation.references import (
    Reference,
    ReferenceFormatError,
    load_rag_corrected,
    load_rag_markdown,
    load_reference,
    load_rttm,
    load_stm,
    load_subtitles,
    load_text,
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
    "load_rag_corrected",
    "load_rag_markdown",
    "load_reference",
    "load_rttm",
    "load_stm",
    "load_subtitles",
    "load_text",
    "normalise_text",
    "word_diarisation_error_rate",
    "word_error_rate",
]
