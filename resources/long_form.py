"""Long-form decoding: bounded memory, and no speech lost to Whisper's long-form failures.

Handing a whole episode to ``WhisperModel.transcribe`` computes the log-Mel spectrogram of
all of it at once, so memory grows with the episode; and Whisper's window-by-window,
conditioned decoding fails in ways that only show on long audio (a window skipped after a
failed temperature fallback that also looks like silence, a repetitive hallucination, and
the windows it conditions). ``docs/benchmarks.md`` has what this cost before.

So the engine decodes an episode as follows:

1. *VAD once* for the whole episode (``resources.vad``, streamed).
2. *Blocks*: the speech regions are grouped into blocks of at most ``block_seconds``
   cut in the silence between regions, and each block is one faster-whisper call with the
   same settings as a bare call (VAD inside the block included). Memory is bounded by the
   block, not the episode; the tail of the previous block's text is the next block's
   prompt, as ``condition_on_previous_text`` would have it.
3. *Failures dropped*: segments whose text compresses too well (a failed fallback's
   repetition) and verbatim repeats of the segment before are removed.
4. *Holes decoded again*: any stretch of VAD speech of ``hole_seconds`` or more with no
   word is decoded again on its own, without conditioning and without a prompt, and the
   words found are merged in when the decode passes Whisper's own quality thresholds.

What was done is counted in ``AsrResult.details``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resources.audio import SAMPLE_RATE, AudioSource
from resources.schema import AsrSegment, Word
from resources.vad import SpeechRegion, regions_from_probabilities, speech_probabilities

PROMPT_WORDS = 150  # previous text carried into the next block (Whisper reads ~224 tokens)
HOLE_MARGIN = 0.25  # s of audio added around a hole when it is decoded again
WORD_SLACK = 0.3  # s around each word that counts as covered (timestamps are approximate)

DecodeFn = Callable[[np.ndarray, dict[str, Any]], tuple[Iterable[Any], Any]]
"""Decode a waveform with per-call faster-whisper options: (segments, TranscriptionInfo)."""


@dataclass(frozen=True, slots=True)
class LongFormOptions:
    """How an episode is cut and repaired; defaults measured on generated hour-long episodes.

    ``block_seconds``: each block starts a new decoding pass, whose 30 s windows fall
    elsewhere than in one pass over the episode, so the text differs a little at random;
    15 minutes keeps those restarts few (an episode up to 15 minutes is one faster-whisper
    call, as bare) while a block's working memory stays near 0.3 GB.
    """

    block_seconds: float = 900.0
    hole_seconds: float = 2.0
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6


@dataclass(slots=True)
class Block:
    """A stretch of the episode decoded by one faster-whisper call (samples)."""

    start: int
    end: int
    regions: list[SpeechRegion] = field(default_factory=list)


@dataclass(slots=True)
class Repairs:
    """What the long-form pass did, for the transcript's metadata."""

    blocks: int = 0
    dropped_repetitive: int = 0
    dropped_repeats: int = 0
    holes: int = 0
    recovered_stretches: int = 0
    recovered_words: int = 0
    hole_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "blocks": self.blocks,
            "dropped_repetitive_segments": self.dropped_repetitive,
            "dropped_repeated_segments": self.dropped_repeats,
            "speech_stretches_without_words": self.holes,
            "recovered_stretches": self.recovered_stretches,
            "recovered_words": self.recovered_words,
            "unrecovered_stretches": self.holes - self.recovered_stretches,
            "seconds_without_words_before_recovery": round(self.hole_seconds, 2),
        }


