"""Speaker naming (issue 6): voiceprints, registry, recurring host, guests from metadata.

The episodes are generated once per session: one espeak-ng voice hosts every episode and
each episode has a different guest voice, named in its title and description. The
diarisation turns are the generator's exact turns (the diariser has its own tests), so
these tests measure the naming alone; the Dagster assets run on the stored files as in
production.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from resources.schema import (
    AsrResult,
    DiarisationResult,
    SpeakerTranscript,
    SpeakerTurn,
    Utterance,
    Word,
)
from resources.storage import StorageResource
from twiml_assets.demo.synth import EXTRA_VOICE, GUEST_VOICE, Voice, synthesize_dialogue
from twiml_assets.speakers.assign import NAME_THRESHOLD, assign_names
from twiml_assets.speakers.hosts import recurring_voice
from twiml_assets.speakers.metadata import guest_names
from twiml_assets.speakers.registry import SpeakerRegistry
from twiml_assets.speakers.voiceprints import MATCH_THRESHOLD, VoicePrint, cosine, unit

HOST = "Sam Charrington"


# -- metadata --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("title", "description", "expected"),
    [
        (
            "Building Agents with Reinforcement Learning with Jane Doe - #623",
            "Today we're joined by Jane Doe, a professor at MIT.",
            ["Jane Doe"],
        ),
        (
            "Why Vision Matters with Dr. Fei-Fei Li and John O'Neil - #700",
            "",
            ["Fei-Fei Li", "John O'Neil"],
        ),
        (
            "Scaling LLMs - #12",
            "In this episode, we speak with Maria de la Cruz and Ali Bin Saleh, researchers.",
            ["Maria de la Cruz", "Ali Bin Saleh"],
        ),
        ("Test episode 1 - #1", "About topic 1.", []),
        ("Episode with LLMs - #3", "Today we're joined by Sam Charrington.", []),
    ],
)
def test_guest_names_from_title_and_description(title, description, expected) -> None:
    assert guest_names(title, description, {HOST.lower()}) == expected


# -- the decision on plain vectors -----------------------------------------------------------
def _vp(seed: int, seconds: float, first: float) -> VoicePrint:
    return VoicePrint(unit(np.random.default_rng(seed).standard_normal(256)), seconds, first)


def test_never_invents_a_name_below_the_threshold() -> None:
    prints = {"SPEAKER_00": _vp(1, 10, 0), "SPEAKER_01": _vp(2, 9, 5)}
    names = assign_names("ep-1", prints, SpeakerRegistry(), ["Jane Doe"])
    # Two unknown voices with similar talk time, one guest name: a coin flip, so no name.
    assert all(n.name is None for n in names.values())
    assert max(n.confidence for n in names.values()) < NAME_THRESHOLD
    assert any(n.candidate == "Jane Doe" for n in names.values())


def test_registry_match_then_the_only_unknown_voice_is_the_guest() -> None:
    registry = SpeakerRegistry()
    host = _vp(1, 30, 0)
    registry.add(HOST, "enrol:host.wav", "enrol", host)
    prints = {"SPEAKER_00": _vp(1, 10, 0), "SPEAKER_01": _vp(2, 9, 5)}
    names = assign_names("ep-1", prints, registry, ["Jane Doe"])
    assert names["SPEAKER_00"].name == HOST and names["SPEAKER_00"].confidence > 0.99
    assert (
        names["SPEAKER_01"].name == "Jane Doe"
        and "only unknown voice" in names["SPEAKER_01"].evidence
    )


def test_confirmation_is_idempotent_and_rename_moves_the_voice() -> None:
    registry = SpeakerRegistry()
    voice = _vp(3, 12, 0)
    registry.add("Jane Doe", "ep-1/SPEAKER_01", "confirmed", voice)
    registry.add("Jane Doe", "ep-1/SPEAKER_01", "confirmed", voice)
    assert len(registry.speakers["Jane Doe"]) == 1
    registry.add("Janet Doe", "ep-1/SPEAKER_01", "confirmed", voice)
    assert registry.names() == ["Janet Doe"]
    assert registry.confirmed_name("ep-1", "SPEAKER_01") == "Janet Doe"
    assert SpeakerRegistry.from_dict(json.loads(json.dumps(registry.to_dict()))).names() == [
        "Janet Doe"
    ]


def test_recurring_voice_needs_three_episodes() -> None:
    host = _vp(1, 10, 0).embedding
    prints = {
        f"ep-{i}": {"SPEAKER_00": VoicePrint(host, 10), "SPEAKER_01": _vp(10 + i, 9, 5)}
        for i in range(1, 4)
    }
    assert recurring_voice(dict(itertools.islice(prints.items(), 2))) is None
    found = recurring_voice(prints)
    assert found is not None and found.episodes == ["ep-1", "ep-2", "ep-3"]
    assert cosine(found.embedding, host) > 0.999


def test_two_voices_recurring_equally_is_no_host() -> None:
    host, guest = _vp(1, 10, 0).embedding, _vp(2, 10, 0).embedding
    prints = {
        f"ep-{i}": {"SPEAKER_00": VoicePrint(host, 10), "SPEAKER_01": VoicePrint(guest, 9)}
        for i in range(1, 5)
    }
    assert recurring_voice(prints) is None
    prints["ep-5"] = {"SPEAKER_00": VoicePrint(host, 10), "SPEAKER_01": _vp(9, 9, 5)}
    found = recurring_voice(prints)
    assert found is not None and len(found.episodes) == 5


# -- generated episodes ----------------------------------------------------------------------
@dataclass
class Episode:
    key: str
    guest: str | None
    audio: Path
    turns: list[SpeakerTurn]  # labelled SPEAKER_xx by first appearance
    lines: list[tuple[str, str]]
    duration: float
    title: str
    description: str


GUESTS = [
    ("Jane Doe", GUEST_VOICE, "speech recognition for meetings"),
    ("Maria Lopez", Voice("en-us+f2", 60, 170), "robots that learn from people"),
    ("Ken Adams", EXTRA_VOICE, "privacy in medical data"),
    ("Ana Silva", Voice("en-us+f4", 80, 160), "computer vision on small devices"),
]
UNNAMED_VOICE = Voice("en-us+f2", 45, 190)


def _lines(topic: str, i: int, extra: bool) -> list[tuple[str, str]]:
    lines = [
        ("HOST", f"Welcome to the show. Today we talk about {topic}."),
        ("GUEST", f"Thanks for having me. I have worked on {topic} for many years now."),
        ("HOST", "Where do you see the field going next?" if i % 2 else "What is the hard part?"),
        ("GUEST", "Getting clean data, and measuring the right things again and again."),
    ]
    if extra:
        lines.append(("EXTRA", "Quick note from the producer."))
    lines.append(("HOST", f"Thank you for joining us on episode {i}."))
    return lines


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Four ≈20 s episodes (the fourth with an unnamed extra voice) and host enrolment audio."""
    out = tmp_path_factory.mktemp("naming")
    episodes = []
    for i, (guest, voice, topic) in enumerate(GUESTS, start=1):
        lines = _lines(topic, i, extra=i == 4)
        syn = synthesize_dialogue(
            out / f"ep-{i}.wav", lines, voices={"GUEST": voice, "EXTRA": UNNAMED_VOICE}, seed=i
        )
        order = list(dict.fromkeys(t.speaker for t in syn.turns))
        label = {role: f"SPEAKER_{n:02d}" for n, role in enumerate(order)}
        turns = [SpeakerTurn(t.start, t.end, label[t.speaker]) for t in syn.turns]
        title = f"{topic.capitalize()} with {guest} - #{i}"
        description = f"Today we're joined by {guest}, who works on {topic}."
        episodes.append(
            Episode(
                f"ep-{i}", guest, syn.audio_path, turns, lines, syn.duration, title, description
            )
        )
    enrol = synthesize_dialogue(
        out / "host-enrol.wav",
        [
            ("HOST", "This is the host speaking, recorded for enrolment. One, two, three."),
            ("HOST", "Another sentence so that the voice has enough speech to be measured."),
        ],
    )
    return {"episodes": episodes, "enrol": enrol.audio_path}


