"""``twiml-transcribe``: the single entry point that runs the engine without Dagster."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from resources.audio import AudioDecodeError
from resources.engine_check import EngineMissingError, require_engine
from resources.model_paths import ModelNotFoundError
from resources.model_registry import default_profile, profile_names
from resources.storage import StorageError, StorageResource
from twiml_assets.catchup.cli import add_catchup_parsers, cmd_retry, cmd_status
from twiml_assets.speakers.cli import add_speakers_parser, cmd_speakers

if TYPE_CHECKING:
    from resources.asr import WhisperASR

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]"
USER_ERRORS = (
    AudioDecodeError,
    EngineMissingError,
    ModelNotFoundError,
    StorageError,
    ValueError,
    OSError,
)
TRANSCRIBE_OPTIONS = ("key", "title", "description", "num_speakers", "min_speakers", "max_speakers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twiml-transcribe",
        description="Speaker-attributed transcripts with faster-whisper + pyannote.audio.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe one audio file or URL")
    t.add_argument("audio", help="audio file path or http(s) URL")
    t.add_argument("--out", required=True, help="output root (same layout as the storage root)")
    t.add_argument(
        "--profile", choices=profile_names(), help=f"named settings (default {default_profile()})"
    )
    t.add_argument("--model", help="whisper model name, hub id or local CTranslate2 dir")
    t.add_argument("--compute-type", help="int8, int8_float16, float16 or float32")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--beam-size", type=int)
    t.add_argument("--batched", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--language")
    t.add_argument("--diarisation", dest="pipeline", help="'offline', a hub id or a local path")
    t.add_argument("--num-speakers", type=int)
    t.add_argument("--min-speakers", type=int)
    t.add_argument("--max-speakers", type=int)
    t.add_argument("--key", help="episode key, e.g. ep-623 (default up-<sha256 of the audio>)")
    t.add_argument("--title", help="episode title (also used as the ASR prompt)")
    t.add_argument("--description", help="episode description (ASR prompt)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--sequential",
        action="store_true",
        help="diarise after transcribing instead of at the same time (less peak memory)",
    )

    c = sub.add_parser("compare", help="compare engine configurations on one recording")
    c.add_argument("audio", help="audio file, http(s) URL, or an episode key in the storage root")
    c.add_argument(
        "--configs",
        required=True,
        help="comma-separated profiles with optional overrides, e.g. "
        "cpu-dev,cpu-fast,cpu-dev:beam_size=1:compute_type=float32",
    )
    c.add_argument(
        "--reference", help="reference transcript (STM, RTTM, corrected.json, md, srt, vtt, txt)"
    )
    c.add_argument(
        "--out",
        help="storage root for comparisons/{key}.md/.csv (default: TWIML_STORAGE_ROOT or ./data)",
    )
    c.add_argument("--key", help="name of the report (default: the episode key or file hash)")

    add_speakers_parser(sub)
    add_catchup_parsers(sub)

    w = sub.add_parser("web", help="serve the web app (episodes, transcripts, uploads)")
    w.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    w.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    w.add_argument("--storage", help="storage root (default: TWIML_STORAGE_ROOT or ./data)")
    w.add_argument(
        "--dagster-url",
        help="Dagster GraphQL URL (default: DAGSTER_GRAPHQL_URL or http://127.0.0.1:3000/graphql)",
    )
    w.add_argument(
        "--max-upload-mb",
        type=float,
        help="largest upload in MiB (default: TWIML_WEB_MAX_UPLOAD_MB or 500)",
    )
    add_users_parser(sub)
    return parser


def add_users_parser(sub: Any) -> None:
    """``users add|remove|list``: the web app's staff accounts (twiml_assets/web/users_cli.py)."""
    u = sub.add_parser("users", help="manage the web app's sign-in accounts")
    u.add_argument("--file", help="users file (default: TWIML_WEB_USERS_FILE)")
    users = u.add_subparsers(dest="users_command", required=True)
    add = users.add_parser("add", help="add a user (the password is asked twice)")
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (scripts)"
    )
    add.add_argument("--max-upload-mb", type=float, help="this user's upload size limit")
    add.add_argument("--uploads-per-hour", type=int, help="this user's uploads per hour")
    add.add_argument("--replace", action="store_true", help="replace an existing user")
    users.add_parser("remove", help="remove a user").add_argument("name")
    users.add_parser("list", help="names and limits (never the hashes)")


def cmd_users(args: argparse.Namespace) -> int:
    from twiml_assets.web.users_cli import cmd_users as run

    return run(args)


