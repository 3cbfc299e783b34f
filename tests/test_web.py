"""The web app's routes and safety rules (FastAPI TestClient, no browser).

Dagster is replaced by a fake GraphQL endpoint on 127.0.0.1 only where Dagster itself is
not the point; the GraphQL documents are validated against the installed dagster-graphql
schema, and the upload registration is checked against the real episode_metadata and
raw_audio assets. tests/test_web_browser.py drives the whole thing against a live
`dagster dev`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from resources.schema import dump, load
from resources.storage import StorageResource
from twiml_assets.audio.download import audio_extension
from twiml_assets.audio.uploads import (
    KINDS,
    SidecarIndex,
    UploadLimits,
    display_name,
    register_upload,
    sniff_audio,
    stage_upload,
)
from twiml_assets.feed.source import EpisodeInfo, ParsedFeed
from twiml_assets.web import WebSettings, create_app, dagster_client
from twiml_assets.web.dagster_client import EPISODE_JOB, DagsterClient
from twiml_assets.web.settings import redact_url
from twiml_assets.web.users import UserStore

SECRET = "s3cr3t-never-shown-0123456789"
USER, PASSWORD = "alice", "correct horse battery staple"
SITE = "http://testserver"  # TWIML_WEB_PUBLIC_URL of the tests: TestClient's own origin
TOKEN_RE = re.compile(r'name="csrf[-_]token" (?:value|content)="([^"]+)"')


# -- a fake Dagster GraphQL endpoint ------------------------------------------------------------
class FakeDagster(ThreadingHTTPServer):
    """Answers the app's five operations from in-memory partitions and runs; records calls."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.partitions: set[str] = set()
        self.runs: list[dict[str, Any]] = []  # newest first
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.down = False
        self.launch_status = "QUEUED"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/graphql"

    def add_run(self, key: str, status: str, steps: dict[str, str] | None = None) -> str:
        run_id = f"run-{len(self.runs) + 1}"
        self.runs.insert(
            0,
            {
                "runId": run_id,
                "status": status,
                "creationTime": 1.0,
                "startTime": None,
                "endTime": None,
                "tags": [{"key": "dagster/partition", "value": key}],
                "stepStats": [{"stepKey": k, "status": v} for k, v in (steps or {}).items()],
                "executionPlan": {"steps": [{"key": f"s{i}"} for i in range(6)]},
            },
        )
        return run_id

    def ops(self, name: str) -> list[dict[str, Any]]:
        return [v for op, v in self.calls if op == name]

    def answer(self, op: str, variables: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((op, variables))
        summary = ("runId", "status", "creationTime", "startTime", "endTime", "tags")
        if op == "TwimlWorkspace":
            repo = {"name": "__repository__", "jobs": [{"name": EPISODE_JOB}]}
            location = {
                "__typename": "RepositoryLocation",
                "name": "twiml_assets",
                "repositories": [repo],
            }
            return {
                "workspaceOrError": {
                    "__typename": "Workspace",
                    "locationEntries": [
                        {
                            "name": "broken",
                            "locationOrLoadError": {"__typename": "PythonError", "message": "boom"},
                        },
                        {"name": "twiml_assets", "locationOrLoadError": location},
                    ],
                }
            }
        if op == "TwimlAddPartition":
            key = variables["partitionKey"]
            if key in self.partitions:
                return {
                    "addDynamicPartition": {
                        "__typename": "DuplicateDynamicPartitionError",
                        "partitionName": key,
                    }
                }
            self.partitions.add(key)
            return {
                "addDynamicPartition": {
                    "__typename": "AddDynamicPartitionSuccess",
                    "partitionKey": key,
                }
            }
        if op == "TwimlLaunch":
            tags = {
                t["key"]: t["value"]
                for t in variables["executionParams"]["executionMetadata"]["tags"]
            }
            self.add_run(tags["dagster/partition"], self.launch_status)
            run = {k: self.runs[0][k] for k in summary}
            return {"launchRun": {"__typename": "LaunchRunSuccess", "run": run}}
        if op == "TwimlRuns":
            wanted = {(t["key"], t["value"]) for t in variables["filter"].get("tags") or []}
            runs = [r for r in self.runs if wanted <= {(t["key"], t["value"]) for t in r["tags"]}]
            results = [{k: r[k] for k in summary} for r in runs[: variables["limit"]]]
            return {"runsOrError": {"__typename": "Runs", "results": results}}
        if op == "TwimlRun":
            for r in self.runs:
                if r["runId"] == variables["runId"]:
                    return {"runOrError": {"__typename": "Run", **r}}
            return {"runOrError": {"__typename": "RunNotFoundError", "message": "not found"}}
        raise AssertionError(f"unexpected operation {op}")


class _FakeHandler(BaseHTTPRequestHandler):
    server: FakeDagster

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        if self.server.down:
            self.send_response(502)
            self.end_headers()
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        op = re.search(r"(?:query|mutation)\s+(\w+)", body["query"]).group(1)
        data = json.dumps({"data": self.server.answer(op, body.get("variables") or {})}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def dagster() -> Iterator[FakeDagster]:
    server = FakeDagster()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# -- storage fixtures -----------------------------------------------------------------------
def wav_bytes(seconds: float = 1.0, seed: int = 0, rate: int = 16000) -> bytes:
    import io

    audio = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))
    buf = io.BytesIO()
    sf.write(buf, audio.astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def episode(key: str, number: str | None, title: str, published: str) -> EpisodeInfo:
    return EpisodeInfo(
        key=key,
        number=number,
        title=title,
        audio_url=f"http://127.0.0.1:9/{key}.mp3",
        audio_type="audio/mpeg",
        published=published,
        description=f"About {title}.",
    )


def record(key: str) -> dict[str, Any]:
    """A full transcript record (``transcripts/{key}.json``) with two speakers."""

    def words(text: str, start: float) -> list[dict[str, Any]]:
        return [
            {
                "word": " " + w,
                "start": start + i * 0.4,
                "end": start + i * 0.4 + 0.3,
                "probability": 0.9,
            }
            for i, w in enumerate(text.split())
        ]

    utterances = [
        {
            "speaker": "SPEAKER_00",
            "start": 0.5,
            "end": 3.0,
            "text": "Welcome to the show.",
            "words": words("Welcome to the show.", 0.5),
        },
        {
            "speaker": "SPEAKER_01",
            "start": 65.25,
            "end": 68.0,
            "text": "Thanks for having me.",
            "words": words("Thanks for having me.", 65.25),
        },
    ]
    return {
        "schema_version": 1,
        "key": key,
        "duration": 70.0,
        "language": "en",
        "speakers": ["SPEAKER_00", "SPEAKER_01"],
        "speaker_names": {"SPEAKER_00": "Sam Host"},
        "asr": {"model": "tiny.en"},
        "utterances": utterances,
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A storage root with a 4-episode catalog: ep-1 done (with audio), ep-2..ep-4 not."""
    root = tmp_path / "data"
    storage = StorageResource(root=str(root))
    feed = ParsedFeed(
        title="Test feed",
        link=None,
        episodes=[
            episode("ep-1", "1", "Speech recognition basics - #1", "2024-01-01T10:00:00+00:00"),
            episode("ep-2", "2", "Speaker diarization - #2", "2024-01-08T10:00:00+00:00"),
            episode("ep-3", "3", "Measuring transcripts - #3", "2024-01-15T10:00:00+00:00"),
            episode("ep-4", "4", "Large language models - #4", "2024-01-22T10:00:00+00:00"),
        ],
    )
    storage.write_json("feed/catalog.json", {"url": "http://127.0.0.1:9/feed.xml", **dump(feed)})
    storage.write_json("transcripts/ep-1.json", record("ep-1"))
    audio = wav_bytes(2.0)
    storage.write_bytes("audio/ep-1.wav", audio)
    storage.write_json(
        "audio/ep-1.json",
        {
            "url": "http://127.0.0.1:9/ep-1.mp3",
            "path": "audio/ep-1.wav",
            "size": len(audio),
            "sha256": hashlib.sha256(audio).hexdigest(),
            "key": "ep-1",
        },
    )
    return root


# -- accounts ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def users_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A users file with alice (hashed once: argon2 is slow on purpose)."""
    path = tmp_path_factory.mktemp("users") / "users.json"
    UserStore(path).add(USER, PASSWORD)
    return path


@pytest.fixture
def users_file(tmp_path: Path, users_template: Path) -> Path:
    """This test's users file (a copy of the template); the secret and audit go next to it."""
    path = tmp_path / "web" / "users.json"
    path.parent.mkdir(mode=0o700)
    path.write_bytes(users_template.read_bytes())
    path.chmod(0o600)
    return path


def csrf_token(html: str) -> str:
    """The CSRF token a page carries (form field or meta tag)."""
    return TOKEN_RE.search(html).group(1)


def sign_in(client: TestClient, name: str = USER, password: str = PASSWORD) -> TestClient:
    """Sign ``client`` in through the form; its later POSTs send the X-CSRF-Token header."""
    token = csrf_token(client.get("/login").text)
    resp = client.post(
        "/login", data={"username": name, "password": password, "csrf_token": token, "next": "/"}
    )
    assert resp.status_code == 303, resp.text
    client.headers["x-csrf-token"] = csrf_token(client.get("/upload").text)
    return client


@pytest.fixture
def app_for(dagster: FakeDagster, root: Path, users_file: Path):
    def make(signed_in: bool = True, settings: dict[str, Any] | None = None, **limits: Any):
        web = WebSettings(
            graphql_url=dagster.url,
            storage_root=str(root),
            limits=UploadLimits(**limits),
            graphql_timeout=2.0,
            users_file=users_file,
            **{"public_url": SITE, **(settings or {})},
        )
        client = TestClient(create_app(web), follow_redirects=False)
        return sign_in(client) if signed_in else client

    return make


@pytest.fixture
def client(app_for) -> TestClient:
    return app_for()


def stored_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# -- pieces -----------------------------------------------------------------------------------
def test_graphql_documents_match_the_installed_dagster_schema() -> None:
    from dagster_graphql.schema import create_schema
    from graphql import parse, validate

    schema = create_schema().graphql_schema
    documents = {
        name: document
        for name, document in vars(dagster_client).items()
        if name.endswith(("_QUERY", "_MUTATION"))
    }
    assert len(documents) == 5
    for name, document in documents.items():
        assert validate(schema, parse(document)) == [], name


def test_job_name_matches_the_code_location() -> None:
    from twiml_assets.feed.partitions import EPISODES
    from twiml_assets.jobs import EPISODE_JOB as JOB

    assert EPISODE_JOB == JOB and DagsterClient("http://x").partitions_def == EPISODES


def test_settings_from_environment() -> None:
    settings = WebSettings.from_env(
        {
            "DAGSTER_GRAPHQL_URL": "http://dagster:3000/graphql",
            "TWIML_STORAGE_ROOT": "/srv/data",
            "TWIML_WEB_MAX_UPLOAD_MB": "2",
            "TWIML_WEB_UPLOAD_TYPES": "mp3, .wav",
        }
    )
    assert settings.graphql_url == "http://dagster:3000/graphql"
    assert settings.storage_root == "/srv/data"
    assert settings.limits.max_bytes == 2 * 1024 * 1024
    assert settings.limits.types == ("mp3", "wav")
    assert WebSettings.from_env({}).graphql_url == "http://127.0.0.1:3000/graphql"
    with pytest.raises(ValueError, match="unknown upload type"):
        WebSettings.from_env({"TWIML_WEB_UPLOAD_TYPES": "mp3,exe"})
    with pytest.raises(ValueError, match="TWIML_WEB_MAX_UPLOAD_MB"):
        WebSettings.from_env({"TWIML_WEB_MAX_UPLOAD_MB": "lots"})
    assert redact_url("https://user:pw@dagster.example:8443/graphql?token=x") == (
        "https://dagster.example:8443/graphql"
    )


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """One second of noise in every accepted container, encoded by ffmpeg."""
    out = tmp_path_factory.mktemp("encoded")
    wav = out / "a.wav"
    wav.write_bytes(wav_bytes(1.0))
    codecs = {
        "mp3": [],
        "flac": [],
        "ogg": ["-c:a", "libvorbis"],
        "opus": ["-c:a", "libopus"],
        "m4a": ["-c:a", "aac"],
        "aac": ["-c:a", "aac", "-f", "adts"],
        "webm": ["-c:a", "libopus"],
    }
    files = {"wav": wav.read_bytes()}
    for name, args in codecs.items():
        target = out / f"a.{name}"
        subprocess.run(
            ["ffmpeg", "-y", "-loglevel", "error", "-i", str(wav), *args, str(target)], check=True
        )
        files[name] = target.read_bytes()
    return files


def test_sniffing_recognises_audio_by_content_only(encoded: dict[str, bytes]) -> None:
    for name, data in encoded.items():
        kind = sniff_audio(data[:64])
        assert kind is not None and kind.name == name, name
        # raw_audio's path rule gives the same extension for the upload URL:
        assert audio_extension(f"upload:up-x{kind.ext}", kind.mime) == kind.ext
        assert audio_extension("upload://opaque", kind.mime) == kind.ext
    not_audio = [
        b"<!doctype html><script>alert(1)</script>",
        b"%PDF-1.7",
        b"PK\x03\x04zip",
        b"\x89PNG\r\n\x1a\n",
        b"#!/bin/sh\nrm -rf /",
        b"",
        b"ID",
        b"\xff\xff\xff\xff",
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",  # a HEIC photo
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1",
    ]
    for data in not_audio:
        assert sniff_audio(data) is None, data
    assert set(KINDS) == set(encoded)


def test_display_names_are_text_not_paths() -> None:
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\me\\talk.mp3") == "talk.mp3"
    assert display_name("a\x00b\nc\u202e.wav") == "abc.wav"
    assert display_name(None) == "" and len(display_name("x" * 500)) == 120


def test_stage_upload_stops_at_the_limit(tmp_path: Path) -> None:
    import io

    data = wav_bytes(1.0)
    staged = stage_upload(io.BytesIO(data), UploadLimits(max_bytes=len(data)), "a.wav", tmp_path)
    assert staged.sha256 == hashlib.sha256(data).hexdigest() and staged.size == len(data)
    assert staged.key == "up-" + staged.sha256[:12] and staged.kind.name == "wav"
    staged.discard()
    from twiml_assets.audio.uploads import UploadTooLargeError

    with pytest.raises(UploadTooLargeError):
        stage_upload(io.BytesIO(data), UploadLimits(max_bytes=len(data) - 1), "a.wav", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


# -- upload → partition → run -------------------------------------------------------------------
def test_upload_stores_an_episode_and_launches_its_run(
    client: TestClient, dagster: FakeDagster, root: Path
) -> None:
    data = wav_bytes(1.5, seed=7)
    key = "up-" + hashlib.sha256(data).hexdigest()[:12]
    resp = client.post(
        "/upload",
        files={"audio": ("../../../etc/talk.wav", data, "text/plain")},
        data={"format": "srt"},
    )
    assert resp.status_code == 303
    assert resp.headers["location"] == f"/episodes/{key}?download=srt&notice=uploaded"

    storage = StorageResource(root=str(root))
    assert (root / f"audio/{key}.wav").read_bytes() == data
    sidecar = storage.read_json(f"audio/{key}.json")
    assert sidecar["path"] == f"audio/{key}.wav" and sidecar["size"] == len(data)
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest()
    info = load(EpisodeInfo, storage.read_json(f"episodes/{key}.json"))
    assert info.audio_url == sidecar["url"] == f"upload:{key}.wav"
    assert audio_extension(info.audio_url, info.audio_type) == ".wav"
    assert info.title == "talk.wav"
    assert not (root.parent / "etc").exists()

    (add,) = dagster.ops("TwimlAddPartition")
    assert add["partitionKey"] == key and add["partitionsDefName"] == "episodes"
    assert add["repositorySelector"] == {
        "repositoryLocationName": "twiml_assets",
        "repositoryName": "__repository__",
    }
    (launch,) = dagster.ops("TwimlLaunch")
    params = launch["executionParams"]
    assert params["selector"]["jobName"] == "episode_pipeline"
    assert {"key": "dagster/partition", "value": key} in params["executionMetadata"]["tags"]

    # The page polls; the same bytes again reuse the queued run, rewrite nothing.
    status = client.get(f"/api/episodes/{key}").json()
    assert status["status"] == "queued" and status["run"]["steps_total"] == 6
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = client.post(
        "/upload",
        files={"audio": ("other.wav", data)},
        data={"format": "md"},
        headers={"accept": "application/json"},
    )
    assert again.status_code == 202
    assert again.json()["launched"] is False and again.json()["stored"] is False
    assert len(dagster.ops("TwimlLaunch")) == 1
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_upload_of_a_published_episodes_audio_reuses_its_transcript(
    client: TestClient, dagster: FakeDagster, root: Path
) -> None:
    data = (root / "audio/ep-1.wav").read_bytes()
    before = stored_files(root)
    resp = client.post(
        "/upload",
        files={"audio": ("copy.wav", data)},
        data={"format": "md"},
        headers={"accept": "application/json"},
    )
    body = resp.json()
    assert body["key"] == "ep-1" and body["linked"] is True and body["launched"] is False
    assert body["download_url"] == "/episodes/ep-1/transcript.md"
    assert stored_files(root) == before  # no up-… partition, no copy of the audio
    assert not dagster.ops("TwimlLaunch")
    md = client.get(body["download_url"])
    assert md.status_code == 200 and "Welcome to the show." in md.text


def test_sidecar_index_prefers_published_keys(root: Path, tmp_path: Path) -> None:
    import io

    storage = StorageResource(root=str(root))
    data = (root / "audio/ep-1.wav").read_bytes()
    staged = stage_upload(io.BytesIO(data), UploadLimits(), "x.wav", tmp_path)
    index = SidecarIndex(storage)
    assert index.find(staged.sha256) == "ep-1"
    assert register_upload(storage, staged, index).linked
    storage.write_json(
        "audio/ep-1.json", {**storage.read_json("audio/ep-1.json"), "sha256": "0" * 64}
    )  # re-downloaded, new audio
    result = register_upload(storage, staged, index)
    assert not result.linked and result.key == staged.key and result.stored


@pytest.mark.parametrize(
    ("filename", "data", "status", "message"),
    [
        ("talk.mp3", b"<!doctype html><html><script>x</script></html>", 415, "not a recognised"),
        ("notes.wav", b"just some text, not audio at all" * 10, 415, "not a recognised"),
        ("empty.wav", b"", 400, "empty"),
    ],
)
def test_upload_type_is_sniffed_not_taken_from_the_name(
    client: TestClient,
    dagster: FakeDagster,
    root: Path,
    filename: str,
    data: bytes,
    status: int,
    message: str,
) -> None:
    before = stored_files(root)
    resp = client.post(
        "/upload", files={"audio": (filename, data, "audio/mpeg")}, data={"format": "md"}
    )
    assert resp.status_code == status and message in resp.text
    assert stored_files(root) == before and not dagster.calls


def test_upload_types_and_size_are_configurable(
    app_for, dagster: FakeDagster, root: Path, encoded: dict[str, bytes]
) -> None:
    wav_only = app_for(types=("wav",))
    refused = wav_only.post(
        "/upload",
        files={"audio": ("a.mp3", encoded["mp3"])},
        headers={"accept": "application/json"},
    )
    assert refused.status_code == 415 and "mp3 audio" in refused.json()["error"]

    small = app_for(max_bytes=20_000)
    medium = wav_bytes(1.0)  # 32 kB: within the form overhead, refused while staging
    resp = small.post("/upload", files={"audio": ("a.wav", medium)})
    assert resp.status_code == 413 and "limit of 19 KB" in resp.text
    big = wav_bytes(4.0)  # 128 kB: refused on its Content-Length, before reading
    resp = small.post(
        "/upload", files={"audio": ("a.wav", big)}, headers={"accept": "application/json"}
    )
    assert resp.status_code == 413 and resp.json()["error"].endswith("limit of 19 KB")

    def chunked() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
        boundary = b"XyZ"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="audio"; '
        yield b'filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        for i in range(0, 200_000, 10_000):
            yield big[:10_000] if i == 0 else b"\0" * 10_000
        yield b"\r\n--" + boundary + b"--\r\n"

    resp = small.post(
        "/upload", content=chunked(), headers={"content-type": "multipart/form-data; boundary=XyZ"}
    )
    assert resp.status_code == 413
    assert not dagster.calls and not (root / "episodes").exists()


def test_upload_form_errors(client: TestClient) -> None:
    assert client.post("/upload", data={"format": "md"}).status_code == 400
    resp = client.post("/upload", files={"audio": ("a.wav", wav_bytes())}, data={"format": "exe"})
    assert resp.status_code == 400 and "unknown transcript format" in resp.text
    page = client.get("/upload")
    assert page.status_code == 200 and 'type="file"' in page.text and 'name="format"' in page.text


# -- pages and statuses -----------------------------------------------------------------------
def test_episode_list_statuses_and_search(client: TestClient, dagster: FakeDagster) -> None:
    dagster.add_run("ep-2", "FAILURE")
    dagster.add_run("ep-3", "STARTED")
    dagster.add_run("ep-1", "SUCCESS")
    page = client.get("/")
    assert page.status_code == 200
    rows = dict(re.findall(r'data-key="([^"]+)" data-status="([^"]+)"', page.text))
    assert rows == {"ep-1": "done", "ep-2": "failed", "ep-3": "running", "ep-4": "not started"}
    assert list(rows) == ["ep-4", "ep-3", "ep-2", "ep-1"]  # newest first

    found = client.get("/", params={"q": "DIARIZATION"}).text
    assert re.findall(r'data-key="([^"]+)"', found) == ["ep-2"]
    done = client.get("/", params={"status": "done"}).text
    assert re.findall(r'data-key="([^"]+)"', done) == ["ep-1"]
    assert client.get("/", params={"q": "<script>", "page": ""}).status_code == 200
    assert "<script>" not in client.get("/", params={"q": "<script>"}).text.split("<main")[1]


def test_failed_and_given_up_episodes_show_why_and_transcribe_tries_again(
    client: TestClient, dagster: FakeDagster, root: Path
) -> None:
    from twiml_assets.catchup import ledger

    storage = StorageResource(root=str(root))
    dagster.add_run("ep-2", "FAILURE")
    dagster.add_run("ep-3", "FAILURE")
    gone = "ep-2: HTTP 404 Not Found: nothing is at this URL"
    ledger.record(storage, "ep-2", ledger.Attempt("r2", 1.0, "permanent", gone, "raw_audio"))
    ledger.record(storage, "ep-3", ledger.Attempt("r3", 1.0, "transient", "HTTP 503", "raw_audio"))
    # ep-3's run wrote its record, then failed before the RAG files: not done.
    storage.write_json("transcripts/ep-3.json", record("ep-3"))
    page = client.get("/").text
    rows = dict(re.findall(r'data-key="([^"]+)" data-status="([^"]+)"', page))
    assert (rows["ep-2"], rows["ep-3"]) == ("given up", "failed")
    assert "nothing is at this URL (1 attempt)" in page
    given_up = client.get("/", params={"status": "given up"}).text
    assert re.findall(r'data-key="([^"]+)"', given_up) == ["ep-2"]

    state = client.get("/api/episodes/ep-2").json()
    assert state["status"] == "given up"
    assert state["failure"] == {
        "attempts": 1,
        "kind": "permanent",
        "reason": gone,
        "step": "raw_audio",
    }
    assert (
        "Given up after 1 attempt (permanent, step raw_audio)" in client.get("/episodes/ep-2").text
    )

    # One click after a fix: the run is launched and the attempts count from zero again.
    assert client.post("/episodes/ep-2/transcribe").status_code == 303
    assert dagster.partitions == {"ep-2"}
    assert ledger.load(storage, "ep-2").counted == []


def test_episode_page_has_seekable_timestamps_and_downloads(client: TestClient) -> None:
    page = client.get("/episodes/ep-1")
    assert page.status_code == 200
    html = page.text
    assert 'src="/episodes/ep-1/audio"' in html
    assert 'href="/episodes/ep-1/audio#t=65.25" data-start="65.25"' in html
    assert ">0:01:05<" in html and "Sam Host" in html and "SPEAKER_01" in html
    assert 'data-status="done"' in html and "Transcribe again" in html
    for fmt in ("md", "json", "srt", "vtt"):
        assert f'href="/episodes/ep-1/transcript.{fmt}"' in html
    not_done = client.get("/episodes/ep-2").text
    assert 'data-status="not started"' in not_done and ">Transcribe<" in not_done
    assert "About Speaker diarization" in not_done


def test_downloads_render_from_the_record_when_files_are_missing(client: TestClient) -> None:
    md = client.get("/episodes/ep-1/transcript.md")
    assert md.headers["content-disposition"] == 'attachment; filename="ep-1.md"'
    assert md.text.startswith("__Sam Host__ _(0h 0m 0.50s-0h 0m 3.00s)_:\nWelcome to the show.")
    corrected = client.get("/episodes/ep-1/transcript.json").json()
    assert corrected["speakers"] == ["SPEAKER_00", "SPEAKER_01"]
    assert [d["speaker"] for d in corrected["dialogs"]] == [0, 1]
    srt = client.get("/episodes/ep-1/transcript.srt").text
    assert "00:01:05,250 -->" in srt and "Thanks for having me." in srt
    assert client.get("/episodes/ep-1/transcript.vtt").text.startswith("WEBVTT")
    assert client.get("/episodes/ep-2/transcript.md").status_code == 404


def test_stored_files_are_served_as_they_are(client: TestClient, root: Path) -> None:
    (root / "markdown").mkdir()
    (root / "markdown/1.md").write_text("__Host__ stored copy\n")
    assert client.get("/episodes/ep-1/transcript.md").text == "__Host__ stored copy\n"


def test_audio_supports_range_requests(client: TestClient, root: Path) -> None:
    data = (root / "audio/ep-1.wav").read_bytes()
    full = client.get("/episodes/ep-1/audio")
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes" and full.headers["content-type"] == "audio/wav"
    part = client.get("/episodes/ep-1/audio", headers={"range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = client.get("/episodes/ep-1/audio", headers={"range": f"bytes={len(data) - 10}-"})
    assert tail.content == data[-10:]
    bad = client.get("/episodes/ep-1/audio", headers={"range": f"bytes={len(data) + 5}-"})
    assert bad.status_code == 416
    assert client.head("/episodes/ep-1/audio").status_code == 200
    assert client.get("/episodes/ep-2/audio").status_code == 404


# -- keys and paths -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/episodes/..%2F..%2Fetc%2Fpasswd",
        "/episodes/..%2Fsecret/audio",
        "/episodes/EP-1",
        "/episodes/ep 1",
        "/episodes/.hidden/audio",
        "/episodes/%2Fetc%2Fpasswd/transcript.md",
        "/episodes/ep-1/transcript.exe",
        "/episodes/ep-1/transcript.md%2F..%2F..%2Fsecret",
        "/episodes/" + "a" * 65,
        "/episodes/nope-99",
        "/api/episodes/..%2F..",
        "/static/..%2F..%2F..%2Fresources%2Fstorage.py",
    ],
)
def test_bad_or_unknown_keys_are_404(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 404, (path, resp.status_code)
    assert "root:" not in resp.text and "StorageResource" not in resp.text


def test_a_tampered_sidecar_cannot_point_outside_the_episode(
    client: TestClient, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret.mp3").write_bytes(b"ID3 secret")
    for path in ("../secret.mp3", "audio/../../secret.mp3", "audio/ep-2.mp3", "/etc/passwd"):
        (root / "audio/ep-1.json").write_text(json.dumps({"path": path, "sha256": "x"}))
        (root / "audio/ep-1.wav").unlink(missing_ok=True)
        assert client.get("/episodes/ep-1/audio").status_code == 404, path


def test_bad_keys_are_refused_when_transcribing(client: TestClient, dagster: FakeDagster) -> None:
    for key in ("..%2F..", "EP-1", "nope-1"):
        assert client.post(f"/episodes/{key}/transcribe").status_code == 404
    assert not dagster.calls


# -- transcribe ---------------------------------------------------------------------------------
def test_transcribe_launches_once_and_reports_progress(
    client: TestClient, dagster: FakeDagster
) -> None:
    resp = client.post("/episodes/ep-2/transcribe", headers={"accept": "application/json"})
    assert resp.status_code == 202
    body = resp.json()
    assert body["launched"] is True and body["run"]["phase"] == "queued"
    again = client.post("/episodes/ep-2/transcribe", headers={"accept": "application/json"})
    assert again.json()["launched"] is False and again.json()["run"]["id"] == body["run"]["id"]
    assert len(dagster.ops("TwimlLaunch")) == 1 and dagster.partitions == {"ep-2"}

    run = dagster.runs[0]
    run["status"] = "STARTED"
    run["stepStats"] = [
        {"stepKey": "episode_metadata", "status": "SUCCESS"},
        {"stepKey": "raw_audio", "status": "SUCCESS"},
        {"stepKey": "transcribe_and_diarise", "status": "IN_PROGRESS"},
    ]
    status = client.get("/api/episodes/ep-2").json()
    assert status["status"] == "running" and status["dagster"] == "ok"
    assert (status["run"]["steps_done"], status["run"]["steps_total"]) == (2, 6)
    assert status["run"]["current_step"] == "transcribe_and_diarise"
    assert status["downloads"] == {}

    run["status"] = "FAILURE"
    run["stepStats"][2]["status"] = "FAILURE"
    status = client.get("/api/episodes/ep-2").json()
    assert status["status"] == "failed" and status["run"]["failed_step"] == "transcribe_and_diarise"

    # A plain form post (no JavaScript) redirects back to the page.
    form = client.post("/episodes/ep-3/transcribe")
    assert form.status_code == 303 and form.headers["location"] == "/episodes/ep-3"


def test_cross_site_posts_are_refused(client: TestClient, dagster: FakeDagster) -> None:
    evil = {"origin": "https://evil.example"}
    assert client.post("/episodes/ep-2/transcribe", headers=evil).status_code == 403
    assert (
        client.post(
            "/episodes/ep-2/transcribe", headers={"sec-fetch-site": "cross-site"}
        ).status_code
        == 403
    )
    assert (
        client.post("/upload", headers=evil, files={"audio": ("a.wav", wav_bytes())}).status_code
        == 403
    )
    assert not dagster.calls
    same = client.post(
        "/episodes/ep-2/transcribe",
        headers={"origin": "http://testserver", "sec-fetch-site": "same-origin"},
    )
    assert same.status_code == 303


def test_pages_work_while_dagster_is_down(
    client: TestClient, dagster: FakeDagster, root: Path
) -> None:
    dagster.down = True
    index = client.get("/")
    assert index.status_code == 200 and "Dagster is not reachable" in index.text
    assert 'data-key="ep-1" data-status="done"' in index.text
    status = client.get("/api/episodes/ep-2").json()
    assert status["dagster"] == "unavailable" and status["status"] == "not started"
    resp = client.post("/episodes/ep-2/transcribe", headers={"accept": "application/json"})
    assert resp.status_code == 503 and resp.json() == {"error": "Dagster answered HTTP 502"}
    upload = client.post(
        "/upload",
        files={"audio": ("a.wav", wav_bytes(seed=3))},
        headers={"accept": "application/json"},
    )
    assert upload.status_code == 202 and upload.json()["stored"] is True
    assert upload.json()["error"] == "Dagster answered HTTP 502"  # the page offers Transcribe
    assert client.get("/healthz").json() == {"storage": "ok", "dagster": "unavailable"}


def test_security_headers(client: TestClient) -> None:
    for path in ("/", "/episodes/ep-1", "/episodes/ep-1/audio", "/static/app.js", "/nope"):
        headers = client.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff"
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_credentials_never_reach_responses_or_logs(
    dagster: FakeDagster,
    root: Path,
    users_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secrets = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "HF_TOKEN", "DAGSTER_CLOUD_API_TOKEN")
    for name in secrets:
        monkeypatch.setenv(name, SECRET)
    url = dagster.url.replace("http://", f"http://admin:{SECRET}@")
    monkeypatch.setenv("DAGSTER_GRAPHQL_URL", url)
    monkeypatch.setenv("TWIML_STORAGE_ROOT", str(root))
    monkeypatch.setenv("TWIML_WEB_USERS_FILE", str(users_file))
    monkeypatch.setenv("TWIML_WEB_PUBLIC_URL", SITE)
    caplog.set_level(logging.DEBUG)
    client = sign_in(TestClient(create_app(), follow_redirects=False))
    responses = [
        client.get("/"),
        client.get("/episodes/ep-1"),
        client.get("/episodes/ep-2"),
        client.get("/api/episodes/ep-1"),
        client.get("/upload"),
        client.get("/healthz"),
        client.post("/episodes/ep-2/transcribe", headers={"accept": "application/json"}),
        client.post("/upload", files={"audio": ("a.wav", wav_bytes(seed=4))}),
        client.post("/upload", files={"audio": ("a.html", b"<html>")}),
        client.get("/episodes/nope/audio"),
    ]
    dagster.down = True
    responses += [
        client.get("/"),
        client.post("/episodes/ep-3/transcribe"),
        client.get("/api/episodes/ep-3"),
    ]
    assert dagster.ops("TwimlLaunch")  # the URL with credentials was used…
    for resp in responses:  # …but never shown
        assert SECRET not in resp.text and SECRET not in str(resp.headers)
        assert f"127.0.0.1:{dagster.server_address[1]}" not in resp.text
    assert any(
        "unreachable" in r.getMessage() or "HTTP 502" in r.getMessage() for r in caplog.records
    )
    assert SECRET not in caplog.text


def test_cli_has_a_web_command() -> None:
    from twiml_assets.cli import build_parser, cmd_web

    args = build_parser().parse_args(
        [
            "web",
            "--port",
            "8123",
            "--storage",
            "/tmp/x",
            "--dagster-url",
            "http://h:1/graphql",
            "--max-upload-mb",
            "5",
        ]
    )
    assert (args.port, args.storage, args.dagster_url, args.max_upload_mb) == (
        8123,
        "/tmp/x",
        "http://h:1/graphql",
        5.0,
    )
    assert callable(cmd_web)


# -- the registration against the real assets (no models) --------------------------------------
def test_an_upload_runs_through_episode_metadata_and_raw_audio_without_a_download(
    root: Path, tmp_path: Path, http_server
) -> None:
    """The assets find the upload from its key alone and reuse the stored audio."""
    import io

    from dagster import instance_for_test, materialize

    from twiml_assets.audio.assets import raw_audio
    from twiml_assets.demo.feed_server import render_rss
    from twiml_assets.feed.assets import episode_metadata
    from twiml_assets.feed.resource import FeedResource

    http_server.put("feed.xml", render_rss([], http_server.base_url))  # the upload is not in it
    storage = StorageResource(root=str(root))
    data = wav_bytes(1.0, seed=11)
    staged = stage_upload(io.BytesIO(data), UploadLimits(), "mine.wav", tmp_path)
    registered = register_upload(storage, staged)
    staged.discard()
    resources = {"storage": storage, "feed": FeedResource(url=http_server.url("feed.xml"))}
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", [registered.key])
        result = materialize(
            [episode_metadata, raw_audio],
            partition_key=registered.key,
            resources=resources,
            instance=instance,
        )
    assert result.success
    meta = {
        e.event_specific_data.materialization.asset_key.to_user_string(): {
            k: v.value for k, v in e.event_specific_data.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }
    assert meta["episode_metadata"]["source"] == "stored"
    assert meta["raw_audio"]["reused"] is True
    assert meta["raw_audio"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert (root / f"audio/{registered.key}.wav").read_bytes() == data


def test_an_upload_that_sounds_like_a_published_episode_goes_to_it(
    client: TestClient, dagster: FakeDagster, root: Path, dialogue, tmp_path: Path
) -> None:
    """The master WAV of ep-2 was published as an MP3; an upload of the master (other bytes,
    same sound) is sent to ep-2 with its similarity: the upload stores nothing, and what
    runs is ep-2's own run."""
    import subprocess

    from twiml_assets.audio.fingerprint import fingerprint_file, store_fingerprint

    storage = StorageResource(root=str(root))
    published = tmp_path / "ep-2.mp3"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(dialogue.audio_path),
         "-af", "volume=-3dB", "-ac", "2", "-ar", "44100", "-b:a", "96k", str(published)],
        check=True,
    )  # fmt: skip
    store_fingerprint(storage, "ep-2", fingerprint_file(published), "0" * 64)
    before = stored_files(root)

    master = Path(dialogue.audio_path).read_bytes()
    resp = client.post("/upload", files={"audio": ("master.wav", master)}, data={"format": "md"})
    assert resp.status_code == 303
    location = resp.headers["location"]
    assert location.startswith("/episodes/ep-2?download=md&notice=linked&similarity=")
    similarity = float(location.rsplit("=", 1)[1])
    assert 0.85 <= similarity <= 1.0
    assert stored_files(root) == before  # nothing of the upload stored
    (launch,) = dagster.ops("TwimlLaunch")  # ep-2 has no transcript yet: its own run
    tags = launch["executionParams"]["executionMetadata"]["tags"]
    assert {"key": "dagster/partition", "value": "ep-2"} in tags
    page = client.get(location).text
    assert f"Your upload matches episode #2 (similarity {similarity:.2f})" in page

    # An upload stored before its episode was published shows the link once it is made.
    from twiml_assets.audio.links import Link, write_link

    write_link(
        storage,
        Link("ep-2", "up-0123456789ab", 0.97, 0.0, 1.0, 88.0, None, "2024-01-09T00:00:00"),
    )
    storage.write_json(
        "episodes/up-0123456789ab.json",
        dump(episode("up-0123456789ab", None, "master.wav", "2024-01-07T10:00:00+00:00")),
    )
    up_page = client.get("/episodes/up-0123456789ab").text
    assert "This upload matches" in up_page and "episode #2</a> (similarity 0.97)" in up_page
    ep_page = client.get("/episodes/ep-2").text
    assert "Same audio as the upload" in ep_page and "master.wav" in ep_page
    assert client.get("/api/episodes/ep-2").json()["link"]["upload"] == "up-0123456789ab"


# -- attacker probes: page numbers, 500s, Origin, damaged transcripts, undecodable uploads -----
@pytest.mark.parametrize("page", ["²", "٣", "9" * 5000, "1" * 7, "0", "-1", "1.5", " 2", "x"])
def test_bad_page_numbers_are_a_400_never_a_500(client: TestClient, page: str) -> None:
    resp = client.get("/", params={"page": page})
    assert resp.status_code == 400, resp.status_code
    assert "page must be a whole number from 1 to 999999" in resp.text
    assert "script-src 'self'" in resp.headers["content-security-policy"]


def test_good_page_numbers_past_the_end_show_the_last_page(client: TestClient) -> None:
    for page in ("1", "007", "999999"):
        resp = client.get("/", params={"page": page})
        assert resp.status_code == 200 and 'data-key="ep-1"' in resp.text, page


def test_content_length_is_parsed_as_ascii_digits_only() -> None:
    from twiml_assets.web.http import whole_number

    assert whole_number("42", 6) == 42 and whole_number("000042", 6) == 42
    for text in ("²", "٣", "", "-1", "1_000", " 1", "1" * 7, "9" * 5000):
        assert whole_number(text, 6) is None, text


def test_unexpected_errors_are_a_short_500_with_the_security_headers(
    app_for, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from twiml_assets.web.library import Library

    def broken(self: Library) -> Any:
        raise RuntimeError("internal detail /srv/private/path")

    monkeypatch.setattr(Library, "episodes", broken)
    client = TestClient(app_for(signed_in=False).app, raise_server_exceptions=False)
    for headers in ({}, {"accept": "application/json"}):
        resp = client.get("/", headers=headers)
        assert resp.status_code == 500
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["x-frame-options"] == "DENY"
        assert "internal detail" not in resp.text and "Traceback" not in resp.text
        assert "something went wrong on the server" in resp.text


def test_origin_must_match_the_sites_scheme_host_and_port(
    client: TestClient, dagster: FakeDagster
) -> None:
    for origin in (
        "https://testserver",  # the scheme counts: https is another origin than http
        "http://testserver:8080",
        "http://testserver.evil.example",
        "http://evil.example",
        "null",
        "not a url",
    ):
        resp = client.post("/episodes/ep-2/transcribe", headers={"origin": origin})
        assert resp.status_code == 403, origin
    assert not dagster.ops("TwimlLaunch")
    for origin in ("http://testserver", "http://TestServer:80"):
        resp = client.post("/episodes/ep-2/transcribe", headers={"origin": origin})
        assert resp.status_code == 303, origin


@pytest.mark.parametrize(
    "damage",
    [
        lambda rec: rec["utterances"][1].pop("speaker"),
        lambda rec: rec.pop("utterances"),
        lambda rec: rec["utterances"][0].update(start="soon"),
        '{"schema_version": 1, "key": "ep-1", ',  # cut off: not JSON
    ],
    ids=["no speaker", "no utterances", "bad start", "cut off"],
)
def test_a_damaged_transcript_is_a_clear_error_naming_the_file(
    client: TestClient, root: Path, caplog: pytest.LogCaptureFixture, damage: Any
) -> None:
    path = root / "transcripts/ep-1.json"
    if isinstance(damage, str):
        path.write_text(damage)
    else:
        rec = record("ep-1")
        damage(rec)
        path.write_text(json.dumps(rec))
    caplog.set_level(logging.ERROR)
    downloads = [f"/episodes/ep-1/transcript.{fmt}" for fmt in ("md", "json", "srt", "vtt")]
    for url in ("/episodes/ep-1", *downloads):
        resp = client.get(url)
        assert resp.status_code == 500, url
        assert "stored transcript of ep-1 (transcripts/ep-1.json) is damaged" in resp.text, url
        assert "Traceback" not in resp.text and "Error" not in resp.text.split("<main")[-1]
        assert "script-src 'self'" in resp.headers["content-security-policy"]
    resp = client.get(downloads[0], headers={"accept": "application/json"})
    assert resp.status_code == 500 and "transcripts/ep-1.json" in resp.json()["error"]
    assert "damaged transcripts/ep-1.json" in caplog.text  # the details are in the log
    assert client.get("/episodes/ep-2").status_code == 200  # the others are fine
    assert client.get("/").status_code == 200


def test_an_undecodable_upload_names_no_server_path_and_no_decoder_output(
    client: TestClient, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import tempfile

    caplog.set_level(logging.INFO)
    before = stored_files(root)
    data = b"RIFF" + (1000).to_bytes(4, "little") + b"WAVE" + b"fmt " + b"\xff" * 200
    for headers in ({"accept": "application/json"}, {}):
        resp = client.post("/upload", files={"audio": ("talk.wav", data)}, headers=headers)
        assert resp.status_code == 422
        text = resp.json()["error"] if headers else resp.text
        assert "the file cannot be decoded as audio" in text
        for leak in (tempfile.gettempdir(), "twiml-upload", ".part", "Invalid data", "ffmpeg"):
            assert leak.lower() not in text.lower(), leak
    assert "Invalid data found" in caplog.text  # what the decoder said is logged
    assert stored_files(root) == before
