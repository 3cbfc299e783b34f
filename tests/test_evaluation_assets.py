"""Evaluation in Dagster: where references come from, the evaluation asset and its limits,
the summary across episodes, and model comparison on one partition.

Transcripts are written straight into storage with ``twiml_assets.outputs.files`` (no models), so
everything but the model comparison runs in seconds against real temporary Dagster
instances; feed transcripts are served over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    Definitions,
    instance_for_test,
    materialize,
)

from evaluation.feed_transcript import fetch_feed_transcript, html_to_text
from evaluation.formats import load_podcast_json
from evaluation.loaders import load_reference
from evaluation.lookup import find_references, resolve_references
from resources.quality import QualityResource, judge
from resources.schema import (
    AsrResult,
    AsrSegment,
    DiarisationResult,
    SpeakerTranscript,
    SpeakerTurn,
    Utterance,
    Word,
)
from resources.storage import StorageResource
from twiml_assets.layout import EpisodeFiles
from twiml_assets.outputs.files import full_record, write_full_record
from twiml_assets.quality.assets import evaluation, evaluation_summary
from twiml_assets.quality.checks import evaluation_limits

LINES: list[tuple[str, str, float, float]] = [
    ("HOST", "Welcome to the show today we talk about speech recognition", 0.5, 4.5),
    ("GUEST", "Thanks for having me long recordings are the hard part", 5.0, 9.0),
    ("HOST", "How do you measure the quality of a transcript", 9.6, 12.8),
    ("GUEST", "We keep reference transcripts and compute the word error rate", 13.4, 17.9),
]
LABELS = {"HOST": "SPEAKER_00", "GUEST": "SPEAKER_01"}


# -- helpers ------------------------------------------------------------------------------------
def stm(lines=LINES, uri: str = "episode") -> str:
    return "".join(f"{uri} 1 {s} {a:.2f} {b:.2f} {t}\n" for s, t, a, b in lines)


def srt(lines=LINES) -> str:
    def clock(t: float) -> str:
        return f"00:00:{int(t):02d},{int(round((t % 1) * 1000)):03d}"

    return "\n".join(
        f"{i}\n{clock(a)} --> {clock(b)}\n{s}: {t}\n" for i, (s, t, a, b) in enumerate(lines, 1)
    )


def vtt(lines=LINES) -> str:
    def clock(t: float) -> str:
        return f"00:00:{int(t):02d}.{int(round((t % 1) * 1000)):03d}"

    cues = "\n".join(f"{clock(a)} --> {clock(b)}\n<v {s}>{t}\n" for s, t, a, b in lines)
    return "WEBVTT\n\n" + cues


def podcast_json(lines=LINES) -> str:
    segments = [{"speaker": s, "startTime": a, "endTime": b, "body": t} for s, t, a, b in lines]
    return json.dumps({"version": "1.0.0", "segments": segments})


def write_transcript(storage: StorageResource, key: str, wrong: bool = False) -> None:
    """A transcript record as speaker_transcript writes it: exact, or deliberately wrong
    (other words, one speaker for everything)."""
    utterances, turns, segments = [], [], []
    for speaker, text, start, end in LINES:
        label = "SPEAKER_00" if wrong else LABELS[speaker]
        tokens = ["banana"] * len(text.split()) if wrong else text.split()
        step = (end - start) / len(tokens)
        words = [
            Word(start + i * step, start + (i + 1) * step, f" {tok}", 0.9, label)
            for i, tok in enumerate(tokens)
        ]
        utterances.append(Utterance(label, start, end, words))
        turns.append(SpeakerTurn(start, end, label))
        segments.append(AsrSegment(start, end, " ".join(tokens), words))
    duration = 19.0
    transcript = SpeakerTranscript(
        key, duration, utterances, sorted({u.speaker for u in utterances})
    )
    asr = AsrResult(segments, "en", duration, "tiny.en", {"beam_size": 5}, 1.0)
    diarisation = DiarisationResult(turns, duration, "offline", {}, 1.0)
    write_full_record(storage, full_record(transcript, asr, diarisation))


def write_episode(storage: StorageResource, key: str, transcript_url: str | None = None) -> None:
    storage.write_json(
        EpisodeFiles(key).episode,
        {
            "key": key,
            "number": key.removeprefix("ep-"),
            "title": key,
            "audio_url": f"http://127.0.0.1:9/{key}.mp3",
            "transcript_url": transcript_url,
        },
    )


def resources(root: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "storage": StorageResource(root=str(root)),
        "quality": QualityResource(),
        **overrides,
    }


def checks_of(result, key: str) -> dict[str, Any]:
    """The run's check evaluations by check name; each must be recorded for episode ``key``."""
    evaluations = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert evaluations and {c.partition for c in evaluations} == {key}
    return {c.check_name: c for c in evaluations}


