"""Fetching the feed: conditional GET (ETag/Last-Modified) with the shared HTTP policy.

The sensor fetches the feed in each tick, and Dagster stops a tick after 60 s; so one fetch,
retries, waits and a slow body included, is over within ``FETCH_BUDGET_SECONDS`` (20 s),
which leaves the tick time to parse the feed and request runs. A fetch that runs out of time
fails as transient: the next tick tries again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
from dagster import ConfigurableResource
from pydantic import Field

from twiml_assets import http_policy
from twiml_assets.feed.source import FeedError

DEFAULT_FEED_URL = "https://feeds.megaphone.fm/MLN2155636147"
FETCH_BUDGET_SECONDS = 20.0
"""The longest one fetch may take, retries and the body read included (a tick has 60 s)."""


@dataclass(slots=True)
class FeedResponse:
    """One fetch of the feed. ``not_modified``: the server said 304 (body is None)."""

    url: str
    status: int
    body: bytes | None
    etag: str | None = None
    last_modified: str | None = None

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def digest(self) -> str | None:
        return hashlib.sha256(self.body).hexdigest() if self.body is not None else None


class FeedResource(ConfigurableResource):
    """Fetch one podcast feed (RSS/Atom over http(s), or a local file path)."""

    url: str = Field(
        default=DEFAULT_FEED_URL, description="Feed URL (env TWIML_FEED_URL in definitions)."
    )
    timeout_seconds: float = Field(
        default=10.0,
        description="Read timeout (connect: at most 5 s), per request; less when less of "
        "budget_seconds is left.",
    )
    retries: int = Field(
        default=3, description="Retries on network errors, 429 and 5xx, within budget_seconds."
    )
    backoff_seconds: float = Field(default=1.0, description="Retry delay base; doubles each time.")
    budget_seconds: float = Field(
        default=FETCH_BUDGET_SECONDS,
        description="The whole fetch's deadline: tries, waits between them and the body read. "
        "Running out is a transient failure (the next sensor tick retries).",
    )
    max_bytes: int = Field(default=64 * 1024 * 1024, description="Refuse larger feed documents.")

    def fetch(self, etag: str | None = None, last_modified: str | None = None) -> FeedResponse:
        """GET the feed, conditionally when validators from the previous fetch are given."""
        parsed = urlparse(self.url)
        if parsed.scheme in {"", "file"}:
            path = Path(parsed.path if parsed.scheme else self.url)
            try:
                return FeedResponse(str(path), 200, path.expanduser().read_bytes())
            except OSError as exc:
                reason = exc.strerror or exc
                raise FeedError(f"cannot read the feed file {path}: {reason}") from exc
        if parsed.scheme not in {"http", "https"}:
            raise FeedError(f"unsupported feed URL {self.url!r}: use http(s):// or a file path")
        headers = {
            "Accept": "application/rss+xml, application/xml;q=0.9, */*;q=0.5",
            "If-None-Match": etag,  # None-valued headers are not sent
            "If-Modified-Since": last_modified,
        }
        timeout = (min(5.0, self.timeout_seconds), self.timeout_seconds)
        http = http_policy.session(
            retries=self.retries,
            backoff=self.backoff_seconds,
            max_backoff=5.0,
            timeout=timeout,
            budget=self.budget_seconds,
        )
        try:
            with http, http.get(self.url, headers=headers, stream=True) as resp:
                if resp.status_code >= 400:
                    raise FeedError(self._failure(http, http_policy.describe(resp)))
                body = None if resp.status_code == 304 else self._read_body(http, resp)
        except requests.RequestException as exc:
            raise FeedError(self._failure(http, http_policy.describe(exc))) from exc
        kept = resp.status_code == 304  # a 304 may omit validators that still hold
        return FeedResponse(
            self.url,
            resp.status_code,
            body,
            etag=resp.headers.get("ETag", etag if kept else None),
            last_modified=resp.headers.get("Last-Modified", last_modified if kept else None),
        )

    # -- helpers --------------------------------------------------------------------------
    def _read_body(self, http: http_policy.Session, resp: requests.Response) -> bytes:
        body = bytearray()
        for chunk in http.iter_body(resp):
            body += chunk
            if len(body) > self.max_bytes:
                raise FeedError(
                    f"the feed at {self.url} is larger than {self.max_bytes} bytes; "
                    "raise max_bytes if this is really the feed"
                )
        return bytes(body)

    def _failure(self, http: http_policy.Session, failure: http_policy.Failure) -> str:
        if failure.transient and http.out_of_time:
            return (
                f"could not fetch the feed {self.url} within {self.budget_seconds:g} s, retries "
                f"included: the feed was too slow ({failure.what}); the next sensor tick retries"
            )
        todo = (
            "the next sensor tick retries"
            if failure.transient
            else "set TWIML_FEED_URL (the feed resource's url) to the current feed"
        )
        return f"could not fetch the feed {self.url}: {failure}; {todo}"
