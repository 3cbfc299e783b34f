"""Comparing model output across machines: exact where it is deterministic, else within bounds.

numpy's OpenBLAS (the log-Mel filterbank product, its kernel chosen by CPU model),
CTranslate2's int8 GEMM (oneDNN on non-Intel CPUs, MKL on Intel ones; oneDNN's kernel chosen
by instruction set) and PyTorch's ATen kernels give last-bit differences from one CPU to
another, and Whisper's beam search and cross-attention word alignment amplify them
into other word probabilities, word boundaries and, rarely, other words. So a test of model
output compares:

- exactly: file sets, JSON structure and keys, speaker labels and counts, anything rendered
  from a fixed transcript;
- within bounds measured across instruction sets (``docs/benchmarks.md``, "Portability"):
  text by WER, times of the same words by seconds, speaker attribution by the share of words.

``make test-portable`` reruns the model-output tests (marker ``model_output``) under the
environment settings of ``PORTABILITY_SETTINGS``, which make this machine take the kernels
another CPU would take.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evaluation.metrics import word_error_rate
from resources.schema import Word

# Bounds for the demo episodes' words against the golden files, pooled over the four episodes
# (about 220 words that both runs recognised). Measured across native, AVX2, AVX-512 without
# VNNI, SSE4.1 and MKL kernels (docs/benchmarks.md, "Portability"): pooled WER <= 0.035,
# one episode's WER <= 0.071, >= 90.5 % of words within 0.05 s, >= 98.2 % within 0.25 s, no
# word moved more than 0.78 s (a word start after a pause), the same speaker for every word.
# Each bound leaves about twice the spread seen.
TEXT_WER_BOUND = 0.07
"""WER of the pooled text against the golden text."""
EPISODE_WER_BOUND = 0.15
"""WER of one episode's text against its golden text (55-60 words: one word is 0.018)."""
WORD_TIME_TOLERANCE = 0.05
"""Seconds a word that both runs recognised may move (start and end) ..."""
WORD_TIME_SHARE = 0.80
"""... for at least this share of those words;"""
WORD_TIME_LOOSE_TOLERANCE = 0.25
WORD_TIME_LOOSE_SHARE = 0.95
"""... and WORD_TIME_LOOSE_TOLERANCE for this share;"""
WORD_TIME_BOUND = 1.5
"""... and no word may move more than this."""
SPEAKER_AGREEMENT = 0.95
"""Share of the words both runs recognised that must have the same speaker label."""
ENGINE_BARE_WER_MARGIN = 0.03
"""How much worse than bare faster-whisper the engine's WER may be on one 20-minute episode."""

PORTABILITY_SETTINGS: dict[str, dict[str, str]] = {
    # An AVX2-only x86-64 CPU (most laptops, AMD Zen 1-3, Intel servers before Ice Lake):
    # numpy's OpenBLAS Haswell kernels (the log-Mel filterbank product), oneDNN's AVX2 int8
    # GEMM in CTranslate2 and PyTorch, and AVX2 ATen/CTranslate2 kernels.
    "avx2": {
        "OPENBLAS_CORETYPE": "Haswell",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "CT2_FORCE_CPU_ISA": "AVX2",
    },
    # The narrowest x86 kernels (128-bit, as arm64's NEON): OpenBLAS's SSE3 (Prescott)
    # kernels, SSE4.1 oneDNN, generic ATen and CTranslate2 code.
    "sse41": {
        "OPENBLAS_CORETYPE": "Prescott",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "ATEN_CPU_CAPABILITY": "default",
        "CT2_FORCE_CPU_ISA": "GENERIC",
    },
}
"""What ``make test-portable`` reruns the model-output tests under (on an x86-64 CPU with
AVX2 or more: a kernel cap never adds instructions the CPU lacks, but OpenBLAS's Haswell
kernels need AVX2). Intel's path
(``CT2_USE_MKL=1``: MKL instead of oneDNN, as on every Intel CPU) is measured by
``bench/portability.py`` but left out here: on a non-Intel CPU MKL's int8 product is about
ten times slower, which makes the 20-minute episode take most of an hour."""


