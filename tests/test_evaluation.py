"""Evaluation metrics against values worked out by hand, and every reference loader.

Fast: no models, no audio. Each metric case carries its hand derivation in a comment so a
failing number can be checked without re-deriving it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.formats import (
    load_rag_corrected,
    load_rag_markdown,
    load_rttm,
    load_stm,
    load_subtitles,
    load_text,
)
from evaluation.loaders import load_reference
from evaluation.metrics import DerResult, WerResult, diarisation_error_rate, word_error_rate
from evaluation.normalise import normalise_text
from evaluation.references import UNKNOWN_SPEAKER, Reference, ReferenceFormatError
from evaluation.speaker_metrics import CpWerResult, cp_word_error_rate, word_diarisation_error_rate
from resources.schema import SpeakerTranscript, SpeakerTurn, Utterance, Word

# -- normalisation ---------------------------------------------------------------------------


def test_normaliser_matches_contractions_numbers_case_and_punctuation() -> None:
    # What Whisper's EnglishTextNormalizer does (checked, not assumed):
    assert normalise_text("Don't") == normalise_text("do not") == "do not"
    assert normalise_text("10 cats") == normalise_text("ten cats") == "10 cats"
    assert normalise_text("The cat SAT on the mat.") == "the cat sat on the mat"
    assert normalise_text("Hello,   World!") == "hello world"
    assert normalise_text("uh I think, um, yes") == "i think yes"  # fillers dropped
    assert normalise_text("") == normalise_text("  \n ") == ""


def test_normaliser_merges_spelled_digit_sequences() -> None:
    # A known Whisper-normaliser behaviour worth knowing when reading WERs: consecutive
    # spelled-out numbers become one number, on both sides alike.
    assert normalise_text("one two three four") == "1234"


# -- WER -------------------------------------------------------------------------------------


def test_wer_one_substitution_deletion_insertion() -> None:
    # ref: we sat on the red mat          (N = 6)
    # hyp: we sit on     red mat today
    #      =  S   =  D   =   =   I        -> S=1 D=1 I=1 H=4, WER = 3/6 = 0.5
    # Unique optimum: without the shift, the->red, red->mat, mat->today costs 1 + 3 = 4.
    result = word_error_rate("we sat on the red mat", "we sit on red mat today")
    assert result == WerResult(
        wer=0.5,
        substitutions=1,
        deletions=1,
        insertions=1,
        hits=4,
        reference_words=6,
        hypothesis_words=6,
    )
    assert result.errors == 3


def test_wer_normalisation_on_and_off() -> None:
    ref, hyp = "I don't have 10 cats.", "i do not have ten cats"
    # Normalised, both are "i do not have 10 cats": no errors.
    assert word_error_rate(ref, hyp).wer == 0.0
    # Raw tokens: ref [I, don't, have, 10, cats.] (N=5); hyp [i, do, not, have, ten, cats]:
    # I->i S, don't->do S, +not I, have =, 10->ten S, cats.->cats S  -> 4 S + 1 I = 5/5 = 1.0
    raw = word_error_rate(ref, hyp, normalise=False)
    assert (raw.substitutions, raw.deletions, raw.insertions, raw.hits) == (4, 0, 1, 1)
    assert raw.wer == 1.0


def test_wer_empty_reference_convention() -> None:
    assert word_error_rate("", "").wer == 0.0
    # 2 insertions over 0 reference words: reported as 1.0, counts exact.
    empty = word_error_rate("", "hello there")
    assert (empty.wer, empty.insertions, empty.reference_words) == (1.0, 2, 0)
    # Empty hypothesis: everything deleted.
    assert word_error_rate("hello there", "").wer == 1.0


def test_wer_pooled_is_errors_over_words_not_mean_of_rates() -> None:
    a = word_error_rate("a b c d", "a b c d")  # 0 / 4
    b = word_error_rate("e f", "x f")  # 1 / 2 (rate 0.5)
    pooled = WerResult.pooled([a, b])
    # mean of rates would be 0.25; pooled is 1 error / 6 words.
    assert pooled.wer == pytest.approx(1 / 6)
    assert pooled.reference_words == 6


# -- DER -------------------------------------------------------------------------------------
# Reference: A speaks [0, 10], B speaks [10, 20]          (total reference speech 20 s)
# Hypothesis: x [0, 8], y [9, 15], x [15, 25]
# Overlaps: x∩A = 8, x∩B = 5 ([15,20]); y∩A = 1 ([9,10]), y∩B = 5 ([10,15])
# Mapping x->A, y->B agrees on 8 + 5 = 13 s (the swap only on 5 + 1 = 6 s): it is optimal.
# missed:      [8, 9] nobody in hyp while A speaks            = 1 s
# false alarm: [20, 25] x speaks, nobody in ref               = 5 s
# confusion:   [9, 10] y(=B) over A  +  [15, 20] x(=A) over B  = 1 + 5 = 6 s
# DER = (1 + 5 + 6) / 20 = 0.6
DER_REF = [SpeakerTurn(0, 10, "A"), SpeakerTurn(10, 20, "B")]
DER_HYP = [SpeakerTurn(0, 8, "x"), SpeakerTurn(9, 15, "y"), SpeakerTurn(15, 25, "x")]


def test_der_hand_computed_miss_false_alarm_confusion() -> None:
    result = diarisation_error_rate(DER_REF, DER_HYP)
    assert isinstance(result, DerResult)
    assert result.total == pytest.approx(20.0)
    assert result.missed_seconds == pytest.approx(1.0)
    assert result.false_alarm_seconds == pytest.approx(5.0)
    assert result.confusion_seconds == pytest.approx(6.0)
    assert (result.missed, result.false_alarm, result.confusion) == pytest.approx(
        (0.05, 0.25, 0.30)
    )
    assert result.der == pytest.approx(0.6)
    assert result.speaker_mapping == {"x": "A", "y": "B"}


def test_der_collar_is_total_width() -> None:
    # collar=1.0 (pyannote) removes 0.5 s on each side of reference boundaries 0, 10, 20
    # (= md-eval -c 0.5): scored reference is A [0.5, 9.5] + B [10.5, 19.5] = 18 s.
    # missed [8, 9] = 1; confusion [9, 9.5] + [15, 19.5] = 0.5 + 4.5 = 5;
    # false alarm [20.5, 25] = 4.5.   DER = (1 + 4.5 + 5) / 18 = 10.5 / 18
    result = diarisation_error_rate(DER_REF, DER_HYP, collar=1.0)
    assert result.total == pytest.approx(18.0)
    assert (result.missed_seconds, result.false_alarm_seconds, result.confusion_seconds) == (
        pytest.approx(1.0),
        pytest.approx(4.5),
        pytest.approx(5.0),
    )
    assert result.der == pytest.approx(10.5 / 18)


def test_der_overlap_scored_by_default() -> None:
    # ref A [0, 10], B [6, 15] (both speak in [6, 10]); total = 10 + 9 = 19 s.
    # hyp one speaker x [0, 15]; x->A (10 s) beats x->B (9 s).
    # [6, 10]: two reference speakers, one hypothesis speaker -> 4 s missed;
    # [10, 15]: x(=A) over B -> 5 s confusion.  DER = 9 / 19.
    ref = [SpeakerTurn(0, 10, "A"), SpeakerTurn(6, 15, "B")]
    hyp = [SpeakerTurn(0, 15, "x")]
    scored = diarisation_error_rate(ref, hyp)
    assert scored.total == pytest.approx(19.0)
    assert scored.missed_seconds == pytest.approx(4.0)
    assert scored.confusion_seconds == pytest.approx(5.0)
    assert scored.der == pytest.approx(9 / 19)
    # skip_overlap: [6, 10] is not scored; total 6 + 5 = 11, confusion 5 -> 5/11.
    skipped = diarisation_error_rate(ref, hyp, skip_overlap=True)
    assert skipped.total == pytest.approx(11.0)
    assert skipped.der == pytest.approx(5 / 11)


def test_der_uem_and_perfect_and_empty() -> None:
    # Relabelled but otherwise identical hypothesis: DER 0.
    relabelled = [SpeakerTurn(0, 10, "s1"), SpeakerTurn(10, 20, "s0")]
    assert diarisation_error_rate(DER_REF, relabelled).der == 0.0
    # Scoring only [0, 8] leaves 8 s of A, all correct under x->A.
    assert diarisation_error_rate(DER_REF, DER_HYP, uem=[(0.0, 8.0)]).der == 0.0
    # Nothing hypothesised: everything missed.
    assert diarisation_error_rate(DER_REF, []).missed == pytest.approx(1.0)
    assert diarisation_error_rate([], []).der == 0.0


def test_der_merges_overlapping_turns_of_one_speaker() -> None:
    # A [0, 6] and A [4, 10] are 10 s of A, not 12.
    ref = [SpeakerTurn(0, 6, "A"), SpeakerTurn(4, 10, "A")]
    result = diarisation_error_rate(ref, [SpeakerTurn(0, 10, "x")])
    assert result.total == pytest.approx(10.0) and result.der == 0.0


# -- cpWER -----------------------------------------------------------------------------------


def test_cpwer_swapped_labels_is_zero() -> None:
    ref = {"A": "hello there", "B": "how are you"}
    hyp = {"spk1": "how are you", "spk0": "hello there"}
    result = cp_word_error_rate(ref, hyp)
    assert result.cpwer == 0.0
    assert result.speaker_mapping == {"spk0": "A", "spk1": "B"}


def test_cpwer_hand_count_with_unmatched_hypothesis_speaker() -> None:
    # ref A "hello there my friend" (4), B "how are you today" (4): N = 8
    # hyp 1 "how are you", 2 "hello their my friend", 3 "okay"
    # pairwise errors: A-1 4, A-2 1 (there->their), A-3 4; B-1 1 (today deleted), B-2 4, B-3 4
    # a padded "no speaker" row costs each hyp speaker's length: 3, 4, 1
    # best: A-2 (1) + B-1 (1) + none-3 (1 insertion) = 3  -> cpWER = 3/8
    ref = {"A": "hello there my friend", "B": "how are you today"}
    hyp = {"1": "how are you", "2": "hello their my friend", "3": "okay"}
    result = cp_word_error_rate(ref, hyp)
    assert isinstance(result, CpWerResult)
    assert (result.substitutions, result.deletions, result.insertions) == (1, 1, 1)
    assert result.cpwer == pytest.approx(3 / 8)
    assert result.speaker_mapping == {"2": "A", "1": "B"}
    assert result.unmatched_hypothesis == ["3"] and result.unmatched_reference == []


def test_cpwer_penalises_words_given_to_the_wrong_speaker() -> None:
    # All words right but one speaker in the hypothesis: plain WER 0.
    # ref A "red green", B "blue black"; hyp 1 "red green blue black".
    # 2 insertions; B-1: 2 insertions; leaving either unmatched costs its 2 words.
    # Any assignment costs 2 + 2 = 4 -> cpWER 4/4 = 1.0.
    ref = {"A": "red green", "B": "blue black"}
    hyp = {"1": "red green blue black"}
    assert word_error_rate("red green blue black", "red green blue black").wer == 0.0
    result = cp_word_error_rate(ref, hyp)
    assert result.cpwer == 1.0 and len(result.unmatched_reference) == 1


def test_cpwer_from_utterances_in_time_order() -> None:
    # Utterances out of file order are concatenated by start time per speaker.
    ref = [
        Utterance("A", 5.0, 6.0, text_override="world"),
        Utterance("A", 0.0, 1.0, text_override="hello"),
        Utterance("B", 2.0, 3.0, text_override="yes"),
    ]
    hyp = {"x": "hello world", "y": "yes"}
    assert cp_word_error_rate(ref, hyp).cpwer == 0.0


# -- WDER ------------------------------------------------------------------------------------


def _words(pairs: list[tuple[str, str]]) -> list[Word]:
    return [Word(float(i), float(i) + 0.5, t, speaker=spk) for i, (t, spk) in enumerate(pairs)]


def test_wder_hand_case() -> None:
    # ref: hello/A there/A how/B are/B you/B
    # hyp: hello/1 their/2 how/2 you/2
    # alignment: hello=hello (C), there->their (S), how=how (C), are deleted, you=you (C)
    # aligned pairs (ref spk, hyp spk): (A,1) C, (A,2) S, (B,2) C, (B,2) C  -> S + C = 4
    # mapping 1->A, 2->B agrees on 3 pairs (the swap on 1): optimal.
    # wrong speaker: (A,2) S only -> S_IS = 1, C_IS = 0 -> WDER = 1/4
    ref = _words([("hello", "A"), ("there", "A"), ("how", "B"), ("are", "B"), ("you", "B")])
    hyp = _words([("hello", "1"), ("their", "2"), ("how", "2"), ("you", "2")])
    result = word_diarisation_error_rate(ref, hyp)
    assert (result.hits, result.substitutions) == (3, 1)
    assert (result.hits_wrong_speaker, result.substitutions_wrong_speaker) == (0, 1)
    assert result.wder == pytest.approx(0.25)
    assert result.speaker_mapping == {"1": "A", "2": "B"}


def test_wder_relabelled_speakers_and_normalisation() -> None:
    # "don't" -> "do not" changes the token count; the speaker follows its run of words.
    ref = _words([("I", "A"), ("don't", "A"), ("know.", "A"), ("Ten", "B"), ("cats", "B")])
    hyp = _words([("i", "p"), ("do", "p"), ("not", "p"), ("know", "p"), ("10", "q"), ("cats", "q")])
    result = word_diarisation_error_rate(ref, hyp)
    assert result.wder == 0.0 and result.aligned_words == 6


def test_wder_counts_hits_with_the_wrong_speaker() -> None:
    # ref a/A b/A c/B d/B; hyp a/1 b/1 c/1 d/2 (word "c" attributed to the wrong speaker).
    # All 4 aligned as correct. Mapping 1->A (2 agree) + 2->B (1 agree) = 3; swap = 1.
    # (B,1) for "c" is wrong: C_IS = 1 -> WDER = 1/4.
    ref = _words([("a", "A"), ("b", "A"), ("c", "B"), ("d", "B")])
    hyp = _words([("a", "1"), ("b", "1"), ("c", "1"), ("d", "2")])
    result = word_diarisation_error_rate(ref, hyp, normalise=False)
    assert (result.hits, result.hits_wrong_speaker) == (4, 1)
    assert result.wder == pytest.approx(0.25)


# -- loaders ---------------------------------------------------------------------------------


def _write(path: Path, text: str, bom: bool = False, crlf: bool = False) -> Path:
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    return path


def test_load_stm_with_comments_labels_ignored_segments_bom_crlf(tmp_path: Path) -> None:
    stm = _write(
        tmp_path / "ep.stm",
        ";; comment line\n"
        "ep1 1 host 0.00 2.50 <o,f0,male> Hello and welcome.\n"
        "\n"
        "ep1 1 guest 2.50 4.00 Thanks   for having me.\n"
        "ep1 1 excluded_region 4.00 5.00 ignore_time_segment_in_scoring\n"
        "ep1 1 host 5.00 6.00 ignore_time_segment_in_scoring\n",
        bom=True,
        crlf=True,
    )
    ref = load_stm(stm)
    assert [(u.speaker, u.start, u.end, u.text) for u in ref.utterances] == [
        ("host", 0.0, 2.5, "Hello and welcome."),
        ("guest", 2.5, 4.0, "Thanks for having me."),
    ]
    assert ref.has_speakers and ref.has_timestamps and not ref.has_words
    assert ref.speaker_texts == {"host": "Hello and welcome.", "guest": "Thanks for having me."}
    assert ref.turns == [SpeakerTurn(0.0, 2.5, "host"), SpeakerTurn(2.5, 4.0, "guest")]
    assert load_reference(stm).utterances == ref.utterances


def test_load_stm_several_recordings_needs_file_id(tmp_path: Path) -> None:
    stm = _write(tmp_path / "two.stm", "a 1 s 0 1 one\nb 1 s 0 1 two\n")
    with pytest.raises(ReferenceFormatError, match="two.stm.*file_id"):
        load_stm(stm)
    assert load_stm(stm, file_id="b").text == "two"


def test_load_stm_bad_time_names_file_and_line(tmp_path: Path) -> None:
    stm = _write(tmp_path / "bad.stm", "ep 1 s 0.0 1.0 fine\nep 1 s zero 1.0 broken\n")
    with pytest.raises(ReferenceFormatError, match=r"bad\.stm:2: begin time"):
        load_stm(stm)


def test_rttm_gives_turns_and_der_but_no_text(tmp_path: Path) -> None:
    rttm = _write(
        tmp_path / "ep.rttm",
        "SPEAKER ep 1 0.000 10.000 <NA> <NA> A <NA> <NA>\n"
        "SPKR-INFO ep 1 <NA> <NA> <NA> unknown A <NA> <NA>\n"
        "\n"
        "SPEAKER ep 1 10.000 10.000 <NA> <NA> B <NA> <NA>\n",
        crlf=True,
    )
    ref = load_reference(rttm)
    assert ref.format == "rttm" and not ref.has_text and not ref.has_words
    assert ref.turns == DER_REF
    assert diarisation_error_rate(ref.turns, DER_HYP).der == pytest.approx(0.6)


def test_rttm_short_line_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReferenceFormatError, match="short.rttm:1"):
        load_rttm(_write(tmp_path / "short.rttm", "SPEAKER ep 1 0.0 1.0\n"))


def _corrected_doc() -> dict:
    return {
        "dialogs": [
            {
                "speaker": 0,
                "start": 0.5,
                "end": 2.0,
                "text": "Welcome to the show.",
                "words": [
                    {"word": " Welcome", "start": 0.5, "end": 0.9, "probability": 0.9},
                    {"word": " to", "start": 0.9, "end": 1.0, "probability": 0.9},
                    {"word": " the", "start": 1.0, "end": 1.2, "probability": 0.9},
                    {"word": " show.", "start": 1.2, "end": 2.0, "probability": 0.9},
                ],
            },
            {"speaker": 1, "start": 2.0, "end": 3.0, "text": "Glad to be here.", "words": []},
            {"speaker": 0, "start": 3.0, "end": 4.0, "text": "Let's start.", "words": []},
        ],
        "speakers": ["SPEAKER_00", "SPEAKER_01"],
    }


def test_load_rag_corrected_with_speakers_json_found_in_asr_dir(tmp_path: Path) -> None:
    (tmp_path / "transcripts").mkdir()
    (tmp_path / "asr").mkdir()
    corrected = tmp_path / "transcripts" / "623.corrected.json"
    corrected.write_text(json.dumps(_corrected_doc()), encoding="utf-8")
    names = {"SPEAKER_00": "Sam Charrington", "SPEAKER_01": "Jane Doe"}
    (tmp_path / "asr" / "623.speakers.json").write_text(json.dumps(names), encoding="utf-8")

    ref = load_reference(corrected)
    assert ref.format == "rag-json" and ref.has_words and ref.has_speakers
    assert [u.speaker for u in ref.utterances] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    assert ref.speaker_names == names and ref.name_of("SPEAKER_01") == "Jane Doe"
    assert ref.speaker_texts == {
        "SPEAKER_00": "Welcome to the show. Let's start.",
        "SPEAKER_01": "Glad to be here.",
    }
    assert [w.text for w in ref.utterances[0].words] == [" Welcome", " to", " the", " show."]
    assert all(w.speaker == "SPEAKER_00" for w in ref.utterances[0].words)
    assert ref.turns[1] == SpeakerTurn(2.0, 3.0, "SPEAKER_01")
    explicit = load_rag_corrected(corrected, tmp_path / "asr" / "623.speakers.json")
    assert explicit.speaker_names == names


def test_load_rag_corrected_bad_speaker_index(tmp_path: Path) -> None:
    doc = _corrected_doc()
    doc["dialogs"][1]["speaker"] = 7
    path = tmp_path / "bad.corrected.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ReferenceFormatError, match="bad.corrected.json.*speaker index 7"):
        load_rag_corrected(path)
    (tmp_path / "junk.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ReferenceFormatError, match="junk.json: invalid JSON"):
        load_reference(tmp_path / "junk.json")


MARKDOWN = (
    "# Episode 623\n"
    "\n"
    "__Sam Charrington__ _(0h 0m 1.50s-0h 0m 2.75s)_:\n"
    "Hello there.\n"
    "\n"
    "__Jane Doe__ _(1h 1m 40.00s-1h 1m 51.90s)_:\n"
    "This answer is long enough that the renderer wrapped it across two lines at\n"
    "eighty columns.\n"
)


def test_load_rag_markdown(tmp_path: Path) -> None:
    ref = load_rag_markdown(_write(tmp_path / "623.md", MARKDOWN, bom=True, crlf=True))
    assert [(u.speaker, u.start, u.end) for u in ref.utterances] == [
        ("Sam Charrington", 1.5, 2.75),
        ("Jane Doe", 3700.0, pytest.approx(3711.9)),
    ]
    assert ref.utterances[1].text == (
        "This answer is long enough that the renderer wrapped it across two lines at "
        "eighty columns."
    )
    assert ref.has_speakers and ref.has_timestamps and not ref.has_words


def test_load_rag_markdown_rejects_other_markdown(tmp_path: Path) -> None:
    with pytest.raises(ReferenceFormatError, match="notes.md:1"):
        load_rag_markdown(_write(tmp_path / "notes.md", "Just some notes.\n"))


SRT = (
    "1\n"
    "00:00:01,000 --> 00:00:03,500\n"
    "Sam Charrington: <i>Welcome</i> to the show.\n"
    "\n"
    "2\n"
    "00:00:03,500 --> 00:00:05,000\n"
    "It's great &amp; fun.\n"
    "\n"
    "3\n"
    "00:00:05,000 --> 00:00:07,000\n"
    "SPEAKER_01: Thanks,\n"
    "glad to be here.\n"
    "4\n"
    "00:00:07,000 --> 00:00:08,000\n"
    "Here's the thing: it works.\n"
)


def test_load_srt_speakers_continuation_and_missing_blank_line(tmp_path: Path) -> None:
    ref = load_subtitles(_write(tmp_path / "ep.srt", SRT, bom=True, crlf=True))
    assert ref.format == "srt" and ref.has_speakers and ref.has_timestamps
    assert [(u.speaker, u.start, u.end, u.text) for u in ref.utterances] == [
        ("Sam Charrington", 1.0, 3.5, "Welcome to the show."),
        ("Sam Charrington", 3.5, 5.0, "It's great & fun."),  # continues the previous cue
        ("SPEAKER_01", 5.0, 7.0, "Thanks, glad to be here."),
        ("SPEAKER_01", 7.0, 8.0, "Here's the thing: it works."),  # not a speaker prefix
    ]


VTT = (
    "WEBVTT\n"
    "Kind: captions\n"
    "\n"
    "NOTE written by hand\n"
    "\n"
    "intro\n"
    "00:01.000 --> 00:03.000 align:start position:10%\n"
    "<v Sam Charrington>Welcome to the show.</v>\n"
    "\n"
    "01:00:03.000 --> 01:00:05.000\n"
    "<v.loud Jane Doe>Glad to be here.\n"
    "Sam Charrington: Great.\n"
)


def test_load_vtt_voice_tags_and_split_cue(tmp_path: Path) -> None:
    ref = load_reference(_write(tmp_path / "ep.vtt", VTT, crlf=True))
    assert ref.format == "vtt" and ref.has_speakers
    got = [(u.speaker, u.start, u.end, u.text) for u in ref.utterances]
    # The last cue names two speakers: its 2 s are shared by word count, 4 words : 1 word.
    assert got == [
        ("Sam Charrington", 1.0, 3.0, "Welcome to the show."),
        ("Jane Doe", 3603.0, pytest.approx(3604.6), "Glad to be here."),
        ("Sam Charrington", pytest.approx(3604.6), pytest.approx(3605.0), "Great."),
    ]


def test_subtitles_without_speakers(tmp_path: Path) -> None:
    ref = load_subtitles(_write(tmp_path / "plain.srt", "1\n00:00:00,000 --> 00:00:01,000\nhi\n"))
    assert not ref.has_speakers and ref.utterances[0].speaker == UNKNOWN_SPEAKER


def test_subtitles_bad_timing_is_an_error(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.srt", "1\n00:00:xx,000 --> 00:00:01,000\nhi\n")
    with pytest.raises(ReferenceFormatError, match=r"bad\.srt:2: bad cue timing"):
        load_subtitles(bad)


def test_plain_text_reference_still_gives_wer(tmp_path: Path) -> None:
    path = _write(tmp_path / "ep.txt", "We sat\n\non the red mat.\n", bom=True, crlf=True)
    ref = load_reference(path)
    assert not (ref.has_speakers or ref.has_timestamps or ref.has_words)
    assert ref.text == "We sat on the red mat."
    assert word_error_rate(ref.text, "we sit on red mat today").wer == 0.5
    with pytest.raises(ValueError, match="no timestamps"):
        _ = ref.turns
    # One UNKNOWN speaker: cpWER against a one-speaker hypothesis equals WER.
    assert cp_word_error_rate(ref, {"x": "we sat on the red mat"}).cpwer == 0.0


def test_load_reference_rejects_unknown_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ReferenceFormatError, match="ep.docx.*unknown reference format"):
        load_reference(_write(tmp_path / "ep.docx", "x"))
    with pytest.raises(ReferenceFormatError, match="speakers.json holds names only"):
        load_reference(_write(tmp_path / "1.speakers.json", "{}"))
    with pytest.raises(FileNotFoundError):
        load_reference(tmp_path / "missing.stm")
    with pytest.raises(ReferenceFormatError, match="empty.txt: empty"):
        load_text(_write(tmp_path / "empty.txt", "\n\n"))


# -- our own renderers read back as references -------------------------------------------------


def _transcript() -> SpeakerTranscript:
    def words(start: float, text: str, speaker: str) -> list[Word]:
        return [
            Word(start + 0.4 * i, start + 0.4 * i + 0.3, f" {t}", 0.9, speaker)
            for i, t in enumerate(text.split())
        ]

    utterances = [
        Utterance("SPEAKER_00", 0.0, 1.5, words(0.0, "Welcome to the show.", "SPEAKER_00")),
        Utterance("SPEAKER_01", 2.0, 3.5, words(2.0, "Thanks, I'm glad to be here.", "SPEAKER_01")),
        Utterance("SPEAKER_00", 4.0, 5.0, words(4.0, "Let's start.", "SPEAKER_00")),
    ]
    for u in utterances:
        u.end = u.words[-1].end
    return SpeakerTranscript(
        key="ep-1",
        duration=6.0,
        utterances=utterances,
        speakers=["SPEAKER_00", "SPEAKER_01"],
        speaker_names={"SPEAKER_00": "Sam Charrington", "SPEAKER_01": "Jane Doe"},
    )


def test_rendered_outputs_load_back_with_perfect_scores(tmp_path: Path) -> None:
    from twiml_assets.outputs import renderers

    transcript = _transcript()
    hyp = Reference.from_transcript(transcript)
    files = {
        "ep.md": renderers.markdown(transcript),
        "ep.srt": renderers.srt(transcript),
        "ep.vtt": renderers.vtt(transcript),
        "ep.corrected.json": json.dumps(renderers.corrected_json(transcript)),
        "ep.rttm": renderers.rttm(
            [SpeakerTurn(u.start, u.end, u.speaker) for u in transcript.utterances], "ep"
        ),
    }
    for name, content in files.items():
        ref = load_reference(_write(tmp_path / name, content))
        assert diarisation_error_rate(ref.turns, hyp.turns).der == pytest.approx(0.0, abs=1e-6)
        if ref.has_text:
            assert word_error_rate(ref.text, hyp.text).wer == 0.0, name
            assert cp_word_error_rate(ref, hyp).cpwer == 0.0, name
            wder = word_diarisation_error_rate(ref.speaker_words, hyp.speaker_words)
            # normalised: welcome to the show (4) + thanks i am glad to be here (7)
            # + let us start (3) = 14 aligned words
            assert wder.wder == 0.0 and wder.aligned_words == 14, name
