"""Audio downloads over real HTTP: atomic rename, retries, resume, non-audio rejection."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from resources.storage import StorageResource
from twiml_assets.audio.download import (
    DownloadError,
    NotAudioError,
    audio_extension,
    audio_files,
    download_audio,
    is_audio_of,
    part_paths,
    sniff_not_audio,
)

AUDIO = b"ID3\x04\x00" + os.urandom(300_000)
SHA = hashlib.sha256(AUDIO).hexdigest()
FAST = {"backoff": 0.01, "timeout": 5.0, "chunk_size": 32_768}


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_download_writes_atomically_and_records_sha(http_server, tmp_path: Path) -> None:
    url = http_server.put("ep.mp3", AUDIO, "audio/mpeg")
    dest = tmp_path / "out" / "ep-1.mp3"
    seen: list[int] = []
    result = download_audio(
        url, dest, label="ep-1", progress=lambda done, _: seen.append(done), **FAST
    )
    assert dest.read_bytes() == AUDIO
    assert result.size == len(AUDIO) and result.sha256 == SHA
    assert result.attempts == 1 and not result.resumed and result.etag
    assert result.content_type == "audio/mpeg"
    assert seen[-1] == len(AUDIO)
    assert leftovers(dest.parent) == []


def test_html_page_is_rejected(http_server, tmp_path: Path) -> None:
    url = http_server.put("page.mp3", "<!DOCTYPE html><html>Login</html>", "text/html")
    with pytest.raises(NotAudioError, match=r"ep-7: .*is not audio.*text/html"):
        download_audio(url, tmp_path / "ep-7.mp3", label="ep-7", **FAST)
    assert not (tmp_path / "ep-7.mp3").exists()
    assert len(http_server.requests_to("/page.mp3")) == 1  # not retried


def test_html_with_an_audio_content_type_is_sniffed(http_server, tmp_path: Path) -> None:
    url = http_server.put("liar.mp3", "<html><body>Access denied</body></html>", "audio/mpeg")
    with pytest.raises(NotAudioError, match="an HTML page instead of audio"):
        download_audio(url, tmp_path / "ep-8.mp3", label="ep-8", **FAST)
    assert leftovers(tmp_path) == [] and not (tmp_path / "ep-8.mp3").exists()


def test_404_names_the_episode_and_is_not_retried(http_server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"ep-9: .*HTTP 404.*episode_metadata"):
        download_audio(http_server.url("gone.mp3"), tmp_path / "ep-9.mp3", label="ep-9", **FAST)
    assert len(http_server.requests_to("/gone.mp3")) == 1


def test_transient_errors_are_retried_with_backoff(http_server, tmp_path: Path) -> None:
    url = http_server.put("ep.mp3", AUDIO, "audio/mpeg")
    left = {"n": 2}

    def flaky(handler) -> bool:
        if left["n"]:
            left["n"] -= 1
            handler.send_plain(503, "try later")
            return True
        return False

    http_server.hooks["/ep.mp3"] = flaky
    result = download_audio(url, tmp_path / "ep.mp3", **FAST)
    assert result.attempts == 3 and result.sha256 == SHA


def cut_after(nbytes: int, times: int = 1):
    """A hook that sends full headers but closes the connection after ``nbytes``."""
    state = {"left": times}

    def hook(handler) -> bool:
        if not state["left"] or handler.headers.get("Range"):
            return False
        state["left"] -= 1
        resource = handler.server.lookup(handler.route)
        handler.send_response(200)
        handler.send_header("Content-Type", resource.content_type)
        handler.send_header("Content-Length", str(len(resource.body)))
        handler.send_header("ETag", resource.etag)
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        handler.wfile.write(resource.body[:nbytes])
        handler.wfile.flush()
        handler.close_connection = True
        return True

    return hook


def test_interrupted_download_resumes_with_range(http_server, tmp_path: Path) -> None:
    url = http_server.put("ep.mp3", AUDIO, "audio/mpeg")
    http_server.hooks["/ep.mp3"] = cut_after(100_000)
    result = download_audio(url, tmp_path / "ep.mp3", **FAST)
    assert result.resumed and result.attempts == 2
    assert result.sha256 == SHA and (tmp_path / "ep.mp3").read_bytes() == AUDIO
    second = http_server.requests_to("/ep.mp3")[1]
    assert second["Range"].startswith("bytes=") and second["Range"] != "bytes=0-"
    assert second["If-Range"] == result.etag
    assert leftovers(tmp_path) == []


def test_resume_after_a_crashed_process(http_server, tmp_path: Path) -> None:
    """A ``.part`` left by a killed run is continued by the next run, not restarted."""
    url = http_server.put("ep.mp3", AUDIO, "audio/mpeg")
    dest = tmp_path / "ep.mp3"
    part, state = part_paths(dest)
    part.write_bytes(AUDIO[:123_456])
    etag = http_server.lookup("/ep.mp3").etag
    state.write_text(json.dumps({"url": url, "etag": etag, "last_modified": None}))
    result = download_audio(url, dest, **FAST)
    assert result.resumed and result.sha256 == SHA
    assert http_server.requests_to("/ep.mp3")[0]["Range"] == "bytes=123456-"


def test_stale_partial_file_restarts_cleanly(http_server, tmp_path: Path) -> None:
    """The object changed since the partial download: If-Range makes the server send it all."""
    url = http_server.put("ep.mp3", AUDIO, "audio/mpeg")
    dest = tmp_path / "ep.mp3"
    part, state = part_paths(dest)
    part.write_bytes(b"old bytes of another version" * 1000)
    state.write_text(json.dumps({"url": url, "etag": '"old-version"', "last_modified": None}))
    result = download_audio(url, dest, **FAST)
    assert not result.resumed and result.sha256 == SHA and dest.read_bytes() == AUDIO


def test_partial_file_of_another_url_is_discarded(http_server, tmp_path: Path) -> None:
    url = http_server.put("ep.mp3", AUDIO, "audio/mpeg")
    dest = tmp_path / "ep.mp3"
    part, state = part_paths(dest)
    part.write_bytes(b"x" * 5000)
    state.write_text(json.dumps({"url": "http://elsewhere/x.mp3", "etag": '"e"'}))
    result = download_audio(url, dest, **FAST)
    assert result.sha256 == SHA
    assert "Range" not in http_server.requests_to("/ep.mp3")[0]


def test_server_without_range_support_restarts(http_server, tmp_path: Path) -> None:
    url = http_server.put("ep.mp3", AUDIO, "audio/mpeg")
    cut = cut_after(50_000)

    def no_ranges(handler) -> bool:
        if cut(handler):
            return True
        # Ignore Range: always send the whole body with 200.
        del handler.headers["Range"]
        return False

    http_server.hooks["/ep.mp3"] = no_ranges
    result = download_audio(url, tmp_path / "ep.mp3", **FAST)
    assert result.attempts == 2 and not result.resumed and result.sha256 == SHA


def test_gives_up_after_retries_and_keeps_the_partial_file(http_server, tmp_path: Path) -> None:
    url = http_server.put("ep.mp3", AUDIO, "audio/mpeg")

    def always_cut(handler) -> bool:
        return (
            cut_after(100_000)(handler) if not handler.headers.get("Range") else cut_resume(handler)
        )

    def cut_resume(handler) -> bool:
        handler.send_plain(503, "down")
        return True

    http_server.hooks["/ep.mp3"] = always_cut
    dest = tmp_path / "ep-3.mp3"
    with pytest.raises(DownloadError, match=r"ep-3: could not download .*HTTP 503") as failed:
        download_audio(url, dest, label="ep-3", retries=2, **FAST)
    sent = len(http_server.requests_to("/ep.mp3"))  # the cut one, then a resume tried 3 times
    assert sent == 4 and f"after {sent} attempts" in str(failed.value)
    assert not dest.exists()
    part, _ = part_paths(dest)
    # Whole chunks received before the cut are kept for the next run to resume from.
    assert 0 < part.stat().st_size <= 100_000


def test_audio_extension_and_sniffing() -> None:
    assert audio_extension("https://x/a/b.MP3?x=1") == ".mp3"
    assert audio_extension("https://x/stream", "audio/x-m4a") == ".m4a"
    assert audio_extension("https://x/stream") == ".mp3"
    assert sniff_not_audio(b"ID3\x03") is None
    assert sniff_not_audio(b"  <!doctype HTML>") == "an HTML page"
    assert sniff_not_audio(b'{"a": 1}') == "a JSON document"


def test_stored_audio_is_matched_by_exact_key_and_extension(tmp_path: Path) -> None:
    storage = StorageResource(root=str(tmp_path))
    for rel in ("audio/ep-1.json", "audio/ep-1.mp3", "audio/ep-10.mp3", "audio/ep-1.mp3.txt"):
        storage.write_text(rel, "x")
    assert audio_files(storage, "ep-1") == ["audio/ep-1.mp3"]
    assert is_audio_of("audio/ep-10.mp3", "ep-10") and not is_audio_of("audio/ep-1.json", "ep-1")