def status_by_episode(instance, check: str) -> dict[str | None, tuple[str, str]]:
    """The instance's latest status of one evaluation check per episode, with its run."""
    infos = instance.event_log_storage.get_asset_check_partition_info(
        [AssetCheckKey(AssetKey("evaluation"), check)]
    )
    return {
        i.partition_key: (i.latest_execution_status.value, i.latest_planned_run_id) for i in infos
    }


def metadata_of(result, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if mat.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in mat.metadata.items()}
    raise AssertionError(f"{asset} was not materialised")


# -- where references come from -----------------------------------------------------------------
def test_lookup_by_key_and_number_in_a_local_dir_and_the_storage_root(tmp_path: Path) -> None:
    storage = StorageResource(root=str(tmp_path / "data"))
    local = tmp_path / "refs"
    local.mkdir()
    (local / "ep-7.stm").write_text(stm())
    (local / "7.txt").write_text("by number\n")
    (local / "ep-70.txt").write_text("another episode\n")
    storage.write_text("references/ep-7.rttm", "SPEAKER x 1 0.0 1.0 <NA> <NA> A <NA> <NA>\n")
    storage.write_text("references/7.corrected.json", json.dumps({"dialogs": []}))
    storage.write_json("references/ep-7.speakers.json", {"SPEAKER_00": "Sam"})
    storage.write_json("references/ep-7.source.json", {"url": "x"})
    storage.write_text("references/old/ep-7.txt", "nested: not a reference\n")

    names = [p.name for p in find_references(storage, "ep-7", str(local))]
    # Configured dir first, then storage; within each, richer formats first.
    assert names == ["ep-7.stm", "7.txt", "7.corrected.json", "ep-7.rttm"]
    assert [p.name for p in find_references(storage, "ep-7")] == ["7.corrected.json", "ep-7.rttm"]
    assert find_references(storage, "ep-8", str(local)) == []


def test_podcasting_json_and_html_transcripts_load(tmp_path: Path) -> None:
    path = tmp_path / "ep-1.json"
    path.write_text(podcast_json())
    ref = load_podcast_json(path)
    assert ref.format == "podcast-json" and ref.has_speakers and ref.has_timestamps
    assert ref.speakers == ["GUEST", "HOST"] and ref.text.startswith("Welcome to the show")
    assert load_reference(path).format == "podcast-json"
    rag = tmp_path / "ep-2.json"
    rag.write_text(
        json.dumps(
            {
                "dialogs": [{"speaker": 0, "start": 0, "end": 1, "text": "hi"}],
                "speakers": ["SPEAKER_00"],
            }
        )
    )
    assert load_reference(rag).format == "rag-json"
    text = html_to_text(
        "<html><head><title>T</title><style>p{}</style></head><body><h1>Episode 1</h1>"
        "<p>Sam: Hello &amp; welcome.</p><p>Guest:\n thanks</p><script>x()</script></body></html>"
    )
    assert text == "Episode 1\nSam: Hello & welcome.\nGuest: thanks\n"


@pytest.mark.parametrize(
    ("name", "body", "content_type", "fmt"),
    [
        ("t.srt", srt(), "application/x-subrip", "srt"),
        ("t.vtt", vtt(), "text/vtt", "vtt"),
        ("t.json", podcast_json(), "application/json", "json"),
        ("t", srt(), "text/plain; charset=utf-8", "srt"),  # subtitles sent as text: by content
        ("t.html", "<p>HOST: Welcome to the show</p>", "text/html", "html"),
    ],
)
def test_podcast_transcript_is_downloaded_once_into_storage(
    http_server, tmp_path: Path, name: str, body: str, content_type: str, fmt: str
) -> None:
    storage = StorageResource(root=str(tmp_path / "data"))
    url = http_server.put(name, body, content_type)
    first = fetch_feed_transcript(storage, "ep-3", url)
    ext = "txt" if fmt == "html" else fmt
    assert (first.status, first.format, first.path) == ("fetched", fmt, f"references/ep-3.{ext}")
    ref = load_reference(storage.local_path(first.path))
    assert "welcome to the show" in ref.text.lower()
    if fmt != "html":
        assert ref.has_speakers and ref.has_timestamps and ref.speakers == ["GUEST", "HOST"]

    again = fetch_feed_transcript(storage, "ep-3", url)
    assert again.status == "stored" and again.path == first.path
    assert len(http_server.requests_to("/" + name)) == 1
    refs, fetched = resolve_references(storage, "ep-3", None, url)
    assert [p.name for p in refs] == [f"ep-3.{ext}"] and fetched is None  # found: no fetch


