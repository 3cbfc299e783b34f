"""The one HTTP policy for every fetch: the feed, episode audio and publisher transcripts.

Transient failures (5xx, 429, timeouts, refused or reset connections) go away if we wait;
permanent ones (404, 410, other 4xx) never do. :func:`session` retries only the first kind
(urllib3 ``Retry``, GET/HEAD only); :func:`describe` says which kind a failure is and what a
person can do about it. Make one session per fetch, so that ``budget`` counts from its start:
with a budget, the session holds a deadline that bounds everything the fetch does (retries and
their waits, each try's timeouts, and the body read through :meth:`Session.iter_body`).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import DecodeError, MaxRetryError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

USER_AGENT = "twiml-transcribe/0.1 (podcast transcription; +https://twimlai.com)"
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = (10.0, 60.0)
"""(connect, read) seconds; read is the longest silence, not the whole transfer."""
MIN_TRY_SECONDS = 0.5
"""With a deadline, no try starts with less time than this left: it could not succeed."""

# urllib3 2 added jitter and a configurable backoff cap; 1.26 only has its fixed 120 s cap.
_URLLIB3_2 = "backoff_jitter" in inspect.signature(Retry).parameters


def _left(deadline: float | None) -> float:
    """Seconds until ``deadline`` (monotonic); infinite without one."""
    return math.inf if deadline is None else deadline - time.monotonic()


class DeadlineExceeded(requests.Timeout):
    """The session's budget ran out while the body was still arriving (a trickling server)."""


class _Retry(Retry):
    """``Retry`` bounded by ``deadline`` (monotonic): no wait (backoff or ``Retry-After``, both
    capped at ``backoff_max``) runs into the last ``MIN_TRY_SECONDS``, and no retry starts in
    them."""

    def __init__(self, *args: Any, deadline: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    @property
    def _cap(self) -> float:
        return getattr(self, "backoff_max", Retry.DEFAULT_BACKOFF_MAX)

    def _longest_wait(self) -> float:
        return max(0.0, min(self._cap, _left(self.deadline) - MIN_TRY_SECONDS))

    def new(self, **kwargs: Any) -> _Retry:
        kwargs.setdefault("deadline", self.deadline)
        return super().new(**kwargs)

    def is_exhausted(self) -> bool:
        return _left(self.deadline) < MIN_TRY_SECONDS or super().is_exhausted()

    def get_backoff_time(self) -> float:
        return min(super().get_backoff_time(), self._longest_wait())

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self._longest_wait())


class _DeadlineTimeout(Timeout):
    """(connect, read) timeouts that shrink to the time left before ``deadline``. urllib3
    clones a request's timeout at the start of each try, retries included, so every try gets
    what is left then; ``total`` bounds its connect and wait for the headers together."""

    def __init__(self, timeout: float | tuple[float, float], deadline: float) -> None:
        self.limits = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        super().__init__(connect=self.limits[0], read=self.limits[1])
        self.deadline = deadline

    def clone(self) -> Timeout:
        left = max(round(_left(self.deadline), 3), 0.001)  # urllib3 refuses 0: fails at once
        connect, read = self.limits
        return Timeout(connect=min(connect, left), read=min(read, left), total=left)


class _TimeoutAdapter(HTTPAdapter):
    """Applies the policy's timeouts to requests that do not name their own, shrunk to the
    time left when there is a deadline."""

    def __init__(
        self, timeout: float | tuple[float, float], deadline: float | None, **kwargs: Any
    ) -> None:
        self.timeout = timeout
        self.deadline = deadline
        super().__init__(**kwargs)

    def send(self, request: Any, timeout: Any = None, **kwargs: Any) -> requests.Response:
        timeout = timeout or self.timeout
        if self.deadline is not None and not isinstance(timeout, Timeout):
            timeout = _DeadlineTimeout(timeout, self.deadline)
        return super().send(request, timeout=timeout, **kwargs)


