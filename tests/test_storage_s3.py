"""S3 storage against a real S3-compatible server process (moto server mode)."""

from __future__ import annotations

import time

import pytest
from dagster import Failure

from resources.schema import AsrResult, DiarisationResult, SpeakerTurn
from resources.storage import StorageError, StorageResource, StorageUnavailableError, s3_client
from tests.s3_server import S3Server, free_port, provision, start_server
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


# -- the preflight: storage is checked before any compute is spent -------------------------
def compute_spy(monkeypatch) -> list[str]:
    """Record (and refuse) every decode and model call of the engine and the model step."""
    from twiml_assets.speech import engine, step

    started: list[str] = []

    def spy(name: str):
        def call(*args, **kwargs):
            started.append(name)
            raise AssertionError(f"{name} ran although storage had failed")

        return call

    for module, name in (
        (engine, "open_waveform"),
        (engine, "run_models"),
        (step, "open_waveform"),
        (step, "run_asr_and_diarisation"),
    ):
        monkeypatch.setattr(module, name, spy(f"{module.__name__}.{name}"))
    return started


def unreachable_endpoint() -> str:
    """A local port nothing listens on: every connection is refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def test_transcribe_to_unreachable_s3_fails_before_any_compute(monkeypatch, tmp_path, capsys):
    from twiml_assets.cli import main

    endpoint = unreachable_endpoint()
    use_keys(monkeypatch, ("AKIAUNREACHABLE", "secret"))
    monkeypatch.setenv("TWIML_S3_ENDPOINT_URL", endpoint)
    started = compute_spy(monkeypatch)
    audio = tmp_path / "episode.mp3"
    audio.write_bytes(b"ID3" + bytes(5000))

    began = time.monotonic()
    code = main(["transcribe", str(audio), "--out", "s3://podcast/prefix", "--no-progress"])
    elapsed = time.monotonic() - began

    assert code == 2 and started == []
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "s3://podcast/prefix" in lines[0] and endpoint in lines[0], lines[0]
    assert "TWIML_S3_ENDPOINT_URL" in lines[0]
    # The module's retry policy (5 tries, standard backoff) bounds this at about 15 s.
    assert elapsed < 30, elapsed


def test_preflight_passes_on_the_real_server_and_leaves_no_probe(s3, monkeypatch):
    use_keys(monkeypatch, s3.writer)
    storage = StorageResource(root=f"s3://{s3.bucket}/preflight", endpoint_url=s3.endpoint)
    storage.check_writable()
    storage.check_writable()  # twice: the same probe, put and deleted again
    listed = storage.backend().client.list_objects_v2(Bucket=s3.bucket, Prefix="preflight/")
    assert listed.get("Contents", []) == []


def test_preflight_refusals_are_permanent_and_name_the_root(s3, monkeypatch):
    use_keys(monkeypatch, s3.reader)
    reader = StorageResource(root=f"s3://{s3.bucket}/ro-check", endpoint_url=s3.endpoint)
    with pytest.raises(StorageError, match="refused to write s3://podcast/ro-check/") as raised:
        reader.check_writable()
    assert not isinstance(raised.value, StorageUnavailableError)
    use_keys(monkeypatch, s3.writer)
    missing = StorageResource(root="s3://no-such-bucket/x", endpoint_url=s3.endpoint)
    with pytest.raises(StorageError, match="'no-such-bucket' does not exist") as raised:
        missing.check_writable()
    assert not isinstance(raised.value, StorageUnavailableError)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    keyless = StorageResource(root=f"s3://{s3.bucket}/x", endpoint_url=s3.endpoint)
    with pytest.raises(StorageError, match="no S3 credentials .*AWS_ACCESS_KEY_ID") as raised:
        keyless.check_writable()
    assert not isinstance(raised.value, StorageUnavailableError)


def test_model_step_checks_storage_before_compute(s3, monkeypatch, tmp_path):
    """Unreachable storage fails the model step as transient (its retry policy tries
    again); refused writes as permanent, although the step's inputs could be read."""
    from resources.failures import classify, permanent_errors_fail_at_once
    from twiml_assets.speech.step import ModelStepConfig, run_model_step

    started = compute_spy(monkeypatch)
    use_keys(monkeypatch, s3.writer)
    root = f"s3://{s3.bucket}/step"
    writer = StorageResource(root=root, endpoint_url=s3.endpoint)
    writer.write_json("episodes/ep-5.json", {"key": "ep-5", "title": "t"})
    writer.write_json("audio/ep-5.json", {"path": "audio/ep-5.mp3"})

    def step(storage: StorageResource) -> BaseException:
        with pytest.raises(Exception) as raised, permanent_errors_fail_at_once():
            run_model_step("ep-5", ModelStepConfig(), storage, None, None, log=print)
        return raised.value

    down = step(StorageResource(root=root, endpoint_url=unreachable_endpoint()))
    assert isinstance(down, StorageUnavailableError) and classify(down).kind == "transient"
    assert root in str(down)

    use_keys(monkeypatch, s3.reader)
    refused = step(StorageResource(root=root, endpoint_url=s3.endpoint))
    assert isinstance(refused, Failure) and classify(refused).kind == "permanent"
    assert "refused to write s3://podcast/step/" in str(refused)
    assert started == []
