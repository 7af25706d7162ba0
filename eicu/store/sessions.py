"""Dashboard sessions kept in the store, so that several dashboard processes serve one user
(dashboards.security.Sessions reads them through this). A session is stored under the SHA-256
of its token (a copy of the database holds no usable token), with its user's name, the digest
of the user's password hash when it was made (a changed password ends it), its CSRF token and
when it was last used (microseconds since the epoch). One logic for PostgreSQL (migration 6)
and SQLite, as the patient tables (eicu.store.patients)."""

from __future__ import annotations

from typing import Any, Final

from eicu.store.patients import Steps

TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS dashboard_sessions (token_hash text PRIMARY KEY,
        user_name text NOT NULL, credential text NOT NULL, csrf text NOT NULL,
        created bigint NOT NULL, last_used bigint NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS dashboard_sessions_used ON dashboard_sessions (last_used)",
)


def put(token_hash: str, user: str, credential: str, csrf: str, now_us: int) -> Steps:
    yield (
        """INSERT INTO dashboard_sessions (token_hash, user_name, credential, csrf, created,
               last_used) VALUES (?,?,?,?,?,?) ON CONFLICT (token_hash) DO NOTHING""",
        (token_hash, user, credential, csrf, now_us, now_us),
    )
    return None


def get(token_hash: str) -> Steps:
    rows = yield (
        """SELECT user_name, credential, csrf, last_used FROM dashboard_sessions
           WHERE token_hash = ?""",
        (token_hash,),
    )
    return tuple(rows[0]) if rows else None


def touch(token_hash: str, now_us: int) -> Steps:
    yield (
        "UPDATE dashboard_sessions SET last_used = ? WHERE token_hash = ? AND last_used < ?",
        (now_us, token_hash, now_us),
    )
    return None


def drop(token_hash: str, idle_before_us: int) -> Steps:
    """Drop a session, and every session unused since ``idle_before_us``."""
    yield ("DELETE FROM dashboard_sessions WHERE token_hash = ?", (token_hash,))
    yield ("DELETE FROM dashboard_sessions WHERE last_used < ?", (idle_before_us,))
    return None


class SessionMethods:
    """The :class:`~eicu.store.base.SessionRepository` methods of a store, over its
    ``_steps``."""

    async def _steps(self, steps: Steps) -> Any:
        raise NotImplementedError

    async def session_put(
        self, token_hash: str, user: str, credential: str, csrf: str, now_us: int
    ) -> None:
        await self._steps(put(token_hash, user, credential, csrf, now_us))

    async def session_get(self, token_hash: str) -> tuple[str, str, str, int] | None:
        found: tuple[str, str, str, int] | None = await self._steps(get(token_hash))
        return found

    async def session_touch(self, token_hash: str, now_us: int) -> None:
        await self._steps(touch(token_hash, now_us))

    async def session_drop(self, token_hash: str, idle_before_us: int) -> None:
        await self._steps(drop(token_hash, idle_before_us))
