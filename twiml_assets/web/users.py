"""Staff accounts of the web app: a small JSON file of argon2id password hashes.

``{"users": {"alice": {"password_hash": "$argon2id$...", "max_upload_mb": 100,
"uploads_per_hour": 5}}}``; the limits are optional (the global settings apply). The file is
written atomically (temporary file + ``os.replace``) with mode 0600, and re-read whenever it
changes, so ``twiml-transcribe users add/remove`` take effect without a restart. Hashes never
leave this module: ``users list`` shows names and limits only.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from resources.storage import write_atomically

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # sign-in reads no more than this of the password field
HASHER = PasswordHasher()  # argon2id with the library's current (RFC 9106) parameters
_DUMMIES: dict[tuple[int, int, int, int], str] = {}  # one dummy hash per parameter set


class UsersError(ValueError):
    """A users-file operation that cannot be done (the CLI prints it as one line)."""


def valid_name(name: str) -> str:
    """``name`` lower-cased, or a UsersError: letters, digits, ``. _ @ -``, at most 64."""
    folded = name.strip().lower()
    if not NAME_RE.match(folded):
        raise UsersError(
            f"invalid user name {name[:70]!r}: use letters, digits, '.', '_', '@' or '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return folded


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (its directory 0700 if created)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(path, text.encode("utf-8"), mode=0o600)


@dataclass(frozen=True, slots=True)
class User:
    """One account; ``None`` limits mean the global settings."""

    name: str
    password_hash: str
    max_upload_mb: float | None = None
    uploads_per_hour: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"password_hash": self.password_hash}
        if self.max_upload_mb is not None:
            data["max_upload_mb"] = self.max_upload_mb
        if self.uploads_per_hour is not None:
            data["uploads_per_hour"] = self.uploads_per_hour
        return data

    def limits_text(self) -> str:
        size = f"{self.max_upload_mb:g} MB" if self.max_upload_mb is not None else "default"
        count = str(self.uploads_per_hour) if self.uploads_per_hour is not None else "default"
        return f"max upload {size}, uploads per hour {count}"


def _user(name: str, data: Any) -> User:
    if not isinstance(data, dict) or not isinstance(data.get("password_hash"), str):
        raise UsersError(f"user {name!r} has no password_hash")
    mb, count = data.get("max_upload_mb"), data.get("uploads_per_hour")
    if mb is not None and (not isinstance(mb, int | float) or mb <= 0):
        raise UsersError(f"user {name!r}: max_upload_mb must be a positive number")
    if count is not None and (not isinstance(count, int) or count < 0):
        raise UsersError(f"user {name!r}: uploads_per_hour must be a whole number >= 0")
    return User(valid_name(name), data["password_hash"], mb, count)


class UserStore:
    """The users file, cached until its mtime or size changes; thread-safe."""

    def __init__(self, path: Path, hasher: PasswordHasher = HASHER):
        self.path = Path(path)
        self.hasher = hasher
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}

    # -- reading -------------------------------------------------------------------------
    def users(self) -> dict[str, User]:
        """Every account by name ({} when the file does not exist)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._users, self._stamp = self._read(), stamp
            return dict(self._users)

    def _read(self) -> dict[str, User]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsersError(f"cannot read the users file {self.path}: {exc}") from None
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(users, dict):
            raise UsersError(f'{self.path}: expected {{"users": {{...}}}}')
        try:
            return {u.name: u for u in (_user(n, d) for n, d in users.items())}
        except UsersError as exc:
            raise UsersError(f"{self.path}: {exc}") from None

    def get(self, name: str) -> User | None:
        try:
            return self.users().get(valid_name(name))
        except UsersError:
            return None

    # -- passwords -----------------------------------------------------------------------
    def dummy_hash(self) -> str:
        """A hash of a random password, verified for unknown names so they take as long.

        Made once per process and parameter set (the app makes it at start-up, so the
        first unknown name is not slower than the rest).
        """
        h = self.hasher
        params = (h.time_cost, h.memory_cost, h.parallelism, h.hash_len)
        if params not in _DUMMIES:
            _DUMMIES[params] = h.hash(secrets.token_urlsafe(16))
        return _DUMMIES[params]

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else None; unknown names cost one verify too.

        A hash made with older argon2 parameters is replaced by a new one on success.
        """
        user = self.get(name)
        try:
            self.hasher.verify(user.password_hash if user else self.dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None:
            return None
        if self.hasher.check_needs_rehash(user.password_hash):
            try:
                self.set(User(user.name, self.hasher.hash(password), *self._limits(user)))
            except (OSError, UsersError):
                pass  # the old hash still works; try again next time
        return user

    @staticmethod
    def _limits(user: User) -> tuple[float | None, int | None]:
        return user.max_upload_mb, user.uploads_per_hour

    # -- writing -------------------------------------------------------------------------
    def set(self, user: User) -> None:
        """Add or replace ``user`` (atomic rewrite of the whole file)."""
        users = self.users()
        users[user.name] = user
        self._write(users)

    def add(
        self,
        name: str,
        password: str,
        max_upload_mb: float | None = None,
        uploads_per_hour: int | None = None,
        replace: bool = False,
    ) -> User:
        name = valid_name(name)
        if len(password) < MIN_PASSWORD:
            raise UsersError(f"the password must have at least {MIN_PASSWORD} characters")
        if len(password) > MAX_PASSWORD:
            raise UsersError(
                f"the password is too long: at most {MAX_PASSWORD} characters "
                "(sign-in reads no more)"
            )
        if name in self.users() and not replace:
            raise UsersError(f"user {name!r} exists (use --replace to set a new password)")
        user = _user(
            name,
            User(name, self.hasher.hash(password), max_upload_mb, uploads_per_hour).to_json(),
        )
        self.set(user)
        return user

    def remove(self, name: str) -> None:
        users = self.users()
        if users.pop(valid_name(name), None) is None:
            raise UsersError(f"no user {name[:70]!r}")
        self._write(users)

    def _write(self, users: dict[str, User]) -> None:
        body = {"users": {n: users[n].to_json() for n in sorted(users)}}
        write_private(self.path, json.dumps(body, indent=2) + "\n")
