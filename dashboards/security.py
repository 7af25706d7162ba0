"""Sessions, CSRF tokens and the login rate limit. Pure bookkeeping: no I/O, no web framework.

A session is a random 256-bit token kept in an HTTP-only cookie; the server holds the user and
a CSRF token per session, and forgets the session after ``idle_s`` without use. Every
state-changing request must carry the session's CSRF token in the ``X-CSRF-Token`` header.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from dashboards.users import User


@dataclass
class Session:
    token: str
    user: User
    csrf: str
    last_used_s: float
    created_s: float = field(default_factory=time.monotonic)


class Sessions:
    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._by_token: dict[str, Session] = {}

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
        session.last_used_s = now_s
        return session

    def drop(self, token: str) -> None:
        self._by_token.pop(token, None)

    def drop_user(self, name: str) -> None:
        for token in [t for t, s in self._by_token.items() if s.user.name == name]:
            del self._by_token[token]


def csrf_ok(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf, presented)


class LoginLimiter:
    """At most ``max_failures`` failed logins per key (client address, user name) per window."""

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now_s: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now_s - q[0] > self.window_s:
            q.popleft()
        return q

    def retry_after_s(self, keys: list[str], now_s: float | None = None) -> float:
        """0 when a login may be tried now; otherwise seconds until it may."""
        now_s = time.monotonic() if now_s is None else now_s
        wait = 0.0
        for key in keys:
            q = self._recent(key, now_s)
            if len(q) >= self.max_failures:
                wait = max(wait, self.window_s - (now_s - q[0]))
        return wait

    def failed(self, keys: list[str], now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        for key in keys:
            self._recent(key, now_s).append(now_s)
        if len(self._failures) > 10_000:  # forget idle keys
            for key in [k for k, q in self._failures.items() if not self._recent(k, now_s)]:
                del self._failures[key]
