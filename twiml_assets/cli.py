"""``twiml-transcribe``: the single entry point that runs the engine without Dagster."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from resources.audio import AudioDecodeError
from resources.model_paths import ModelNotFoundError
from resources.model_registry import default_profile, profile_names
from resources.storage import StorageError
from twiml_assets.speakers.cli import add_speakers_parser, cmd_speakers

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]"
USER_ERRORS = (AudioDecodeError, ModelNotFoundError, StorageError, ValueError, OSError)


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
        default=None,
        help="storage root for comparisons/{key}.md/.csv (default: TWIML_STORAGE_ROOT or ./data)",
    )
    c.add_argument("--key", help="name of the report (default: the episode key or file hash)")

    add_speakers_parser(sub)

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
    return parser


def fetch_url(url: str, directory: Path) -> Path:
    """Download an http(s) URL to ``directory`` (streamed, atomic)."""
    from twiml_assets.audio.download import download_audio

    name = Path(urlparse(url).path).name or "audio"
    return Path(download_audio(url, directory / name).path)


def progress_printer(enabled: bool):  # noqa: ANN201 - returns a callback or None
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
                leave=True,
                bar_format=BAR_FORMAT,
            )
        bar.n = round(min(done, total), 1)
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def cmd_transcribe(args: argparse.Namespace) -> int:
    from resources.asr import WhisperASR
    from resources.diarisation import PyannoteDiariser
    from twiml_assets.speech.engine import transcribe_file

    asr = WhisperASR(
        profile=args.profile,
        model=args.model,
        compute_type=args.compute_type,
        device=args.device,
        beam_size=args.beam_size,
        batched=args.batched,
        batch_size=args.batch_size,
        language=args.language,
    )
    diariser = PyannoteDiariser.for_profile(
        args.profile, pipeline=args.pipeline, device=args.device
    )
    with tempfile.TemporaryDirectory(prefix="twiml-") as tmp:
        source = args.audio
        if urlparse(source).scheme in {"http", "https"}:
            source = fetch_url(source, Path(tmp))
        result = transcribe_file(
            source,
            args.out,
            asr=asr,
            diariser=diariser,
            key=args.key,
            title=args.title,
            description=args.description,
            num_speakers=args.num_speakers,
            min_speakers=args.min_speakers,
            max_speakers=args.max_speakers,
            progress=progress_printer(not args.no_progress and sys.stderr.isatty()),
        )
    t = result.transcript
    print(
        f"{result.key}: {t.duration:.1f} s, {len(t.speakers)} speaker(s), {len(t.words)} words, "
        f"real-time factor {result.real_time_factor:.3f}"
    )
    for name, uri in result.files.items():
        print(f"  {name:15s} {uri}")
    return 0


def resolve_audio(source: str, storage_root: str | None, tmp: Path) -> tuple[Path, str | None]:
    """A local audio path for a file, a URL, or an episode key with audio in storage."""
    if urlparse(source).scheme in {"http", "https"}:
        return fetch_url(source, tmp), None
    path = Path(source)
    if path.exists():
        return path, None
    from resources.storage import StorageResource

    storage = StorageResource(root=storage_root) if storage_root else StorageResource()
    matches = [p for p in storage.list("audio") if Path(p).stem == source]
    if not matches:
        raise AudioDecodeError(
            f"{source!r} is neither an audio file nor an episode with audio in "
            f"{storage.root}/audio; materialise its raw_audio asset first or pass a file"
        )
    return storage.local_path(matches[0]), source


def cmd_compare(args: argparse.Namespace) -> int:
    from resources.audio import decode_audio
    from resources.storage import StorageResource
    from twiml_assets.keys import upload_key_for_file
    from twiml_assets.quality.compare import compare, parse_configs, write_report

    configs = parse_configs(args.configs)
    references = []
    if args.reference:
        from evaluation.loaders import load_reference

        references = [(Path(args.reference), load_reference(args.reference))]
    with tempfile.TemporaryDirectory(prefix="twiml-") as tmp:
        audio, episode_key = resolve_audio(args.audio, args.out, Path(tmp))
        key = args.key or episode_key or upload_key_for_file(audio)
        waveform = decode_audio(audio, label=key)
    table = compare(waveform, configs, references)
    storage = StorageResource(root=args.out) if args.out else StorageResource()
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
        settings = WebSettings.from_env(
            graphql_url=args.dagster_url, storage_root=args.storage, limits=limits
        )
    logging.getLogger("twiml_assets").setLevel(logging.INFO)
    print(f"twiml-transcribe web: http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def load_dotenv_if_present() -> None:
    """Credentials (S3, HF_TOKEN) from a git-ignored ``.env``, as ``dagster dev`` does."""
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load_dotenv_if_present()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handlers = {
        "transcribe": cmd_transcribe,
        "compare": cmd_compare,
        "web": cmd_web,
        "speakers": cmd_speakers,
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