def options(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """Those of ``names`` that the command defines, as keyword arguments (None means unset)."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def asr_from_args(args: argparse.Namespace) -> WhisperASR:
    """The ASR with the command line's overrides; what it leaves unset comes from the profile."""
    from resources.asr import WhisperASR

    return WhisperASR(**options(args, WhisperASR.model_fields))


def is_url(source: str) -> bool:
    """Whether ``source`` is an http(s) URL, to download, rather than a local path."""
    return urlparse(source).scheme in {"http", "https"}


def local_audio(source: str, directory: Path) -> Path:
    """``source`` as a local path: an http(s) URL is downloaded into ``directory`` first."""
    if not is_url(source):
        return Path(source)
    from twiml_assets.audio.download import download_audio

    name = Path(urlparse(source).path).name or "audio"
    return Path(download_audio(source, directory / name).path)


def progress_printer(enabled: bool) -> Callable[[str, float, float], None] | None:
    """A tqdm bar over seconds of audio, one per stage."""
    if not enabled:
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: float, total: float) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(
                total=round(total, 1),
                desc=f"{stage:>10}",
                unit="s audio",
                bar_format=BAR_FORMAT,
                position=len(bars),  # the stages run at the same time: one line each
            )
        bar.n = round(min(done, total), 1)
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def cmd_transcribe(args: argparse.Namespace) -> int:
    require_engine("twiml-transcribe transcribe runs the models in this process")
    from resources.diarisation import PyannoteDiariser
    from twiml_assets.speech.engine import transcribe_file

    asr = asr_from_args(args)
    diariser = PyannoteDiariser.for_profile(
        args.profile, pipeline=args.pipeline, device=args.device
    )
    storage = StorageResource(root=args.out)
    if is_url(args.audio):  # before the download; transcribe_file checks before decoding
        storage.check_writable()
    with tempfile.TemporaryDirectory(prefix="twiml-") as tmp:
        result = transcribe_file(
            local_audio(args.audio, Path(tmp)),
            storage,
            asr=asr,
            diariser=diariser,
            progress=progress_printer(not args.no_progress and sys.stderr.isatty()),
            overlap=not args.sequential,
            **options(args, TRANSCRIBE_OPTIONS),
        )
    t = result.transcript
    print(
        f"{result.key}: {t.duration:.1f} s, {len(t.speakers)} speaker(s), {len(t.words)} words, "
        f"real-time factor {result.real_time_factor:.3f}"
    )
    for name, uri in result.files.items():
        print(f"  {name:15s} {uri}")
    return 0


def resolve_audio(source: str, storage: StorageResource, tmp: Path) -> tuple[Path, str | None]:
    """A local audio path for a file, a URL, or an episode key with audio in storage."""
    path = local_audio(source, tmp)
    if path.exists():
        return path, None
    from twiml_assets.audio.download import audio_files

    matches = audio_files(storage, source)
    if not matches:
        raise AudioDecodeError(
            f"{source!r} is neither an audio file nor an episode with audio in "
            f"{storage.root}/audio; materialise its raw_audio asset first or pass a file"
        )
    return storage.local_path(matches[0]), source


def cmd_compare(args: argparse.Namespace) -> int:
    require_engine("twiml-transcribe compare runs the models in this process")
    from resources.audio import decode_audio
    from twiml_assets.keys import upload_key_for_file
    from twiml_assets.quality.compare import compare, parse_configs, write_report

    configs = parse_configs(args.configs)
    storage = StorageResource(root=args.out) if args.out else StorageResource()
    references = []
    if args.reference:
        from evaluation.loaders import load_reference

        references = [(Path(args.reference), load_reference(args.reference))]
    with tempfile.TemporaryDirectory(prefix="twiml-") as tmp:
        audio, episode_key = resolve_audio(args.audio, storage, Path(tmp))
        key = args.key or episode_key or upload_key_for_file(audio)
        waveform = decode_audio(audio, label=key)
    table = compare(waveform, configs, references)
    files = write_report(storage, key, table)
    print(Path(files["markdown"]).read_text() if storage.is_local else table.to_string())
    for name, uri in files.items():
        print(f"  {name:9s} {uri}")
    return 0 if (table["status"] == "ok").all() else 1


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the FastAPI app with uvicorn; settings from the environment, options on top."""
    import uvicorn

    from twiml_assets.audio.uploads import UploadLimits
    from twiml_assets.web import WebSettings, create_app

    settings = WebSettings.from_env(graphql_url=args.dagster_url, storage_root=args.storage)
    if args.max_upload_mb is not None:
        limits = UploadLimits(int(args.max_upload_mb * 1024 * 1024), settings.limits.types)
        settings = dataclasses.replace(settings, limits=limits)
    logging.getLogger("twiml_assets").setLevel(logging.INFO)
    logging.getLogger("twiml.audit").setLevel(logging.INFO)
    print(f"twiml-transcribe web: http://{args.host}:{args.port}", file=sys.stderr)
    if settings.public_url is None and args.host not in {"127.0.0.1", "localhost", "::1"}:
        print(
            "note: without TWIML_WEB_PUBLIC_URL the app answers only to loopback host names "
            "(localhost, 127.0.0.1); set it to the address people open",
            file=sys.stderr,
        )
    # proxy_headers off: the app itself believes X-Forwarded-* only from
    # TWIML_WEB_TRUSTED_PROXIES, and needs the real peer address to decide that.
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="info",
        proxy_headers=False,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from dotenv import load_dotenv

    args = build_parser().parse_args(argv)
    # Credentials (S3, HF_TOKEN) from a git-ignored .env, as `dagster dev` reads them.
    load_dotenv(Path.cwd() / ".env", override=False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handlers = {
        "transcribe": cmd_transcribe,
        "compare": cmd_compare,
        "web": cmd_web,
        "speakers": cmd_speakers,
        "status": cmd_status,
        "retry": cmd_retry,
        "users": cmd_users,
    }
    try:
        return handlers[args.command](args)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
