"""Dashboard users: names, roles, sites and argon2 password hashes in a JSON file.

A user may be limited to some sites (``sites``; absent: every site): beds of other sites are
invisible to that user, on every page, API and WebSocket, and cannot be called. A user of role
``cart`` is bound to one bed (``bed``, ``SITE/BED``): it may register as that bed's cart only.

The file (``EICU_USERS_FILE``) is written atomically with mode 0600 and re-read whenever it
changed on disk (its inode, size, modification or change time), so ``eicu users add``, ``set``
and ``remove``, run by another process, take effect on a running server at once: every request
and every open WebSocket looks its user up again. Passwords are never stored or logged; only
their argon2id hashes are. A user of role ``system`` (another system reading through the FHIR
API) has no password but an API token, of which the file keeps a SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from eicu.errors import ConfigError
from eicu.models import ID_RE, BedKey

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD_CHARS = 10


class Role(StrEnum):
    VIEWER = "viewer"
    NURSE = "nurse"
    INTENSIVIST = "intensivist"
    ADMIN = "admin"
    CART = "cart"  # a bedside video cart: no person, and it sees no patient data
    # another system reading through the FHIR API (an EHR, a research pipeline): no person, no
    # password login; it presents its API token as ``Authorization: Bearer <token>``
    SYSTEM = "system"


class Permission(StrEnum):
    VIEW = "view"  # census, bed view, live waveforms, trends
    REVIEW = "review"  # full-disclosure waveforms from the store
    MANAGE_USERS = "manage_users"
    RESPOND = "respond"  # acknowledge alarms and pause their audio
    CONSULT = "consult"  # call a bed's video cart
    REGISTER_CART = "register_cart"  # be the video cart of beds of the user's sites
    # admit, transfer and discharge patients; change a stay's code status, diagnosis, attending,
    # isolation and allergies; write notes and handoffs
    ADMIT = "admit"


CLINICAL = frozenset({Permission.VIEW, Permission.REVIEW, Permission.RESPOND})
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.VIEW, Permission.REVIEW}),
    # the tele-ICU nurse does video rounds and is often the first to answer an alarm: she calls
    Role.NURSE: CLINICAL | {Permission.CONSULT, Permission.ADMIT},
    Role.INTENSIVIST: CLINICAL | {Permission.CONSULT, Permission.ADMIT},
    # every permission of a person: on a small unit (and in ``eicu demo``) the admin is also a
    # clinician; never a cart's, so a person's session cannot stand in for a bedside cart
    Role.ADMIN: frozenset(Permission) - {Permission.REGISTER_CART},
    Role.CART: frozenset({Permission.REGISTER_CART}),
    Role.SYSTEM: frozenset({Permission.VIEW, Permission.REVIEW}),
}
# A system's API token: random, so a fast digest keeps it (a slow password hash would cost every
# request its time and add nothing against guessing 256 bits).
MIN_TOKEN_CHARS = 32
TOKEN_PREFIX = "sha256$"


def new_token() -> str:
    """A new API token for a system (256 random bits)."""
    return secrets.token_urlsafe(32)


def _token_digest(token: str) -> str:
    return TOKEN_PREFIX + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    sites: frozenset[str] | None = None  # None: every site
    bed: BedKey | None = None  # a cart's bed (the only one it may serve); None for a person
    # a digest of the password hash: a session ends when the password is changed
    credential: str = field(default="", compare=False, repr=False)

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
    bad = sorted(s for s in sites if not ID_RE.fullmatch(s))
    if bad:
        raise UserError("sites", f"site ids are [A-Za-z0-9_-], up to 32 characters: {bad}")
    return sites


def parse_bed(text: str | None) -> BedKey | None:
    """``"SITE/BED"`` as a bed; None or blank: no bed."""
    if text is None or not text.strip():
        return None
    site, _, bed = text.strip().partition("/")
    if not ID_RE.fullmatch(site) or not ID_RE.fullmatch(bed):
        raise UserError("bed", f"expected SITE/BED with ids of [A-Za-z0-9_-], got {text!r}")
    return BedKey(site, bed)


def _user(name: str, entry: dict[str, object]) -> User:
    sites = entry.get("sites")
    bed = entry.get("bed")
    return User(
        name,
        Role(str(entry["role"])),
        frozenset(str(s) for s in sites) if isinstance(sites, list) else None,
        BedKey.parse(bed) if isinstance(bed, str) else None,
        hashlib.sha256(str(entry["hash"]).encode()).hexdigest()[:16],
    )


class _Unset:
    """The default of :meth:`Users.update`: leave this field as it is."""


UNSET = _Unset()


def _role(given: Role | str | _Unset, current: Role) -> Role:
    """The role :meth:`Users.update` gives: ``given``, else the user's ``current`` one."""
    if isinstance(given, _Unset):
        return current
    try:
        return Role(given)
    except ValueError as exc:
        raise UserError("role", f"one of {', '.join(r.value for r in Role)}") from exc