def split_long_regions(
    regions: list[SpeechRegion], probs: np.ndarray, max_seconds: float, window: int = 512
) -> list[SpeechRegion]:
    """Cut regions longer than ``max_seconds`` where the voice is least likely (a pause)."""
    limit = int(max_seconds * SAMPLE_RATE)
    out: list[SpeechRegion] = []
    for region in regions:
        start = region.start
        while region.end - start > limit:
            lo, hi = (start + limit // 2) // window, (start + limit) // window
            cut = (lo + int(np.argmin(probs[lo:hi]))) * window
            out.append(SpeechRegion(start, cut))
            start = cut
        out.append(SpeechRegion(start, region.end))
    return out


def plan_blocks(regions: list[SpeechRegion], n_samples: int, block_seconds: float) -> list[Block]:
    """Group consecutive regions into blocks of at most ``block_seconds``, cut in silence."""
    limit = int(block_seconds * SAMPLE_RATE)
    blocks: list[Block] = []
    for region in regions:
        if blocks and region.end - blocks[-1].regions[0].start <= limit:
            blocks[-1].regions.append(region)
        else:
            blocks.append(Block(0, 0, [region]))
    for i, block in enumerate(blocks):  # boundaries halfway through the silence between
        first, last = block.regions[0], block.regions[-1]
        block.start = 0 if i == 0 else (blocks[i - 1].regions[-1].end + first.start) // 2
        block.end = (
            n_samples if i + 1 == len(blocks) else (last.end + blocks[i + 1].regions[0].start) // 2
        )
    return blocks


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def drop_failures(
    segments: list[AsrSegment], options: LongFormOptions, repairs: Repairs
) -> list[AsrSegment]:
    """Remove failed-fallback repetitions and verbatim repeats of the previous segment."""
    kept: list[AsrSegment] = []
    for seg in segments:
        if compression_ratio(seg.text.strip()) > options.compression_ratio_threshold:
            repairs.dropped_repetitive += 1
            continue
        text = normalised(seg.text)
        if kept and len(text.split()) >= 3 and text == normalised(kept[-1].text):
            repairs.dropped_repeats += 1
            continue
        kept.append(seg)
    return kept


def find_holes(
    regions: list[SpeechRegion], words: list[Word], min_seconds: float
) -> list[tuple[float, float]]:
    """Stretches of VAD speech (seconds) of at least ``min_seconds`` with no word in them."""
    covered = sorted((w.start - WORD_SLACK, w.end + WORD_SLACK) for w in words)
    holes: list[tuple[float, float]] = []
    j = 0
    for region in regions:
        start, end = region.seconds
        cursor = start
        while j < len(covered) and covered[j][1] < start:
            j += 1
        k = j
        while k < len(covered) and covered[k][0] < end:
            a, b = covered[k]
            if a - cursor >= min_seconds:
                holes.append((cursor, a))
            cursor = max(cursor, b)
            k += 1
        if end - cursor >= min_seconds:
            holes.append((cursor, end))
    return holes


def prompt_from(segments: list[AsrSegment], fallback: str | None) -> str | None:
    """The last words written, as the next block's prompt (conditioning across blocks)."""
    words = " ".join(seg.text.strip() for seg in segments[-12:]).split()
    return " ".join(words[-PROMPT_WORDS:]) or fallback


def acceptable(seg: Any, options: LongFormOptions) -> bool:
    """Whisper's own quality gates, applied to a segment decoded again."""
    return (
        bool(seg.words)
        and seg.compression_ratio <= options.compression_ratio_threshold
        and seg.avg_logprob > options.log_prob_threshold
        and not (
            seg.no_speech_prob > options.no_speech_threshold
            and seg.avg_logprob < options.log_prob_threshold
        )
    )


def to_segment(seg: Any, offset: float = 0.0) -> AsrSegment:
    """Copy a faster-whisper Segment into our data model, shifted by ``offset`` seconds."""
    words = [
        Word(
            start=float(w.start) + offset,
            end=float(w.end) + offset,
            text=w.word,
            probability=float(w.probability),
        )
        for w in (seg.words or [])
    ]
    return AsrSegment(
        start=float(seg.start) + offset,
        end=float(seg.end) + offset,
        text=seg.text,
        words=words,
        avg_logprob=float(seg.avg_logprob),
        no_speech_prob=float(seg.no_speech_prob),
    )


def recover_holes(
    waveform: AudioSource,
    holes: list[tuple[float, float]],
    decode: Callable[[np.ndarray, dict[str, Any]], Iterable[Any]],
    options: LongFormOptions,
    repairs: Repairs,
) -> list[AsrSegment]:
    """Decode each hole on its own (no conditioning, no prompt); keep words inside it."""
    recovered: list[AsrSegment] = []
    for start, end in holes:
        a = max(0, int((start - HOLE_MARGIN) * SAMPLE_RATE))
        b = min(len(waveform), int((end + HOLE_MARGIN) * SAMPLE_RATE))
        offset = a / SAMPLE_RATE
        overrides = {
            "condition_on_previous_text": False,
            "initial_prompt": None,
            "vad_filter": False,
            "vad_parameters": None,
        }
        found = 0
        for seg in decode(waveform[a:b], overrides):
            if not acceptable(seg, options):
                continue
            seg = to_segment(seg, offset)
            seg.words = [w for w in seg.words if start <= 0.5 * (w.start + w.end) <= end]
            if seg.words:
                seg.text = "".join(w.text for w in seg.words)
                recovered.append(seg)
                found += len(seg.words)
        if found:
            repairs.recovered_stretches += 1
            repairs.recovered_words += found
    return recovered


@dataclass(slots=True)
class LongFormResult:
    segments: list[AsrSegment]
    language: str | None
    details: dict[str, Any]


def transcribe_long_form(
    waveform: AudioSource,
    decode: DecodeFn,
    *,
    vad_options: dict[str, Any],
    prompt: str | None,
    carry_prompt: bool,
    options: LongFormOptions | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> LongFormResult:
    """Decode a whole episode block by block, drop failures, and decode holes again."""
    options = options or LongFormOptions()
    duration = len(waveform) / SAMPLE_RATE
    probs = speech_probabilities(waveform)
    regions = regions_from_probabilities(probs, len(waveform), **vad_options)
    regions = split_long_regions(regions, probs, options.block_seconds)
    blocks = plan_blocks(regions, len(waveform), options.block_seconds)
    repairs = Repairs(blocks=len(blocks))

    segments: list[AsrSegment] = []
    language: str | None = None
    extra: dict[str, Any] = {"initial_prompt": prompt}
    for block in blocks:
        found, info = decode(waveform[block.start : block.end], extra)
        offset = block.start / SAMPLE_RATE
        block_segments = drop_failures([to_segment(s, offset) for s in found], options, repairs)
        segments.extend(block_segments)
        if language is None:  # detect once, then keep every block in that language
            language = info.language
            extra["language"] = language
        if carry_prompt:
            extra["initial_prompt"] = prompt_from(block_segments, prompt)
        if progress is not None:
            progress(block.end / SAMPLE_RATE, duration)

    holes = find_holes(regions, [w for s in segments for w in s.words], options.hole_seconds)
    repairs.holes = len(holes)
    repairs.hole_seconds = sum(b - a for a, b in holes)
    language_only = {"language": language} if language else {}
    recovered = recover_holes(
        waveform,
        holes,
        lambda audio, overrides: decode(audio, {**overrides, **language_only})[0],
        options,
        repairs,
    )
    segments = sorted(segments + recovered, key=lambda s: (s.start, s.end))
    details = {
        "speech_regions": len(regions),
        "speech_seconds": round(sum(r.duration for r in regions), 2),
        **repairs.as_dict(),
    }
    return LongFormResult(segments, language, details)
