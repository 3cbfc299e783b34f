"""Fingerprint benchmark: cost next to transcription, and matching against 800 episodes.

(a) One generated 60-minute episode (cached with ``bench/long_episode.py``'s episodes):
``fingerprint_file`` timed in a fresh process (its peak RSS and ffmpeg's), and the
engine's model step (decode, ASR, diarisation, merge; default CPU profile) on the first
``--transcribe-minutes`` of the same file, scaled linearly to the hour: the fingerprint's
share of the transcription time.

(b) 800 hour-sized stored fingerprints: the real hour's items, rotated and XOR-masked per
synthetic episode so each is distinct (one left as is), written as records and loaded back
(``load_all_fingerprints``), indexed (``FingerprintIndex``), and queried with a 10-minute
excerpt of the real one re-encoded at 64 kbit/s mono: index build, query, index memory.

    .venv/bin/python bench/fingerprint.py                        # 60 min, transcribe 10 min
    .venv/bin/python bench/fingerprint.py --transcribe-minutes 60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.long_episode import CACHE, episode  # noqa: E402
from resources.model_registry import default_profile  # noqa: E402
from resources.storage import StorageResource  # noqa: E402
from twiml_assets.audio.fingerprint import (  # noqa: E402
    Fingerprint,
    fingerprint_file,
    load_all_fingerprints,
    store_fingerprint,
)
from twiml_assets.audio.linking import FingerprintIndex  # noqa: E402
from twiml_assets.speech.model_step import measure  # noqa: E402

CHILD = """
import json, resource, sys, time
from twiml_assets.audio.fingerprint import fingerprint_file
started = time.perf_counter()
fp = fingerprint_file(sys.argv[1])
print(json.dumps({
    "seconds": time.perf_counter() - started,
    "items": len(fp.items),
    "duration": fp.duration,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "ffmpeg_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", *args], check=True)


def fingerprint_cost(audio: Path) -> dict[str, Any]:
    """``fingerprint_file`` in a fresh interpreter: time and peak memory of it alone."""
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(audio)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    return json.loads(out.stdout)


def transcription_cost(audio: Path, minutes: float, profile: str) -> dict[str, Any]:
    """The model step on the first ``minutes`` of ``audio``: seconds per audio second."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / f"first-{minutes:g}min.mp3"
        ffmpeg("-i", str(audio), "-t", str(minutes * 60), "-c", "copy", str(clip))
        step = measure(clip, profile)
    timings = step["timings"]  # "models" is the wall time of ASR and diarisation together
    seconds = timings["decode"] + timings["models"] + timings.get("merge", 0.0)
    return {"audio_s": step["duration"], "seconds": seconds, "timings": step["timings"]}


def synthetic_library(fp: Fingerprint, count: int, seed: int) -> dict[str, Fingerprint]:
    """``count`` distinct hour-sized fingerprints from one real one (the first kept as is)."""
    rng = np.random.default_rng(seed)
    library = {"ep-0": fp}
    for i in range(1, count):
        mask = np.uint32(rng.integers(1, 2**32, dtype=np.uint64))
        items = np.roll(fp.items, int(rng.integers(len(fp.items)))) ^ mask
        library[f"ep-{i}"] = Fingerprint(items, fp.duration)
    return library


def matching_cost(audio: Path, fp: Fingerprint, count: int) -> dict[str, Any]:
    library = synthetic_library(fp, count, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        storage = StorageResource(root=tmp)
        started = time.perf_counter()
        for key, item in library.items():
            store_fingerprint(storage, key, item)
        store_s = time.perf_counter() - started
        record_mb = sum(p.stat().st_size for p in Path(tmp).rglob("*.json")) / 1e6
        started = time.perf_counter()
        loaded = load_all_fingerprints(storage)
        load_s = time.perf_counter() - started
        excerpt = Path(tmp) / "excerpt.mp3"
        ffmpeg(
            "-ss", "1200", "-t", "600", "-i", str(audio), "-ac", "1", "-b:a", "64k", str(excerpt)
        )
        query = fingerprint_file(excerpt)
    assert len(loaded) == count
    index = FingerprintIndex()
    for key, item in loaded.items():
        index.add(key, item)
    started = time.perf_counter()
    index.candidates(query)  # the first read builds the sorted array
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    found = index.match(query)
    query_s = time.perf_counter() - started
    sampled = index.memory_bytes() - sum(f.items.nbytes for f in loaded.values())
    return {
        "episodes": count,
        "items_per_episode": len(fp.items),
        "store_s": round(store_s, 2),
        "records_mb": round(record_mb, 1),
        "load_all_s": round(load_s, 2),
        "index_build_s": round(build_s, 2),
        "query_s": round(query_s, 3),
        "match": None if found is None else found.__dict__,
        "index_memory_mb": round(index.memory_bytes() / 1e6, 1),
        "sampled_keys_mb": round(sampled / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--transcribe-minutes", type=float, default=10)
    parser.add_argument("--profile", default=default_profile())
    parser.add_argument("--episodes", type=int, default=800)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    audio, _ = episode(args.minutes, args.seed, 3, args.cache)
    fp_cost = fingerprint_cost(audio)
    print(json.dumps({"fingerprint": fp_cost}), flush=True)
    tr = transcription_cost(audio, min(args.transcribe_minutes, args.minutes), args.profile)
    print(json.dumps({"transcription": tr}), flush=True)
    rtf_transcribe = tr["seconds"] / tr["audio_s"]
    rtf_fingerprint = fp_cost["seconds"] / fp_cost["duration"]
    fp = fingerprint_file(audio)
    match = matching_cost(audio, fp, args.episodes)
    figures = {
        "audio_minutes": round(fp_cost["duration"] / 60, 1),
        "fingerprint_s": round(fp_cost["seconds"], 2),
        "fingerprint_rtf": round(rtf_fingerprint, 5),
        "fingerprint_peak_rss_mb": round(fp_cost["peak_rss_mb"]),
        "ffmpeg_peak_rss_mb": round(fp_cost["ffmpeg_peak_rss_mb"]),
        "profile": args.profile,
        "transcribed_minutes": round(tr["audio_s"] / 60, 1),
        "transcription_rtf": round(rtf_transcribe, 4),
        "transcription_s_scaled_to_episode": round(rtf_transcribe * fp_cost["duration"]),
        "fingerprint_share_of_transcription": round(rtf_fingerprint / rtf_transcribe, 4),
        **match,
    }
    if tr["audio_s"] < fp_cost["duration"] - 1:
        print(
            f"transcription measured on the first {tr['audio_s'] / 60:.1f} min and scaled "
            f"linearly to {fp_cost['duration'] / 60:.1f} min"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
