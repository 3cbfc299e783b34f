"""Episode keys and the file names the RAG pipeline expects.

Keys are Dagster partition keys: short, lower-case, no commas or spaces (a comma
breaks backfills in the Dagster UI). The RAG pipeline names files by episode number.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_EPISODE_KEY = re.compile(r"^ep-(\d+(?:\.\d+)?)$")
_VALID_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
UPLOAD_PREFIX = "up-"


def rag_stem(key: str) -> str:
    """``{n}`` of the RAG layout: the episode number for ``ep-623`` (→ ``623``), else the key."""
    match = _EPISODE_KEY.match(key)
    return match.group(1) if match else key


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's sha256 (hex), read in chunks rather than into memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def upload_key(sha256: str) -> str:
    """``up-<first 12 hex of the audio's sha256>``: the key of an upload or a bare file."""
    return UPLOAD_PREFIX + sha256[:12]


def upload_key_for_file(path: str | Path) -> str:
    return upload_key(sha256_file(path))


def is_upload_key(key: str) -> bool:
    return key.startswith(UPLOAD_PREFIX)


def validate_key(key: str) -> str:
    if not _VALID_KEY.match(key):
        raise ValueError(
            f"invalid episode key {key!r}: use lower-case letters, digits, '.', '_' or '-' "
            "(no spaces or commas, at most 64 characters)"
        )
    return key


def is_valid_key(key: str) -> bool:
    return bool(_VALID_KEY.match(key))
