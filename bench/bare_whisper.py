"""Bare faster-whisper on one file, as a user of the library alone would run it.

The baseline of ``bench/long_episode.py``: a fresh process that imports nothing but
faster-whisper, loads the model, decodes the file and transcribes it with the options it is
given (the engine's resolved settings, written by the bench), then writes the words.
Imports and model load count in its wall time, as they do in the engine's.

    python bench/bare_whisper.py episode.mp3 settings.json words.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    audio, settings_path, out = sys.argv[1:4]
    settings = json.loads(Path(settings_path).read_text())
    import ctranslate2
    from faster_whisper import BatchedInferencePipeline, WhisperModel
    from faster_whisper.audio import decode_audio

    ctranslate2.set_random_seed(settings["seed"])  # as the engine seeds its fallback sampling
    model = WhisperModel(settings["model_path"], **settings["model"])
    started = time.perf_counter()
    waveform = decode_audio(audio)
    decoded = time.perf_counter()
    if settings["batch_size"]:
        pipeline = BatchedInferencePipeline(model)
        segments, _ = pipeline.transcribe(
            waveform, batch_size=settings["batch_size"], **settings["transcribe"]
        )
    else:
        segments, _ = model.transcribe(waveform, **settings["transcribe"])
    words = [
        {"word": w.word, "start": w.start, "end": w.end}
        for segment in segments
        for w in (segment.words or [])
    ]
    finished = time.perf_counter()
    result = {
        "duration": len(waveform) / 16_000,
        "timings": {"decode": decoded - started, "asr": finished - decoded},
        "words": words,
    }
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
