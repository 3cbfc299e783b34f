"""In-memory sliding-window counters: failed sign-ins and uploads per hour.

One process, one set of counters (``twiml-transcribe web`` runs one uvicorn worker); a
restart forgets them, which only ever makes the limits more lenient for a moment.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

MAX_KEYS = 10_000  # past this, keys with no recent event are dropped


class SlidingWindow:
    """At most ``limit`` events per ``window`` seconds for each key; thread-safe."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            return deque()
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]
        return events

    def take(self, key: str, limit: int | None = None) -> int:
        """Count one event for ``key`` if under ``limit``: 0, else the seconds to wait."""
        limit = self.limit if limit is None else limit
        with self._lock:
            now = self.clock()
            events = self._recent(key, now)
            if len(events) >= limit:
                if not limit:
                    return math.ceil(self.window)
                return max(1, math.ceil(events[-limit] + self.window - now))
            self._events.setdefault(key, events).append(now)
            return 0

    def take_all(self, keys: Iterable[str], shared: Mapping[str, str] | None = None) -> int:
        """Count one event for every key if none is full: 0, else the seconds to wait.

        Check and count are one step under the lock, so concurrent callers cannot all pass
        the check before any of them is counted (a sign-in attempt is taken before its
        password is verified, and given back if it was right).

        ``shared`` maps a key many clients share (a user name) to the client's own key (the
        name from this address): a full shared key stops only clients whose own key already
        has events, so others' failures never lock out a client that has not failed.
        """
        keys, shared = list(keys), dict(shared or {})
        with self._lock:
            now = self.clock()
            if not self.limit:
                return math.ceil(self.window)
            full = [e for e in (self._recent(k, now) for k in keys) if len(e) >= self.limit]
            for key, own in shared.items():
                events = self._recent(key, now)
                if len(events) >= self.limit and self._recent(own, now):
                    full.append(events)
            if full:
                wait = max(e[-self.limit] + self.window - now for e in full)
                return max(1, math.ceil(wait))
            if len(self._events) > MAX_KEYS:
                for key in list(self._events):
                    self._recent(key, now)
            for key in [*keys, *shared]:
                self._events.setdefault(key, deque()).append(now)
            return 0

    def give_back(self, *keys: str) -> None:
        """Undo the newest event of each key (a refused upload, a right password: no count)."""
        with self._lock:
            for key in keys:
                events = self._events.get(key)
                if events:
                    events.pop()

    def clear(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)
