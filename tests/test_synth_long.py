"""The long-episode generator: real text, several voices, overlaps, podcast format, seeded."""

from __future__ import annotations

from pathlib import Path

from twiml_assets.demo.synth_long import (
    BACKCHANNELS,
    generate_long_episode,
    plan_lines,
    stdlib_sentences,
)


def test_text_comes_from_stdlib_docstrings_and_is_speakable() -> None:
    sentences = stdlib_sentences()
    assert len(sentences) > 2000
    assert all(5 <= len(s.split()) <= 30 and not any(c.isdigit() for c in s) for s in sentences)
    assert all("_" not in s and "(" not in s for s in sentences)


def test_plans_are_seeded_and_vary_turn_lengths() -> None:
    a, b = plan_lines(30, 3, seed=1), plan_lines(30, 3, seed=1)
    assert a == b and a != plan_lines(30, 3, seed=2)
    lengths = sorted(len(line.text.split()) for line in a)
    assert lengths[0] <= 15 and lengths[-1] >= 60  # a one-line question, a minute-long answer
    assert {line.speaker for line in a} == {"HOST", "GUEST", "GUEST2"}


def test_a_short_episode_has_exact_truth_and_overlaps(tmp_path: Path) -> None:
    import av

    ep = generate_long_episode(tmp_path / "ep.mp3", 2, speakers=2, seed=4, backchannel_rate=1.0)
    with av.open(str(ep.audio_path)) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels) == (44100, 2)
        assert abs(float(container.duration / av.time_base) - ep.duration) < 0.2
    assert ep.duration >= 120 and len(ep.turns) == len(ep.lines)
    assert [t.start for t in ep.turns] == sorted(t.start for t in ep.turns)
    backchannels = [text for _, text in ep.lines if text in BACKCHANNELS]
    assert backchannels, "long turns get replies spoken over them"
    assert all(t.end <= ep.duration for t in ep.turns)
