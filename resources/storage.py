"""One storage layout under one root: a local directory (default) or ``s3://bucket/prefix``.

Every writer in the project goes through :class:`StorageResource` with paths relative
to the root (``transcripts/623.corrected.json``), so the local and the S3 layouts are
the same by construction. Writes are atomic: a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field


class StorageError(RuntimeError):
    """A read or write under the storage root failed; the message says which path."""


def default_root() -> str:
    return os.environ.get("TWIML_STORAGE_ROOT", "data")


def clean_relpath(relpath: str) -> str:
    """Reject absolute paths and ``..`` so nothing is read or written outside the root."""
    path = PurePosixPath(relpath.replace("\\", "/"))
    if path.is_absolute() or any(part in {"..", ""} for part in path.parts) or not path.parts:
        raise StorageError(f"invalid storage path {relpath!r}: must be relative, without '..'")
    return str(path)


class StorageResource(ConfigurableResource):
    """Read and write the project's files under ``root`` (local dir; S3 support: see docs)."""

    root: str = Field(
        default_factory=default_root,
        description="Local directory or s3://bucket/prefix (env TWIML_STORAGE_ROOT).",
    )

    # -- paths -------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return not self.root.startswith("s3://")

    def _local(self, relpath: str) -> Path:
        if not self.is_local:
            raise StorageError(f"S3 storage is not available in this build (root {self.root})")
        return Path(self.root).expanduser() / clean_relpath(relpath)

    def uri(self, relpath: str) -> str:
        """Where a file lives, for logs and Dagster metadata."""
        if self.is_local:
            return str(self._local(relpath).resolve())
        return f"{self.root.rstrip('/')}/{clean_relpath(relpath)}"

    def local_path(self, relpath: str) -> Path:
        """A local file path to read ``relpath`` from (e.g. for audio decoders)."""
        path = self._local(relpath)
        if not path.exists():
            raise StorageError(f"not found in storage: {self.uri(relpath)}")
        return path

    # -- writes ------------------------------------------------------------------------
    def write_bytes(self, relpath: str, data: bytes) -> str:
        target = self._local(relpath)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        return self.uri(relpath)

    def write_text(self, relpath: str, text: str) -> str:
        return self.write_bytes(relpath, text.encode("utf-8"))

    def write_json(self, relpath: str, obj: Any) -> str:
        return self.write_text(relpath, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")

    def put_file(self, relpath: str, source: str | Path) -> str:
        """Copy a local file in atomically (large audio: no full read into memory)."""
        target = self._local(relpath)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        return self.uri(relpath)

    # -- reads -------------------------------------------------------------------------
    def exists(self, relpath: str) -> bool:
        return self._local(relpath).exists()

    def read_bytes(self, relpath: str) -> bytes:
        try:
            return self._local(relpath).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"not found in storage: {self.uri(relpath)}") from exc

    def read_text(self, relpath: str) -> str:
        return self.read_bytes(relpath).decode("utf-8")

    def read_json(self, relpath: str) -> Any:
        return json.loads(self.read_text(relpath))

    def list(self, prefix: str = "") -> Iterator[str]:
        """Relative paths of files under ``prefix`` (sorted; hidden temp files skipped)."""
        base = Path(self.root).expanduser()
        start = base / clean_relpath(prefix) if prefix else base
        if not start.exists():
            return iter(())
        paths = (
            p.relative_to(base).as_posix()
            for p in start.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        return iter(sorted(paths))

    def delete(self, relpath: str) -> None:
        self._local(relpath).unlink(missing_ok=True)
