"""Uploads linked to published episodes by fingerprint, through the real pipeline.

Staff upload the master (a WAV); later the feed publishes the host's MP3 of it. The
episode's run links the two in ``audio_fingerprint`` and, when the upload covers the
whole episode, its model step reuses the upload's transcript instead of transcribing.
An upload made after publication is sent to the episode at once (``register_upload``).
Real Dagster runs (offline models), real HTTP feed, local storage.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from dagster import instance_for_test

from resources.storage import StorageResource
from tests.dagster_processes import publish
from tests.test_dagster_assets import materialisations
from twiml_assets.audio.links import read_link
from twiml_assets.audio.uploads import UploadLimits, register_upload, stage_upload
from twiml_assets.feed.resource import FeedResource


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *args], check=True)


def published_mp3(master: Path, out: Path, intro: Path | None = None) -> Path:
    """The host's MP3 of ``master``: 44.1 kHz stereo, 96 kbit/s, −3 dB, maybe an intro."""
    if intro is None:
        ffmpeg("-i", str(master), "-af", "volume=-3dB", "-ar", "44100", "-ac", "2",
               "-b:a", "96k", str(out))  # fmt: skip
    else:
        chain = (
            "[0:a]aresample=44100,aformat=channel_layouts=stereo[a];"
            "[1:a]aresample=44100,aformat=channel_layouts=stereo,volume=-3dB[b];"
            "[a][b]concat=n=2:v=0:a=1"
        )
        ffmpeg("-i", str(intro), "-i", str(master), "-filter_complex", chain, "-b:a", "96k",
               str(out))  # fmt: skip
    return out


def upload(storage: StorageResource, path: Path):
    with path.open("rb") as source:
        staged = stage_upload(source, UploadLimits(), path.name)
    try:
        return staged.key, register_upload(storage, staged)
    finally:
        staged.discard()


def words(root: Path, key: str) -> list[tuple[str, float]]:
    record = json.loads((root / f"asr/{key}.asr.json").read_text())
    return [(w["word"], w["start"]) for s in record["segments"] for w in s["words"]]


@pytest.mark.slow
def test_an_episode_published_after_its_upload_reuses_the_upload_transcript(
    http_server, tmp_path: Path, dialogue, short_episodes
) -> None:
    from twiml_assets.definitions import build_definitions

    root = tmp_path / "data"
    storage = StorageResource(root=str(root))
    up_key, registered = upload(storage, Path(dialogue.audio_path))
    assert registered.key == up_key and registered.stored and not registered.linked
    assert (root / f"fingerprints/{up_key}.json").exists()

    # The feed then publishes the host's MP3 (ep-1) and a version with a 10 s intro (ep-2).
    intro = tmp_path / "intro.wav"
    ffmpeg("-i", str(short_episodes[0].audio_path), "-t", "10", str(intro))
    clips = [
        published_mp3(Path(dialogue.audio_path), tmp_path / "ep1.mp3"),
        published_mp3(Path(dialogue.audio_path), tmp_path / "ep2.mp3", intro=intro),
    ]
    ep1, ep2 = publish(http_server, clips)
    defs = build_definitions(
        resources={"feed": FeedResource(url=http_server.url("feed.xml")), "storage": storage},
        env={},
    )
    job = defs.resolve_job_def("episode_pipeline")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", [up_key, ep1, ep2])
        runs = {
            key: job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
            for key in (up_key, ep1, ep2)
        }
    for key, result in runs.items():
        assert result.success, (key, [e.message for e in result.all_events if e.is_failure])
    meta = {key: materialisations(result) for key, result in runs.items()}

    # The upload was transcribed; it had nothing to link to when it ran.
    assert meta[up_key]["audio_fingerprint"]["computed"] is False  # stored at upload
    assert "linked_upload" not in meta[up_key]["audio_fingerprint"]
    assert "reused_from" not in meta[up_key]["transcript"]

    # ep-1 is the same speech: linked, and its transcript is the upload's, not a new one.
    fp1 = meta[ep1]["audio_fingerprint"]
    assert fp1["linked_upload"] == up_key and fp1["similarity"] >= 0.85
    assert fp1["transcript_reusable"] is True and fp1["unaligned_seconds"] <= 4.0
    print(f"ep-1: similarity {fp1['similarity']}, unaligned {fp1['unaligned_seconds']} s")
    assert meta[ep1]["transcript"]["reused_from"] == up_key
    assert meta[ep1]["transcript"]["asr_seconds"] == 0  # no model ran
    assert meta[ep1]["diarisation"]["reused_from"] == up_key
    reused = words(root, ep1)
    assert [w for w, _ in reused] == [w for w, _ in words(root, up_key)]
    assert all(abs(a - b) < 0.2 for (_, a), (_, b) in zip(reused, words(root, up_key), strict=True))
    assert (root / "transcripts/1.corrected.json").exists() and (
        root / "subtitles/ep-1.srt"
    ).exists()
    link = read_link(storage, up_key)
    assert link is not None and link == read_link(storage, ep1) and link.episode == ep1

    # ep-2 has 10 s of intro the upload lacks: linked, but transcribed itself (the intro's
    # speech is in no upload transcript). The upload keeps its first link, ep-1.
    fp2 = meta[ep2]["audio_fingerprint"]
    assert fp2["linked_upload"] == up_key and fp2["transcript_reusable"] is False
    assert "reused_from" not in meta[ep2]["transcript"]
    assert read_link(storage, ep2).upload == up_key and read_link(storage, up_key).episode == ep1
    assert meta[ep2]["transcript"]["duration_s"] == pytest.approx(
        meta[ep1]["transcript"]["duration_s"] + 10, abs=0.5
    )


