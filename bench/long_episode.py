"""Long episodes: the engine against bare faster-whisper, back to back, in one run.

For each generated episode (``twiml_assets.demo.synth_long``: three espeak-ng voices, turns
from a sentence to a minute, backchannels, overlaps, noise, 44.1 kHz stereo mp3) and each
profile, two fresh processes run one after the other on the same audio:

- the engine: the CLI, ``twiml-transcribe transcribe`` (decode, ASR and diarisation at the
  same time, merge, every output file written);
- bare faster-whisper with the same resolved settings (``bench/bare_whisper.py``, which
  imports only faster-whisper: ``WhisperModel.transcribe``, or ``BatchedInferencePipeline``
  where the profile is batched).

Printed per run: both processes' wall time (imports and model loads included) and their
ratio, WER of both, the longest stretch of reference speech without a word, peak RSS of
both, DER, cpWER, per-stage times (diarisation's split into segmentation, embedding and
clustering) and what the long-form pass repaired. Then, per profile, the mean WER of
each over all episodes. The machine's CPU model heads the output.

    .venv/bin/python bench/long_episode.py                          # the issue's table
    .venv/bin/python bench/long_episode.py --profiles cpu-fast --episodes 10:11
    .venv/bin/python bench/long_episode.py --profiles cpu-dev \\
        --episodes 10:31 15:32 20:33 30:34 60:35 --json accuracy.json   # accuracy, 5 seeds
    .venv/bin/python bench/long_episode.py --profiles cpu-dev --episodes 180:11 --no-bare
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.coverage import longest_without_words  # noqa: E402
from evaluation.metrics import diarisation_error_rate, word_error_rate  # noqa: E402
from evaluation.speaker_metrics import cp_word_error_rate  # noqa: E402
from resources.schema import SpeakerTurn, Utterance, Word, load  # noqa: E402
from twiml_assets.demo.synth_long import generate_long_episode  # noqa: E402

CACHE = Path.home() / ".cache" / "twiml-transcribe" / "bench"
DEFAULT_EPISODES = ["10:11", "60:11"]


def episode(minutes: float, seed: int, speakers: int, cache: Path) -> tuple[Path, Any]:
    """The generated episode (made once per minutes/seed/speakers, then reused)."""
    stem = cache / f"long-{minutes:g}min-s{seed}-{speakers}spk"
    audio, truth = stem.with_suffix(".mp3"), stem.with_suffix(".json")
    if not (audio.exists() and truth.exists()):
        ep = generate_long_episode(audio, minutes, speakers=speakers, seed=seed)
        truth.write_text(
            json.dumps(
                {"turns": [[t.start, t.end, t.speaker] for t in ep.turns], "lines": ep.lines}
            )
        )
    return audio, json.loads(truth.read_text())


def timed_process(command: list[str]) -> tuple[float, float]:
    """Run ``command`` to completion: (wall seconds, peak RSS in MB of that process)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)
    return wall, usage.ru_maxrss / 1024


def run_engine(audio: Path, profile: str, sequential: bool) -> dict[str, Any]:
    """The CLI in a fresh process; its full transcript record, wall time and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as out:
        command = [sys.executable, "-m", "twiml_assets.cli", "transcribe", str(audio)]
        command += ["--out", out, "--profile", profile, "--no-progress"]
        command += ["--sequential"] if sequential else []
        wall, rss = timed_process(command)
        (record_path,) = (  # transcripts/{key}.json; the RAG files have more dots
            path for path in Path(out, "transcripts").glob("*.json") if path.name.count(".") == 1
        )
        record = json.loads(record_path.read_text())
    return {"wall": wall, "peak_rss_mb": rss, "record": record}


def bare_settings(profile: str) -> dict[str, Any]:
    """The engine's resolved ASR settings as bare faster-whisper's arguments."""
    from resources.asr import DECODE_SEED, WhisperASR, effective_device_and_type, transcribe_options
    from resources.model_registry import resolve_whisper_model

    s = WhisperASR(profile=profile).settings()
    device, compute_type = effective_device_and_type(s.device, s.compute_type)
    return {
        "model_path": resolve_whisper_model(s.model)[0],
        "model": {"device": device, "compute_type": compute_type, "cpu_threads": s.cpu_threads},
        "transcribe": transcribe_options(s),
        "batch_size": s.batch_size if s.batched else 0,
        "seed": DECODE_SEED,
    }


def run_bare(audio: Path, profile: str) -> dict[str, Any]:
    """Bare faster-whisper in a fresh process; its words, wall time and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as out:
        settings, result = Path(out) / "settings.json", Path(out) / "bare.json"
        settings.write_text(json.dumps(bare_settings(profile)))
        runner = Path(__file__).with_name("bare_whisper.py")
        wall, rss = timed_process(
            [sys.executable, str(runner), str(audio), str(settings), str(result)]
        )
        step = json.loads(result.read_text())
    return {"wall": wall, "peak_rss_mb": rss, **step}


def record_words(record: dict[str, Any]) -> list[Word]:
    words = []
    for utterance in record["utterances"]:
        for word in load(list[Word], utterance["words"]):
            word.speaker = utterance["speaker"]
            words.append(word)
    return words


