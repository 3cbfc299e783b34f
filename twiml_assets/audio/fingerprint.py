"""Chromaprint fingerprints of whole episodes: computed once, stored next to the audio.

An upload (the pre-release master: WAV or high-bitrate) and the feed's MP3 (re-encoded,
with intro, ads and outro) never share a sha256, but they share a fingerprint: chromaprint's
items (one 32-bit word per ≈0.124 s of audio) survive re-encoding, resampling, down-mixing
and gain, so ``twiml_assets.audio.linking`` can align the two whatever was added or cut.

Audio is decoded by our ffmpeg to 11025 Hz mono s16le, the rate chromaprint works at, and
streamed through a pipe into libchromaprint (pyacoustid's ctypes ``Fingerprinter``) in
small chunks: memory stays bounded for a three-hour episode, and the whole file is used
(fpcalc stops at 120 s unless told otherwise).

Why not ``fpcalc FILE``: measured here, fpcalc 1.5.1 exits with status 3 "Error decoding
audio frame (End of file)" on ordinary ffmpeg-made MP3 and WAV files whenever it reads them
to the end (``-length 0``, or any file under its 120 s default) while still printing the
fingerprint, so its exit code cannot tell a good file from a broken one. Our ffmpeg
command line decodes instead: its exit status is reliable, and it reads every container the
uploads accept. (Transcription decodes in-process with PyAV at 16 kHz; fingerprints need
11025 Hz, and run once per file, before any model, so they do not share that decode.)
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from resources.audio import AudioDecodeError
from resources.storage import StorageError, StorageResource
from twiml_assets.keys import is_valid_key
from twiml_assets.layout import FINGERPRINTS_DIR, EpisodeFiles

log = logging.getLogger(__name__)

SAMPLE_RATE = 11_025
"""Chromaprint resamples everything to 11025 Hz; decoding straight to it saves the work."""
ITEM_SECONDS = 4096 / 3 / SAMPLE_RATE
"""Seconds between two chromaprint items: frames of 4096 samples every 4096/3 (≈0.12384 s)."""
ALGORITHM = 1
"""libchromaprint's CHROMAPRINT_ALGORITHM_TEST2 (enum value 1): its default, the one
AcoustID uses and calls "algorithm 2". The value stored is the one libchromaprint decodes."""
RECORD_VERSION = 1
CHUNK_BYTES = 1 << 16
"""Bytes of PCM per read from ffmpeg's pipe (≈3 s of audio): memory stays a few chunks."""
SETUP_HINT = (
    "libchromaprint is missing: install the Debian package libchromaprint1 "
    "(or libchromaprint-tools, which brings it and fpcalc; scripts/setup.sh does)"
)


class FingerprintDecodeError(AudioDecodeError):
    """The file cannot be decoded into audio to fingerprint (a permanent failure)."""


class FingerprintInterruptedError(RuntimeError):
    """ffmpeg was killed (a cancelled run, out of memory): the file may be fine, try again."""


class ChromaprintMissingError(RuntimeError):
    """libchromaprint is not installed: a set-up problem, not a problem of the file."""


def _chromaprint() -> ModuleType:
    """pyacoustid's ctypes wrapper; it raises ImportError at import when the library is absent."""
    try:
        import chromaprint
    except ImportError as exc:
        raise ChromaprintMissingError(f"{SETUP_HINT} ({exc})") from exc
    return chromaprint


