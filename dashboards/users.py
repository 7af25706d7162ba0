"""Dashboard users: names, roles, sites and argon2 password hashes in a JSON file.

A user may be limited to some sites (``sites``; absent: every site): beds of other sites are
invisible to that user, on every page, API and WebSocket, and cannot be called.

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
from eicu.models import ID_RE

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD_CHARS = 10


class Role(StrEnum):
    VIEWER = "viewer"
    NURSE = "nurse"
    INTENSIVIST = "intensivist"
    ADMIN = "admin"
    CART = "cart"  # a bedside video cart: no person, and it sees no patient data


class Permission(StrEnum):
    VIEW = "view"  # census, bed view, live waveforms, trends
    REVIEW = "review"  # full-disclosure waveforms from the store
    MANAGE_USERS = "manage_users"
    RESPOND = "respond"  # acknowledge alarms and pause their audio
    CONSULT = "consult"  # call a bed's video cart
    REGISTER_CART = "register_cart"  # be the video cart of beds of the user's sites


CLINICAL = frozenset({Permission.VIEW, Permission.REVIEW, Permission.RESPOND})
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.VIEW, Permission.REVIEW}),
    # the tele-ICU nurse does video rounds and is often the first to answer an alarm: she calls
    Role.NURSE: CLINICAL | {Permission.CONSULT},
    Role.INTENSIVIST: CLINICAL | {Permission.CONSULT},
    # every permission of a person: on a small unit (and in ``eicu demo``) the admin is also a
    # clinician; never a cart's, so a person's session cannot stand in for a bedside cart
    Role.ADMIN: frozenset(Permission) - {Permission.REGISTER_CART},
    Role.CART: frozenset({Permission.REGISTER_CART}),
}


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    sites: frozenset[str] | None = None  # None: every site

    def can(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]

    def can_see(self, site: str) -> bool:
        """Whether beds of ``site`` are visible to this user."""
        return self.sites is None or site in self.sites


def parse_sites(text: str | None) -> frozenset[str] | None:
    """``"A,B"`` as a set of site ids; None or blank: every site."""
    if text is None or not text.strip():
        return None
    sites = frozenset(s.strip() for s in text.split(",") if s.strip())
    bad = sorted(s for s in sites if not ID_RE.match(s))
    if bad:
        raise UserError("sites", f"site ids are [A-Za-z0-9_-], up to 32 characters: {bad}")
    return sites


def _user(name: str, entry: dict[str, object]) -> User:
    sites = entry.get("sites")
    return User(
        name,
        Role(str(entry["role"])),
        frozenset(str(s) for s in sites) if isinstance(sites, list) else None,
    )


class UserError(ConfigError):
    """A user name, role or password that cannot be accepted."""


class Users:
    """The users file. Thread-safe; every method re-reads the file if it changed on disk."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self._hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, dict[str, object]] = {}
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

    def add(
        self,
        name: str,
        role: Role | str,
        password: str,
        *,
        replace: bool = False,
        sites: frozenset[str] | None = None,
    ) -> User:
        """Add (or with ``replace``, replace) a user; ``sites`` None: every site."""
        if not NAME_RE.match(name):
            raise UserError("name", "1-64 characters of A-Z a-z 0-9 . _ -, starting alphanumeric")
        try:
            role = Role(role)
        except ValueError as exc:
            raise UserError("role", f"one of {', '.join(r.value for r in Role)}") from exc
        if len(password) < MIN_PASSWORD_CHARS:
            raise UserError("password", f"at least {MIN_PASSWORD_CHARS} characters")
        if sites is not None:
            sites = parse_sites(",".join(sites))
            if not sites:
                raise UserError("sites", "an empty list of sites: leave it out for every site")
        digest = self._hasher.hash(password)
        entry: dict[str, object] = {"role": role.value, "hash": digest}
        if sites is not None:
            entry["sites"] = sorted(sites)
        with self._lock:
            self._reload()
            if name in self._users and not replace:
                raise UserError("name", f"user {name!r} exists")
            self._users[name] = entry
            self._save()
        return _user(name, entry)

    def get(self, name: str) -> User | None:
        with self._lock:
            self._reload()
            entry = self._users.get(name)
        return _user(name, entry) if entry else None

    def list(self) -> list[User]:
        with self._lock:
            self._reload()
            return [_user(n, e) for n, e in sorted(self._users.items())]

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password matches; None otherwise (same cost either way)."""
        with self._lock:
            self._reload()
            entry = self._users.get(name)
        digest = str(entry["hash"]) if entry else self._dummy
        try:
            self._hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return _user(name, entry) if entry else None