@pytest.fixture(scope="session")
def corpus_prints(corpus) -> dict[str, dict[str, VoicePrint]]:
    """Voiceprints of every corpus episode from its truth turns, computed once."""
    from resources.audio import decode_audio
    from twiml_assets.speakers.voiceprints import default_encoder, label_voiceprints

    encoder = default_encoder()
    return {
        ep.key: label_voiceprints(decode_audio(ep.audio), ep.turns, encoder)
        for ep in corpus["episodes"]
    }


def _store(root: Path, ep: Episode, author: str | None) -> StorageResource:
    """The files the pipeline would have written before speaker_names runs."""
    storage = StorageResource(root=str(root))
    storage.put_file(f"audio/{ep.key}.wav", ep.audio)
    storage.write_json(f"audio/{ep.key}.json", {"path": f"audio/{ep.key}.wav"})
    storage.write_json(
        f"episodes/{ep.key}.json",
        {
            "key": ep.key,
            "number": ep.key[3:],
            "title": ep.title,
            "audio_url": "http://x/a.wav",
            "description": ep.description,
            "author": author,
        },
    )
    diar = DiarisationResult(ep.turns, ep.duration, "truth", {})
    storage.write_json(
        f"diarisation/{ep.key}.json",
        {
            "turns": [{"start": t.start, "end": t.end, "speaker": t.speaker} for t in ep.turns],
            "duration": ep.duration,
            "model": "truth",
            "config": {},
        },
    )
    utterances = []
    for turn, (_, text) in zip(ep.turns, ep.lines, strict=True):
        words = text.split()
        step = (turn.end - turn.start) / len(words)
        utterances.append(
            Utterance(
                turn.speaker,
                turn.start,
                turn.end,
                [
                    Word(
                        turn.start + k * step,
                        turn.start + (k + 1) * step,
                        f" {w}",
                        1.0,
                        turn.speaker,
                    )
                    for k, w in enumerate(words)
                ],
            )
        )
    labels = sorted({t.speaker for t in ep.turns})
    transcript = SpeakerTranscript(ep.key, ep.duration, utterances, labels)
    asr = AsrResult([], "en", ep.duration, "truth", {})
    from twiml_assets.outputs.files import full_record, write_full_record

    write_full_record(storage, full_record(transcript, asr, diar))
    return storage