@dataclass(frozen=True)
class Fingerprint:
    """Raw chromaprint items of one audio file, and the seconds of audio they came from."""

    items: np.ndarray
    duration: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", np.ascontiguousarray(self.items, dtype=np.uint32))

    @property
    def seconds(self) -> float:
        """The audio the items cover (a little shorter than ``duration``)."""
        return len(self.items) * ITEM_SECONDS

    def to_json(self) -> dict[str, Any]:
        """The stored record: chromaprint's compressed base64 string (≈1/3 of the raw items)."""
        encoded = b""
        if len(self.items):
            cp = _chromaprint()
            encoded = cp.encode_fingerprint(self.items.tolist(), ALGORITHM, base64=True)
        return {
            "version": RECORD_VERSION,
            "algorithm": ALGORITHM,
            "duration": round(float(self.duration), 3),
            "items": len(self.items),
            "fingerprint": encoded.decode("ascii"),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Fingerprint:
        """Inverse of ``to_json``; a ValueError for a record of another version or algorithm."""
        if not isinstance(record, dict):
            raise ValueError(f"a fingerprint record is a JSON object, not {type(record).__name__}")
        if record.get("version") != RECORD_VERSION:
            raise ValueError(f"unsupported fingerprint record version: {record.get('version')!r}")
        n = int(record["items"])
        if n == 0:
            items = np.zeros(0, dtype=np.uint32)
        else:
            cp = _chromaprint()
            try:
                raw, algorithm = cp.decode_fingerprint(record["fingerprint"].encode("ascii"))
            except cp.FingerprintError as exc:
                raise ValueError(
                    "corrupt fingerprint record: chromaprint cannot decode it"
                ) from exc
            if algorithm != record.get("algorithm", ALGORITHM):
                raise ValueError(f"fingerprint algorithm {algorithm} != {record['algorithm']}")
            items = np.asarray(raw, dtype=np.uint32)
        if len(items) != n:
            raise ValueError(f"fingerprint record says {n} items, decodes to {len(items)}")
        return cls(items=items, duration=float(record["duration"]))


def fingerprint_file(path: str | Path) -> Fingerprint:
    """Fingerprint the whole file, decoded by ffmpeg and streamed into libchromaprint."""
    cp = _chromaprint()
    path = Path(path)
    if not path.is_file():
        raise FingerprintDecodeError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise FingerprintDecodeError(f"audio file is empty (0 bytes): {path}")
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn", "-map", "0:a:0"]
    command += ["-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    fingerprinter = cp.Fingerprinter(ALGORITHM)
    fingerprinter.start(SAMPLE_RATE, 1)
    samples = 0
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: ffmpeg never blocks on it
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        except FileNotFoundError as exc:
            raise ChromaprintMissingError("ffmpeg is not installed (apt install ffmpeg)") from exc
        assert proc.stdout is not None
        with proc:
            odd = b""
            while chunk := proc.stdout.read(CHUNK_BYTES):
                chunk, odd = _whole_samples(odd + chunk)
                if chunk:
                    fingerprinter.feed(chunk)
                    samples += len(chunk) // 2
        errors.seek(0)
        message = errors.read().decode("utf-8", "replace").strip()
    if proc.returncode < 0:
        raise FingerprintInterruptedError(
            f"ffmpeg was killed by signal {-proc.returncode} while fingerprinting {path}"
        )
    if proc.returncode != 0:
        detail = message.splitlines()[-1] if message else f"ffmpeg exit status {proc.returncode}"
        raise FingerprintDecodeError(f"cannot decode {path} to fingerprint it: {detail}")
    if samples == 0:
        raise FingerprintDecodeError(f"{path} contains no decodable audio samples")
    try:
        compressed = fingerprinter.finish()
        raw, _ = cp.decode_fingerprint(compressed) if compressed else ([], ALGORITHM)
    except cp.FingerprintError as exc:
        raise FingerprintDecodeError(f"chromaprint failed on {path}") from exc
    return Fingerprint(items=np.asarray(raw, dtype=np.uint32), duration=samples / SAMPLE_RATE)


def _whole_samples(data: bytes) -> tuple[bytes, bytes]:
    """Split off a trailing odd byte (a pipe read may end mid-sample)."""
    cut = len(data) - len(data) % 2
    return data[:cut], data[cut:]


# -- storage -------------------------------------------------------------------------------


def fingerprint_path(key: str) -> str:
    """Where an episode's (or upload's) fingerprint record is stored."""
    return EpisodeFiles(key).fingerprint


def store_fingerprint(
    storage: StorageResource, key: str, fp: Fingerprint, sha256: str | None = None
) -> str:
    """Write the record (atomically: StorageResource writes a temp file and renames), with
    the sha256 of the audio it was computed from, so it is computed once per file."""
    record = fp.to_json() if sha256 is None else {**fp.to_json(), "sha256": sha256}
    return storage.write_json(fingerprint_path(key), record)


def load_fingerprint(storage: StorageResource, key: str) -> Fingerprint | None:
    """The stored fingerprint of ``key``, or None when there is none."""
    rel = fingerprint_path(key)
    if not storage.exists(rel):
        return None
    return Fingerprint.from_json(storage.read_json(rel))


def load_all_fingerprints(
    storage: StorageResource,
    wanted: Callable[[str], bool] = lambda key: True,
    known: Container[str] = (),
) -> dict[str, Fingerprint]:
    """The stored fingerprints of the ``wanted`` keys not already ``known``, by key;
    unreadable records are skipped with a warning (one bad file never blocks a match)."""
    found: dict[str, Fingerprint] = {}
    for rel in storage.list(FINGERPRINTS_DIR):
        name = rel.rsplit("/", 1)[-1]
        key = name.removesuffix(".json")
        if not name.endswith(".json") or not is_valid_key(key) or key in known:
            continue
        if not wanted(key):
            continue
        try:
            found[key] = Fingerprint.from_json(storage.read_json(rel))
        except (StorageError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unreadable fingerprint %s: %s", rel, exc)
    return found
