"""The alarm tables of the central PostgreSQL database: the audit trail and delivery receipts,
copied there from the local outbox (:meth:`alerting.outbox.Outbox.copy_to_store`).

Writes are idempotent: an event is keyed by its stable ``event_id``, a delivery by its
idempotency ``key`` (a receipt copied again updates the row; a time once set is never unset).
The tables come from numbered migrations recorded in ``alarm_schema_migrations``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from alerting.outbox import DeliveryRecord, Outbox, StoredEvent
from eicu.backoff import Backoff
from eicu.errors import StorageUnavailable

log = logging.getLogger(__name__)

_LOCK_ID = 0x6543_0A1A  # advisory lock serialising migrations of the alarm tables

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "alarm events and deliveries",
        (
            """CREATE TABLE IF NOT EXISTS alarm_events (
                event_id text PRIMARY KEY,
                alarm_id text NOT NULL,
                site text NOT NULL,
                bed text NOT NULL,
                kind text NOT NULL,
                priority text NOT NULL,
                category text NOT NULL,
                state text NOT NULL,
                time timestamptz NOT NULL,
                actor text NOT NULL,
                reason text NOT NULL,
                audio_paused_until timestamptz,
                recorded timestamptz NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS alarm_events_alarm ON alarm_events (alarm_id, time)",
            """CREATE TABLE IF NOT EXISTS alarm_deliveries (
                key text PRIMARY KEY,
                alarm_id text NOT NULL,
                recipient text NOT NULL,
                channel text NOT NULL,
                address text NOT NULL,
                enqueued timestamptz NOT NULL,
                sent timestamptz,
                delivered timestamptz,
                acknowledged timestamptz,
                acknowledged_by text,
                attempts integer NOT NULL,
                last_error text NOT NULL,
                failed timestamptz,
                cancelled timestamptz)""",
            "CREATE INDEX IF NOT EXISTS alarm_deliveries_alarm ON alarm_deliveries (alarm_id)",
        ),
    ),
)

_INSERT_EVENT = """INSERT INTO alarm_events (event_id, alarm_id, site, bed, kind, priority,
    category, state, time, actor, reason, audio_paused_until, recorded)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (event_id) DO NOTHING"""

_UPSERT_DELIVERY = """INSERT INTO alarm_deliveries AS d (key, alarm_id, recipient, channel,
    address, enqueued, sent, delivered, acknowledged, acknowledged_by, attempts, last_error,
    failed, cancelled) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (key) DO UPDATE SET
        sent = coalesce(d.sent, excluded.sent),
        delivered = coalesce(d.delivered, excluded.delivered),
        acknowledged = coalesce(d.acknowledged, excluded.acknowledged),
        acknowledged_by = coalesce(d.acknowledged_by, excluded.acknowledged_by),
        attempts = greatest(d.attempts, excluded.attempts),
        last_error = excluded.last_error,
        failed = coalesce(d.failed, excluded.failed),
        cancelled = coalesce(d.cancelled, excluded.cancelled)"""


def _ts(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, UTC)


def _unavailable(exc: BaseException) -> StorageUnavailable:
    return StorageUnavailable(f"database unavailable: {str(exc).strip()[:200]}")


class AlarmStore:
    """The alarm tables in PostgreSQL. Connects per call, so an outage in between costs nothing
    but that call: it raises :class:`StorageUnavailable` and the outbox keeps the rows."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._migrated = False

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self._url, connect_timeout=max(1, round(self._connect_timeout_s))
        )

    async def migrate(self) -> list[int]:
        """Apply the alarm migrations not yet applied; returns their numbers."""
        applied: list[int] = []
        try:
            async with await self._connect() as conn:
                await conn.set_autocommit(True)
                await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
                try:
                    await conn.execute(
                        """CREATE TABLE IF NOT EXISTS alarm_schema_migrations (
                            version integer PRIMARY KEY, name text NOT NULL,
                            applied_at timestamptz NOT NULL DEFAULT now())"""
                    )
                    cur = await conn.execute("SELECT version FROM alarm_schema_migrations")
                    done = {row[0] for row in await cur.fetchall()}
                    for version, name, statements in MIGRATIONS:
                        if version in done:
                            continue
                        async with conn.transaction():
                            for stmt in statements:
                                await conn.execute(stmt)
                            await conn.execute(
                                "INSERT INTO alarm_schema_migrations (version, name) "
                                "VALUES (%s, %s)",
                                (version, name),
                            )
                        applied.append(version)
                        log.info("alarm tables: applied migration %d (%s)", version, name)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc
        self._migrated = True
        return applied

    async def write(
        self, events: Sequence[StoredEvent], deliveries: Sequence[DeliveryRecord]
    ) -> None:
        """Store events and delivery receipts in one transaction (idempotent)."""
        if not self._migrated:
            await self.migrate()
        try:
            async with await self._connect() as conn, conn.cursor() as cur:
                if events:
                    await cur.executemany(
                        _INSERT_EVENT,
                        [
                            (
                                s.event_id,
                                s.event.alarm_id,
                                s.event.bed.site,
                                s.event.bed.bed,
                                s.event.kind,
                                s.event.priority.value,
                                s.event.category.value,
                                s.event.state.value,
                                _ts(s.event.time_us),
                                s.event.actor,
                                s.event.reason,
                                _ts(s.event.audio_paused_until_us),
                                _ts(s.recorded_us),
                            )
                            for s in events
                        ],
                    )
                if deliveries:
                    await cur.executemany(
                        _UPSERT_DELIVERY,
                        [
                            (
                                d.key,
                                d.alarm_id,
                                d.recipient,
                                d.channel,
                                d.address,
                                _ts(d.enqueued_us),
                                _ts(d.sent_us),
                                _ts(d.delivered_us),
                                _ts(d.acknowledged_us),
                                d.acknowledged_by,
                                d.attempts,
                                d.last_error,
                                _ts(d.failed_us),
                                _ts(d.cancelled_us),
                            )
                            for d in deliveries
                        ],
                    )
                # leaving the connection block commits; an error there rolls back and raises
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc


async def run_copy(
    outbox: Outbox,
    store: AlarmStore,
    *,
    interval_s: float = 1.0,
    retry_min_s: float = 0.5,
    retry_max_s: float = 30.0,
) -> None:
    """Copy the outbox to the central database every ``interval_s`` until cancelled; while the
    database is away, wait with jittered exponential backoff and keep everything local."""
    backoff = Backoff(retry_min_s, retry_max_s)
    available = True
    while True:
        try:
            n_events, n_deliveries = await outbox.copy_to_store(store)
        except StorageUnavailable as exc:
            if available:
                log.warning("alarm store unavailable, the outbox keeps everything: %s", exc)
            available = False
            await asyncio.sleep(backoff.next_s())
            continue
        if not available:
            log.info("alarm store available again")
        available = True
        backoff.reset()
        if n_events or n_deliveries:
            log.debug("copied %d alarm events and %d receipts", n_events, n_deliveries)
        await asyncio.sleep(interval_s)
