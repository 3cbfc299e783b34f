"""The catch-up leaves no holes: 32 episodes through the daemon while everything fails.

A real daemon, code server and SQLite instance (the project's dagster.yaml, test-sized
intervals), storage on a moto S3 server process, the feed and audio over real HTTP. Faults
(``tests/chaos_harness.py``, seeded): 503 and cut-off first audio GETs, a corrupt episode,
a 404 enclosure, the S3 server stopped for 20 s mid catch-up, a run worker SIGKILLed in
the model step. When it settles, every good episode has its files once, the bad ones are
given up for the right reason after one run each, and nothing leaked or ran twice.
``bench/chaos_catchup.py`` prints the same run's figures.

The models are stand-ins (``tests/standin_models.py``, served by
``tests/standin_definitions.py``): this test is about orchestration, and loading
faster-whisper, the diariser and the speaker encoder (torch) in each of its ~33 run workers
cost minutes and told it nothing. Everything else is the real thing: the same asset graph and
``transcribe_and_diarise`` step in the gpu pool, the same processes, storage and files; the
audio is decoded for real, so the corrupt episode fails as it does with the real models, and
the stand-in step takes a quarter of the audio's length, so the worker is killed in it.
Real transcription end to end: ``tests/test_golden_outputs.py``, ``tests/test_long_audio.py``.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.chaos_harness import (
    PREFIX,
    ChaosReport,
    ChaosSettings,
    FaultPlan,
    key,
    run_chaos,
    temp_objects,
)
from twiml_assets.layout import EpisodeFiles

SETTINGS = ChaosSettings()


def outputs(episode_key: str) -> set[str]:
    """What a complete run leaves in storage for one episode (its failure ledger aside)."""
    f = EpisodeFiles(episode_key)
    return {
        f.episode,
        f.audio(".mp3"),
        f.audio_sidecar,
        f.fingerprint,
        f.asr_result,
        f.diarisation_result,
        f.rttm,
        f.record,
        f.speaker_names,
        f.voiceprints,
        f.corrected,
        f.speakers,
        f.markdown,
        f.info,
        f.srt,
        f.vtt,
        f.evaluation,
    }


def owner(rel: str, keys: dict[str, str]) -> str | None:
    """The episode a storage path belongs to (``ep-7`` or RAG name ``7``), else None."""
    name = rel.rsplit("/", 1)[-1]
    match = re.match(r"(ep-\d+|\d+)\.", name)
    return keys.get(match.group(1)) if match else None


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    workdir = tmp_path_factory.mktemp("chaos")
    result = run_chaos(workdir, SETTINGS, log=print)
    print({k: v for k, v in result.figures().items()})
    return result


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_catch_up_settles_with_every_fault_having_happened(report: ChaosReport) -> None:
    plan = report.plan
    assert len(plan.numbers) >= 32 and len(plan.good) >= 30
    assert report.settled_at is not None, report.timeline[-5:]
    # Each fault happened: first GETs failed, S3 stopped while runs were active, one run
    # worker died in the model step.
    assert report.served == {"503": len(plan.unavailable), "cut": len(plan.cut_off)}
    retries = report.download_retries()
    assert retries["503"] >= len(plan.unavailable) and retries["cut"] >= len(plan.cut_off)
    assert all(len(report.audio_requests[n]) >= 2 for n in plan.unavailable | plan.cut_off)
    # What was stored is what was served, whole, after the 503s and the cut-off bodies.
    assert report.stored_audio_sha256 == report.served_audio_sha256
    assert report.stall["seconds"] >= SETTINGS.s3_stall_seconds - 0.5
    assert report.stall["active_runs"]
    # (A worker killed just after its model step ended would be retried all the same; the
    # harness then kills another one, so the last kill is the one in the model step.)
    assert [k["landed"] for k in report.kills][-1:] == [True]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_good_episode_is_done_once_with_complete_outputs(report: ChaosReport) -> None:
    plan = report.plan
    good = [key(n) for n in plan.good]
    states = {k: s.state.value for k, s in report.statuses.items()}
    assert {k: states[k] for k in good} == dict.fromkeys(good, "done")

    # Storage: each good episode's files, complete, each once; no partial or temporary
    # object anywhere and no unfinished multipart upload.
    objects = [o.removeprefix(PREFIX + "/") for o in report.objects]
    assert all(o.startswith(PREFIX + "/") for o in report.objects)
    assert len(objects) == len(set(objects))
    assert temp_objects(report.objects) == []
    assert report.multipart_uploads == []
    assert report.local_leftovers == []  # the runs' download staging and S3 read cache
    names = {k: k for k in map(key, plan.numbers)} | {str(n): key(n) for n in plan.numbers}
    by_episode: dict[str, set[str]] = {}
    for rel in objects:
        if rel.startswith("failures/"):
            continue
        episode = owner(rel, names)
        if episode is None:
            assert rel in {"feed/catalog.json", "speakers/registry.json"}, rel
            continue
        by_episode.setdefault(episode, set()).add(rel)
    for k in good:
        assert by_episode.get(k) == outputs(k), k
    # The bad episodes: their feed entry, and the corrupt one's audio (it downloaded fine).
    plan_files = {
        key(plan.corrupt): {"episodes", "audio"},
        key(plan.missing): {"episodes"},
    }
    for k, folders in plan_files.items():
        assert {rel.split("/")[0] for rel in by_episode.get(k, ())} == folders, by_episode.get(k)

    # Dagster: one successful run per good episode, whose RAG files were written once.
    for k in good:
        runs = report.runs_of(k)
        assert [r.status for r in runs].count("SUCCESS") == 1, (k, [r.status for r in runs])
        assert sum(r.materialised["rag_outputs"] for r in runs) == 1, k
        for failed in (r for r in runs if r.status != "SUCCESS"):
            attempts = {a.run_id: a for a in report.ledgers[k].attempts}
            assert attempts[failed.run_id].kind == "transient", attempts[failed.run_id]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_corrupt_and_the_404_episode_are_given_up_after_one_run(report: ChaosReport) -> None:
    plan = report.plan
    expected = {key(plan.corrupt): "decode", key(plan.missing): "HTTP 404"}
    for k, words in expected.items():
        status = report.statuses[k]
        assert (status.state.value, status.kind, status.attempts) == ("given_up", "permanent", 1)
        assert words in status.reason, status.reason
        (attempt,) = report.ledgers[k].attempts
        assert (attempt.kind, attempt.reason) == ("permanent", status.reason)
        (run,) = report.runs_of(k)
        assert run.status == "FAILURE"
        assert run.tags["twiml/failure_kind"] == "permanent"
        assert run.step_retries == []  # a permanent failure is not retried by the step
    # The first step that decodes the audio: its fingerprint, before any model runs.
    assert report.ledgers[key(plan.corrupt)].attempts[0].step == "audio_fingerprint"
    assert report.ledgers[key(plan.missing)].attempts[0].step == "raw_audio"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_no_pool_slot_leaks_and_no_episode_ran_twice(report: ChaosReport) -> None:
    assert report.pool_slots == 1
    assert report.pool_claimed == [] and report.pool_pending == []
    assert report.overlapping_runs() == []
    assert report.runs_after_done() == []
    # No good episode was requested again after it was done, by the sensor or a retry.
    done_keys = Counter(r.key for r in report.runs if r.status == "SUCCESS")
    assert max(done_keys.values()) == 1


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_killed_run_was_detected_retried_and_its_episode_done(report: ChaosReport) -> None:
    kill = report.kills[-1]
    runs = {r.run_id: r for r in report.runs}
    killed = runs[kill["run_id"]]
    assert killed.status == "FAILURE"
    assert "transcribe_and_diarise" in killed.steps_started
    assert "transcribe_and_diarise" not in killed.steps_succeeded
    assert any("terminated by signal 9" in m for m in killed.engine_messages), (
        killed.engine_messages
    )
    # The ledger has it as transient (the worker died; no step failed), saying how …
    (attempt,) = [a for a in report.ledgers[kill["key"]].attempts if a.run_id == killed.run_id]
    assert attempt.kind == "transient" and "signal 9 (SIGKILL)" in attempt.reason, attempt
    # … and a retry run (run_retries) or a sensor re-request finished the episode.
    later = [r for r in report.runs_of(kill["key"]) if r.created > killed.created]
    assert [r.status for r in later] == ["SUCCESS"]
    (retry,) = later
    assert (
        retry.tags.get("dagster/parent_run_id") == killed.run_id
        or int(retry.tags.get("twiml/attempt", 1)) == 2
    )
    assert report.statuses[kill["key"]].state.value == "done"


def test_the_fault_plan_is_drawn_from_the_seed() -> None:
    a, b = FaultPlan.draw(SETTINGS), FaultPlan.draw(ChaosSettings())
    assert a == b
    assert len(a.good) == 30 and len(a.unavailable) == 6 and len(a.cut_off) == 2
    assert not (a.unavailable & a.cut_off) and {a.corrupt, a.missing}.isdisjoint(a.good)
    assert FaultPlan.draw(ChaosSettings(seed=14)) != a