def checked_user(
    role: Role | str, sites: frozenset[str] | None, bed: BedKey | str | None
) -> tuple[Role, frozenset[str] | None, BedKey | None]:
    """A valid (role, sites, bed): a cart names its bed, and its sites are that bed's site."""
    try:
        role = Role(role)
    except ValueError as exc:
        raise UserError("role", f"one of {', '.join(r.value for r in Role)}") from exc
    if sites is not None:
        sites = parse_sites(",".join(sites))
        if not sites:
            raise UserError("sites", "an empty list of sites: leave it out for every site")
    if isinstance(bed, str):
        bed = parse_bed(bed)
    if role is Role.CART:
        if bed is None:
            raise UserError("bed", "a cart serves one bed: give it as SITE/BED")
        if sites is not None and sites != {bed.site}:
            raise UserError("sites", f"a cart's site is its bed's: {bed.site}")
        sites = frozenset({bed.site})
    elif bed is not None:
        raise UserError("bed", "only a cart is bound to a bed")
    return role, sites, bed


def _entry(
    role: Role, sites: frozenset[str] | None, bed: BedKey | None, digest: str
) -> dict[str, object]:
    entry: dict[str, object] = {"role": role.value, "hash": digest}
    if sites is not None:
        entry["sites"] = sorted(sites)
    if bed is not None:
        entry["bed"] = str(bed)
    return entry


class UserError(ConfigError):
    """A user name, role or password that cannot be accepted."""


