"""Long-episode benchmark: lost speech, accuracy, speaker attribution, speed and memory.

For each length, one generated episode (``twiml_assets.demo.synth_long``: three espeak-ng voices,
stdlib-docstring text, backchannels, overlaps, noise, 44.1 kHz stereo mp3) goes through
the engine's model step and through bare faster-whisper with the same resolved settings,
each in its own fresh process (``twiml_assets.speech.model_step``), so peak RSS is the step's own.
Printed per length: engine WER against bare faster-whisper WER, the longest stretch of
reference speech with no word, peak RSS, RTF per stage and in all, DER, cpWER, speakers
found, and what the long-form pass repaired.

    .venv/bin/python bench/long_episode.py                      # 10, 60 and 180 minutes
    .venv/bin/python bench/long_episode.py --minutes 10 --profile cpu-fast --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.coverage import longest_without_words  # noqa: E402
from evaluation.metrics import diarisation_error_rate, word_error_rate  # noqa: E402
from evaluation.speaker_metrics import cp_word_error_rate  # noqa: E402
from resources.schema import SpeakerTurn, Utterance, Word, load  # noqa: E402
from twiml_assets.demo.synth_long import generate_long_episode  # noqa: E402
from twiml_assets.speech.model_step import measure  # noqa: E402

CACHE = Path.home() / ".cache" / "twiml-transcribe" / "bench"


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
    data = json.loads(truth.read_text())
    return audio, data


def words_of(step: dict[str, Any]) -> list[Word]:
    return load(list[Word], step["words"])


def score(truth: dict[str, Any], engine: dict[str, Any], bare: dict[str, Any] | None) -> dict:
    turns = [SpeakerTurn(a, b, s) for a, b, s in truth["turns"]]
    reference_text = " ".join(text for _, text in truth["lines"])
    reference = [
        Utterance(t.speaker, t.start, t.end, [], text)
        for t, (_, text) in zip(turns, truth["lines"], strict=True)
    ]
    words = words_of(engine)
    hypothesis_text = "".join(w.text for w in words)
    hyp_utterances = [Utterance(w.speaker or "?", w.start, w.end, [w]) for w in words]
    duration = engine["duration"]
    timings = engine["timings"]
    wer = word_error_rate(reference_text, hypothesis_text)
    cpwer = cp_word_error_rate(reference, hyp_utterances)
    der = diarisation_error_rate(turns, [SpeakerTurn(a, b, s) for a, b, s in engine["turns"]])
    row = {
        "minutes": round(duration / 60, 1),
        "engine_wer": round(wer.wer, 4),
        "engine_deletions": wer.deletions,
        "engine_longest_gap_s": round(longest_without_words(turns, words), 1),
        "cpwer": round(cpwer.cpwer, 4),
        "cpwer_minus_wer": round(cpwer.cpwer - wer.wer, 4),
        "der": round(der.der, 4),
        "speakers_found": len(engine["speakers"]),
        "speakers_true": len({t.speaker for t in turns}),
        "peak_rss_mb": round(engine["peak_rss_mb"]),
        **{f"rtf_{k}": round(v / duration, 4) for k, v in timings.items()},
        "rtf_total": round(sum(timings.values()) / duration, 4),
        **{k: v for k, v in engine.get("asr_details", {}).items() if isinstance(v, int | float)},
    }
    if bare is not None:
        bare_words = words_of(bare)
        bare_wer = word_error_rate(reference_text, "".join(w.text for w in bare_words))
        row.update(
            bare_wer=round(bare_wer.wer, 4),
            bare_deletions=bare_wer.deletions,
            bare_longest_gap_s=round(longest_without_words(turns, bare_words), 1),
            bare_rtf_asr=round(bare["timings"]["asr"] / duration, 4),
            bare_peak_rss_mb=round(bare["peak_rss_mb"]),
            engine_over_bare_asr_time=round(timings["asr"] / bare["timings"]["asr"], 3),
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60, 180])
    parser.add_argument("--profile", default="cpu-dev")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--speakers", type=int, default=3)
    parser.add_argument("--no-bare", action="store_true", help="skip bare faster-whisper")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    rows = []
    for minutes in args.minutes:
        audio, truth = episode(minutes, args.seed, args.speakers, args.cache)
        engine = measure(audio, args.profile)
        bare = None if args.no_bare else measure(audio, args.profile, bare=True)
        row = {"profile": args.profile, **score(truth, engine, bare)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)


def print_table(rows: list[dict[str, Any]]) -> None:
    names = list(dict.fromkeys(k for row in rows for k in row))
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  " + "  ".join(f"{row.get(name, '')!s:>10}" for row in rows))


if __name__ == "__main__":
    main()
