"""Golden outputs: the demo episodes' files keep their form and content on any CPU.

The four demo episodes go through ``episode_pipeline`` in process and are compared with
``tests/golden/demo/``, after removing what legitimately changes from run to run (timings,
creation stamps, the local server's port):

- exactly: the file set, ``info.json`` and ``speakers.json``, the structure and speaker
  labels of ``corrected.json``, and the markdown and SRT files, which must be what the
  renderers make of that run's ``corrected.json`` (and the golden ones of the golden one);
- within the bounds of ``tests/model_output.py``: the words of ``corrected.json`` (WER,
  word times, speaker attribution), since they are model output and differ between CPUs.

Regenerate (only when an output change is intended) with
``TWIML_UPDATE_GOLDEN=1 pytest tests/test_golden_outputs.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from dagster import instance_for_test

from resources.schema import SpeakerTranscript, Utterance
from resources.storage import StorageResource
from tests.model_output import EPISODE_WER_BOUND, compare_words, corrected_words, shape
from twiml_assets.demo.feed_server import serve_demo
from twiml_assets.feed.resource import FeedResource
from twiml_assets.outputs import renderers

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


def transcript_of(corrected: dict[str, Any], names: dict[str, str], key: str) -> SpeakerTranscript:
    """The speaker transcript a ``corrected.json`` + ``speakers.json`` pair describes."""
    labels = corrected["speakers"]
    utterances = [
        Utterance(
            labels[d["speaker"]],
            d["start"],
            d["end"],
            corrected_words({"speakers": labels, "dialogs": [d]}),
            text_override=d["text"],
        )
        for d in corrected["dialogs"]
    ]
    end = max((u.end for u in utterances), default=0.0)
    return SpeakerTranscript(key, end, utterances, list(labels), speaker_names=dict(names))


def rendered(files: dict[str, str], n: int) -> dict[str, str]:
    """Episode ``n``'s markdown and SRT as the renderers make them from its JSON files."""
    transcript = transcript_of(
        json.loads(files[f"transcripts/{n}.corrected.json"]),
        json.loads(files[f"asr/{n}.speakers.json"]),
        f"ep-{n}",
    )
    return {
        f"markdown/{n}.md": renderers.markdown(transcript),
        f"subtitles/ep-{n}.srt": renderers.srt(transcript),
    }


def check_against_golden(produced: dict[str, str], expected: dict[str, str]) -> None:
    """Exact where the files are not model output, within measured bounds where they are."""
    assert sorted(produced) == sorted(expected)
    pooled = None
    for n in range(1, 5):
        # Not model output: the feed's fields, and names from the feed and the registry.
        for name in (f"info/{n}.info.json", f"asr/{n}.speakers.json"):
            assert produced[name] == expected[name], f"{name} differs from tests/golden/demo/"
        # The renderers are pure: the golden files are what they make of the golden JSON,
        # and this run's markdown and SRT are what they make of this run's JSON.
        for files, where in ((expected, "tests/golden/demo"), (produced, "this run")):
            for name, text in rendered(files, n).items():
                assert files[name] == text, f"{name} of {where} is not its JSON rendered"
        name = f"transcripts/{n}.corrected.json"
        golden, ours = json.loads(expected[name]), json.loads(produced[name])
        assert shape(ours) == shape(golden), f"{name}: other keys or types than the golden file"
        assert ours["speakers"] == golden["speakers"], name
        assert {d["speaker"] for d in ours["dialogs"]} == {d["speaker"] for d in golden["dialogs"]}
        comparison = compare_words(corrected_words(golden), corrected_words(ours))
        assert comparison.wer <= EPISODE_WER_BOUND, f"{name}: WER {comparison.wer:.3f} vs golden"
        pooled = comparison if pooled is None else pooled + comparison
    assert pooled is not None and pooled.problems() == [], "words against the golden files"


def demo_outputs(workdir: Path) -> dict[str, str]:
    """The four demo episodes through ``episode_pipeline`` in process; the compared files
    (``COMPARED`` + ``COMPARED_ALSO``, normalised) and the diarisation RTTMs, by path."""
    from twiml_assets.definitions import build_definitions

    server = serve_demo(workdir / "demo", port=0, initial=4)
    try:
        root = workdir / "data"
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
    return {
        p.relative_to(root).as_posix(): normalised(p, base_url)
        for pattern in (*COMPARED, *COMPARED_ALSO, "diarisation/*.rttm")
        for p in sorted(root.glob(pattern))
    }


@pytest.mark.slow
@pytest.mark.model_output
def test_demo_outputs_match_the_golden_files(tmp_path: Path) -> None:
    outputs = demo_outputs(tmp_path)
    produced = {name: text for name, text in outputs.items() if not name.endswith(".rttm")}
    assert len(produced) == 4 * len(COMPARED + COMPARED_ALSO)
    if os.environ.get("TWIML_UPDATE_GOLDEN") == "1":
        for name, text in produced.items():
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_text(text)
    check_against_golden(produced, golden_files())


def golden_files() -> dict[str, str]:
    return {
        p.relative_to(GOLDEN).as_posix(): p.read_text() for p in GOLDEN.rglob("*") if p.is_file()
    }


def with_words_changed(files: dict[str, str], change) -> dict[str, str]:  # noqa: ANN001
    """The golden files with ``change(word)`` applied to every word of every corrected.json."""
    out = dict(files)
    for name in [n for n in files if n.endswith(".corrected.json")]:
        doc = json.loads(files[name])
        for dialog in doc["dialogs"]:
            for word in dialog["words"]:
                change(word)
        out[name] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    for n in range(1, 5):
        out.update(rendered(out, n))
    return out


def test_the_golden_comparison_accepts_the_golden_files_and_what_another_cpu_changes() -> None:
    files = golden_files()
    check_against_golden(files, files)

    def jitter(word: dict[str, Any]) -> None:  # what other kernels do: probabilities, ±0.02 s
        word["probability"] = round(word["probability"] * 0.97, 4)
        word["end"] = round(word["end"] + 0.02, 2)

    check_against_golden(with_words_changed(files, jitter), files)


@pytest.mark.parametrize(
    "change",
    [
        lambda w: w.update(start=w["start"] + 0.3, end=w["end"] + 0.3),  # every word 0.3 s late
        lambda w: w.update(word=" " + "".join(reversed(w["word"].strip()))),  # other words
    ],
    ids=["times", "text"],
)
def test_the_golden_comparison_rejects_changed_words(change) -> None:  # noqa: ANN001
    files = golden_files()
    with pytest.raises(AssertionError):
        check_against_golden(with_words_changed(files, change), files)


def test_the_golden_comparison_rejects_changed_names_structure_and_rendering() -> None:
    files = golden_files()
    renamed = {**files, "asr/1.speakers.json": files["asr/1.speakers.json"].replace("0", "9")}
    extra_key = with_words_changed(files, lambda w: w.update(score=1.0))
    not_rendered = {**files, "markdown/2.md": files["markdown/2.md"].replace("__", "**", 1)}
    for broken in (renamed, extra_key, not_rendered):
        with pytest.raises(AssertionError):
            check_against_golden(broken, files)
