"""Engine benchmark: overhead vs bare faster-whisper, real-time factors, peak memory.

All figures come from one process and one audio file so the ratios compare like with
like. The engine's ASR and a bare ``WhisperModel.transcribe`` call with the same
settings run interleaved, ``--repeats`` times each, on the same loaded model (model
loading is timed separately): the ratio isolates what our wrapper adds.

    .venv/bin/python bench/engine.py                      # generated 88 s dialogue, cpu-dev
    .venv/bin/python bench/engine.py --audio ep.mp3 --profile gpu-prod --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resources.asr import AsrSettings, effective_device_and_type, transcribe_options  # noqa: E402
from resources.audio import SAMPLE_RATE, decode_audio  # noqa: E402
from resources.diarisation import PyannoteDiariser  # noqa: E402
from twiml_assets.cli import asr_from_args  # noqa: E402
from twiml_assets.speech.merge import merge_words  # noqa: E402

T = TypeVar("T")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``fn(*args)`` and the seconds it took."""
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started


def bare_faster_whisper(model: Any, waveform: np.ndarray, s: AsrSettings) -> None:
    """The reference: faster-whisper called directly with the engine's settings."""
    from faster_whisper import BatchedInferencePipeline

    options = transcribe_options(s) | ({"batch_size": s.batch_size} if s.batched else {})
    segments, _ = (BatchedInferencePipeline(model) if s.batched else model).transcribe(
        waveform, **options
    )
    for _ in segments:  # decoding happens as the segments are read
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", help="audio file (default: a generated 88 s dialogue)")
    parser.add_argument("--profile")
    parser.add_argument("--model")
    parser.add_argument("--compute-type")
    parser.add_argument("--device")
    parser.add_argument("--batched", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (at least 1)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        audio = args.audio
        if audio is None:
            from twiml_assets.demo.synth import synthesize_dialogue

            audio = synthesize_dialogue(Path(tmp) / "dialogue.wav").audio_path

        waveform, decode_s = timed(decode_audio, audio)
    duration = len(waveform) / SAMPLE_RATE

    asr = asr_from_args(args)
    settings = asr.settings()
    model, load_s = timed(asr.load)
    device, compute_type = effective_device_and_type(settings.device, settings.compute_type)

    bare_faster_whisper(model, waveform, settings)  # warm-up (allocators, VAD session)
    engine_times, bare_times = [], []
    for _ in range(args.repeats):
        bare_times.append(timed(bare_faster_whisper, model, waveform, settings)[1])
        result, seconds = timed(asr.transcribe, waveform)
        engine_times.append(seconds)
    rss_after_asr = peak_rss_mb()

    diariser = PyannoteDiariser.for_profile(args.profile, device=args.device)
    diariser.diarise(waveform[: SAMPLE_RATE * 10])  # load models outside the timing
    diarisation, diar_s = timed(diariser.diarise, waveform)
    transcript, merge_s = timed(merge_words, result, diarisation, "bench")

    engine_asr, bare_asr = statistics.median(engine_times), statistics.median(bare_times)
    figures = {
        "audio_seconds": round(duration, 2),
        "model": settings.model,
        "device": device,
        "compute_type": compute_type,
        "beam_size": settings.beam_size,
        "batched": settings.batched,
        "model_load_s": round(load_s, 3),
        "asr_engine_s": round(engine_asr, 3),
        "asr_bare_faster_whisper_s": round(bare_asr, 3),
        "engine_over_bare_ratio": round(engine_asr / bare_asr, 3),
        "rtf_decode": round(decode_s / duration, 4),
        "rtf_asr": round(engine_asr / duration, 4),
        "rtf_diarisation": round(diar_s / duration, 4),
        "rtf_merge": round(merge_s / duration, 6),
        "rtf_total": round((decode_s + engine_asr + diar_s + merge_s) / duration, 4),
        "speakers": len(transcript.speakers),
        "words": len(transcript.words),
        "peak_rss_after_asr_mb": round(rss_after_asr, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "repeats": args.repeats,
    }
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