def test_unusable_transcripts_are_recorded_and_network_errors_retried(
    http_server, tmp_path: Path
) -> None:
    storage = StorageResource(root=str(tmp_path / "data"))
    url = http_server.put("odd.json", json.dumps({"cues": []}), "application/json")
    result = fetch_feed_transcript(storage, "ep-4", url)
    assert result.status == "unsupported" and "dialogs" in result.message
    assert fetch_feed_transcript(storage, "ep-4", url).status == "unsupported"
    assert len(http_server.requests_to("/odd.json")) == 1  # not fetched again
    assert not storage.exists("references/ep-4.json")

    missing = http_server.url("gone.vtt")
    warnings: list[str] = []
    refs, fetched = resolve_references(storage, "ep-5", None, missing, warn=warnings.append)
    assert refs == [] and fetched.status == "failed" and "404" in fetched.message
    assert warnings and "ep-5" in warnings[0]
    http_server.put("gone.vtt", vtt(), "text/vtt")
    refs, fetched = resolve_references(storage, "ep-5", None, missing)
    assert fetched.status == "fetched" and [p.name for p in refs] == ["ep-5.vtt"]


# -- thresholds ---------------------------------------------------------------------------------
def test_limits_judge_and_come_from_the_environment() -> None:
    from twiml_assets.definitions import ConfigError, build_definitions, resources_from_env

    assert judge(0.10, 0.15, 0.35) == (True, AssetCheckSeverity.WARN)
    assert judge(0.20, 0.15, 0.35) == (False, AssetCheckSeverity.WARN)
    assert judge(0.50, 0.15, 0.35) == (False, AssetCheckSeverity.ERROR)
    defaults = QualityResource()
    assert defaults.limits("wer") == (0.15, 0.35) and defaults.limits("der") == (0.15, 0.35)
    env = {"TWIML_WER_WARN": "0.1", "TWIML_WER_ERROR": "0.2", "TWIML_DER_ERROR": "0.5"}
    quality = resources_from_env(env)["quality"]
    assert quality.limits("wer") == (0.1, 0.2) and quality.limits("der") == (0.15, 0.5)
    with pytest.raises(ConfigError, match="TWIML_WER_WARN='high': Input should be a valid number"):
        build_definitions(env={"TWIML_WER_WARN": "high"})
    with pytest.raises(ConfigError, match="wer_warn=0.5 is above wer_error=0.35"):
        build_definitions(env={"TWIML_WER_WARN": "0.5"})


# -- the evaluation asset, its checks and the summary -------------------------------------------
@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    """Three episodes evaluated in one instance: right (STM), wrong (STM), none.

    Returns the storage root and each partition's run result.
    """
    root = tmp_path_factory.mktemp("evaluated") / "data"
    storage = StorageResource(root=str(root))
    for key, wrong in (("ep-1", False), ("ep-2", True), ("ep-3", False)):
        write_transcript(storage, key, wrong=wrong)
        write_episode(storage, key)
    storage.write_text("references/ep-1.stm", stm())
    storage.write_text("references/2.stm", stm())  # by episode number
    results = {}
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", ["ep-1", "ep-2", "ep-3"])
        for key in ("ep-1", "ep-2", "ep-3"):
            results[key] = materialize(
                [evaluation, evaluation_limits],
                resources=resources(root),
                instance=instance,
                partition_key=key,
            )
        summary = materialize([evaluation_summary], resources=resources(root), instance=instance)
    return root, results, summary


