"""One audit line per write action: who, what, when, from where.

Each line goes to the ``twiml.audit`` logger (INFO) and is appended to a JSON-lines file
(mode 0600). Callers pass only names, keys, sizes and addresses: never a password, hash,
cookie, token or secret.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

audit_log = logging.getLogger("twiml.audit")
log = logging.getLogger(__name__)


class AuditLog:
    """Appends ``{"time", "action", "user", "address", ...}`` lines to ``path``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, action: str, user: str | None, address: str, **details: Any) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "action": action,
            "user": user,
            "address": address,
            **details,
        }
        line = json.dumps(entry, sort_keys=False, ensure_ascii=True)
        audit_log.info("%s", line)
        try:
            with self._lock:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
        except OSError as exc:  # the action itself has happened; say so, do not fail it
            log.error("cannot append to the audit file %s: %s", self.path, exc)