@dataclass(frozen=True)
class WordComparison:
    """How one run's words compare with another's (``expected`` → ``produced``); add them
    up to pool episodes."""

    expected_words: int
    errors: float
    time_shifts: tuple[float, ...]
    same_speaker: int

    def __add__(self, other: WordComparison) -> WordComparison:
        return WordComparison(
            self.expected_words + other.expected_words,
            self.errors + other.errors,
            self.time_shifts + other.time_shifts,
            self.same_speaker + other.same_speaker,
        )

    @property
    def wer(self) -> float:
        return self.errors / self.expected_words if self.expected_words else 0.0

    @property
    def matched(self) -> int:
        return len(self.time_shifts)

    def share_within(self, seconds: float) -> float:
        within = sum(1 for s in self.time_shifts if s <= seconds + 1e-9)
        return within / self.matched if self.matched else 1.0

    @property
    def largest_shift(self) -> float:
        return max(self.time_shifts, default=0.0)

    @property
    def speaker_agreement(self) -> float:
        return self.same_speaker / self.matched if self.matched else 1.0

    def problems(self, wer_bound: float = TEXT_WER_BOUND) -> list[str]:
        """What is out of bounds, in words a reader can act on; empty when all holds."""
        out = []
        if self.wer > wer_bound:
            out.append(f"WER {self.wer:.3f} > {wer_bound}")
        for seconds, share in (
            (WORD_TIME_TOLERANCE, WORD_TIME_SHARE),
            (WORD_TIME_LOOSE_TOLERANCE, WORD_TIME_LOOSE_SHARE),
        ):
            if self.share_within(seconds) < share:
                out.append(
                    f"{self.share_within(seconds):.1%} of words within {seconds} s (< {share:.0%})"
                )
        if self.largest_shift > WORD_TIME_BOUND:
            out.append(f"a word moved {self.largest_shift:.2f} s (> {WORD_TIME_BOUND} s)")
        if self.speaker_agreement < SPEAKER_AGREEMENT:
            out.append(f"speaker agreement {self.speaker_agreement:.1%} < {SPEAKER_AGREEMENT:.0%}")
        return out


def token(text: str) -> str:
    """A word as the alignment compares it: case and punctuation aside."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def compare_words(expected: Sequence[Word], produced: Sequence[Word]) -> WordComparison:
    """WER of the texts, and time shifts / speakers of the words recognised alike in both."""
    wer = word_error_rate("".join(w.text for w in expected), "".join(w.text for w in produced)).wer
    a, b = [token(w.text) for w in expected], [token(w.text) for w in produced]
    shifts: list[float] = []
    same_speaker = 0
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for i in range(block.size):
            x, y = expected[block.a + i], produced[block.b + i]
            shifts.append(max(abs(x.start - y.start), abs(x.end - y.end)))
            same_speaker += x.speaker == y.speaker
    return WordComparison(len(expected), wer * len(expected), tuple(shifts), same_speaker)


def corrected_words(doc: dict[str, Any]) -> list[Word]:
    """The words of a ``corrected.json`` document, each with its turn's speaker label."""
    return [
        Word(
            w["start"],
            w["end"],
            w["word"],
            w.get("probability", 1.0),
            doc["speakers"][d["speaker"]],
        )
        for d in doc["dialogs"]
        for w in d["words"]
    ]


def shape(value: Any) -> Any:
    """The structure of a JSON value: its keys and types, not its numbers, text or lengths."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        kinds = {repr(shape(v)) for v in value}
        return ["list", sorted(kinds)]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def main(argv: list[str] | None = None) -> int:
    """``make test-portable``: the model-output tests natively, then under each setting."""
    import os
    import subprocess
    import sys
    import time

    extra = sys.argv[1:] if argv is None else argv
    failed = []
    for name, env in {"native": {}, **PORTABILITY_SETTINGS}.items():
        shown = " ".join(f"{k}={v}" for k, v in env.items()) or "this CPU's own kernels"
        print(f"==> model-output tests, {name}: {shown}", flush=True)
        started = time.monotonic()
        command = [sys.executable, "-m", "pytest", "-q", "-m", "model_output"]
        # As make test: a file a worker, longest first (tests/conftest.py).
        command += ["-n", "auto", "--dist", "loadfile", "--no-loadscope-reorder", *extra]
        code = subprocess.call(command, env={**os.environ, **env})
        verdict = "passed" if code == 0 else f"FAILED (exit {code})"
        print(f"==> {name}: {verdict} in {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    print("model-output tests: " + (f"failed under {', '.join(failed)}" if failed else "passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
