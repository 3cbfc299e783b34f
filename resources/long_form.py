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
   same settings as a bare call. Its VAD regions go with it (``speech_chunks``), so the
   audio is not run through the VAD twice. Memory is bounded by the
   block, not the episode. Each block starts as a fresh call does, with the episode's
   prompt only: carrying the previous block's last 150 words as its prompt made tiny.en's
   conditioned decoding skip speech (60 minutes, 5 blocks: 791 s of speech without words
   after the first pass against 10.7 s without the carried text; WER 0.316 against 0.272).
3. *Failures dropped*: segments whose text compresses too well (a failed fallback's
   repetition) and verbatim repeats of the segment before are removed.
4. *Holes decoded again*: any stretch of VAD speech of ``hole_seconds`` or more with no
   word is decoded again on its own, without conditioning and without a prompt, and the
   words found are merged in when the decode passes Whisper's own quality thresholds. A
   word timed over more than ``LONGEST_WORD_SECONDS`` (alignment stretched it across a
   timestamp jump) covers only its ends, so it cannot hide the stretch it spans. What is
   still without words after a round (a partial recovery) is decoded again, up to
   ``recovery_rounds`` rounds; a stretch is never decoded twice.

What was done is counted in ``AsrResult.details``, and the counts are taken on the final
words: a stretch is ``recovered`` only when the final transcript leaves no word-less
stretch of ``hole_seconds`` in it, ``partly_recovered`` when it holds words but still
has one, ``unrecovered`` when it holds none.
"""

from __future__ import annotations

import bisect
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resources.audio import SAMPLE_RATE, AudioSource
from resources.intervals import LONGEST_WORD_SECONDS, Interval, word_spans
from resources.schema import AsrSegment, Word
from resources.vad import SpeechRegion, regions_from_probabilities, speech_probabilities

DECODE_WINDOW_SECONDS = 30.0  # Whisper's input window: the longest clip a batched decode takes
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
    recovery_rounds: int = 3


@dataclass(slots=True)
class Block:
    """A stretch of the episode decoded by one faster-whisper call (samples)."""

    start: int
    end: int
    regions: list[SpeechRegion] = field(default_factory=list)


@dataclass(slots=True)
class Repairs:
    """What the long-form pass did, for the transcript's metadata.

    ``holes`` are the first pass's word-less speech stretches; ``remaining`` those of the
    final words, so the outcome of each hole is read off the transcript that is written.
    """

    blocks: int = 0
    dropped_repetitive: int = 0
    dropped_repeats: int = 0
    holes: list[Interval] = field(default_factory=list)
    rounds: int = 0
    decoded_again: int = 0
    decoded_carefully: int = 0
    recovered_words: int = 0
    remaining: list[Interval] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "blocks": self.blocks,
            "dropped_repetitive_segments": self.dropped_repetitive,
            "dropped_repeated_segments": self.dropped_repeats,
            "speech_stretches_without_words": len(self.holes),
            "seconds_without_words_before_recovery": round(seconds(self.holes), 2),
            "recovery_rounds": self.rounds,
            "stretches_decoded_again": self.decoded_again,
            "stretches_decoded_carefully": self.decoded_carefully,
            "recovered_words": self.recovered_words,
            "recovered_stretches": self.outcomes.get("recovered", 0),
            "partly_recovered_stretches": self.outcomes.get("partly_recovered", 0),
            "unrecovered_stretches": self.outcomes.get("unrecovered", 0),
            "speech_stretches_without_words_after_recovery": len(self.remaining),
            "seconds_without_words_after_recovery": round(seconds(self.remaining), 2),
            "longest_speech_without_words": round(
                max((b - a for a, b in self.remaining), default=0.0), 2
            ),
        }


def seconds(intervals: list[Interval]) -> float:
    return sum(b - a for a, b in intervals)


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
            around = probs[lo:hi]
            cut = (lo + int(np.argmin(around))) * window if len(around) else start + limit
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
    """Stretches of VAD speech (seconds) of at least ``min_seconds`` with no word in them.

    A word longer than ``LONGEST_WORD_SECONDS`` covers only its ends (``word_spans``).
    """
    covered = sorted(word_spans(((w.start, w.end) for w in words), slack=WORD_SLACK))
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
    holes: list[Interval],
    decode: Callable[[np.ndarray, dict[str, Any]], Iterable[Any]],
    options: LongFormOptions,
    repairs: Repairs,
    careful: Callable[[np.ndarray, dict[str, Any]], Iterable[Any]] | None = None,
) -> list[AsrSegment]:
    """Decode each hole on its own (no conditioning, no prompt); keep words inside it.

    A hole that yields no acceptable word is decoded once more by ``careful`` where given
    (for a greedy or batched profile: beam search with temperature fallback), since its
    decoder has just failed on that very audio.
    """
    recovered: list[AsrSegment] = []
    overrides = {
        "condition_on_previous_text": False,
        "initial_prompt": None,
        "vad_filter": False,
        "vad_parameters": None,
    }
    for start, end in holes:
        a = max(0, int((start - HOLE_MARGIN) * SAMPLE_RATE))
        b = min(len(waveform), int((end + HOLE_MARGIN) * SAMPLE_RATE))
        repairs.decoded_again += 1
        found = words_inside(decode(waveform[a:b], overrides), a / SAMPLE_RATE, start, end, options)
        if not found and careful is not None:
            repairs.decoded_carefully += 1
            found = words_inside(
                careful(waveform[a:b], overrides), a / SAMPLE_RATE, start, end, options
            )
        recovered.extend(found)
        repairs.recovered_words += sum(len(seg.words) for seg in found)
    return recovered


def words_inside(
    decoded: Iterable[Any], offset: float, start: float, end: float, options: LongFormOptions
) -> list[AsrSegment]:
    """The acceptable decoded segments, in episode time, cut to the words in start-end."""
    kept: list[AsrSegment] = []
    for seg in decoded:
        if not acceptable(seg, options):
            continue
        seg = to_segment(seg, offset)
        seg.words = [w for w in seg.words if start <= 0.5 * (w.start + w.end) <= end]
        if seg.words:
            seg.text = "".join(w.text for w in seg.words)
            kept.append(seg)
    return kept


def all_words(segments: list[AsrSegment]) -> list[Word]:
    return [w for s in segments for w in s.words]


def repair_holes(
    waveform: AudioSource,
    regions: list[SpeechRegion],
    segments: list[AsrSegment],
    decode: Callable[[np.ndarray, dict[str, Any]], Iterable[Any]],
    options: LongFormOptions,
    repairs: Repairs,
    careful: Callable[[np.ndarray, dict[str, Any]], Iterable[Any]] | None = None,
) -> list[AsrSegment]:
    """Decode word-less speech again until none is left or a round finds nothing new.

    Each round decodes only stretches not decoded before (what a partial recovery left is
    other audio, so its decode differs), then the outcome of every first-pass hole is
    counted on the final words.
    """
    segments = sorted(segments, key=lambda s: (s.start, s.end))
    repairs.holes = pending = find_holes(regions, all_words(segments), options.hole_seconds)
    tried: set[tuple[float, float]] = set()
    for _ in range(options.recovery_rounds):
        pending = [h for h in pending if (round(h[0], 2), round(h[1], 2)) not in tried]
        if not pending:
            break
        tried.update((round(a, 2), round(b, 2)) for a, b in pending)
        repairs.rounds += 1
        found = recover_holes(waveform, pending, decode, options, repairs, careful)
        if not found:
            break
        segments = sorted(segments + found, key=lambda s: (s.start, s.end))
        trim_stretched_words(sorted(all_words(segments), key=lambda w: (w.start, w.end)))
        pending = find_holes(regions, all_words(segments), options.hole_seconds)
    words = sorted(all_words(segments), key=lambda w: (w.start, w.end))
    repairs.remaining = find_holes(regions, words, options.hole_seconds)
    repairs.outcomes = hole_outcomes(repairs.holes, repairs.remaining, words, options)
    return segments


def trim_stretched_words(words: list[Word]) -> None:
    """Move a word timed over a skipped stretch out of the words since recovered inside it.

    Only words longer than ``LONGEST_WORD_SECONDS`` are touched. The word keeps the larger
    free end of its span (at most ``LONGEST_WORD_SECONDS`` of it): alignment stretched one
    of its ends over the skipped speech, and that end is where other words now are.
    ``words`` is sorted by start.
    """
    starts = [w.start for w in words]
    for i, word in enumerate(words):
        if word.end - word.start <= LONGEST_WORD_SECONDS:
            continue
        inside = [
            w for w in words[i + 1 : bisect.bisect_left(starts, word.end)] if w.end <= word.end
        ]
        if not inside:
            continue
        first, last = min(w.start for w in inside), max(w.end for w in inside)
        if word.end - last >= first - word.start:
            word.start = min(word.end, max(last, word.end - LONGEST_WORD_SECONDS))
        else:
            word.end = max(word.start, min(first, word.start + LONGEST_WORD_SECONDS))


def hole_outcomes(
    holes: list[Interval], remaining: list[Interval], words: list[Word], options: LongFormOptions
) -> dict[str, int]:
    """Each first-pass hole as the final words leave it: recovered, partly or not at all."""
    # A stretched word's middle lies in the hole it spans: it is not speech found there.
    middles = sorted(
        0.5 * (w.start + w.end) for w in words if w.end - w.start <= LONGEST_WORD_SECONDS
    )
    outcomes = {"recovered": 0, "partly_recovered": 0, "unrecovered": 0}
    for a, b in holes:
        still_open = any(min(b, d) - max(a, c) >= options.hole_seconds for c, d in remaining)
        inside = bisect.bisect_right(middles, b) > bisect.bisect_left(middles, a)
        if not still_open:
            outcomes["recovered"] += 1
        elif inside:
            outcomes["partly_recovered"] += 1
        else:
            outcomes["unrecovered"] += 1
    return outcomes


@dataclass(slots=True)
class LongFormResult:
    segments: list[AsrSegment]
    language: str | None
    details: dict[str, Any]


def speech_regions_of(
    waveform: AudioSource, vad_options: dict[str, Any], options: LongFormOptions
) -> list[SpeechRegion]:
    """The episode's VAD speech regions, none longer than a block."""
    return speech_of(waveform, vad_options, options)[0]


