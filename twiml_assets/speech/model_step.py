"""The model step (decode → ASR → diarisation → merge) in a child process, measured.

Peak memory is a property of a process, so the long-audio benchmark and the memory test
run the step here, in a fresh interpreter, and read back its peak RSS, per-stage times
and output. ``--bare`` runs plain faster-whisper with the engine's resolved settings
instead: the baseline the engine's words are compared with.

    python -m twiml_assets.speech.model_step episode.mp3 out.json --profile cpu-dev [--bare]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engine(audio: str, profile: str | None) -> dict[str, Any]:
    from resources.asr import WhisperASR
    from resources.audio import open_waveform
    from resources.diarisation import PyannoteDiariser
    from resources.schema import Word, dump
    from twiml_assets.speech.engine import run_models

    started = time.perf_counter()
    waveform = open_waveform(audio)
    decode_s = time.perf_counter() - started
    asr = WhisperASR(profile=profile)
    diariser = PyannoteDiariser.for_profile(profile)
    transcript, asr_result, diarisation, timings = run_models(waveform, "bench", asr, diariser)
    return {
        "duration": transcript.duration,
        "timings": {"decode": decode_s, **timings},
        "words": dump(transcript.words, list[Word]),
        "turns": [[t.start, t.end, t.speaker] for t in diarisation.turns],
        "speakers": transcript.speakers,
        "asr_details": asr_result.details,
        "config": asr_result.config,
    }


def run_bare(audio: str, profile: str | None) -> dict[str, Any]:
    """faster-whisper alone, with exactly the settings the engine resolves to."""
    from faster_whisper import BatchedInferencePipeline
    from faster_whisper.audio import decode_audio

    from resources.asr import WhisperASR, transcribe_options

    asr = WhisperASR(profile=profile)
    s = asr.settings()
    model = asr.load()
    started = time.perf_counter()
    waveform = decode_audio(audio)
    decode_s = time.perf_counter() - started
    kwargs = transcribe_options(s)
    started = time.perf_counter()
    if s.batched:
        segments, _ = BatchedInferencePipeline(model).transcribe(
            waveform, batch_size=s.batch_size, **kwargs
        )
    else:
        segments, _ = model.transcribe(waveform, **kwargs)
    words = [
        {"word": w.word, "start": w.start, "end": w.end}
        for seg in segments
        for w in (seg.words or [])
    ]
    return {
        "duration": len(waveform) / 16_000,
        "timings": {"decode": decode_s, "asr": time.perf_counter() - started},
        "words": words,
    }


def measure(audio: str | Path, profile: str | None = None, bare: bool = False) -> dict[str, Any]:
    """Run the step (or bare faster-whisper) in a fresh interpreter; its output and peak RSS."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "step.json"
        command = [sys.executable, "-m", "twiml_assets.speech.model_step", str(audio), str(out)]
        command += ["--profile", profile] if profile else []
        command += ["--bare"] if bare else []
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("out")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--bare", action="store_true")
    args = parser.parse_args()
    result = (run_bare if args.bare else run_engine)(args.audio, args.profile)
    result["peak_rss_mb"] = peak_rss_mb()
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
