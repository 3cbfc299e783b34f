"""Compute-backend benchmark: the model step in the run's process against a Pipes worker.

One generated episode (``twiml_assets.demo.synth_long``, cached like ``long_episode.py``'s)
is served from 127.0.0.1 and goes through the real ``episode_pipeline`` job once per
backend, each with its own storage root and ephemeral instance, in this one process. The
figures come from Dagster's own event log: the ``transcribe_and_diarise`` step's wall time
(for ``subprocess`` that includes starting the worker, importing the stack and loading the
models), its real-time factor, the ASR/diarisation times the step reported, the ratio to
``local``, and whether the two wrote the same transcript.

    .venv/bin/python bench/compute_backend.py                       # 10 min, cpu-dev
    .venv/bin/python bench/compute_backend.py --minutes 30 --profile gpu-offline
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from long_episode import CACHE, episode  # noqa: E402

STEP = "transcribe_and_diarise"


def run_backend(backend: str, audio: Path, profile: str, work: Path) -> dict[str, Any]:
    """One episode through the job with ``backend``; the step's figures from the event log."""
    from dagster import DagsterInstance

    from resources.compute import ComputeResource
    from resources.storage import StorageResource
    from twiml_assets.definitions import build_definitions
    from twiml_assets.demo.feed_server import DemoEpisode, render_rss
    from twiml_assets.demo.http_server import LocalHTTPServer
    from twiml_assets.feed.resource import FeedResource

    www = work / f"www-{backend}"
    www.mkdir(parents=True)
    shutil.copy(audio, www / "1.mp3")
    root = work / f"data-{backend}"
    with LocalHTTPServer(www) as server:
        size = (www / "1.mp3").stat().st_size
        item = DemoEpisode(
            1, "Bench episode #1", "", "1.mp3", size, 0.0, "Mon, 01 Jan 2024 10:00:00 +0000", "b-1"
        )
        (www / "feed.xml").write_bytes(render_rss([item], server.base_url))
        defs = build_definitions(
            resources={
                "feed": FeedResource(url=server.url("feed.xml")),
                "storage": StorageResource(root=str(root)),
                "compute": ComputeResource(backend=backend),
            },
            env={"TWIML_PROFILE": profile},
        )
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions("episodes", ["ep-1"])
            result = defs.resolve_job_def("episode_pipeline").execute_in_process(
                partition_key="ep-1", instance=instance, raise_on_error=False
            )
            events = [e for e in instance.all_logs(result.run_id) if e.dagster_event]
    if not result.success:
        failures = [e.message for e in result.all_events if e.is_failure]
        raise SystemExit(f"{backend}: the run failed: {failures}")
    times = {
        e.dagster_event.event_type_value: e.timestamp
        for e in events
        if e.step_key == STEP and e.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS")
    }
    meta = {
        m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
        for m in (
            e.dagster_event.event_specific_data.materialization
            for e in events
            if e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"
        )
    }
    duration = meta["transcript"]["duration_s"]
    step_seconds = times["STEP_SUCCESS"] - times["STEP_START"]
    return {
        "backend": backend,
        "audio_min": round(duration / 60, 1),
        "step_s": round(step_seconds, 1),
        "step_rtf": round(step_seconds / duration, 4),
        "asr_s": meta["transcript"]["asr_seconds"],
        "diarisation_s": meta["diarisation"]["diarisation_seconds"],
        "words": meta["transcript"]["words"],
        "corrected": (root / "transcripts/1.corrected.json").read_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--profile", default="cpu-dev")
    parser.add_argument("--backends", default="local,subprocess")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    audio, _ = episode(args.minutes, args.seed, 3, args.cache)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-compute-") as tmp:
        for backend in args.backends.split(","):
            rows.append(run_backend(backend.strip(), audio, args.profile, Path(tmp)))
    base = rows[0]
    reference = base["corrected"]
    print(f"profile {args.profile}, {base['audio_min']} min episode, one process per backend run")
    print("| backend | step s | step RTF | ASR s | diarisation s | words | / first | same |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        row["over_first"] = round(row["step_s"] / base["step_s"], 3)
        row["same_transcript"] = row.pop("corrected") == reference
        print(
            f"| {row['backend']} | {row['step_s']} | {row['step_rtf']} | {row['asr_s']} | "
            f"{row['diarisation_s']} | {row['words']} | {row['over_first']} | "
            f"{row['same_transcript']} |"
        )
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"peak RSS: this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
        f" MB, largest worker {children:.0f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
