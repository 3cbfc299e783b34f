"""The chaos catch-up: the daemon catching up a faulty feed into a stalling S3 server.

A generated feed (real HTTP) whose first audio GETs fail (503, or cut off mid-body) for a
seeded share of the episodes, one corrupt episode and one 404 enclosure; storage on a moto
S3 server that is stopped for a while mid catch-up; one run worker SIGKILLed during the
model step. Prints what the catch-up did: episodes done and given up, the retries each
fault caused (seen by the HTTP server, the event log and the run list), the time to settle
and the duplicate runs. The same harness (tests/chaos_harness.py) backs
tests/test_catchup_chaos.py, which asserts on it.

The test runs the model step with stand-in models (tests/standin_models.py); this
benchmark runs the real ones unless ``--models standin`` (the test's set-up) is given.

.venv/bin/python bench/chaos_catchup.py [--good 30] [--seed 13] [--models real|standin]
    [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos_harness import ChaosSettings, run_chaos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ChaosSettings()
    parser.add_argument("--good", type=int, default=defaults.good, help="good episodes")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--stall", type=float, default=defaults.s3_stall_seconds)
    parser.add_argument("--stall-after", type=int, default=defaults.stall_after_done)
    parser.add_argument("--cooldown", type=float, default=defaults.retry_cooldown)
    parser.add_argument(
        "--models",
        choices=("real", "standin"),
        default="real",
        help="the real models (default) or the test's stand-ins (tests/standin_models.py)",
    )
    parser.add_argument("--workdir", type=Path, help="keep logs and the instance here")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no timeline while it runs")
    args = parser.parse_args()
    settings = replace(
        defaults,
        good=args.good,
        seed=args.seed,
        s3_stall_seconds=args.stall,
        stall_after_done=args.stall_after,
        retry_cooldown=args.cooldown,
        standin_models=args.models == "standin",
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    started = time.time()
    report = run_chaos(workdir, settings, log=(lambda _: None) if args.quiet else print)
    figures = report.figures()
    figures["wall_seconds"] = round(time.time() - started)
    figures["workdir"] = str(workdir)
    print()
    for name, value in figures.items():
        print(f"{name:34} {value}")
    for kill in report.kills:
        print(
            f"killed {kill['key']} run {kill['run_id'][:8]}: {kill.get('status')}, "
            f"in model step {kill['landed']}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
