"""Sessions, CSRF tokens and the login rate limit. Pure bookkeeping: no web framework.

A session is a random 256-bit token kept in an HTTP-only cookie; the server holds the user's
name and a CSRF token per session, and forgets the session after ``idle_s`` without use. Every
state-changing request must carry the session's CSRF token in the ``X-CSRF-Token`` header.

With a ``shared`` store (eicu.store.sessions) sessions are also kept there, so that several
dashboard processes serve one user: a process that does not know a token looks it up there
(``aget``), one that knows it checks it there again every ``recheck_s`` (a logout or an idle
expiry in another process then ends it here too), and a logout drops it there.

A session holds no copy of its user's role or sites: each use of it looks the user up again
(``lookup``: the users file, re-read when it changed), so a changed role or sites apply to the
next request and the next tick of an open WebSocket, and a removed user, or one whose password
was changed, is logged out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dashboards.users import User
from eicu.errors import StorageUnavailable
from eicu.store.base import SessionRepository

log = logging.getLogger(__name__)

RECHECK_S = 5.0  # how often a session known here is checked again in the shared store


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _wall_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Session:
    token: str
    user: User  # as of the last use of the session: looked up again at every use
    csrf: str
    last_used_s: float
    created_s: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.user.name


class Sessions:
    """``lookup``: the user of a name as it is now (None: removed); without it a session keeps
    the user it was created with."""

    def __init__(
        self,
        idle_s: float,
        lookup: Callable[[str], User | None] | None = None,
        *,
        shared: SessionRepository | None = None,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self.idle_s = idle_s
        self._lookup = lookup
        self._by_token: dict[str, Session] = {}
        self._shared = shared
        self._recheck_s = recheck_s
        self._checked: dict[str, float] = {}  # token -> when the shared store last said yes
        # made or dropped here while the store could not be reached, put there when it is back
        self._unshared: dict[str, tuple[str, str, str]] = {}  # token -> name, credential, csrf
        self._undropped: set[str] = set()  # token digests
        self._down = False

    def create(self, user: User, now_s: float | None = None) -> Session:
        now_s = time.monotonic() if now_s is None else now_s
        for token in [t for t, s in self._by_token.items() if now_s - s.last_used_s > self.idle_s]:
            del self._by_token[token]  # forget sessions that ended without a logout
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now_s)
        self._by_token[session.token] = session
        return session

    def __len__(self) -> int:
        return len(self._by_token)

    def get(self, token: str | None, now_s: float | None = None) -> Session | None:
        """The live session of this token (and mark it used), or None."""
        if not token:
            return None
        now_s = time.monotonic() if now_s is None else now_s
        session = self._by_token.get(token)
        if session is None:
            return None
        if now_s - session.last_used_s > self.idle_s:
            del self._by_token[token]
            return None
        if self._lookup is not None:
            user = self._lookup(session.user.name)
            if user is None or user.credential != session.user.credential:
                del self._by_token[token]  # removed, or its password was changed
                return None
            session.user = user
        session.last_used_s = now_s
        return session

    def drop(self, token: str) -> None:
        self._by_token.pop(token, None)
        self._checked.pop(token, None)

    # --- shared with other dashboard processes (a store; see the module) ----------------------

    async def acreate(self, user: User) -> Session:
        session = self.create(user)
        if self._shared is not None:
            self._unshared[session.token] = (user.name, user.credential, session.csrf)
            await self._sync()
            self._checked[session.token] = time.monotonic()
        return session

    async def aget(self, token: str | None) -> Session | None:
        """:meth:`get`, also for a session another process made, and checked again in the
        shared store every ``recheck_s``. While the store cannot be reached, what this process
        knows stands (a live view never stops for the database)."""
        session = self.get(token)
        if self._shared is None or not token:
            return session
        now = time.monotonic()
        if session is not None and now - self._checked.get(token, -1e9) < self._recheck_s:
            return session
        if not await self._sync():
            return session
        try:
            row = await self._shared.session_get(_digest(token))
            wall = _wall_us()
            if row is None or wall - row[3] > self.idle_s * 1e6:
                if session is not None:  # logged out, or idle, elsewhere
                    self.drop(token)
                return None
            if session is None:
                user = self._lookup(row[0]) if self._lookup is not None else None
                if user is None or user.credential != row[1]:
                    return None  # removed, or its password changed
                session = Session(token, user, row[2], now)
                self._by_token[token] = session
            await self._shared.session_touch(_digest(token), wall)
        except StorageUnavailable as exc:
            self._unreachable(exc)
            return session
        self._checked[token] = now
        return session

    async def adrop(self, token: str) -> None:
        self.drop(token)
        if self._shared is not None:
            self._unshared.pop(token, None)
            self._undropped.add(_digest(token))
            await self._sync()

    async def _sync(self) -> bool:
        """Put in the store what was made or dropped here while it could not be reached; False
        while it still cannot."""
        assert self._shared is not None
        try:
            for token, (name, credential, csrf) in list(self._unshared.items()):
                await self._shared.session_put(_digest(token), name, credential, csrf, _wall_us())
                del self._unshared[token]
            idle_before = _wall_us() - int(self.idle_s * 1e6)
            for digest in list(self._undropped):
                await self._shared.session_drop(digest, idle_before)
                self._undropped.discard(digest)
        except StorageUnavailable as exc:
            self._unreachable(exc)
            return False
        self._down = False
        return True

    def _unreachable(self, exc: StorageUnavailable) -> None:
        if not self._down:
            log.warning("sessions not shared while the store cannot be reached: %s", exc)
        self._down = True

    def drop_user(self, name: str) -> None:
        for token in [t for t, s in self._by_token.items() if s.user.name == name]:
            del self._by_token[token]


def csrf_ok(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf, presented)


class LoginLimiter:
    """Failed logins within ``window_s``, three ways:

    - per user name and client address: ``pair_max`` failures lock that pair (429);
    - per client address, whatever the names: ``address_max`` failures lock the address;
    - per user name, from any address: never a lock (a guesser must not be able to lock a user
      out of every place she logs in from), but beyond ``user_free`` failures every attempt for
      that name waits, twice as long for each further failure, up to ``user_delay_max_s``.
    """

    def __init__(
        self,
        pair_max: int,
        window_s: float,
        *,
        address_max: int | None = None,
        user_free: int | None = None,
        user_delay_max_s: float = 4.0,
        user_delay_min_s: float = 0.25,
    ) -> None:
        self.pair_max = pair_max
        self.address_max = address_max if address_max is not None else 4 * pair_max
        self.user_free = user_free if user_free is not None else 2 * pair_max
        self.user_delay_min_s = min(user_delay_min_s, user_delay_max_s)
        self.user_delay_max_s = user_delay_max_s
        self.window_s = window_s
        self._failures: dict[tuple[str, ...], deque[float]] = {}

    @staticmethod
    def _keys(user: str, address: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("pair", user.lower(), address), ("addr", address)

    def _recent(self, key: tuple[str, ...], now_s: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now_s - q[0] > self.window_s:
            q.popleft()
        return q

    def retry_after_s(self, user: str, address: str, now_s: float | None = None) -> float:
        """0 when this name may be tried from this address now; otherwise seconds until then."""
        now_s = time.monotonic() if now_s is None else now_s
        pair, addr = self._keys(user, address)
        wait = 0.0
        for key, most in ((pair, self.pair_max), (addr, self.address_max)):
            q = self._recent(key, now_s)
            if len(q) >= most:
                wait = max(wait, self.window_s - (now_s - q[-most]))
        return wait

    def delay_s(self, user: str, now_s: float | None = None) -> float:
        """How long an attempt for ``user`` waits before its password is checked."""
        now_s = time.monotonic() if now_s is None else now_s
        beyond = len(self._recent(("user", user.lower()), now_s)) - self.user_free
        if beyond <= 0:
            return 0.0
        return min(self.user_delay_max_s, self.user_delay_min_s * 2.0 ** min(beyond - 1, 30))

    def failed(self, user: str, address: str, now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        for key in (*self._keys(user, address), ("user", user.lower())):
            self._recent(key, now_s).append(now_s)
        if len(self._failures) > 10_000:  # forget idle keys
            for key in [k for k in self._failures if not self._recent(k, now_s)]:
                del self._failures[key]

    def succeeded(self, user: str, address: str) -> None:
        """A right password from this address: its pair starts afresh."""
        self._failures.pop(self._keys(user, address)[0], None)
