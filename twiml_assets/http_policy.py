"""The one HTTP policy for every fetch: the feed, episode audio and publisher transcripts.

Transient failures (5xx, 429, timeouts, refused or reset connections) go away if we wait;
permanent ones (404, 410, other 4xx) never do. :func:`session` retries only the first kind
(urllib3 ``Retry``, GET/HEAD only); :func:`describe` says which kind a failure is and what a
person can do about it. Make one session per fetch, so that ``budget`` counts from its start.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, NamedTuple

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

USER_AGENT = "twiml-transcribe/0.1 (podcast transcription; +https://twimlai.com)"
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = (10.0, 60.0)
"""(connect, read) seconds; read is the longest silence, not the whole transfer."""

# urllib3 2 added jitter and a configurable backoff cap; 1.26 only has its fixed 120 s cap.
_URLLIB3_2 = "backoff_jitter" in inspect.signature(Retry).parameters


class _Retry(Retry):
    """``Retry`` that starts no retry after ``deadline`` (monotonic) and caps ``Retry-After``."""

    def __init__(self, *args: Any, deadline: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    @property
    def _cap(self) -> float:
        return getattr(self, "backoff_max", Retry.DEFAULT_BACKOFF_MAX)

    def new(self, **kwargs: Any) -> _Retry:
        kwargs.setdefault("deadline", self.deadline)
        return super().new(**kwargs)

    def is_exhausted(self) -> bool:
        # Even the longest wait must end before the deadline, or we stop now.
        late = self.deadline is not None and time.monotonic() + self._cap > self.deadline
        return late or super().is_exhausted()

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self._cap)


class _TimeoutAdapter(HTTPAdapter):
    """Applies the policy's timeouts to requests that do not name their own."""

    def __init__(self, timeout: float | tuple[float, float], **kwargs: Any) -> None:
        self.timeout = timeout
        super().__init__(**kwargs)

    def send(self, request: Any, timeout: Any = None, **kwargs: Any) -> requests.Response:
        return super().send(request, timeout=timeout or self.timeout, **kwargs)


def session(
    *,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    budget: float | None = None,
) -> requests.Session:
    """A ``requests.Session`` that retries transient failures up to ``retries`` times.

    Waits grow as ``backoff * 2**n`` plus jitter, at most ``max_backoff`` (which also caps
    ``Retry-After``); no retry starts ``budget`` seconds from now or later. The last failing
    response is returned, not raised, for :func:`describe`.
    """
    extra = {"backoff_jitter": backoff, "backoff_max": max_backoff} if _URLLIB3_2 else {}
    retry = _Retry(
        total=retries,  # connect, read and status errors alike: each one counts
        backoff_factor=backoff,
        status_forcelist=TRANSIENT_STATUS,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,
        deadline=None if budget is None else time.monotonic() + budget,
        **extra,
    )
    http = requests.Session()
    adapter = _TimeoutAdapter(timeout, max_retries=retry)
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