class Session(requests.Session):
    """A ``requests.Session`` under the policy (see :func:`session`)."""

    deadline: float | None = None
    """Monotonic time by which the fetch must be over; None: no overall limit."""

    @property
    def out_of_time(self) -> bool:
        """Whether the deadline left no time for another try: a failure now is one of time."""
        return _left(self.deadline) < MIN_TRY_SECONDS

    def iter_body(self, response: requests.Response, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """The body of a ``stream=True`` response, decoded, like ``iter_content``, but each
        read from the socket waits no longer than the time left: a server that trickles the
        body stops at the deadline with :class:`DeadlineExceeded`."""
        raw = response.raw
        read = getattr(raw, "read1", raw.read)  # read1: one socket read at most (urllib3 2)
        connection = getattr(raw, "connection", None)
        sock = getattr(connection, "sock", None)
        while True:
            left = _left(self.deadline)
            if left <= 0:
                raise DeadlineExceeded(
                    f"the body was still arriving at the deadline: {response.url}"
                )
            if sock is not None and left != math.inf:
                sock.settimeout(min(left, sock.gettimeout() or left))
            try:
                chunk = read(chunk_size, decode_content=True)
            except ReadTimeoutError as exc:
                if _left(self.deadline) <= 0:
                    raise DeadlineExceeded(
                        f"the body was still arriving at the deadline: {response.url}"
                    ) from exc
                raise requests.exceptions.ReadTimeout(exc) from exc
            except ProtocolError as exc:  # the mapping iter_content makes
                raise requests.exceptions.ChunkedEncodingError(exc) from exc
            except DecodeError as exc:
                raise requests.exceptions.ContentDecodingError(exc) from exc
            if not chunk:
                return
            yield chunk


def session(
    *,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    budget: float | None = None,
) -> Session:
    """A :class:`Session` that retries transient failures up to ``retries`` times.

    Waits grow as ``backoff * 2**n`` plus jitter, at most ``max_backoff`` (which also caps
    ``Retry-After``). With a ``budget`` (seconds from now), the session's deadline bounds the
    whole fetch: no wait runs past it, each try's timeouts shrink to the time left, no retry
    starts in its last ``MIN_TRY_SECONDS``, and :meth:`Session.iter_body` stops the body read
    there. The last failing response is returned, not raised, for :func:`describe`.
    """
    deadline = None if budget is None else time.monotonic() + budget
    extra = {"backoff_jitter": backoff, "backoff_max": max_backoff} if _URLLIB3_2 else {}
    retry = _Retry(
        total=retries,  # connect, read and status errors alike: each one counts
        backoff_factor=backoff,
        status_forcelist=TRANSIENT_STATUS,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,
        deadline=deadline,
        **extra,
    )
    http = Session()
    http.deadline = deadline
    adapter = _TimeoutAdapter(timeout, deadline, max_retries=retry)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    http.headers["User-Agent"] = USER_AGENT
    return http


def media_type(content_type: str | None) -> str:
    """``Audio/MPEG; charset=x`` → ``audio/mpeg``; ``""`` when there is none."""
    return (content_type or "").split(";")[0].strip().lower()


def attempts(response: requests.Response) -> int:
    """How many requests produced ``response``: the last one plus the retried ones."""
    retries = getattr(response.raw, "retries", None)
    return 1 + len(retries.history) if retries is not None else 1


class Failure(NamedTuple):
    """A failed fetch: transient (worth trying again later) or permanent, and why."""

    transient: bool
    what: str
    hint: str

    def __str__(self) -> str:
        return f"{self.what}: {self.hint}"


_STATUS_HINTS = {
    401: "the server wants credentials, which this project does not send",
    403: "the server refused the request (an expired signed URL, a region lock?)",
    404: "nothing is at this URL: it moved or is wrong",
    410: "the publisher removed it for good",
    429: "the server is rate-limiting us; try again later",
}


def describe(failure: requests.Response | BaseException) -> Failure:
    """Classify a final error response or a requests exception, with a hint to act on."""
    if isinstance(failure, requests.Response):
        status = failure.status_code
        transient = status == 429 or status >= 500
        default = "the server is failing; try again later" if transient else "check the URL"
        return Failure(
            transient, f"HTTP {status} {failure.reason}", _STATUS_HINTS.get(status, default)
        )
    cause = failure.args[0] if failure.args else None
    reason = cause.reason if isinstance(cause, MaxRetryError) and cause.reason else failure
    text = str(reason)
    what = f"{type(reason).__name__}: {text if len(text) <= 200 else text[:200] + '…'}"
    if isinstance(failure, requests.exceptions.SSLError):
        return Failure(False, what, "the server's TLS certificate was refused")
    if isinstance(failure, requests.Timeout) or "timed out" in text:
        return Failure(True, what, "the server did not answer in time; try again later")
    if isinstance(failure, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        return Failure(True, what, "the connection failed; check the network, or try again later")
    return Failure(False, what, "check the URL")
