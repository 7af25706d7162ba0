"""Dashboard users: names, roles and argon2 password hashes in a JSON file.

The file (``EICU_USERS_FILE``) is written atomically with mode 0600 and re-read when it changes,
so ``eicu users add`` takes effect on a running server without a restart. Passwords are never
stored or logged; only their argon2id hashes are.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from eicu.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD_CHARS = 10


class Role(StrEnum):
    VIEWER = "viewer"
    NURSE = "nurse"
    INTENSIVIST = "intensivist"
    ADMIN = "admin"


class Permission(StrEnum):
    VIEW = "view"  # census, bed view, live waveforms, trends
    REVIEW = "review"  # full-disclosure waveforms from the store
    MANAGE_USERS = "manage_users"
    RESPOND = "respond"  # acknowledge alarms and pause their audio


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.VIEW, Permission.REVIEW}),
    Role.NURSE: frozenset({Permission.VIEW, Permission.REVIEW, Permission.RESPOND}),
    Role.INTENSIVIST: frozenset({Permission.VIEW, Permission.REVIEW, Permission.RESPOND}),
    # every permission: on a small unit (and in ``eicu demo``) the admin is also a clinician
    Role.ADMIN: frozenset(Permission),
}


@dataclass(frozen=True)
class User:
    name: str
    role: Role

    def can(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]


class UserError(ConfigError):
    """A user name, role or password that cannot be accepted."""


class Users:
    """The users file. Thread-safe; every method re-reads the file if it changed on disk."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self._hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, dict[str, str]] = {}
        # verified against when the name is unknown, so both cases cost the same time
        self._dummy = self._hasher.hash("not a password of anyone")

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._users, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            users = raw["users"]
            if not isinstance(users, dict):
                raise TypeError("users is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(str(self.path), f"unreadable users file: {exc}") from exc
        self._users, self._stamp = users, stamp

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".users-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "users": self._users}, f, indent=1, sort_keys=True)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = None

    def add(self, name: str, role: Role | str, password: str, *, replace: bool = False) -> User:
        if not NAME_RE.match(name):
            raise UserError("name", "1-64 characters of A-Z a-z 0-9 . _ -, starting alphanumeric")
        try:
            role = Role(role)
        except ValueError as exc:
            raise UserError("role", f"one of {', '.join(r.value for r in Role)}") from exc
        if len(password) < MIN_PASSWORD_CHARS:
            raise UserError("password", f"at least {MIN_PASSWORD_CHARS} characters")
        digest = self._hasher.hash(password)
        with self._lock:
            self._reload()
            if name in self._users and not replace:
                raise UserError("name", f"user {name!r} exists")
            self._users[name] = {"role": role.value, "hash": digest}
            self._save()
        return User(name, role)

    def get(self, name: str) -> User | None:
        with self._lock:
            self._reload()
            entry = self._users.get(name)
        return User(name, Role(entry["role"])) if entry else None

    def list(self) -> list[User]:
        with self._lock:
            self._reload()
            return [User(n, Role(e["role"])) for n, e in sorted(self._users.items())]

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password matches; None otherwise (same cost either way)."""
        with self._lock:
            self._reload()
            entry = self._users.get(name)
        digest = entry["hash"] if entry else self._dummy
        try:
            self._hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return User(name, Role(entry["role"])) if entry else None
