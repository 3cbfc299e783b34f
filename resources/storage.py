"""One storage layout under one root: a local directory (default) or ``s3://bucket/prefix``.

Every writer goes through :class:`StorageResource` with paths relative to the root
(``transcripts/623.corrected.json``), so the local and the S3 layouts are the same by
construction. Writes are atomic: a reader never sees half a file. Callers about to spend
minutes of compute call :meth:`StorageResource.check_writable` first, so a root that cannot
take the outputs fails before the work, not after it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from resources.environment import environment


class StorageError(RuntimeError):
    """A read or write under the storage root failed; the message says which path."""


class StorageUnavailableError(StorageError):
    """The storage could not be reached (network, server down): retrying may succeed."""


WRITE_CHECK = ".twiml-write-check"
"""Name of the probe :meth:`StorageResource.check_writable` writes and removes; hidden, so
``list`` skips it should a removal ever fail."""


def clean_relpath(relpath: str) -> str:
    """Reject absolute paths and ``..`` so nothing is read or written outside the root."""
    path = PurePosixPath(relpath.replace("\\", "/"))
    if path.is_absolute() or not path.parts or any(p in {"..", "", "."} for p in path.parts):
        raise StorageError(f"invalid storage path {relpath!r}: must be relative, without '..'")
    return str(path)


def write_atomically(target: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``target`` through a temporary file in its directory, fsynced and
    renamed over it, so a reader sees the old file or the new one, never a part.
    ``mode`` (e.g. 0o600) is set before any byte is written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalBackend:
    """A directory on this machine; atomic writes by temp file + fsync + rename."""

    def __init__(self, root: str):
        self.base = Path(root).expanduser()

    def path(self, rel: str) -> Path:
        return self.base / rel

    def uri(self, rel: str) -> str:
        return str(self.path(rel).resolve())

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, data)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc

    def put_file(self, rel: str, source: Path) -> None:
        target = self.path(rel)
        if Path(source).resolve() == target.resolve():
            return
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.path(rel).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"not found in storage: {self.uri(rel)}") from exc

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def list(self, prefix: str) -> list[str]:
        start = self.path(prefix) if prefix else self.base
        return [p.relative_to(self.base).as_posix() for p in start.rglob("*") if p.is_file()]

    def delete(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def check_writable(self) -> None:
        """Create the root and write, sync and remove a probe file in it, as writes do
        (a unique temporary name: concurrent runs never meet)."""
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=f"{WRITE_CHECK}.", suffix=".part", dir=self.base)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            reason = "it is a file" if self.base.is_file() else exc.strerror or str(exc)
            raise StorageError(
                f"cannot write to storage root {self.base}: {reason}; "
                "give a directory this user may write (--out or TWIML_STORAGE_ROOT)"
            ) from exc

    def local_path(self, rel: str) -> Path:
        path = self.path(rel)
        if not path.is_file():
            raise StorageError(f"not found in storage: {self.uri(rel)}")
        return path


S3_ATTEMPTS = 5
"""Tries per S3 call (botocore's standard mode: exponential backoff with jitter)."""


@lru_cache(maxsize=8)
def s3_client(
    endpoint_url: str | None,
    region_name: str | None,
    profile_name: str | None,
    access_key: str | None,
    secret_key: str | None,
    timeout: float = 60.0,
) -> Any:
    """One boto3 client per settings and keys per process (clients are thread-safe, costly).

    Built as dagster-aws's ``S3Resource`` builds it (a session, standard-mode retries),
    plus timeouts: a stalled server then fails a call after ``timeout`` seconds and
    botocore retries it, instead of holding a step for minutes. What still fails after
    the retries is a ``StorageUnavailableError``, a transient failure the step's retry
    policy and the sensor try again.
    """
    import boto3
    from botocore.config import Config
    from dagster_aws.utils import construct_boto_client_retry_config

    config = construct_boto_client_retry_config(S3_ATTEMPTS).merge(
        Config(connect_timeout=min(10.0, timeout), read_timeout=timeout)
    )
    return boto3.session.Session(profile_name=profile_name).client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region_name,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )


