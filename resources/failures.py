"""Transient or permanent: one classification for every failure of an episode's run.

Transient failures go away if we wait (HTTP 5xx and timeouts, S3 briefly down, a killed
or preempted worker): steps retry them with backoff (:data:`STEP_RETRY`) and the feed
sensor requests the episode again after a cool-down, a few times at most. Permanent ones
never do (404/410, not audio, undecodable, no speech, a reference that cannot be parsed):
they fail at once and are recorded with their reason until a person acts.

Steps raise :func:`permanent` / :func:`transient` ``dagster.Failure``s; the kind travels
in the failure's metadata, so the failure sensor reads it back from the run's events.
Errors raised without a kind are classified by exception class name (:func:`kind_of`),
which works on live exceptions and on the serialised ones of a run's event log alike.
Unknown errors count as transient: retried a bounded number of times, never given up on
at the first glitch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from dagster import Backoff, Failure, Jitter, RetryPolicy

Kind = Literal["transient", "permanent"]
MODEL_STEP_RETRY = RetryPolicy(
    max_retries=1, delay=10, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
"""The model step: one retry, since each one decodes and transcribes the episode again."""
KIND_KEY = "twiml/failure_kind"
"""Metadata key on a step's ``Failure`` and run tag on a failed run."""

STEP_RETRY = RetryPolicy(
    max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
"""I/O steps: about 5, 10 and 20 s (±50 %) between tries, 35 s of waiting in all; longer
than a storage server's restart or a CDN's brief 5xx storm, short enough to keep a run."""

TRANSIENT_ERRORS = frozenset(
    {
        # the standard library and requests/urllib3
        "TimeoutError",
        "ConnectionError",
        "ConnectionResetError",
        "ConnectionRefusedError",
        "ConnectionAbortedError",
        "BrokenPipeError",
        "Timeout",
        "ReadTimeout",
        "ConnectTimeout",
        "ChunkedEncodingError",
        "ProtocolError",
        "IncompleteRead",
        # boto3/botocore: the server is down, slow or throttling
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "StorageUnavailableError",
        # the run itself: a worker killed, a step interrupted
        "DagsterExecutionInterruptedError",
        "MemoryError",
    }
)
PERMANENT_ERRORS = frozenset(
    {
        "AudioDecodeError",
        "FingerprintDecodeError",  # an AudioDecodeError; named for serialised errors
        "ChromaprintMissingError",  # libchromaprint not installed (set-up)
        "NotAudioError",
        "DagsterAssetCheckFailedError",  # a blocking check: no speech, no speaker, no words
        "ReferenceFormatError",
        "SSLError",  # a refused certificate (before requests' ConnectionError in its MRO)
        "ModelNotFoundError",
        "ComputeSetupError",
        "ConfigError",
        "StorageError",  # not found, access refused, no such bucket (a person must act)
    }
)


@dataclass(frozen=True, slots=True)
class Classified:
    """What a failure is and why it happened, in words a person can act on."""

    kind: Kind
    reason: str

    @property
    def transient(self) -> bool:
        return self.kind == "transient"


def _failure(kind: Kind, reason: str, metadata: dict[str, Any] | None) -> Failure:
    return Failure(
        description=reason,
        metadata={KIND_KEY: kind, **(metadata or {})},
        allow_retries=kind == "transient",
    )


def permanent(reason: str, metadata: dict[str, Any] | None = None) -> Failure:
    """A failure no retry will fix: the step fails at once and the episode is given up."""
    return _failure("permanent", reason, metadata)


def transient(reason: str, metadata: dict[str, Any] | None = None) -> Failure:
    """A failure worth trying again: the step's retry policy and later the sensor do."""
    return _failure("transient", reason, metadata)


@contextmanager
def permanent_errors_fail_at_once() -> Iterator[None]:
    """Re-raise an error :func:`classify` calls permanent as a permanent ``Failure``, so the
    step's retry policy (which retries every other exception) does not repeat it."""
    try:
        yield
    except Failure:
        raise
    except Exception as exc:
        classified = classify(exc)
        if not classified.transient:
            raise permanent(classified.reason) from exc
        raise


def kind_of(class_names: Iterable[str]) -> Kind | None:
    """The kind of the first class name (most specific first) the tables know."""
    for name in class_names:
        if name in TRANSIENT_ERRORS:
            return "transient"
        if name in PERMANENT_ERRORS:
            return "permanent"
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its causes and contexts (``raise … from``), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException) -> Classified:
    """The kind of a live exception: its explicit kind, else its (or its causes') class."""
    if isinstance(exc, Failure):
        entry = exc.metadata.get(KIND_KEY) if exc.metadata else None
        kind = getattr(entry, "value", entry)
        if kind in ("transient", "permanent"):
            return Classified(kind, exc.description or str(exc))
        if not exc.allow_retries:
            return Classified("permanent", exc.description or str(exc))
    for link in _chain(exc):
        flag = getattr(link, "transient", None)  # DownloadError, http_policy.Failure
        if isinstance(flag, bool):
            return Classified("transient" if flag else "permanent", describe(exc))
        kind = kind_of(cls.__name__ for cls in type(link).__mro__)
        if kind is not None:
            return Classified(kind, describe(exc))
    return Classified("transient", describe(exc))


def classify_error_info(error: Any, metadata: dict[str, Any] | None = None) -> Classified:
    """The kind of a serialised error from a run's event log (``SerializableErrorInfo``),
    with the step failure's metadata when the step raised a ``dagster.Failure``."""
    entry = (metadata or {}).get(KIND_KEY)
    kind = getattr(entry, "value", getattr(entry, "text", entry))
    names, messages = [], []
    link = error
    while link is not None:
        names.append(getattr(link, "cls_name", None) or "")
        if not name_is_wrapper(names[-1]) and getattr(link, "message", None):
            messages.append(link.message)
        link = getattr(link, "cause", None) or getattr(link, "context", None)
    # The reason: the innermost real error, not Dagster's "Exceeded max_retries of 3" or
    # "Error occurred while executing op" around it.
    fallback = getattr(error, "message", "") or ""
    message = one_line(messages[-1] if messages else fallback)
    if kind in ("transient", "permanent"):
        return Classified(kind, one_line(fallback))
    return Classified(kind_of(names) or "transient", message)


WRAPPERS = frozenset(
    {
        "RetryRequestedFromPolicy",
        "DagsterExecutionStepExecutionError",
        "DagsterUserCodeExecutionError",
        "DagsterExecutionHandleOutputError",
        "DagsterExecutionLoadInputError",
    }
)


def name_is_wrapper(name: str) -> bool:
    """Dagster's exceptions that wrap the step's real error (their messages say nothing)."""
    return name in WRAPPERS


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line, at most 300 characters."""
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, Failure) else str(exc)
    return first_line(text)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (a multi-line error message joined), without the module path of
    its exception class (``dagster._core.errors.X: …`` → ``X: …``)."""
    joined = " ".join(str(text).split())
    head, sep, rest = joined.partition(": ")
    if sep and "." in head and " " not in head:
        joined = f"{head.rsplit('.', 1)[1]}: {rest}"
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, shortened to ``limit`` characters."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"
