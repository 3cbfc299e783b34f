"""Diarisation resource: accuracy on generated speech, edge cases, errors and model caching.

Reference audio is generated with espeak-ng at test time (exact turns known); DER is
pyannote.metrics' with collar 0 and overlap scored, the speaker count not given.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate

from resources.diarisation import (
    PyannoteDiariser,
    add_overlapping_speakers,
    change_points,
    hysteresis,
    load_segmentation_model,
    load_speaker_encoder,
)
from resources.diarisation.embedding import Segments, Windows
from resources.diarisation.networks import EMBEDDING_SIZE
from resources.diarisation.resegmentation import split_mixed_segments
from resources.diarisation.turns import Track, annotation_tracks, tracks_to_turns
from resources.model_paths import ModelNotFoundError, resemblyzer_encoder, segmentation_checkpoint
from resources.schema import DiarisationResult, SpeakerTurn
from twiml_assets.demo.synth import SAMPLE_RATE, SyntheticEpisode, synthesize_dialogue

THREE_SPEAKER_LINES: tuple[tuple[str, str], ...] = (
    ("HOST", "Welcome everyone. Today two guests join us to talk about data pipelines."),
    ("GUEST", "Thanks for having us. I lead the data platform team at a large retailer."),
    ("EXTRA", "And I work on the machine learning side, mostly on feature stores and monitoring."),
    ("HOST", "Let us begin with a simple question. Why do pipelines break?"),
    ("GUEST", "Usually because the upstream schema changes and nobody tells the consumers."),
    ("EXTRA", "I agree. Silent changes in the data are the worst kind of failure."),
    ("HOST", "How do you catch them early?"),
    ("EXTRA", "We run checks on every table, comparing distributions against the last week."),
    ("GUEST", "And we version every dataset, so we can always go back to a known good state."),
    ("HOST", "That sounds like a lot of work for a small team."),
    ("GUEST", "It is at first, but it pays off quickly."),
    ("EXTRA", "The first time it saves a model launch, everyone becomes a believer."),
    ("HOST", "Great. Thank you both for joining."),
)


def to_annotation(turns: list[SpeakerTurn]) -> Annotation:
    annotation = Annotation()
    for turn in turns:
        annotation[Segment(turn.start, turn.end)] = turn.speaker
    return annotation


def der(reference: list[SpeakerTurn], hypothesis: list[SpeakerTurn], duration: float) -> float:
    """DER over the whole file, collar 0, overlap scored; labels mapped optimally."""
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    uem = Timeline([Segment(0.0, duration)])
    return float(metric(to_annotation(reference), to_annotation(hypothesis), uem=uem))


def read_wav(path: Path) -> np.ndarray:
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


@pytest.fixture(scope="module")
def diariser() -> PyannoteDiariser:
    return PyannoteDiariser(device="cpu")


@pytest.fixture(scope="module")
def default_waveform(dialogue: SyntheticEpisode) -> np.ndarray:
    return read_wav(dialogue.audio_path)


@pytest.fixture(scope="module")
def default_result(diariser: PyannoteDiariser, default_waveform: np.ndarray) -> DiarisationResult:
    """The default dialogue diarised once with an automatic speaker count."""
    return diariser.diarise(default_waveform)


# -- accuracy (real models) -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.model_output
def test_default_dialogue_der_and_estimated_speaker_count(
    dialogue: SyntheticEpisode, default_result: DiarisationResult
) -> None:
    error = der(dialogue.turns, default_result.turns, dialogue.duration)
    assert error <= 0.12, f"DER {error:.3f}"
    assert len(default_result.speakers) == 2
    assert default_result.details["estimated_speakers"] == 2
    assert default_result.model.startswith("offline")
    assert default_result.config["num_speakers"] is None
    assert default_result.config["device"] == "cpu"
    assert default_result.duration == pytest.approx(dialogue.duration, abs=0.01)
    assert default_result.seconds > 0


@pytest.mark.slow
@pytest.mark.model_output
def test_forced_speaker_count_and_per_call_override(
    dialogue: SyntheticEpisode, default_waveform: np.ndarray
) -> None:
    # The field says 3; the per-call value wins.
    result = PyannoteDiariser(device="cpu", num_speakers=3).diarise(
        default_waveform, num_speakers=2
    )
    assert result.config["num_speakers"] == 2
    assert len(result.speakers) == 2
    assert der(dialogue.turns, result.turns, dialogue.duration) <= 0.12


@pytest.mark.slow
@pytest.mark.model_output
def test_three_speakers_are_counted(tmp_path: Path, diariser: PyannoteDiariser) -> None:
    episode = synthesize_dialogue(
        tmp_path / "three.wav", lines=THREE_SPEAKER_LINES, gaps=(0.5, 0.3, 0.8, 0.4), seed=2
    )
    result = diariser.diarise(read_wav(episode.audio_path))
    assert len(result.speakers) == 3
    assert der(episode.turns, result.turns, episode.duration) <= 0.15


@pytest.mark.slow
def test_labels_are_ordered_by_first_appearance(default_result: DiarisationResult) -> None:
    turns = default_result.turns
    assert turns == sorted(turns, key=lambda t: (t.start, t.end))
    assert all(re.fullmatch(r"SPEAKER_\d\d", t.speaker) for t in turns)
    first_seen = list(dict.fromkeys(t.speaker for t in turns))
    assert first_seen == [f"SPEAKER_{i:02d}" for i in range(len(first_seen))]
    assert all(t.end > t.start for t in turns)


@pytest.mark.slow
def test_silence_and_tiny_input_give_no_turns(diariser: PyannoteDiariser) -> None:
    silence = diariser.diarise(np.zeros(5 * SAMPLE_RATE, dtype=np.float32))
    assert silence.turns == [] and silence.speakers == []
    assert silence.duration == pytest.approx(5.0)
    faint_noise = np.random.default_rng(0).standard_normal(5 * SAMPLE_RATE).astype(np.float32)
    assert diariser.diarise(faint_noise * 1e-4).turns == []
    assert diariser.diarise(np.zeros(100, dtype=np.float32)).turns == []


@pytest.mark.slow
def test_models_load_once_and_are_shared_across_instances(default_waveform: np.ndarray) -> None:
    PyannoteDiariser(device="cpu").diarise(default_waveform[: 8 * SAMPLE_RATE])
    before = (load_segmentation_model.cache_info(), load_speaker_encoder.cache_info())
    PyannoteDiariser(device="cpu", change_threshold=0.4).diarise(
        default_waveform[: 8 * SAMPLE_RATE]
    )
    after = (load_segmentation_model.cache_info(), load_speaker_encoder.cache_info())
    for old, new in zip(before, after, strict=True):
        assert new.misses == old.misses
        assert new.hits > old.hits


@pytest.mark.slow
@pytest.mark.model_output
def test_streamed_blocks_give_exactly_the_one_pass_result(
    default_waveform: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segmentation and speaker-encoder blocks change memory, never the result."""
    from resemblyzer.audio import wav_to_mel_spectrogram

    from resources.diarisation import DiarisationSettings, diarise_offline, embedding, segmentation

    seg = load_segmentation_model(str(segmentation_checkpoint()), "cpu")
    enc = load_speaker_encoder(str(resemblyzer_encoder()), "cpu")
    settings = DiarisationSettings()
    one_pass = diarise_offline(default_waveform, settings, seg, enc)
    monkeypatch.setattr(segmentation, "SEGMENTATION_BLOCK_SECONDS", 7.0)
    monkeypatch.setattr(embedding, "MEL_BLOCK_FRAMES", 450)
    streamed = diarise_offline(default_waveform, settings, seg, enc)
    assert streamed[0] == one_pass[0]
    assert streamed[1]["segments"] == one_pass[1]["segments"]

    # numpy's STFT with librosa's window and filterbank (kept in the export) is resemblyzer's
    # librosa mel spectrogram up to float32 rounding.
    mel = embedding.MelSpectrogram(default_waveform, 1.0, enc.mel_basis)
    whole = wav_to_mel_spectrogram(default_waveform)
    assert len(mel) == len(whole)
    np.testing.assert_allclose(mel.frames(0, len(mel)), whole, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(mel.frames(1234, 2345), whole[1234:2345], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.model_output
def test_onnx_networks_match_the_torch_models(default_waveform: np.ndarray) -> None:
    """The CPU runs the ONNX exports; they must be the torch models up to float rounding:
    the same segments and speakers, activations and embeddings within 1e-4."""
    from resources.diarisation import DiarisationSettings, diarise_offline, segmentation
    from resources.diarisation.models import load_torch_encoder, load_torch_segmentation
    from resources.diarisation.networks import TorchEncoder, TorchSegmentation

    onnx_seg = load_segmentation_model(str(segmentation_checkpoint()), "cpu")
    onnx_enc = load_speaker_encoder(str(resemblyzer_encoder()), "cpu")
    torch_seg = TorchSegmentation(load_torch_segmentation(str(segmentation_checkpoint()), "cpu"))
    torch_enc = TorchEncoder(load_torch_encoder(str(resemblyzer_encoder()), "cpu"))
    assert (onnx_seg.frame_step, onnx_seg.frame_offset, onnx_seg.window_samples) == (
        torch_seg.frame_step,
        torch_seg.frame_offset,
        torch_seg.window_samples,
    )
    np.testing.assert_allclose(onnx_enc.mel_basis.filters, torch_enc.mel_basis.filters)

    windows = [b for _, b in segmentation.sliding_windows(default_waveform, 80_000, 40_000)]
    batch = np.concatenate(windows[:2])
    np.testing.assert_allclose(onnx_seg(batch, 1), torch_seg(batch, 1), atol=1e-4)
    mel = np.random.default_rng(0).random((3, 160, 40), dtype=np.float32)
    for ours, theirs in zip(onnx_enc(mel, 1), torch_enc(mel, 1), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)

    settings = DiarisationSettings()
    on_onnx = diarise_offline(default_waveform, settings, onnx_seg, onnx_enc, threads=1)
    on_torch = diarise_offline(default_waveform, settings, torch_seg, torch_enc, threads=1)
    assert [t.speaker for t in on_onnx[0]] == [t.speaker for t in on_torch[0]]
    for a, b in zip(on_onnx[0], on_torch[0], strict=True):
        assert abs(a.start - b.start) <= 0.05 and abs(a.end - b.end) <= 0.05


def test_sliding_windows_are_pyannotes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every whole window on the step grid, then the rest zero-padded (pyannote's Inference)."""
    from resources.diarisation.segmentation import sliding_windows

    audio = np.arange(23, dtype=np.float32)
    got = list(sliding_windows(audio, window=10, step=4, batch=2))
    assert [first for first, _ in got] == [0, 2, 4]
    stacked = np.concatenate([b for _, b in got])[:, 0, :]
    assert stacked.shape == (5, 10)
    np.testing.assert_array_equal(stacked[3], np.arange(12, 22))
    np.testing.assert_array_equal(stacked[4], np.r_[np.arange(16, 23), np.zeros(3)])
    exact = list(sliding_windows(np.arange(18, dtype=np.float32), window=10, step=4))
    assert sum(len(b) for _, b in exact) == 3  # no padded window when the grid ends on time
    short = list(sliding_windows(np.ones(3, dtype=np.float32), window=10, step=4))
    assert len(short) == 1 and short[0][1].shape == (1, 1, 10) and short[0][1].sum() == 3


@pytest.mark.slow
def test_a_stale_export_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export whose sidecar names other weights (or none) is redone, atomically, readable
    by others; a current one is reused as it is."""
    import json

    from resources.diarisation import export

    monkeypatch.setattr(export, "export_dir", lambda: tmp_path)
    path, meta = export.segmentation_onnx(segmentation_checkpoint())
    assert path.parent == tmp_path and meta["window_samples"] == 80_000
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    made = path.stat().st_mtime_ns
    assert export.segmentation_onnx(segmentation_checkpoint())[0].stat().st_mtime_ns == made
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "source_sha256": "0"}))
    export.segmentation_onnx(segmentation_checkpoint())
    assert json.loads(sidecar.read_text())["source_sha256"] == export.sha256(
        segmentation_checkpoint()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pyannote-segmentation.json",
        "pyannote-segmentation.onnx",
    ]


@pytest.mark.slow
def test_cpu_diarisation_imports_neither_torch_nor_pyannote_audio() -> None:
    """The CPU path runs on onnxruntime and plain tracks: a process that diarises skips
    ~10 s of imports (torch, pyannote.audio, and pyannote.core's matplotlib)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from resources.diarisation import PyannoteDiariser\n"
        "from twiml_assets.demo.synth import SAMPLE_RATE\n"
        "noise = np.random.default_rng(0).standard_normal(4 * SAMPLE_RATE).astype('f4')\n"
        "PyannoteDiariser(device='cpu').diarise(noise)\n"
        "heavy = ('torch', 'pyannote.audio', 'lightning', 'pyannote.core', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


# -- configuration errors (no model needed) -------------------------------------------------
def test_min_speakers_above_max_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"min_speakers \(3\) is greater than max_speakers \(2\)"):
        PyannoteDiariser().diarise(
            np.zeros(SAMPLE_RATE, dtype=np.float32), min_speakers=3, max_speakers=2
        )
    with pytest.raises(ValueError, match="num_speakers must be >= 1"):
        PyannoteDiariser(num_speakers=0).settings()


def test_wrong_sample_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="16000 Hz"):
        PyannoteDiariser().diarise(np.zeros(8000, dtype=np.float32), 8000)


def test_hub_pipeline_without_token_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    diariser = PyannoteDiariser(pipeline="pyannote/speaker-diarization-community-1")
    with pytest.raises(ModelNotFoundError, match="accept the model's user conditions.*HF_TOKEN"):
        diariser.diarise(np.zeros(SAMPLE_RATE, dtype=np.float32))


def test_missing_local_pipeline_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config.yaml"
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        PyannoteDiariser(pipeline=str(missing)).diarise(np.zeros(SAMPLE_RATE, dtype=np.float32))
    with pytest.raises(ModelNotFoundError, match="no config.yaml"):
        PyannoteDiariser(pipeline=str(tmp_path)).diarise(np.zeros(SAMPLE_RATE, dtype=np.float32))


# -- building blocks (pure functions) -------------------------------------------------------
def test_hysteresis_needs_onset_to_start_and_offset_to_stop() -> None:
    scores = np.array([0.1, 0.65, 0.75, 0.65, 0.55, 0.65])
    expected = [False, False, True, True, False, False]
    assert hysteresis(scores, onset=0.7, offset=0.6).tolist() == expected


def test_change_points_are_peaks_above_threshold() -> None:
    change = np.array([0.0, 0.1, 0.3, 0.2, 0.0, 0.6, 0.8, 0.5, 0.0])
    assert change_points(change, 0.3).tolist() == [2, 6]


def test_turns_join_short_gaps_per_speaker_and_rename_by_first_appearance() -> None:
    annotation = Annotation()  # what a hub pipeline returns
    annotation[Segment(5.0, 6.0)] = 7
    annotation[Segment(0.0, 2.0)] = 3
    annotation[Segment(2.2, 3.0)] = 3  # 0.2 s gap: same turn
    annotation[Segment(3.1, 4.0)] = 7
    annotation[Segment(9.0, 9.05)] = 3  # shorter than min_on: dropped
    turns = tracks_to_turns(annotation_tracks(annotation), min_on=0.1, min_off=0.3)
    assert [(t.start, t.end, t.speaker) for t in turns] == [
        (0.0, 3.0, "SPEAKER_00"),
        (3.1, 4.0, "SPEAKER_01"),
        (5.0, 6.0, "SPEAKER_01"),
    ]


def test_overlap_gets_the_nearest_other_speaker() -> None:
    tracks = [Track(0.0, 4.0, "A"), Track(4.0, 8.0, "B"), Track(9.0, 12.0, "C")]
    out = add_overlapping_speakers(tracks, [(3.5, 4.5)])
    assert sorted(out) == sorted([*tracks, Track(3.5, 4.0, "B"), Track(4.0, 4.5, "A")])
    turns = tracks_to_turns(out, min_on=0.0, min_off=0.0)
    assert [(t.start, t.end, t.speaker) for t in turns] == [
        (0.0, 4.5, "SPEAKER_00"),
        (3.5, 8.0, "SPEAKER_01"),
        (9.0, 12.0, "SPEAKER_02"),
    ]


def test_segments_holding_two_voices_are_split_where_the_voice_changes() -> None:
    rng = np.random.default_rng(0)
    voice_a, voice_b = np.eye(EMBEDDING_SIZE)[0], np.eye(EMBEDDING_SIZE)[1]
    bounds = np.array([[0.0, 10.0], [10.0, 20.0], [20.0, 30.0]])
    labels = np.array([0, 1, 0])

    def voice_at(t: float) -> np.ndarray:
        if 7.0 <= t < 20.0 or 25.0 <= t < 25.6:  # B answers at 7 s; a 0.6 s blip at 25 s
            return voice_b
        return voice_a

    centres, owner = [], []
    for i, (start, end) in enumerate(bounds):
        times = np.arange(start + 0.8, end - 0.7, 0.2)
        centres.extend(times)
        owner.extend([i] * len(times))
    raw = np.array([voice_at(t) for t in centres]) + 0.3 * rng.standard_normal(
        (len(centres), EMBEDDING_SIZE)
    ) / np.sqrt(EMBEDDING_SIZE)
    segments = Segments(
        bounds=bounds,
        whitened=np.zeros((3, EMBEDDING_SIZE)),
        raw=np.zeros((3, EMBEDDING_SIZE)),
        windows=Windows(raw=raw, owner=np.array(owner), centres=np.array(centres)),
    )

    split, split_labels = split_mixed_segments(segments, labels)

    assert split_labels.tolist() == [0, 1, 1, 0]  # the 0.6 s blip is too short to split
    assert split[0].tolist() == [0.0, pytest.approx(7.0, abs=0.2)]
    assert split[1].tolist() == [pytest.approx(7.0, abs=0.2), 10.0]
    assert split[2:].tolist() == [[10.0, 20.0], [20.0, 30.0]]


def test_one_speaker_or_no_windows_leaves_segments_whole() -> None:
    bounds = np.array([[0.0, 4.0]])
    segments = Segments(
        bounds=bounds,
        whitened=np.zeros((1, EMBEDDING_SIZE)),
        raw=np.zeros((1, EMBEDDING_SIZE)),
        windows=Windows(
            raw=np.zeros((0, EMBEDDING_SIZE)), owner=np.zeros(0, dtype=int), centres=np.zeros(0)
        ),
    )
    split, split_labels = split_mixed_segments(segments, np.array([0]))
    assert split.tolist() == bounds.tolist() and split_labels.tolist() == [0]
