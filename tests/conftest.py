"""Shared fixtures: generated speech (espeak-ng) with exact truth, made once per session;
a real PostgreSQL server for the production instance (deploy/dagster.yaml)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def share_the_cores() -> None:
    """Under pytest-xdist, each worker's math libraries (torch, CTranslate2, OpenBLAS) and the
    processes it starts get its share of the cores, not all of them: three workers with two
    OpenMP threads each on two cores spent twice the CPU time spinning and switching, and
    the 20-minute episode's fixture went from 158 s to past its 900 s limit. Set before
    numpy or torch is imported; a value already in the environment wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, threads)


share_the_cores()

from twiml_assets.demo.synth import SyntheticEpisode, synthesize_dialogue  # noqa: E402

# Test files, longest first (as measured under `make test`: docs/benchmarks.md, "Test suite").
# `make test` runs a file per pytest-xdist worker (--dist loadfile --no-loadscope-reorder)
# in this order, so that no long file starts last and holds the run up alone; the rest
# follow in their usual order.
LONGEST_FIRST = (
    "test_long_audio",
    "test_catchup_chaos",
    "test_compute",
    "test_images",
    "test_daemon_runs",
    "test_fingerprint_linking",
    "test_evaluation_assets",
    "test_make_run",
    "test_dagster_assets",
    "test_web_browser",
    "test_compare",
    "test_engine",
    "test_golden_outputs",
    "test_notebook",
    "test_upload_links",
    "test_failures",
    "test_diarisation",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order kept


@pytest.fixture(scope="session")
def dialogue(tmp_path_factory: pytest.TempPathFactory) -> SyntheticEpisode:
    """The default two-speaker dialogue (≈88 s) as WAV, with reference turns and text."""
    return synthesize_dialogue(tmp_path_factory.mktemp("dialogue") / "dialogue.wav")


@pytest.fixture(scope="session")
def dialogue_mp3(tmp_path_factory: pytest.TempPathFactory, dialogue: SyntheticEpisode) -> Path:
    """The same dialogue encoded as MP3 (what podcast feeds serve)."""
    import subprocess

    target = tmp_path_factory.mktemp("dialogue_mp3") / "dialogue.mp3"
    subprocess.run(
        [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-i",
            str(dialogue.audio_path),
            "-b:a",
            "64k",
            str(target),
        ],
        check=True,
    )
    return target


# -- feed, download and Dagster tests (real HTTP on 127.0.0.1) ------------------------------
SHORT_EPISODE_LINES: tuple[tuple[tuple[str, str], ...], ...] = (
    (
        ("HOST", "Welcome to the show. Today we talk about speech recognition."),
        ("GUEST", "Thanks for having me. Long recordings are the hard part."),
        ("HOST", "Thank you for joining us."),
    ),
    (
        ("HOST", "This is episode two, about speaker diarization."),
        ("GUEST", "Diarization tells us who spoke when in the recording."),
        ("HOST", "Very clear, thank you."),
    ),
    (
        ("HOST", "Episode three is about measuring transcripts."),
        ("GUEST", "Keep reference transcripts and compute the word error rate."),
        ("HOST", "Great advice. See you next week."),
    ),
)


@pytest.fixture
def http_server(tmp_path: Path):
    """A fresh LocalHTTPServer on 127.0.0.1 (ephemeral port) serving ``tmp_path/www``."""
    from twiml_assets.demo.http_server import LocalHTTPServer

    root = tmp_path / "www"
    root.mkdir()
    with LocalHTTPServer(root) as server:
        yield server


@pytest.fixture(scope="session")
def short_episodes(tmp_path_factory: pytest.TempPathFactory):
    """Three short (≈10 s) two-speaker MP3 episodes with different lines, made once."""
    from twiml_assets.demo.synth import synthesize_dialogue

    out = tmp_path_factory.mktemp("short_episodes")
    return [
        synthesize_dialogue(out / f"short-{i + 1}.mp3", lines, seed=i)
        for i, lines in enumerate(SHORT_EPISODE_LINES)
    ]


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of this machine's binaries (tests/postgres_server.py), one per
    session; each test makes its own database. Missing binaries fail the test: setup.sh
    installs them."""
    from tests.postgres_server import MISSING, find_bin_dir, start_server

    if find_bin_dir() is None:
        pytest.fail(MISSING, pytrace=False)
    server = start_server()
    yield server
    server.stop()
