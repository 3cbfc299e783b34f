"""End to end: the CLI on a generated two-speaker dialogue, its outputs, and bad inputs.

The dialogue (≈88 s, two espeak-ng voices) has exact reference text and turns, so
the bars of the issue are checked for real: WER ≤ 0.10 and DER ≤ 0.12 (collar 0,
overlap scored, speaker count not given) with the offline defaults.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from evaluation.metrics import diarisation_error_rate, word_error_rate
from resources.schema import SpeakerTurn, json_schema
from resources.storage import StorageResource
from twiml_assets.cli import main, resolve_audio
from twiml_assets.demo.synth import synthesize_silence
from twiml_assets.outputs.files import FullRecord
from twiml_assets.outputs.renderers import CorrectedJson, SpeakersJson

CLI = [sys.executable, "-m", "twiml_assets.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("twiml-transcribe", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else CLI
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cli_run(dialogue_mp3: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cli_out")
    proc = run_cli(
        "transcribe",
        str(dialogue_mp3),
        "--out",
        str(out),
        "--key",
        "ep-901",
        "--title",
        "Speech recognition in practice",
    )
    assert proc.returncode == 0, proc.stderr
    return proc, out


@pytest.mark.slow
@pytest.mark.model_output
def test_cli_meets_quality_bars(cli_run, dialogue) -> None:
    proc, out = cli_run
    assert "ep-901" in proc.stdout and "real-time factor" in proc.stdout
    record = json.loads((out / "transcripts/ep-901.json").read_text())
    hypothesis = " ".join(u["text"] for u in record["utterances"])
    wer = word_error_rate(dialogue.text, hypothesis)
    hyp_turns = [
        SpeakerTurn(t["start"], t["end"], t["speaker"]) for t in record["diarisation"]["turns"]
    ]
    der = diarisation_error_rate(dialogue.turns, hyp_turns, collar=0.0)
    print(f"WER {wer.wer:.3f}  DER {der.der:.3f}  speakers {record['speakers']}")
    assert wer.wer <= 0.10
    assert der.der <= 0.12
    assert len(record["speakers"]) == 2


@pytest.mark.slow
def test_cli_outputs_parse_and_match_schemas(cli_run, dialogue) -> None:
    _, out = cli_run
    corrected = json.loads((out / "transcripts/901.corrected.json").read_text())
    jsonschema.validate(corrected, json_schema(CorrectedJson))
    assert len(corrected["dialogs"]) >= 10  # 14 turns in the reference
    speakers = json.loads((out / "asr/901.speakers.json").read_text())
    jsonschema.validate(speakers, json_schema(SpeakersJson))
    assert list(speakers) == corrected["speakers"]
    record = json.loads((out / "transcripts/ep-901.json").read_text())
    jsonschema.validate(record, json_schema(FullRecord))
    assert record["asr"]["config"]["initial_prompt"] == "Speech recognition in practice"
    assert set(record["timings"]) >= {"decode", "asr", "diarisation", "merge"}

    md = (out / "markdown/901.md").read_text()
    header = re.compile(r"^__SPEAKER_0\d__ _\(0h \d+m \d+\.\d\ds-0h \d+m \d+\.\d\ds\)_:$")
    blocks = md.strip().split("\n\n")
    assert len(blocks) == len(corrected["dialogs"])
    for block in blocks:
        first, *body = block.split("\n")
        assert header.match(first), first
        assert body and all(len(line) <= 80 for line in body)

    srt = (out / "subtitles/ep-901.srt").read_text()
    assert re.search(r"^1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\nSPEAKER_00: ", srt, re.M)
    assert (out / "subtitles/ep-901.vtt").read_text().startswith("WEBVTT\n")

    from pyannote.database.util import load_rttm

    annotation = load_rttm(str(out / "diarisation/ep-901.rttm"))["ep-901"]
    assert len(annotation.labels()) == 2
    assert not list(out.rglob("*.part")) and not list(out.rglob(".*"))


def test_missing_file_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["transcribe", str(tmp_path / "nope.mp3"), "--out", str(tmp_path)]) == 2
    assert "audio file not found" in capsys.readouterr().err


def test_compare_finds_an_episodes_audio_by_key_not_its_sidecar(tmp_path) -> None:
    storage = StorageResource(root=str(tmp_path))
    storage.write_json("audio/ep-1.json", {"path": "audio/ep-1.mp3"})
    storage.write_text("audio/ep-1.mp3", "x")
    path, key = resolve_audio("ep-1", storage, tmp_path)
    assert (path.name, key) == ("ep-1.mp3", "ep-1")


def test_zero_byte_file_is_a_clear_error(tmp_path, capsys) -> None:
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    assert main(["transcribe", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty (0 bytes)" in capsys.readouterr().err


def test_non_audio_bytes_are_a_clear_error(tmp_path) -> None:
    fake = tmp_path / "episode.mp3"
    fake.write_bytes(os.urandom(4096))
    proc = run_cli("transcribe", str(fake), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "cannot decode" in proc.stderr and "Traceback" not in proc.stderr
    html = tmp_path / "page.mp3"
    html.write_text("<html><body>404 not found</body></html>")
    assert main(["transcribe", str(html), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.slow
def test_unwritable_output_dir_is_a_clear_error(tmp_path, dialogue) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = run_cli("transcribe", str(dialogue.audio_path), "--out", str(blocker / "out"))
    assert proc.returncode == 2
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_silence_gives_an_empty_but_valid_transcript(tmp_path) -> None:
    silence = synthesize_silence(tmp_path / "silence.wav", seconds=5.0)
    out = tmp_path / "o"
    assert main(["transcribe", str(silence), "--out", str(out), "--key", "ep-7"]) == 0
    corrected = json.loads((out / "transcripts/7.corrected.json").read_text())
    jsonschema.validate(corrected, json_schema(CorrectedJson))
    assert corrected["dialogs"] == []
    assert (out / "markdown/7.md").read_text() == ""
    record = json.loads((out / "transcripts/ep-7.json").read_text())
    assert record["utterances"] == [] and record["duration"] == pytest.approx(5.0, abs=0.05)


@pytest.mark.slow
def test_truncated_mp3_transcribes_what_is_there(tmp_path, dialogue_mp3) -> None:
    data = dialogue_mp3.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) * 2 // 5])  # an interrupted download
    out = tmp_path / "o"
    assert main(["transcribe", str(cut), "--out", str(out), "--key", "ep-8"]) == 0
    record = json.loads((out / "transcripts/ep-8.json").read_text())
    assert 25.0 < record["duration"] < 45.0
    assert "Welcome to the podcast" in record["utterances"][0]["text"]


@pytest.mark.parametrize("case", ["file", "under a file"])
def test_unwritable_out_fails_before_decoding(tmp_path, monkeypatch, capsys, case) -> None:
    """The output root is checked before the audio is decoded: nothing is computed."""
    from twiml_assets.speech import engine

    decoded: list[Path] = []
    monkeypatch.setattr(engine, "open_waveform", lambda path, **_: decoded.append(path))
    audio = tmp_path / "episode.mp3"
    audio.write_bytes(b"ID3" + bytes(5000))
    out = tmp_path / "out"  # (a read-only directory would not do: CI runs as root)
    out.write_text("a file, not a directory")
    root = out / "sub" if case == "under a file" else out

    assert main(["transcribe", str(audio), "--out", str(root), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"cannot write to storage root {root}" in lines[0], lines
    assert decoded == []