def speech_of(
    waveform: AudioSource, vad_options: dict[str, Any], options: LongFormOptions
) -> tuple[list[SpeechRegion], np.ndarray]:
    """The episode's VAD speech regions (none longer than a block) and Silero's speech
    probability per 512-sample window, which tells where a long region may be cut."""
    probs = speech_probabilities(waveform)
    regions = regions_from_probabilities(probs, len(waveform), **vad_options)
    return split_long_regions(regions, probs, options.block_seconds), probs


def transcribe_long_form(
    waveform: AudioSource,
    decode: DecodeFn,
    *,
    vad_options: dict[str, Any],
    prompt: str | None,
    options: LongFormOptions | None = None,
    progress: Callable[[float, float], None] | None = None,
    careful: DecodeFn | None = None,
) -> LongFormResult:
    """Decode a whole episode block by block, drop failures, and decode holes again.

    ``careful``: the decoder for a hole that ``decode`` found no word in (see
    ``recover_holes``); None where ``decode`` already is the careful one.
    """
    options = options or LongFormOptions()
    duration = len(waveform) / SAMPLE_RATE
    regions, probs = speech_of(waveform, vad_options, options)
    blocks = plan_blocks(regions, len(waveform), options.block_seconds)
    repairs = Repairs(blocks=len(blocks))

    segments: list[AsrSegment] = []
    language: str | None = None
    extra: dict[str, Any] = {"initial_prompt": prompt}
    for block in blocks:
        # Pieces of at most one decoding window, cut in pauses: the batched pipeline decodes
        # each as a clip; the sequential one joins them again (the same samples).
        pieces = split_long_regions(block.regions, probs, DECODE_WINDOW_SECONDS)
        chunks = [{"start": r.start - block.start, "end": r.end - block.start} for r in pieces]
        found, info = decode(waveform[block.start : block.end], {**extra, "speech_chunks": chunks})
        offset = block.start / SAMPLE_RATE
        decoded = []
        for seg in found:  # faster-whisper decodes lazily, window by window
            decoded.append(to_segment(seg, offset))
            if progress is not None:
                progress(min(decoded[-1].end, duration), duration)
        block_segments = drop_failures(decoded, options, repairs)
        segments.extend(block_segments)
        if language is None:  # detect once, then keep every block in that language
            language = info.language
            extra["language"] = language
        if progress is not None:
            progress(block.end / SAMPLE_RATE, duration)

    language_only = {"language": language} if language else {}

    def in_language(fn: DecodeFn) -> Callable[[np.ndarray, dict[str, Any]], Iterable[Any]]:
        return lambda audio, overrides: fn(audio, {**overrides, **language_only})[0]

    segments = repair_holes(
        waveform,
        regions,
        segments,
        in_language(decode),
        options,
        repairs,
        in_language(careful) if careful is not None else None,
    )
    details = {
        "speech_regions": len(regions),
        "speech_seconds": round(sum(r.duration for r in regions), 2),
        **repairs.as_dict(),
    }
    return LongFormResult(segments, language, details)