def score(truth: dict[str, Any], engine: dict[str, Any], bare: dict[str, Any] | None) -> dict:
    """One row: accuracy, coverage, attribution, speed and memory of one episode."""
    turns = [SpeakerTurn(a, b, s) for a, b, s in truth["turns"]]
    reference_text = " ".join(text for _, text in truth["lines"])
    reference = [
        Utterance(t.speaker, t.start, t.end, [], text)
        for t, (_, text) in zip(turns, truth["lines"], strict=True)
    ]
    record = engine["record"]
    words = record_words(record)
    duration = record["duration"]
    wer = word_error_rate(reference_text, "".join(w.text for w in words))
    hyp_utterances = [Utterance(w.speaker or "?", w.start, w.end, [w]) for w in words]
    cpwer = cp_word_error_rate(reference, hyp_utterances)
    hyp_turns = load(list[SpeakerTurn], record["diarisation"]["turns"])
    der = diarisation_error_rate(turns, hyp_turns)
    timings = record["timings"]
    diarisation = record["diarisation"]["details"]
    long_form = record["metadata"].get("long_form", {})
    row: dict[str, Any] = {
        "minutes": round(duration / 60, 1),
        "engine_wall_s": round(engine["wall"], 1),
        "engine_rtf": round(engine["wall"] / duration, 4),
        "engine_wer": round(wer.wer, 4),
        "engine_s_d_i": f"{wer.substitutions}/{wer.deletions}/{wer.insertions}",
        "engine_longest_gap_s": round(longest_without_words(turns, words), 1),
        "engine_peak_rss_mb": round(engine["peak_rss_mb"]),
        "der": round(der.der, 4),
        "cpwer": round(cpwer.cpwer, 4),
        "cpwer_minus_wer": round(cpwer.cpwer - wer.wer, 4),
        "segments_split": diarisation.get("segments_split", 0),
        "speakers_found": len(record["speakers"]),
        "speakers_true": len({t.speaker for t in turns}),
        "overlapped": diarisation.get("overlapped_with_asr", False),
        **{f"s_{k}": round(v, 1) for k, v in timings.items()},
        **{f"s_{k}": round(v, 1) for k, v in diarisation.get("timings", {}).items()},
        "s_diariser_load": round(diarisation.get("load_seconds", 0.0), 1),
        **{k: v for k, v in long_form.items() if isinstance(v, int | float)},
    }
    if bare is not None:
        bare_words = load(list[Word], bare["words"])
        bare_wer = word_error_rate(reference_text, "".join(w.text for w in bare_words))
        row.update(
            bare_wall_s=round(bare["wall"], 1),
            ratio=round(engine["wall"] / bare["wall"], 3),
            bare_wer=round(bare_wer.wer, 4),
            bare_s_d_i=f"{bare_wer.substitutions}/{bare_wer.deletions}/{bare_wer.insertions}",
            bare_longest_gap_s=round(longest_without_words(turns, bare_words), 1),
            bare_peak_rss_mb=round(bare["peak_rss_mb"]),
            bare_s_asr=round(bare["timings"]["asr"], 1),
        )
    return row


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["cpu-dev", "cpu-fast"])
    parser.add_argument(
        "--episodes",
        nargs="+",
        default=DEFAULT_EPISODES,
        help="MINUTES:SEED of each generated episode (default: 10:11 60:11)",
    )
    parser.add_argument("--speakers", type=int, default=3)
    parser.add_argument("--no-bare", action="store_true", help="the engine only (memory runs)")
    parser.add_argument("--sequential", action="store_true", help="engine without overlap")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument(
        "--keep", type=Path, help="keep each run's transcript record and bare words here"
    )
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores), {platform.machine()}", flush=True)

    rows = []
    for spec in args.episodes:
        minutes, seed = (float(x) for x in spec.split(":"))
        audio, truth = episode(minutes, int(seed), args.speakers, args.cache)
        for profile in args.profiles:
            engine = run_engine(audio, profile, args.sequential)
            bare = None if args.no_bare else run_bare(audio, profile)
            row = {"profile": profile, "seed": int(seed), **score(truth, engine, bare)}
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                stem = args.keep / f"{audio.stem}-{profile}"
                stem.with_suffix(".engine.json").write_text(json.dumps(engine["record"]))
                if bare is not None:
                    stem.with_suffix(".bare.json").write_text(json.dumps(bare["words"]))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)
    print_summary(rows)


def print_table(rows: list[dict[str, Any]]) -> None:
    names = list(dict.fromkeys(k for row in rows for k in row))
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  " + "  ".join(f"{row.get(name, '')!s:>10}" for row in rows))


def print_summary(rows: list[dict[str, Any]]) -> None:
    """Per profile: mean WER of engine and bare, the longest gap and the largest ratio."""
    for profile in dict.fromkeys(row["profile"] for row in rows):
        mine = [row for row in rows if row["profile"] == profile]
        line = (
            f"{profile}: {len(mine)} episode(s), engine mean WER "
            f"{statistics.mean(r['engine_wer'] for r in mine):.4f}, longest gap "
            f"{max(r['engine_longest_gap_s'] for r in mine)} s"
        )
        if all("bare_wer" in r for r in mine):
            line += (
                f"; bare mean WER {statistics.mean(r['bare_wer'] for r in mine):.4f}, "
                f"longest gap {max(r['bare_longest_gap_s'] for r in mine)} s, "
                f"ratios {', '.join(str(r['ratio']) for r in mine)}"
            )
        print(line)


if __name__ == "__main__":
    main()
