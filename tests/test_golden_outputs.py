"""Golden outputs: the demo episodes' files stay byte-identical across refactors.

The four demo episodes go through ``episode_pipeline`` in process; the files people and
the RAG pipeline read (corrected.json, speakers.json, markdown, SRT, info.json) are
compared with ``tests/golden/demo/`` after removing what legitimately changes from run
to run: timings, creation stamps and the local server's port. Regenerate (only when an
output change is intended) with ``TWIML_UPDATE_GOLDEN=1 pytest tests/test_golden_outputs.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from dagster import instance_for_test

from resources.storage import StorageResource
from twiml_assets.demo.feed_server import serve_demo
from twiml_assets.feed.resource import FeedResource

GOLDEN = Path(__file__).parent / "golden" / "demo"
COMPARED = ("transcripts/*.corrected.json", "asr/*.speakers.json", "markdown/*.md")
COMPARED_ALSO = ("subtitles/*.srt", "info/*.info.json")
VOLATILE_KEYS = {"seconds", "real_time_factor", "timings", "created", "created_at", "generated_at"}
BASE_URL = "http://demo.invalid"


def normalised(path: Path, base_url: str) -> str:
    """The file's bytes as text, with timings, stamps and the server's address taken out."""
    text = path.read_text().replace(base_url, BASE_URL)
    if path.suffix != ".json":
        return text
    data = json.loads(text)
    stable = without_volatile(data)
    return text if stable == data else json.dumps(stable, indent=2, sort_keys=True) + "\n"


def without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


@pytest.mark.slow
def test_demo_outputs_match_the_golden_files(tmp_path: Path) -> None:
    from twiml_assets.definitions import build_definitions

    server = serve_demo(tmp_path / "demo", port=0, initial=4)
    try:
        root = tmp_path / "data"
        defs = build_definitions(
            resources={
                "feed": FeedResource(url=server.url("feed.xml")),
                "storage": StorageResource(root=str(root)),
            },
            env={},
        )
        job = defs.resolve_job_def("episode_pipeline")
        keys = [f"ep-{n}" for n in range(1, 5)]
        with instance_for_test() as instance:
            instance.add_dynamic_partitions("episodes", keys)
            for key in keys:
                result = job.execute_in_process(
                    partition_key=key, instance=instance, raise_on_error=False
                )
                assert result.success, [e.message for e in result.all_events if e.is_failure]
        base_url = server.base_url
    finally:
        server.stop()

    produced = {
        p.relative_to(root).as_posix(): normalised(p, base_url)
        for pattern in COMPARED + COMPARED_ALSO
        for p in sorted(root.glob(pattern))
    }
    assert len(produced) == 4 * len(COMPARED + COMPARED_ALSO)
    if os.environ.get("TWIML_UPDATE_GOLDEN") == "1":
        for name, text in produced.items():
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_text(text)
    expected = {
        p.relative_to(GOLDEN).as_posix(): p.read_text() for p in GOLDEN.rglob("*") if p.is_file()
    }
    assert sorted(produced) == sorted(expected)
    for name, text in produced.items():
        assert text == expected[name], f"{name} differs from tests/golden/demo/{name}"