def test_evaluation_passes_on_the_right_transcript(evaluated) -> None:
    root, results, _ = evaluated
    result = results["ep-1"]
    assert result.success
    meta = metadata_of(result, "evaluation")
    assert meta["has_reference"] is True
    assert meta["wer"] == 0.0 and meta["cpwer"] == 0.0 and meta["wder"] == 0.0
    assert meta["der"] < 0.05 and meta["reference_words"] == 39
    record = json.loads((root / "evaluation/ep-1.json").read_text())
    assert record["wer"]["reference"] == "ep-1.stm" and record["der"]["collar"] == 0.5
    checks = checks_of(result, "ep-1")
    assert set(checks) == {
        "wer_within_limits",
        "der_within_limits",
        "cpwer_within_limits",
        "wder_within_limits",
    }
    assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}


def test_evaluation_check_fails_with_error_on_a_wrong_transcript(evaluated) -> None:
    _, results, _ = evaluated
    result = results["ep-2"]
    assert result.success  # checks report; they never fail the run
    meta = metadata_of(result, "evaluation")
    assert meta["wer"] == 1.0 and meta["der"] > 0.35
    checks = checks_of(result, "ep-2")
    for name in ("wer_within_limits", "der_within_limits", "cpwer_within_limits"):
        assert not checks[name].passed and checks[name].severity == AssetCheckSeverity.ERROR
    assert "above the ERROR limit" in checks["wer_within_limits"].description
    assert checks["wer_within_limits"].metadata["reference"].value == "2.stm"


def test_episode_without_reference_materialises_and_checks_pass(evaluated) -> None:
    _, results, _ = evaluated
    result = results["ep-3"]
    assert result.success
    meta = metadata_of(result, "evaluation")
    assert meta["has_reference"] is False and "wer" not in meta
    checks = checks_of(result, "ep-3")
    assert all(c.passed for c in checks.values())
    assert "needs a reference with text" in checks["wer_within_limits"].description


def test_each_episode_keeps_its_check_status_and_a_limit_change_reruns_one_check(
    tmp_path: Path,
) -> None:
    """A right and a wrong transcript in one instance: each episode keeps its own status of
    wer_within_limits (the wrong one ran last), then that check alone, re-run for the wrong
    episode with a raised limit, records a pass for that episode only."""
    root = tmp_path / "data"
    storage = StorageResource(root=str(root))
    for key, wrong in (("ep-1", False), ("ep-2", True)):
        write_transcript(storage, key, wrong=wrong)
        write_episode(storage, key)
        storage.write_text(f"references/{key}.stm", stm())
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", ["ep-1", "ep-2"])
        runs = {
            key: materialize(
                [evaluation, evaluation_limits],
                resources=resources(root),
                instance=instance,
                partition_key=key,
            )
            for key in ("ep-1", "ep-2")
        }
        assert checks_of(runs["ep-1"], "ep-1")["wer_within_limits"].passed
        assert not checks_of(runs["ep-2"], "ep-2")["wer_within_limits"].passed
        assert status_by_episode(instance, "wer_within_limits") == {
            "ep-1": ("SUCCEEDED", runs["ep-1"].run_id),
            "ep-2": ("FAILED", runs["ep-2"].run_id),
        }
        der_before = status_by_episode(instance, "der_within_limits")
        assert der_before["ep-2"][0] == "FAILED"

        # The launchpad's "execute this check" for ep-2: the implicit asset job subset to the
        # one check, with the limits changed in the quality resource.
        lenient = QualityResource(wer_warn=1.0, wer_error=1.0)
        defs = Definitions(
            assets=[evaluation],
            asset_checks=[evaluation_limits],
            resources=resources(root, quality=lenient),
        )
        wer = AssetCheckKey(AssetKey("evaluation"), "wer_within_limits")
        job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={wer})
        again = job.execute_in_process(partition_key="ep-2", instance=instance)
        assert not again.get_asset_materialization_events()  # the stored record is judged
        (check,) = checks_of(again, "ep-2").values()
        assert check.check_name == "wer_within_limits" and check.passed
        assert "warn above 100%" in check.description
        assert status_by_episode(instance, "wer_within_limits") == {
            "ep-1": ("SUCCEEDED", runs["ep-1"].run_id),
            "ep-2": ("SUCCEEDED", again.run_id),
        }
        assert status_by_episode(instance, "der_within_limits") == der_before  # not re-run


