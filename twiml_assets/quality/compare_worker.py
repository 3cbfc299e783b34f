"""Worker process of ``compare``: one configuration over a pre-decoded waveform.

Usage: ``python -m twiml_assets.quality.compare_worker WAVEFORM.npy CONFIG.json OUT.json``.
Runs in its own process so that its peak RSS (``ru_maxrss``) and timings are its own.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np


def main(waveform_path: str, config_path: str, out_path: str) -> None:
    from resources.asr import WhisperASR
    from resources.diarisation import PyannoteDiariser
    from resources.schema import SpeakerTurn, Utterance, dump
    from twiml_assets.speech.engine import run_models

    config = json.loads(Path(config_path).read_text())
    waveform = np.load(waveform_path)
    asr = WhisperASR(**config["asr"])
    diariser = PyannoteDiariser(**config["diarisation"])
    asr.load()  # model loading is not part of the timed transcription
    # One stage after the other: each configuration's stage times and peak RSS are its own.
    transcript, asr_result, diarisation, _ = run_models(
        waveform, "compare", asr, diariser, overlap=False
    )
    report = {
        "asr_config": asr_result.config,
        "asr_seconds": asr_result.seconds,
        "diarisation_seconds": diarisation.seconds,
        "speakers": transcript.speakers,
        "utterances": dump(transcript.utterances, list[Utterance]),
        "turns": dump(diarisation.turns, list[SpeakerTurn]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(out_path).write_text(json.dumps(report))


if __name__ == "__main__":
    try:
        main(*sys.argv[1:4])
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
