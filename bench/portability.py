"""Model output across CPU kernels: how far words, times and scores move from CPU to CPU.

For each setting (``tests/model_output.py``: ``PORTABILITY_SETTINGS``, plus this CPU's own
kernels and AVX-512 without VNNI), a fresh interpreter with that environment runs:

- the four demo episodes through ``episode_pipeline`` (the golden test's run), compared with
  ``tests/golden/demo``: pooled WER, share of words within 0.05 s / 0.25 s, the largest
  shift, speaker agreement, and DER of the diarisation against this CPU's own run;
- the golden test's own check (``check_against_golden``), pass or fail;
- unless ``--no-long``, the 20-minute episode of ``tests/test_long_audio.py`` through the
  engine's model step and bare faster-whisper: each WER, engine − bare, word counts and the
  longest reference speech without words.

It prints both tables with the CPU model. About 6 minutes a setting on 2 cores (90 s
without the long episode). The figures behind the bounds of ``tests/model_output.py`` are
in docs/benchmarks.md ("Portability").

.venv/bin/python bench/portability.py [--settings native,avx2,...] [--no-long] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.model_output import PORTABILITY_SETTINGS  # noqa: E402
from twiml_assets.demo.synth import SyntheticEpisode  # noqa: E402

SETTINGS: dict[str, dict[str, str]] = {
    "native": {},
    **PORTABILITY_SETTINGS,
    # Measured here, not in make test-portable: an Intel CPU (CTranslate2 picks MKL instead
    # of oneDNN by the vendor; slow on other CPUs, so use --no-long there), and a
    # Skylake-X/Cascade Lake-class server (AVX-512 without VNNI).
    "intel-mkl": {"CT2_USE_MKL": "1"},
    "avx512-core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


def cpu_model() -> str:
    """The CPU's name and its widest vector extensions, as /proc/cpuinfo says."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "")
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    wanted = ("avx2", "avx512f", "avx512_vnni", "amx_int8")
    return f"{name or 'unknown CPU'} ({', '.join(f for f in wanted if f in flags) or 'no AVX2'})"


# -- one setting, in its own interpreter ------------------------------------------------------
def run_one(out: Path, long_audio: Path | None) -> None:
    """The demo pipeline (and the long episode) under this process's environment."""
    from tests.test_golden_outputs import demo_outputs
    from twiml_assets.speech.model_step import measure

    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {"demo": demo_outputs(Path(tmp))}
    if long_audio is not None:  # each side in a fresh interpreter that inherits the settings
        result["long"] = {
            "engine": measure(long_audio, "cpu-dev")["words"],
            "bare": measure(long_audio, "cpu-dev", bare=True)["words"],
        }
    out.write_text(json.dumps(result))


# -- the comparison --------------------------------------------------------------------------
def demo_row(name: str, demo: dict[str, str], native: dict[str, str] | None) -> dict[str, Any]:
    from evaluation.metrics import diarisation_error_rate
    from resources.schema import SpeakerTurn
    from tests.model_output import compare_words, corrected_words
    from tests.test_golden_outputs import check_against_golden, golden_files

    golden = golden_files()
    pooled = None
    for n in range(1, 5):
        doc = f"transcripts/{n}.corrected.json"
        c = compare_words(
            corrected_words(json.loads(golden[doc])), corrected_words(json.loads(demo[doc]))
        )
        pooled = c if pooled is None else pooled + c
    assert pooled is not None
    try:
        check_against_golden({k: v for k, v in demo.items() if k in golden}, golden)
        verdict = "pass"
    except AssertionError as e:
        verdict = f"FAIL {e}".strip()

    def turns(rttm: str) -> list[SpeakerTurn]:
        fields = [line.split() for line in rttm.splitlines() if line.strip()]
        return [SpeakerTurn(float(f[3]), float(f[3]) + float(f[4]), f[7]) for f in fields]

    ders = [
        diarisation_error_rate(turns(native[k]), turns(demo[k]), collar=0.0).der
        for k in sorted(demo)
        if k.endswith(".rttm") and native is not None and k in native
    ]
    return {
        "setting": name,
        "wer_vs_golden": round(pooled.wer, 3),
        "words_matched": pooled.matched,
        "within_0.05s": round(pooled.share_within(0.05), 3),
        "within_0.25s": round(pooled.share_within(0.25), 3),
        "largest_shift_s": round(pooled.largest_shift, 2),
        "same_speaker": round(pooled.speaker_agreement, 3),
        "der_vs_native": round(max(ders), 3) if ders else None,
        "golden_test": verdict,
    }


def long_row(name: str, long: dict[str, Any], episode: SyntheticEpisode) -> dict[str, Any]:
    from evaluation.coverage import speech_without_words
    from evaluation.metrics import word_error_rate
    from resources.schema import Word, load

    row: dict[str, Any] = {"setting": name}
    for side in ("engine", "bare"):
        words = load(list[Word], long[side])
        row[f"{side}_wer"] = round(
            word_error_rate(episode.text, "".join(w.text for w in words)).wer, 4
        )
        row[f"{side}_words"] = len(words)
        gaps = [b - a for a, b in speech_without_words(episode.turns, words)]
        row[f"{side}_longest_gap_s"] = round(max(gaps, default=0.0), 1)
    row["engine_minus_bare"] = round(row["engine_wer"] - row["bare_wer"], 4)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names")
    parser.add_argument("--no-long", action="store_true", help="demo episodes only")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child: write results here
    parser.add_argument("--long-audio", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.long_audio)
        return

    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    print(f"CPU: {cpu_model()}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        episode = None
        if not args.no_long:  # generated once (tests/test_long_audio.py's episode)
            from tests.test_long_audio import LONG_MINUTES, SEED
            from twiml_assets.demo.synth_long import generate_long_episode

            print(f"==> generating the {LONG_MINUTES}-minute episode", flush=True)
            episode = generate_long_episode(
                Path(tmp) / "long.mp3", LONG_MINUTES, speakers=3, seed=SEED
            )
        for name in names:
            out = Path(tmp) / f"{name}.json"
            env = {**os.environ, **SETTINGS[name]}
            command = [sys.executable, __file__, "--one", str(out)]
            command += ["--long-audio", str(episode.audio_path)] if episode else []
            print(f"==> {name}: {SETTINGS[name] or 'this CPU as it is'}", flush=True)
            log = Path(tmp) / f"{name}.log"  # the runs' Dagster logs; shown when one fails
            with log.open("w") as sink:
                done = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
            if done.returncode:
                sys.exit(f"{name} failed:\n{log.read_text()[-4000:]}")
            results[name] = json.loads(out.read_text())
    native = results.get("native", {}).get("demo")
    demo_rows = [demo_row(n, r["demo"], native) for n, r in results.items()]
    print("\nDemo episodes against tests/golden/demo (4 episodes pooled):")
    print(table(demo_rows))
    long_rows = [
        long_row(n, r["long"], episode) for n, r in results.items() if episode and "long" in r
    ]
    if long_rows:
        print("\n20-minute episode, engine and bare faster-whisper (cpu-dev):")
        print(table(long_rows))
    if args.json:
        args.json.write_text(
            json.dumps({"cpu": cpu_model(), "demo": demo_rows, "long": long_rows}, indent=2)
        )


if __name__ == "__main__":
    main()
