"""S3 storage against a real S3-compatible server process (moto server mode)."""

from __future__ import annotations

import pytest

from resources.schema import AsrResult, DiarisationResult, SpeakerTurn
from resources.storage import StorageError, StorageResource, StorageUnavailableError, s3_client
from tests.s3_server import S3Server, provision, start_server
from tests.test_renderers import sample_transcript
from twiml_assets.outputs.files import write_all_outputs


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> S3Server:
    endpoint, process = start_server(log=tmp_path_factory.mktemp("moto") / "moto.log")
    writer, reader = provision(endpoint)
    server = S3Server(endpoint, process, "podcast", writer, reader)
    yield server
    server.stop()


def use_keys(monkeypatch, keys: tuple[str, str]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys[1])


def outputs_to(storage: StorageResource) -> list[str]:
    asr = AsrResult([], "en", 3720.0, "tiny.en", {}, 1.0)
    diar = DiarisationResult([SpeakerTurn(1.0, 3.0, "SPEAKER_00")], 3720.0, "offline", {}, 0.5)
    write_all_outputs(storage, sample_transcript(), asr, diar, info={"episode": 623})
    return list(storage.list())


def test_s3_layout_equals_local_layout_and_rewrites_are_idempotent(s3, monkeypatch, tmp_path):
    use_keys(monkeypatch, s3.writer)
    remote = StorageResource(root=f"s3://{s3.bucket}/twiml", endpoint_url=s3.endpoint)
    local = StorageResource(root=str(tmp_path))
    assert outputs_to(remote) == outputs_to(local)
    assert outputs_to(remote) == outputs_to(local)  # second run: same keys, no duplicates
    assert remote.read_json("transcripts/623.corrected.json") == local.read_json(
        "transcripts/623.corrected.json"
    )
    assert remote.uri("markdown/623.md") == "s3://podcast/twiml/markdown/623.md"
    assert remote.exists("markdown/623.md") and not remote.exists("markdown/624.md")
    audio = tmp_path / "a.mp3"
    audio.write_bytes(b"ID3" + bytes(5000))
    remote.put_file("audio/ep-623.mp3", audio)
    assert remote.local_path("audio/ep-623.mp3").read_bytes() == audio.read_bytes()


def test_read_only_credentials_read_but_cannot_write(s3, monkeypatch):
    use_keys(monkeypatch, s3.writer)
    StorageResource(root=f"s3://{s3.bucket}/ro", endpoint_url=s3.endpoint).write_text("a.txt", "hi")
    use_keys(monkeypatch, s3.reader)
    reader = StorageResource(root=f"s3://{s3.bucket}/ro", endpoint_url=s3.endpoint)
    assert reader.read_text("a.txt") == "hi"
    with pytest.raises(StorageError, match="refused to write .*AccessDenied"):
        reader.write_text("b.txt", "no")


def test_wrong_credentials_give_a_clear_error(s3, monkeypatch):
    use_keys(monkeypatch, ("AKIAWRONGWRONGWRONG", "not-the-secret"))
    storage = StorageResource(root=f"s3://{s3.bucket}/x", endpoint_url=s3.endpoint)
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID"):
        storage.write_text("a.txt", "x")


def test_server_down_is_a_retryable_error_and_leaves_nothing(monkeypatch, tmp_path):
    endpoint, process = start_server()
    writer, _ = provision(endpoint)
    use_keys(monkeypatch, writer)
    s3_client.cache_clear()
    storage = StorageResource(root="s3://podcast/down", endpoint_url=endpoint)
    storage.write_text("before.txt", "ok")
    process.terminate()
    process.wait(timeout=10)
    with pytest.raises(StorageUnavailableError, match="retried"):
        storage.write_text("after.txt", "lost?")


@pytest.mark.slow
def test_full_episode_materialisation_lands_the_layout_on_s3(
    s3, monkeypatch, http_server, short_episodes
) -> None:
    """The real episode_pipeline with storage on the S3 server: same keys as locally, twice."""
    from dagster import instance_for_test

    from tests.dagster_processes import publish
    from twiml_assets.definitions import build_definitions
    from twiml_assets.feed.resource import FeedResource

    use_keys(monkeypatch, s3.writer)
    (key,) = publish(http_server, [short_episodes[0].audio_path])
    storage = StorageResource(root=f"s3://{s3.bucket}/pipeline", endpoint_url=s3.endpoint)
    defs = build_definitions(
        resources={"feed": FeedResource(url=http_server.url("feed.xml")), "storage": storage},
        env={},
    )
    job = defs.resolve_job_def("episode_pipeline")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", [key])
        first = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        assert first.success, [e.message for e in first.all_events if e.is_failure]
        keys_first = list(storage.list())
        corrected = storage.read_text("transcripts/1.corrected.json")
        second = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        assert second.success
    expected = {
        "transcripts/1.corrected.json",
        "asr/1.speakers.json",
        "markdown/1.md",
        "info/1.info.json",
        f"transcripts/{key}.json",
        f"subtitles/{key}.srt",
        f"subtitles/{key}.vtt",
        f"diarisation/{key}.rttm",
        f"audio/{key}.mp3",
        f"episodes/{key}.json",
    }
    assert expected <= set(keys_first)
    assert list(storage.list()) == keys_first  # re-run: same objects, no duplicates
    assert storage.read_text("transcripts/1.corrected.json") == corrected
    assert not [k for k in keys_first if k.endswith(".part")]
