"""``twiml-transcribe speakers …``: enrol voices, confirm or rename a speaker, re-name.

Kept apart from ``twiml_assets/cli.py`` so the main CLI only registers the subcommand.
Every command that changes names re-renders the episode's RAG files and subtitles, so
the files on disk always agree with ``speakers/{key}.json``.
"""

from __future__ import annotations

import argparse
import sys

from resources.storage import StorageResource
from twiml_assets.speakers import service


def add_speakers_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("speakers", help="speaker names: enrol voices, confirm, re-name")
    s.add_argument("--storage", help="storage root (default: TWIML_STORAGE_ROOT or ./data)")
    ss = s.add_subparsers(dest="speakers_command", required=True)
    e = ss.add_parser("enroll", help="add a known voice from single-speaker recordings")
    e.add_argument("name")
    e.add_argument("audio", nargs="+", help="audio files with only this voice")
    c = ss.add_parser("confirm", help="name one speaker of one episode (updates the registry)")
    c.add_argument("key", help="episode key, e.g. ep-623")
    c.add_argument("label", help="diarisation label, e.g. SPEAKER_01")
    c.add_argument("name")
    n = ss.add_parser("name", help="name episodes again from stored voiceprints")
    n.add_argument("keys", nargs="+")
    n.add_argument("--host-name", help="name of the recurring (host) voice")
    ss.add_parser("list", help="the registered voices")


def cmd_speakers(args: argparse.Namespace) -> int:
    storage = StorageResource(root=args.storage) if args.storage else StorageResource()
    try:
        if args.speakers_command == "enroll":
            voice = service.enroll(storage, args.name, args.audio)
            print(f"enrolled {args.name!r} from {voice.seconds:.1f} s of speech")
        elif args.speakers_command == "confirm":
            doc = service.confirm(storage, args.key, args.label, args.name)
            _report(storage, args.key, doc)
        elif args.speakers_command == "name":
            settings = service.NamingSettings(host_name=args.host_name)
            for key in args.keys:
                _report(storage, key, service.name_episode(storage, key, settings))
        else:
            registry = service.load_registry(storage)
            for name in registry.names():
                sources = registry.speakers[name]
                seconds = sum(s.voice.seconds for s in sources)
                print(f"{name}\t{len(sources)} source(s)\t{seconds:.0f} s")
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _report(storage: StorageResource, key: str, doc: dict) -> None:
    service.render_outputs(storage, key)
    for label, entry in doc["speakers"].items():
        name = entry["name"] or f"({label})"
        print(f"{key}\t{label}\t{name}\t{entry['confidence']:.2f}\t{entry['evidence']}")