def test_an_upload_of_a_published_episode_goes_to_that_episode(tmp_path: Path, dialogue) -> None:
    """Upload after publication: the master (WAV) finds the episode's MP3 by its sound."""
    from twiml_assets.audio.fingerprint import fingerprint_file, store_fingerprint

    root = tmp_path / "data"
    storage = StorageResource(root=str(root))
    published = published_mp3(Path(dialogue.audio_path), tmp_path / "ep7.mp3")
    store_fingerprint(storage, "ep-7", fingerprint_file(published), "0" * 64)
    key, registered = upload(storage, Path(dialogue.audio_path))
    assert registered.linked and registered.key == "ep-7" and not registered.stored
    assert 0.85 <= registered.similarity <= 1.0
    assert not (root / "audio").exists()  # nothing of the upload was stored
    assert not (root / f"fingerprints/{key}.json").exists()


def test_a_clip_or_a_shared_jingle_is_not_the_episode(
    tmp_path: Path, dialogue, short_episodes
) -> None:
    """Part of an episode (a 20 s clip; new speech after 35 s of the episode, as a shared
    jingle or a trailer would be) aligns, but is not that recording: it stays an upload."""
    from twiml_assets.audio.fingerprint import fingerprint_file, store_fingerprint

    root = tmp_path / "data"
    storage = StorageResource(root=str(root))
    published = published_mp3(Path(dialogue.audio_path), tmp_path / "ep7.mp3")
    store_fingerprint(storage, "ep-7", fingerprint_file(published), "0" * 64)
    clip = tmp_path / "clip.wav"
    ffmpeg("-i", str(dialogue.audio_path), "-ss", "30", "-t", "20", str(clip))
    trailer = tmp_path / "trailer.wav"
    inputs = [str(dialogue.audio_path), *(str(e.audio_path) for e in short_episodes)]
    mono = "".join(f"[{i}:a]aresample=16000,aformat=channel_layouts=mono[a{i}];" for i in range(4))
    chain = mono + "[a0]atrim=0:35,asetpts=N/SR/TB[h];[h][a1][a2][a3]concat=n=4:v=0:a=1"
    ffmpeg(*(a for path in inputs for a in ("-i", path)), "-filter_complex", chain, str(trailer))
    for path in (clip, trailer):
        key, registered = upload(storage, path)
        assert not registered.linked and registered.key == key and registered.stored, path.name


def test_reuse_keeps_only_what_the_engine_would_write_again() -> None:
    """The settings that decide the words must match; where the model ran must not."""
    from resources.schema import AsrResult, AsrSegment, Word
    from twiml_assets.speech.reuse import same_asr_settings, shifted_asr

    ran = {
        "model": "tiny.en",
        "beam_size": 5,
        "compute_type": "int8",
        "device": "cpu",
        "cpu_threads": 2,
        "initial_prompt": "Upload 2026-11-28",
    }
    elsewhere = {**ran, "device": "cuda", "cpu_threads": 8, "initial_prompt": "x"}
    assert same_asr_settings(ran, elsewhere)
    assert not same_asr_settings(ran, {**ran, "beam_size": 1})
    assert not same_asr_settings(ran, {**ran, "compute_type": "float16"})
    assert same_asr_settings(ran, {**ran, "compute_type": "auto"})

    words = [Word(0.2, 0.6, " Hello"), Word(0.7, 1.0, " there."), Word(5.0, 5.4, " Next.")]
    segments = [
        AsrSegment(0.2, 1.0, " Hello there.", words[:2]),
        AsrSegment(5.0, 5.4, " Next.", words[2:]),
    ]
    result = AsrResult(segments, "en", 6.0, "tiny.en", ran, seconds=3.2)
    shifted = shifted_asr(result, -0.65, 5.5)  # the upload had 0.65 s more at the start
    times = [(w.text, round(w.start, 2)) for w in shifted.words]
    assert times == [(" there.", 0.05), (" Next.", 4.35)]
    assert shifted.segments[0].text == " there." and shifted.seconds == 0.0