def test_summary_has_a_table_pooled_rates_and_a_png(evaluated) -> None:
    root, _, summary = evaluated
    assert summary.success
    meta = metadata_of(summary, "evaluation_summary")
    assert meta["episodes"] == 3 and meta["episodes_with_reference"] == 2
    records = [json.loads((root / f"evaluation/ep-{n}.json").read_text()) for n in (1, 2)]
    errors = sum(
        r["wer"]["substitutions"] + r["wer"]["deletions"] + r["wer"]["insertions"] for r in records
    )
    words = sum(r["wer"]["reference_words"] for r in records)
    assert meta["pooled_wer"] == pytest.approx(errors / words, abs=1e-4)
    assert meta["pooled_wer"] == pytest.approx(0.5, abs=0.01)
    assert 0 < meta["pooled_der"] < 1 and meta["reference_words"] == 78

    rows = meta["table"].records
    assert [r.data["episode"] for r in rows] == ["ep-1", "ep-2", "ep-3"]
    assert rows[0].data["wer"] == 0.0 and rows[1].data["wer"] == 1.0 and rows[2].data["wer"] is None
    assert "| ep-2 | True | 1.000 |" in meta["table_md"]
    assert meta["chart"].startswith("![WER and DER](data:image/png;base64,")

    png = root / "evaluation/summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] >= 200 and image.size[1] >= 100
    assert meta["path:chart"].endswith("evaluation/summary.png")
    assert (root / "evaluation/summary.csv").read_text().startswith("episode,has_reference,wer")


def test_evaluation_uses_the_feed_transcript_when_there_is_no_reference(
    http_server, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    storage = StorageResource(root=str(root))
    url = http_server.put("transcripts/ep-6.json", podcast_json(), "application/json")
    write_transcript(storage, "ep-6")
    write_episode(storage, "ep-6", transcript_url=url)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", ["ep-6"])
        for _ in range(2):
            result = materialize(
                [evaluation], resources=resources(root), instance=instance, partition_key="ep-6"
            )
            assert result.success
    meta = metadata_of(result, "evaluation")
    assert meta["has_reference"] is True and meta["wer"] == 0.0 and meta["der"] < 0.05
    assert meta["feed_transcript"] == "not needed"  # second run: the stored copy was found
    assert (root / "references/ep-6.json").exists()
    assert len(http_server.requests_to("/transcripts/ep-6.json")) == 1


# -- model comparison ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "configs"),
    [("local", ["cpu-dev", "cpu-dev:beam_size=1"]), ("subprocess", ["cpu-dev:beam_size=1"])],
)
def test_model_comparison_for_one_partition(
    tmp_path: Path, backend: str, configs: list[str]
) -> None:
    """In the run's process, and in its Pipes worker (same metadata, through Pipes)."""
    from resources.compute import ComputeResource
    from twiml_assets.demo.synth import DEFAULT_DIALOGUE, synthesize_dialogue
    from twiml_assets.quality.assets import model_comparison

    root = tmp_path / "data"
    storage = StorageResource(root=str(root))
    clip = synthesize_dialogue(root / "audio/ep-9.wav", DEFAULT_DIALOGUE[:4])
    assert 15 < clip.duration < 40
    storage.write_json(EpisodeFiles("ep-9").audio_sidecar, {"path": "audio/ep-9.wav"})
    storage.write_text("references/ep-9.stm", clip.stm("ep-9"))
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("episodes", ["ep-9"])
        result = materialize(
            [model_comparison],
            resources=resources(root, compute=ComputeResource(backend=backend)),
            instance=instance,
            partition_key="ep-9",
            run_config={"ops": {"model_comparison": {"config": {"configs": ",".join(configs)}}}},
        )
        logs = [e.message for e in instance.all_logs(result.run_id)]
    assert result.success
    meta = metadata_of(result, "model_comparison")
    assert meta["configurations"] == len(configs) and meta["succeeded"] == len(configs)
    assert meta["references"] == "ep-9.stm"
    rows = [r.data for r in meta["table"].records]
    assert [r["config"] for r in rows] == configs
    for row in rows:
        for column in ("wer", "der", "cpwer", "rtf", "peak_rss_mb"):
            assert row[column] is not None, column
        assert row["wer"] <= 0.2 and row["status"] == "ok"
    assert f"| {configs[0]} |" in meta["comparison"]
    assert meta["path:csv"] == str(root / "comparisons/ep-9.csv")
    assert (root / "comparisons/ep-9.csv").exists() and (root / "comparisons/ep-9.md").exists()
    on_worker = any("model comparison on the subprocess backend" in m for m in logs)
    assert on_worker == (backend == "subprocess")
