"""Word-to-speaker assignment: overlap, gaps, overlapping speech, no diarisation."""

from __future__ import annotations

from resources.schema import AsrResult, AsrSegment, DiarisationResult, SpeakerTurn, Word
from twiml_assets.speech.merge import assign_speakers, merge_words


def words(*spans: tuple[float, float, str]) -> list[Word]:
    return [Word(s, e, f" {t}") for s, e, t in spans]


def asr_of(ws: list[Word], duration: float = 10.0) -> AsrResult:
    return AsrResult([AsrSegment(ws[0].start, ws[-1].end, "", ws)], "en", duration, "m", {})


def diar_of(*turns: tuple[float, float, str], duration: float = 10.0) -> DiarisationResult:
    return DiarisationResult([SpeakerTurn(*t) for t in turns], duration, "d", {})


def test_word_goes_to_speaker_with_most_overlap() -> None:
    turns = [SpeakerTurn(0.0, 2.2, "A"), SpeakerTurn(2.2, 5.0, "B")]
    # 2.0-2.6 overlaps A by 0.2 s and B by 0.4 s.
    (w,) = assign_speakers(words((2.0, 2.6, "x")), turns)
    assert w.speaker == "B"


def test_word_in_a_gap_goes_to_nearest_turn() -> None:
    turns = [SpeakerTurn(0.0, 1.0, "A"), SpeakerTurn(3.0, 4.0, "B")]
    near_a, near_b = assign_speakers(words((1.2, 1.4, "a"), (2.6, 2.8, "b")), turns)
    assert (near_a.speaker, near_b.speaker) == ("A", "B")


def test_zero_length_word_inside_a_long_earlier_turn() -> None:
    # A long turn that starts before a short one and still covers the word.
    turns = [SpeakerTurn(0.0, 10.0, "A"), SpeakerTurn(1.0, 1.5, "B")]
    (w,) = assign_speakers(words((5.0, 5.0, "x")), turns)
    assert w.speaker == "A"


def test_overlapping_speech_keeps_every_word() -> None:
    turns = [SpeakerTurn(0.0, 3.0, "A"), SpeakerTurn(2.0, 5.0, "B")]
    ws = words((0.5, 0.9, "one"), (2.1, 2.4, "two"), (2.5, 2.9, "three"), (3.5, 4.0, "four"))
    t = merge_words(asr_of(ws), diar_of((0.0, 3.0, "A"), (2.0, 5.0, "B")), "k")
    assert [w.text for w in t.words] == [w.text for w in ws]
    assert t.words[0].speaker == t.speakers[0] and t.words[-1].speaker == t.speakers[1]
    assert len(assign_speakers(ws, turns)) == 4


def test_consecutive_words_group_and_labels_follow_first_appearance() -> None:
    ws = words((0.1, 0.4, "hi"), (0.5, 0.9, "there"), (1.6, 2.0, "hello"), (2.1, 2.5, "back"))
    # Diarisation calls the first voice SPEAKER_07: the transcript renames it SPEAKER_00.
    t = merge_words(asr_of(ws), diar_of((0.0, 1.0, "SPEAKER_07"), (1.5, 3.0, "SPEAKER_02")), "k")
    assert [(u.speaker, u.text) for u in t.utterances] == [
        ("SPEAKER_00", "hi there"),
        ("SPEAKER_01", "hello back"),
    ]
    assert t.speakers == ["SPEAKER_00", "SPEAKER_01"]
    assert t.metadata["diarisation_labels"] == {
        "SPEAKER_07": "SPEAKER_00",
        "SPEAKER_02": "SPEAKER_01",
    }


def test_no_diarisation_turns_means_one_speaker() -> None:
    ws = words((0.1, 0.4, "just"), (0.5, 0.9, "me"))
    t = merge_words(asr_of(ws), diar_of(), "k")
    assert t.speakers == ["SPEAKER_00"] and len(t.utterances) == 1


def test_no_words_gives_empty_transcript() -> None:
    asr = AsrResult([], "en", 5.0, "m", {})
    t = merge_words(asr, diar_of((0.0, 1.0, "A"), duration=5.0), "k")
    assert t.utterances == [] and t.speakers == [] and t.duration == 5.0


def test_words_said_over_a_backchannel_stay_with_the_main_speaker() -> None:
    # B says "yeah" (2.0-2.6) inside A's long turn; A's word at 2.1-2.5 is A's.
    turns = [SpeakerTurn(0.0, 6.0, "A"), SpeakerTurn(2.0, 2.6, "B"), SpeakerTurn(6.5, 9.0, "B")]
    over, later = assign_speakers(words((2.1, 2.5, "during"), (7.0, 7.4, "later")), turns)
    assert (over.speaker, later.speaker) == ("A", "B")
    # A backchannel heard on its own (no other voice under the word) keeps its speaker.
    (alone,) = assign_speakers(words((2.0, 2.3, "yeah")), [SpeakerTurn(2.0, 2.6, "B")])
    assert alone.speaker == "B"


def test_a_short_turn_between_turns_is_not_a_backchannel() -> None:
    turns = [SpeakerTurn(0.0, 2.0, "A"), SpeakerTurn(2.1, 2.9, "B"), SpeakerTurn(3.0, 5.0, "A")]
    (w,) = assign_speakers(words((2.2, 2.7, "sure")), turns)
    assert w.speaker == "B"