def _name(root: Path, keys: list[str]) -> dict[str, dict]:
    """Materialise speaker_names, rag_outputs and subtitles for ``keys``, one run each."""
    from dagster import DagsterInstance, materialize

    from twiml_assets.outputs.assets import rag_outputs, subtitles
    from twiml_assets.speakers.assets import speaker_names

    metadata = {}
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("episodes", keys)
        for key in keys:
            result = materialize(
                [speaker_names, rag_outputs, subtitles],
                partition_key=key,
                instance=instance,
                resources={"storage": StorageResource(root=str(root))},
            )
            assert result.success
            (mat,) = [m for m in result.asset_materializations_for_node("speaker_names")]
            metadata[key] = {k: v.value for k, v in mat.metadata.items()}
    return metadata


def _outputs(root: Path, key: str) -> dict[str, object]:
    n = key[3:]
    return {
        "speakers": json.loads((root / f"asr/{n}.speakers.json").read_text()),
        "markdown": (root / f"markdown/{n}.md").read_text(),
        "srt": (root / f"subtitles/{key}.srt").read_text(),
        "vtt": (root / f"subtitles/{key}.vtt").read_text(),
        "record": json.loads((root / f"transcripts/{key}.json").read_text()),
        "corrected": json.loads((root / f"transcripts/{n}.corrected.json").read_text()),
    }


def _assert_named(root: Path, ep: Episode) -> None:
    out = _outputs(root, ep.key)
    expected = {"SPEAKER_00": HOST, "SPEAKER_01": ep.guest}
    if ep.key == "ep-4":
        expected["SPEAKER_02"] = "SPEAKER_02"  # the unnamed extra voice keeps its label
    assert out["speakers"] == expected, ep.key
    for name in (HOST, ep.guest):
        assert f"__{name}__" in out["markdown"]
        assert name in out["srt"] and name in out["vtt"]
    assert "SPEAKER_00" not in out["markdown"] and "SPEAKER_01" not in out["srt"]
    # Raw labels stay in the full record and the corrected.json speaker list.
    assert out["record"]["speakers"][:2] == ["SPEAKER_00", "SPEAKER_01"]
    assert out["corrected"]["speakers"][:2] == ["SPEAKER_00", "SPEAKER_01"]


@pytest.mark.model_output
def test_voiceprint_threshold_separates_the_generated_voices(corpus_prints) -> None:
    """The measurement behind MATCH_THRESHOLD: same voice ≥ it, different voices below."""
    prints = list(corpus_prints.values())
    hosts = [p["SPEAKER_00"].embedding for p in prints]
    others = [vp.embedding for p in prints for lb, vp in p.items() if lb != "SPEAKER_00"]
    same = [cosine(a, b) for a, b in itertools.combinations(hosts, 2)]
    different = [cosine(a, b) for a in hosts for b in others]
    different += [cosine(a, b) for a, b in itertools.combinations(others, 2)]
    assert min(same) >= MATCH_THRESHOLD, sorted(same)
    assert max(different) < MATCH_THRESHOLD, sorted(different)