class S3Backend:
    """``s3://bucket/prefix`` through a boto3 client (any S3-compatible server).

    PutObject and completed multipart uploads are atomic: an interrupted upload leaves no
    object under the key, so a reader never takes a partial file as complete.
    """

    def __init__(self, root: str, client: Any, cache_dir: Path):
        bucket, _, prefix = root.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"invalid S3 root {root!r}: expected s3://bucket[/prefix]")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client, self.cache_dir = client, cache_dir

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def uri(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.key(rel)}"

    @contextmanager
    def _errors(self, what: str, rel: str) -> Iterator[None]:
        """S3 failures as ``StorageError``; only those a retry may fix as unavailable."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            uri = self.uri(rel)
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise StorageError(f"not found in storage: {uri}") from exc
            if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}:
                raise StorageError(
                    f"S3 refused to {what} {uri} ({code}): check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY (in .env) and that these credentials may "
                    f"{'write' if what == 'write' else 'read'} this bucket"
                ) from exc
            if code == "NoSuchBucket":
                raise StorageError(
                    f"S3 bucket {self.bucket!r} does not exist ({uri}): create it or fix the "
                    "storage root"
                ) from exc
            raise StorageUnavailableError(f"S3 error during {what} of {uri}: {exc}") from exc
        except NoCredentialsError as exc:  # no keys anywhere: a retry cannot help
            raise StorageError(
                f"no S3 credentials to {what} {self.uri(rel)}: set AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (in .env) or an AWS profile"
            ) from exc
        except BotoCoreError as exc:  # connection failures, timeouts
            raise StorageUnavailableError(
                f"cannot reach S3 to {what} {self.uri(rel)}: {exc}; the run can be retried"
            ) from exc

    def _object(self, what: str, call: Any, rel: str, **kwargs: Any) -> Any:
        """One client call on the object at ``rel``."""
        with self._errors(what, rel):
            return call(Bucket=self.bucket, Key=self.key(rel), **kwargs)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._object("write", self.client.put_object, rel, Body=data)

    def put_file(self, rel: str, source: Path) -> None:
        self._object("write", self.client.upload_file, rel, Filename=str(source))

    def read_bytes(self, rel: str) -> bytes:
        return self._object("read", self.client.get_object, rel)["Body"].read()

    def exists(self, rel: str) -> bool:
        try:
            self._object("read", self.client.head_object, rel)
        except StorageError as exc:
            if str(exc).startswith("not found"):
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        base = f"{self.prefix}/" if self.prefix else ""
        with self._errors("list", prefix or "."):
            pages = list(paginator.paginate(Bucket=self.bucket, Prefix=base + prefix))
        return [obj["Key"][len(base) :] for page in pages for obj in page.get("Contents", [])]

    def delete(self, rel: str) -> None:
        self._object("delete", self.client.delete_object, rel)

    def check_writable(self) -> None:
        """Put, then delete, an empty probe object under the prefix: two small requests,
        under the client's timeouts and retries, that prove the endpoint answers, the
        bucket exists and these credentials may write there.

        A refused delete is let pass: writing is what the outputs need, and the hidden
        probe left behind is one empty object that ``list`` skips.
        """
        try:
            self.write_bytes(WRITE_CHECK, b"")
            try:
                self.delete(WRITE_CHECK)
            except StorageUnavailableError:
                raise
            except StorageError:
                pass
        except StorageUnavailableError as exc:
            endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", "S3")
            raise StorageUnavailableError(
                f"cannot write to storage root {self.root} through S3 at {endpoint}: "
                f"{exc.__cause__ or exc}; check that the server is up and the endpoint "
                "(TWIML_S3_ENDPOINT_URL), then retry"
            ) from exc

    def local_path(self, rel: str) -> Path:
        """Download once into a local cache (audio decoders need a file), atomically."""
        target = self.cache_dir / self.bucket / self.key(rel)
        size = self._object("read", self.client.head_object, rel)["ContentLength"]
        if target.is_file() and target.stat().st_size == size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        self._object("read", self.client.download_file, rel, Filename=str(tmp))
        os.replace(tmp, target)
        return target


class StorageResource(ConfigurableResource):
    """Read and write the project's files under ``root``: a local dir or s3://bucket/prefix.

    S3 credentials follow boto3's usual chain (env vars, e.g. from a git-ignored
    ``.env``, or a named profile); leave the key fields empty to use it, so secrets
    never sit in Dagster config.
    """

    root: str = Field(
        default_factory=lambda: environment().storage_root,
        description="Local directory or s3://bucket/prefix (env TWIML_STORAGE_ROOT).",
    )
    endpoint_url: str | None = Field(
        default_factory=lambda: environment().s3_endpoint_url,
        description="S3-compatible endpoint (MinIO, R2, …); env TWIML_S3_ENDPOINT_URL.",
    )
    region_name: str | None = Field(
        default=None, description="AWS region (env AWS_DEFAULT_REGION)."
    )
    profile_name: str | None = Field(default=None, description="AWS shared-credentials profile.")
    cache_dir: str | None = Field(default=None, description="Local cache for S3 reads (audio).")
    timeout_seconds: float = Field(
        default_factory=lambda: environment().s3_timeout,
        gt=0,
        description="Longest wait for one S3 answer before botocore retries "
        "(env TWIML_S3_TIMEOUT).",
    )

    @property
    def is_local(self) -> bool:
        return not self.root.startswith("s3://")

    def backend(self) -> LocalBackend | S3Backend:
        if self.is_local:
            return LocalBackend(self.root)
        env = environment()
        client = s3_client(
            self.endpoint_url,
            self.region_name or env.aws_region,
            self.profile_name,
            env.aws_access_key_id,
            env.aws_secret_access_key,
            self.timeout_seconds,
        )
        cache = Path(self.cache_dir or Path(tempfile.gettempdir()) / "twiml-transcribe-s3")
        return S3Backend(self.root, client, cache)

    def check_writable(self) -> None:
        """Prove the root can take the outputs before minutes of decoding and models are
        spent on them: a cheap probe write, removed again.

        Raises ``StorageUnavailableError`` when the storage cannot be reached (retrying
        may succeed: a transient failure) and ``StorageError`` when a person must act (a
        file as the root, no such bucket, access refused); the message names the root.
        """
        self.backend().check_writable()

    def uri(self, relpath: str) -> str:
        """Where a file lives, for logs and Dagster metadata."""
        return self.backend().uri(clean_relpath(relpath))

    def local_path(self, relpath: str) -> Path:
        """A local file to read ``relpath`` from (S3: downloaded once into a cache)."""
        return self.backend().local_path(clean_relpath(relpath))

    def write_bytes(self, relpath: str, data: bytes) -> str:
        rel, backend = clean_relpath(relpath), self.backend()
        backend.write_bytes(rel, data)
        return backend.uri(rel)

    def write_text(self, relpath: str, text: str) -> str:
        return self.write_bytes(relpath, text.encode("utf-8"))

    def write_json(self, relpath: str, obj: Any) -> str:
        return self.write_text(relpath, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")

    def put_file(self, relpath: str, source: str | Path) -> str:
        """Copy a local file in atomically (large audio: never read whole into memory)."""
        rel, backend = clean_relpath(relpath), self.backend()
        backend.put_file(rel, Path(source))
        return backend.uri(rel)

    def exists(self, relpath: str) -> bool:
        return self.backend().exists(clean_relpath(relpath))

    def read_bytes(self, relpath: str) -> bytes:
        return self.backend().read_bytes(clean_relpath(relpath))

    def read_text(self, relpath: str) -> str:
        return self.read_bytes(relpath).decode("utf-8")

    def read_json(self, relpath: str) -> Any:
        return json.loads(self.read_text(relpath))

    def list(self, prefix: str = "") -> Iterator[str]:
        """Relative paths of files under ``prefix``, sorted; hidden temp files skipped."""
        paths = self.backend().list(clean_relpath(prefix) if prefix else "")
        return iter(sorted(p for p in paths if not PurePosixPath(p).name.startswith(".")))

    def delete(self, relpath: str) -> None:
        self.backend().delete(clean_relpath(relpath))