class Users:
    """The users file. Thread-safe; every method re-reads the file if it changed on disk."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self._hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._parsed: dict[str, User] = {}  # the users of the file as read, by name
        self._users: dict[str, dict[str, object]] = {}
        # verified against when the name is unknown, so both cases cost the same time
        self._dummy = self._hasher.hash("not a password of anyone")

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._users, self._stamp = {}, None
            self._parsed.clear()
            return
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
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
        self._parsed.clear()

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
        self._parsed.clear()

    def add(
        self,
        name: str,
        role: Role | str,
        password: str,
        *,
        replace: bool = False,
        sites: frozenset[str] | None = None,
        bed: BedKey | str | None = None,
    ) -> User:
        """Add (or with ``replace``, replace) a user; ``sites`` None: every site. A cart needs
        its ``bed``."""
        if not NAME_RE.fullmatch(name):
            raise UserError("name", "1-64 characters of A-Z a-z 0-9 . _ -, starting alphanumeric")
        role, sites, bed = checked_user(role, sites, bed)
        entry = _entry(role, sites, bed, self._credential(role, password))
        with self._lock:
            self._reload()
            if name in self._users and not replace:
                raise UserError("name", f"user {name!r} exists")
            self._users[name] = entry
            self._save()
        return _user(name, entry)

    def _credential(self, role: Role, password: str) -> str:
        """What the file keeps of a password (its slow hash) or of a system's API token (its
        digest)."""
        if role is Role.SYSTEM:
            if len(password) < MIN_TOKEN_CHARS:
                raise UserError(
                    "password", f"a system's token has at least {MIN_TOKEN_CHARS} characters"
                )
            return _token_digest(password)
        if len(password) < MIN_PASSWORD_CHARS:
            raise UserError("password", f"at least {MIN_PASSWORD_CHARS} characters")
        return self._hasher.hash(password)

    def update(
        self,
        name: str,
        *,
        role: Role | str | _Unset = UNSET,
        sites: frozenset[str] | _Unset | None = UNSET,
        bed: BedKey | str | _Unset | None = UNSET,
        password: str | None = None,
        check: Callable[[User, User], None] | None = None,
    ) -> User:
        """Change a user's role, sites, bed or password (what is not given stays). ``check``
        sees the user before and after, under the file's lock, and may raise to refuse."""
        digest = None
        if password is not None:
            # the slow password hash is made before taking the file's lock, which every
            # request's user lookup takes too
            current = self.get(name)
            if current is None:
                raise UserError("name", f"no user {name!r}")
            digest = self._credential(_role(role, current.role), password)
        with self._lock:
            self._reload()
            old = self._users.get(name)
            if old is None:
                raise UserError("name", f"no user {name!r}")
            before = _user(name, old)
            new_role = _role(role, before.role)
            system = new_role is Role.SYSTEM
            if digest is None and system != (before.role is Role.SYSTEM):
                # a password is no token, nor a token a password
                raise UserError(
                    "password",
                    f"a new {'token' if system else 'password'} is needed "
                    f"with the role {new_role.value}",
                )
            if digest is not None and system != digest.startswith(TOKEN_PREFIX):
                raise UserError("role", f"the role of {name!r} changed meanwhile; try again")
            cart = new_role is Role.CART
            new_bed = (before.bed if cart else None) if isinstance(bed, _Unset) else bed
            new_sites = before.sites if isinstance(sites, _Unset) else sites
            if isinstance(sites, _Unset) and cart:
                new_sites = None  # a cart's site follows its bed
            checked = checked_user(new_role, new_sites, new_bed)
            entry = _entry(*checked, digest if digest is not None else str(old["hash"]))
            after = _user(name, entry)
            if check is not None:
                check(before, after)
            self._users[name] = entry
            self._save()
        return after

    def remove(self, name: str, check: Callable[[User], None] | None = None) -> User:
        """Remove a user (its sessions end at their next request); ``check`` may refuse."""
        with self._lock:
            self._reload()
            entry = self._users.get(name)
            if entry is None:
                raise UserError("name", f"no user {name!r}")
            user = _user(name, entry)
            if check is not None:
                check(user)
            del self._users[name]
            self._save()
        return user

    def get(self, name: str) -> User | None:
        """The user as the file says now (looked up at every request: one ``stat`` when the
        file has not changed)."""
        with self._lock:
            self._reload()
            user = self._parsed.get(name)
            if user is None:
                entry = self._users.get(name)
                if not entry:
                    return None
                user = self._parsed[name] = _user(name, entry)
            return user

    def list(self) -> list[User]:
        with self._lock:
            self._reload()
            return [_user(n, e) for n, e in sorted(self._users.items())]

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password matches; None otherwise (same cost either way). A
        system has no password: it presents its token (:meth:`by_token`)."""
        with self._lock:
            self._reload()
            entry = self._users.get(name)
        if entry and entry.get("role") == Role.SYSTEM.value:
            entry = None
        digest = str(entry["hash"]) if entry else self._dummy
        try:
            self._hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return _user(name, entry) if entry else None

    def by_token(self, token: str) -> User | None:
        """The system whose API token this is; None for any other string."""
        if len(token) < MIN_TOKEN_CHARS:
            return None
        presented = _token_digest(token)
        with self._lock:
            self._reload()
            systems = [(n, e) for n, e in self._users.items() if e.get("role") == Role.SYSTEM.value]
        found = None
        for name, entry in systems:  # every one compared, in constant time
            if hmac.compare_digest(str(entry["hash"]), presented):
                found = _user(name, entry)
        return found