@pytest.mark.model_output
def test_names_after_enrolment(tmp_path: Path, corpus) -> None:
    from twiml_assets.cli import main

    root = tmp_path / "data"
    for ep in corpus["episodes"]:
        _store(root, ep, author=None)
    assert main(["speakers", "--storage", str(root), "enroll", HOST, str(corpus["enrol"])]) == 0
    registry = json.loads((root / "speakers/registry.json").read_text())
    assert list(registry["speakers"]) == [HOST]
    meta = _name(root, [ep.key for ep in corpus["episodes"]])
    for ep in corpus["episodes"]:
        _assert_named(root, ep)
        doc = json.loads((root / f"speakers/{ep.key}.json").read_text())
        assert "registered" in doc["speakers"]["SPEAKER_00"]["evidence"]
        assert doc["speakers"]["SPEAKER_00"]["confidence"] >= MATCH_THRESHOLD
        assert meta[ep.key]["embeddings_computed"] is True
    doc4 = json.loads((root / "speakers/ep-4.json").read_text())
    assert doc4["speakers"]["SPEAKER_02"]["name"] is None


def test_host_without_enrolment_after_three_episodes_and_confirm(
    tmp_path: Path, corpus, corpus_prints, capsys
) -> None:
    from twiml_assets.cli import main
    from twiml_assets.speakers.service import write_voiceprints

    root = tmp_path / "data"
    episodes = corpus["episodes"]
    stores = {ep.key: _store(root, ep, author=HOST) for ep in episodes}

    def transcribed(*keys: str) -> None:
        """The voiceprints as the asset stores them (the enrolment test computes them
        through the asset; here they are reused, so nothing is decoded)."""
        for key in keys:
            write_voiceprints(stores[key], key, corpus_prints[key])

    # Two episodes: no recurring voice yet, and a guest name with two unknown voices of
    # similar talk time is not enough either: every label stays.
    transcribed("ep-1", "ep-2")
    _name(root, ["ep-1", "ep-2"])
    for key in ("ep-1", "ep-2"):
        assert _outputs(root, key)["speakers"] == {
            "SPEAKER_00": "SPEAKER_00",
            "SPEAKER_01": "SPEAKER_01",
        }

    # The third episode makes the host voice recur; re-naming the first two (what
    # speaker_naming_job does) reuses the stored voiceprints.
    transcribed("ep-3", "ep-4")
    first = _name(root, ["ep-3", "ep-4"])
    again = _name(root, ["ep-1", "ep-2"])
    assert all(m["embeddings_computed"] is False for m in [*first.values(), *again.values()])
    for ep in episodes:
        _assert_named(root, ep)
    doc = json.loads((root / "speakers/ep-1.json").read_text())
    assert "recurring voice" in doc["speakers"]["SPEAKER_00"]["evidence"]
    assert not (root / "speakers/registry.json").exists()

    # A person renames the guest of episode 1: registry and every output follow.
    assert (
        main(["speakers", "--storage", str(root), "confirm", "ep-1", "SPEAKER_01", "Janet Doe"])
        == 0
    )
    assert "Janet Doe" in capsys.readouterr().out
    out = _outputs(root, "ep-1")
    assert out["speakers"]["SPEAKER_01"] == "Janet Doe" and "__Janet Doe__" in out["markdown"]
    registry = json.loads((root / "speakers/registry.json").read_text())
    assert registry["speakers"]["Janet Doe"]["sources"][0]["ref"] == "ep-1/SPEAKER_01"
    assert main(["speakers", "--storage", str(root), "confirm", "ep-1", "SPEAKER_09", "X"]) == 2


def test_voiceprints_of_another_diarisation_are_stale(tmp_path: Path) -> None:
    """A model step run again with other turns (a local re-run, say) makes the stored
    voiceprints stale, so speaker_names computes them anew instead of naming labels of the
    previous diarisation."""
    from resources.schema import dump
    from twiml_assets.layout import EpisodeFiles
    from twiml_assets.speakers.service import voiceprints_current, write_voiceprints

    storage = StorageResource(root=str(tmp_path))
    turns = [SpeakerTurn(0.0, 4.0, "SPEAKER_00"), SpeakerTurn(4.5, 9.0, "SPEAKER_01")]
    print_ = VoicePrint(embedding=unit(np.ones(256)), seconds=4.0, first_start=0.0)

    def diarised(with_turns: list[SpeakerTurn]) -> None:
        result = DiarisationResult(turns=with_turns, duration=9.0, model="test", config={})
        storage.write_json(EpisodeFiles("ep-1").diarisation_result, dump(result))

    assert not voiceprints_current(storage, "ep-1")  # none stored
    diarised(turns)
    write_voiceprints(storage, "ep-1", {"SPEAKER_00": print_}, turns)
    assert voiceprints_current(storage, "ep-1")
    diarised([SpeakerTurn(0.0, 2.0, "SPEAKER_01"), *turns[1:]])
    assert not voiceprints_current(storage, "ep-1")
