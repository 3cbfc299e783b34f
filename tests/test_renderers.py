"""Output formats: exactly the RAG layout of DESIGN.md, plus SRT/VTT/RTTM."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from resources.schema import (
    AsrResult,
    DiarisationResult,
    SpeakerTranscript,
    SpeakerTurn,
    Utterance,
    Word,
    dump,
    json_schema,
    load,
)
from resources.storage import StorageError, StorageResource
from twiml_assets.outputs import renderers
from twiml_assets.outputs.files import (
    FullRecord,
    full_record,
    transcript_from_record,
    write_all_outputs,
)


def sample_transcript(key: str = "ep-623") -> SpeakerTranscript:
    long_text = [Word(3700.0 + i * 0.3, 3700.2 + i * 0.3, f" word{i}", 0.9) for i in range(40)]
    return SpeakerTranscript(
        key=key,
        duration=3720.0,
        utterances=[
            Utterance(
                "SPEAKER_00",
                1.5,
                2.75,
                [Word(1.5, 2.0, " Hello", 0.99), Word(2.1, 2.75, " there.", 0.8)],
            ),
            Utterance("SPEAKER_01", 3700.0, 3711.9, long_text),
        ],
        speakers=["SPEAKER_00", "SPEAKER_01"],
        speaker_names={"SPEAKER_00": "Sam Charrington", "SPEAKER_01": "SPEAKER_01"},
    )


def test_markdown_matches_rag_format() -> None:
    md = renderers.markdown(sample_transcript())
    blocks = md.rstrip("\n").split("\n\n")
    assert blocks[0] == "__Sam Charrington__ _(0h 0m 1.50s-0h 0m 2.75s)_:\nHello there."
    header, *body = blocks[1].split("\n")
    assert header == "__SPEAKER_01__ _(1h 1m 40.00s-1h 1m 51.90s)_:"
    assert all(len(line) <= 80 for line in body) and len(body) > 1
    pattern = re.compile(r"^__.+__ _\(\d+h \d+m \d+\.\d{2}s-\d+h \d+m \d+\.\d{2}s\)_:$")
    assert all(pattern.match(b.split("\n")[0]) for b in blocks)


def test_corrected_json_indexes_speakers() -> None:
    doc = renderers.corrected_json(sample_transcript())
    jsonschema.validate(doc, json_schema(renderers.CorrectedJson))
    assert [d["speaker"] for d in doc["dialogs"]] == [0, 1]
    assert doc["speakers"] == ["SPEAKER_00", "SPEAKER_01"]
    assert doc["dialogs"][0]["text"] == "Hello there."


def test_speakers_json_uses_names_where_known() -> None:
    assert renderers.speakers_json(sample_transcript()) == {
        "SPEAKER_00": "Sam Charrington",
        "SPEAKER_01": "SPEAKER_01",
    }


def test_srt_and_vtt_cues() -> None:
    t = sample_transcript()
    srt = renderers.srt(t)
    assert srt.startswith("1\n00:00:01,500 --> 00:00:02,750\nSam Charrington: Hello there.\n")
    cues = re.findall(r"(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})", srt)
    assert len(cues) > 2  # the 12 s turn is split into cues of at most 7 s
    vtt = renderers.vtt(t)
    assert vtt.startswith(
        "WEBVTT\n\n00:00:01.500 --> 00:00:02.750\n<v Sam Charrington>Hello there."
    )


def test_rttm_lines() -> None:
    text = renderers.rttm([SpeakerTurn(2.0, 3.5, "B"), SpeakerTurn(0.5, 1.0, "A")], "ep-1")
    assert text.splitlines() == [
        "SPEAKER ep-1 1 0.500 0.500 <NA> <NA> A <NA> <NA>",
        "SPEAKER ep-1 1 2.000 1.500 <NA> <NA> B <NA> <NA>",
    ]


def test_write_all_outputs_layout_and_round_trip(tmp_path) -> None:
    storage = StorageResource(root=str(tmp_path))
    t = sample_transcript()
    asr = AsrResult([], "en", 3720.0, "tiny.en", {"beam_size": 5}, 1.0)
    diar = DiarisationResult([SpeakerTurn(1.0, 3.0, "SPEAKER_00")], 3720.0, "offline", {}, 0.5)
    files = write_all_outputs(storage, t, asr, diar, info={"episode": 623, "title": "T"})
    rel = sorted(p for p in storage.list())
    assert rel == [
        "asr/623.speakers.json",
        "diarisation/ep-623.rttm",
        "info/623.info.json",
        "markdown/623.md",
        "subtitles/ep-623.srt",
        "subtitles/ep-623.vtt",
        "transcripts/623.corrected.json",
        "transcripts/ep-623.json",
    ]
    assert set(files) >= {"corrected_json", "speakers_json", "markdown", "record", "srt", "vtt"}
    record = json.loads((tmp_path / "transcripts/ep-623.json").read_text())
    jsonschema.validate(record, json_schema(FullRecord))
    again = transcript_from_record(record)
    assert again.text == t.text and again.speakers == t.speakers
    assert load(AsrResult, dump(asr)) == asr
    assert load(DiarisationResult, dump(diar)) == diar
    assert full_record(t, asr, diar)["speaker_names"]["SPEAKER_00"] == "Sam Charrington"


def test_storage_rejects_paths_outside_root(tmp_path) -> None:
    storage = StorageResource(root=str(tmp_path))
    for bad in ("../x", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(StorageError):
            storage.write_text(bad, "x")


def test_storage_write_is_atomic_and_leaves_no_temp_files(tmp_path) -> None:
    storage = StorageResource(root=str(tmp_path))
    storage.write_text("a/b.txt", "one")
    storage.write_text("a/b.txt", "two")
    assert storage.read_text("a/b.txt") == "two"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]
