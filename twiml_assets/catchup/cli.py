"""``twiml-transcribe status`` and ``twiml-transcribe retry``: the catch-up for operators.

``status`` lists each episode's state from storage (done, failed, given up) and, when
``DAGSTER_HOME`` points at the instance, what is queued or running. ``retry`` starts a
given-up episode's attempt count again after a fix; the feed sensor requests it on its
next tick (a run from the UI or a backfill works too, at once).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

from resources.storage import StorageResource
from twiml_assets.catchup import ledger
from twiml_assets.catchup.status import EpisodeState, RetryRules, episode_statuses
from twiml_assets.feed.catalog import load_catalog
from twiml_assets.settings import PlatformSettings


def add_catchup_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("status", help="each episode's state: done, failed (why), given up")
    s.add_argument("--storage", help="storage root (default: TWIML_STORAGE_ROOT or ./data)")
    s.add_argument("--all", action="store_true", help="list every episode, not only failures")
    r = sub.add_parser("retry", help="try given-up or failed episodes again after a fix")
    r.add_argument("--storage", help="storage root (default: TWIML_STORAGE_ROOT or ./data)")
    r.add_argument("keys", nargs="*", help="episode keys, e.g. ep-623")
    r.add_argument("--all-given-up", action="store_true", help="every given-up episode")


def _context(args: argparse.Namespace):
    storage = StorageResource(root=args.storage) if args.storage else StorageResource()
    settings = PlatformSettings.from_env()
    return storage, RetryRules(settings.max_attempts, settings.retry_cooldown)


def _instance():
    """The Dagster instance of ``DAGSTER_HOME``, if set (for queued and running runs)."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    from dagster import DagsterInstance

    return DagsterInstance.get()


def cmd_status(args: argparse.Namespace) -> int:
    storage, rules = _context(args)
    catalog = load_catalog(storage)
    keys = sorted({e.key for e in catalog[0].episodes} if catalog else set())
    instance = _instance()
    statuses = episode_statuses(instance, storage, rules, keys or None)
    counts = Counter(s.state.value for s in statuses.values())
    print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no episodes")
    if instance is None:
        print("(set DAGSTER_HOME to see queued and running runs)", file=sys.stderr)
    shown = [
        s
        for s in statuses.values()
        if args.all or s.state in (EpisodeState.FAILED, EpisodeState.GIVEN_UP)
    ]
    for s in shown:
        print(f"{s.key}\t{s.label}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    storage, rules = _context(args)
    keys = list(args.keys)
    if args.all_given_up:
        keys += [
            k
            for k, s in episode_statuses(None, storage, rules).items()
            if s.state is EpisodeState.GIVEN_UP and k not in keys
        ]
    if not keys:
        print("error: name episode keys or --all-given-up", file=sys.stderr)
        return 2
    for key in keys:
        entry = ledger.retry(storage, key)
        if entry is None:
            print(f"{key}: no failure recorded; nothing to retry")
        else:
            print(
                f"{key}: attempts start again ({len(entry.attempts)} earlier failure(s) kept); "
                "the feed sensor requests it on its next tick"
            )
    return 0
