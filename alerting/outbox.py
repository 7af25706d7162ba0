"""The durable local outbox: every alarm event and every notification is written here before any
delivery is tried, so alarms still go out while the central database is down and after a crash.

One SQLite file local to the engine, in WAL mode with ``synchronous=FULL``: each call below is
one short transaction that is on disk (fsynced) when the call returns. The tables:

- ``alarm_events``: the audit trail, every :class:`AlarmEvent` in the order it was recorded
  (who changed the alarm, when, why). Recording the same event twice stores it once.
- ``deliveries``: one row per :class:`Notification`, keyed by its idempotency ``key``, with its
  receipts: when it was enqueued, first sent, delivered, acknowledged (and by whom), how many
  attempts were made, the last error, and whether it was given up or cancelled. Enqueuing a key
  twice stores it once; a delivered key is never handed out for sending again.
- ``escalations``: where each alarm's escalation stands, so it resumes after a restart.

:meth:`Outbox.copy_to_store` copies what the central store (the alarm tables of
:mod:`eicu.store`) has not seen yet, and :func:`run_copy` does so in a loop; rows are marked
copied only after the central database has committed them. Delivery is at least once towards
the receiver (a crash between the receiver's acceptance and the local commit repeats that one
send), which is why every channel carries the idempotency key for the receiver to drop a
repeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eicu.alarm_model import (
    AlarmEvent,
    AlarmState,
    Category,
    DeliveryRecord,
    Notification,
    Priority,
    StoredEvent,
    event_id,
)
from eicu.backoff import Backoff
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.errors import StorageUnavailable
from eicu.models import BedKey

if TYPE_CHECKING:
    from eicu.store.base import AlarmRepository

__all__ = [
    "DeliveryRecord",
    "EscalationState",
    "Outbox",
    "StoredEvent",
    "event_id",
    "run_copy",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS alarm_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        alarm_id TEXT NOT NULL,
        site TEXT NOT NULL,
        bed TEXT NOT NULL,
        kind TEXT NOT NULL,
        priority TEXT NOT NULL,
        category TEXT NOT NULL,
        state TEXT NOT NULL,
        time_us INTEGER NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL,
        audio_paused_until_us INTEGER,
        recorded_us INTEGER NOT NULL,
        copied INTEGER NOT NULL DEFAULT 0,
        published INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS alarm_events_alarm ON alarm_events (alarm_id, seq)",
    "CREATE INDEX IF NOT EXISTS alarm_events_uncopied ON alarm_events (copied, seq)",
    """CREATE TABLE IF NOT EXISTS deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        alarm_id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        channel TEXT NOT NULL,
        address TEXT NOT NULL,
        body TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        enqueued_us INTEGER NOT NULL,
        sent_us INTEGER,
        delivered_us INTEGER,
        acknowledged_us INTEGER,
        acknowledged_by TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        next_attempt_us INTEGER NOT NULL DEFAULT 0,
        failed_us INTEGER,
        cancelled_us INTEGER,
        version INTEGER NOT NULL DEFAULT 1,
        copied_version INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS deliveries_alarm ON deliveries (alarm_id, seq)",
    """CREATE TABLE IF NOT EXISTS escalations (
        alarm_id TEXT PRIMARY KEY,
        step INTEGER NOT NULL,
        step_started_us INTEGER NOT NULL,
        stopped_us INTEGER)""",
)

_OPEN = "delivered_us IS NULL AND failed_us IS NULL AND cancelled_us IS NULL"


@dataclass(frozen=True, slots=True)
class EscalationState:
    alarm_id: str
    step: int
    step_started_us: int


class Outbox:
    """The outbox file. Open with ``Outbox(path)``; close with :meth:`close` (or ``with``).
    ``clock`` stamps what is recorded or enqueued without a time of its own."""

    def __init__(self, path: Path, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = Path(path)
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"outbox {self.path}: cannot switch to WAL (got {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync at every commit
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._tx():
            for stmt in _SCHEMA:
                self._db.execute(stmt)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"outbox {self.path} has schema {version}, newer than {SCHEMA_VERSION}"
                )
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(alarm_events)")}
            if "published" not in columns:
                # Schema 1 had no publishing to the bus: what it holds counts as published, so
                # an upgraded engine does not send its whole trail again.
                self._db.execute(
                    "ALTER TABLE alarm_events ADD COLUMN published INTEGER NOT NULL DEFAULT 0"
                )
                self._db.execute("UPDATE alarm_events SET published = 1")
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS alarm_events_unpublished ON alarm_events "
                "(published, seq)"
            )
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # Called after events were added to the trail (run_copy copies them at once,
        # run_publish publishes them): see :meth:`listen`.
        self._listeners: list[Callable[[], None]] = []
        pending = self._db.execute(f"SELECT count(*) FROM deliveries WHERE {_OPEN}").fetchone()[0]
        if pending:
            log.info("outbox %s: %d deliveries pending from before", self.path, pending)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- the audit trail ------------------------------------------------------------------------

    def record(self, event: AlarmEvent, *, recorded_us: int | None = None) -> bool:
        """Append an event to the audit trail. False when this exact event was recorded before."""
        return self.record_many([event], recorded_us=recorded_us) == 1

    def record_many(self, events: Sequence[AlarmEvent], *, recorded_us: int | None = None) -> int:
        """Append events to the audit trail in one transaction (one fsync however many there
        are); returns how many were not recorded before."""
        at_us = self._clock.now_us() if recorded_us is None else recorded_us
        rows = [
            (
                event_id(event),
                event.alarm_id,
                event.bed.site,
                event.bed.bed,
                event.kind,
                event.priority.value,
                event.category.value,
                event.state.value,
                event.time_us,
                event.actor,
                event.reason,
                event.audio_paused_until_us,
                at_us,
            )
            for event in events
        ]
        if not rows:
            return 0
        with self._tx() as db:
            before = db.total_changes
            db.executemany(
                """INSERT OR IGNORE INTO alarm_events (event_id, alarm_id, site, bed, kind,
                    priority, category, state, time_us, actor, reason, audio_paused_until_us,
                    recorded_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                rows,
            )
            added = db.total_changes - before
        if added:
            for listener in self._listeners:
                listener()
        return added

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever events are added to the trail; returns what undoes it."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def events(
        self, alarm_id: str | None = None, *, started_since_us: int | None = None
    ) -> list[StoredEvent]:
        """The audit trail (of one alarm, or of all), in the order it was recorded; with
        ``started_since_us``, only the events of alarms whose first event is that late."""
        if started_since_us is not None and alarm_id is None:
            rows = self._db.execute(
                """SELECT * FROM alarm_events WHERE alarm_id IN (SELECT alarm_id FROM alarm_events
                    GROUP BY alarm_id HAVING min(time_us) >= ?) ORDER BY seq""",
                (started_since_us,),
            ).fetchall()
        elif alarm_id is None:
            rows = self._db.execute("SELECT * FROM alarm_events ORDER BY seq").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM alarm_events WHERE alarm_id = ? ORDER BY seq", (alarm_id,)
            ).fetchall()
        return [_stored_event(r) for r in rows]

    def latest_events(self, limit: int) -> list[StoredEvent]:
        """The last ``limit`` events of the audit trail, in recorded order."""
        rows = self._db.execute(
            "SELECT * FROM (SELECT * FROM alarm_events ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (limit,),
        ).fetchall()
        return [_stored_event(r) for r in rows]

    def has_event(self, event_id: str) -> bool:
        """Whether the trail holds the event of this id."""
        row = self._db.execute(
            "SELECT 1 FROM alarm_events WHERE event_id = ?", (event_id,)
        ).fetchone()
        return row is not None

    def last_event(self, alarm_id: str) -> AlarmEvent | None:
        row = self._db.execute(
            "SELECT * FROM alarm_events WHERE alarm_id = ? ORDER BY seq DESC LIMIT 1", (alarm_id,)
        ).fetchone()
        return None if row is None else _stored_event(row).event

    # --- publishing to the delivery processes -------------------------------------------------

    def unpublished(self, limit: int = 500) -> list[StoredEvent]:
        """Events not yet published to the bus (``alerting.feed.run_publish``), oldest first."""
        rows = self._db.execute(
            "SELECT * FROM alarm_events WHERE published = 0 ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [_stored_event(r) for r in rows]

    def mark_published(self, event_ids: Sequence[str]) -> None:
        """The broker took these events (their PUBACK came back)."""
        with self._tx() as db:
            db.executemany(
                "UPDATE alarm_events SET published = 1 WHERE event_id = ?",
                [(e,) for e in event_ids],
            )

    # --- notifications and their receipts -------------------------------------------------------

    def enqueue(self, notification: Notification, *, at_us: int | None = None) -> bool:
        """Store a notification before it is sent. False when its key is already stored (the
        stored one stands, whatever its state)."""
        n = notification
        with self._tx() as db:
            cur = db.execute(
                """INSERT OR IGNORE INTO deliveries (key, alarm_id, recipient, channel, address,
                    body, created_us, enqueued_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    n.key,
                    n.alarm_id,
                    n.recipient,
                    n.channel,
                    n.address,
                    json.dumps(n.body, sort_keys=True, separators=(",", ":")),
                    n.created_us,
                    self._clock.now_us() if at_us is None else at_us,
                ),
            )
        return cur.rowcount == 1

    def notification(self, key: str) -> Notification | None:
        row = self._db.execute("SELECT * FROM deliveries WHERE key = ?", (key,)).fetchone()
        return None if row is None else _notification(row)

    def pending(self, now_us: int | None = None) -> list[Notification]:
        """Notifications still to be delivered, oldest first; with ``now_us``, only those whose
        next attempt is due by then."""
        sql = f"SELECT * FROM deliveries WHERE {_OPEN}"
        args: tuple[int, ...] = ()
        if now_us is not None:
            sql += " AND next_attempt_us <= ?"
            args = (now_us,)
        return [_notification(r) for r in self._db.execute(sql + " ORDER BY seq", args)]

    def next_attempts(self) -> dict[str, int]:
        """When the next attempt of each open notification is due (0: at once), by key."""
        rows = self._db.execute(f"SELECT key, next_attempt_us FROM deliveries WHERE {_OPEN}")
        return {r["key"]: r["next_attempt_us"] for r in rows}

    def begin_attempt(self, key: str, at_us: int) -> bool:
        """Count an attempt about to be made. False (and nothing changes) when the key is unknown,
        delivered, given up or cancelled: the caller must not send it."""
        with self._tx() as db:
            cur = db.execute(
                f"""UPDATE deliveries SET attempts = attempts + 1,
                    sent_us = coalesce(sent_us, ?), version = version + 1
                    WHERE key = ? AND {_OPEN}""",
                (at_us, key),
            )
        return cur.rowcount == 1

    def mark_delivered(self, key: str, at_us: int) -> bool:
        """The receiver took the notification. False when it was already marked delivered."""
        with self._tx() as db:
            cur = db.execute(
                """UPDATE deliveries SET delivered_us = ?, last_error = '', version = version + 1
                    WHERE key = ? AND delivered_us IS NULL""",
                (at_us, key),
            )
        return cur.rowcount == 1

    def mark_failed(self, key: str, error: str, *, at_us: int, retry_at_us: int | None) -> None:
        """An attempt failed. With ``retry_at_us`` the notification stays pending until then;
        without, it is given up (the receiver refused it for good)."""
        with self._tx() as db:
            if retry_at_us is None:
                db.execute(
                    f"""UPDATE deliveries SET last_error = ?, failed_us = ?,
                        version = version + 1 WHERE key = ? AND {_OPEN}""",
                    (error[:500], at_us, key),
                )
            else:
                db.execute(
                    f"""UPDATE deliveries SET last_error = ?, next_attempt_us = ?,
                        version = version + 1 WHERE key = ? AND {_OPEN}""",
                    (error[:500], retry_at_us, key),
                )

    def mark_acknowledged(self, key: str, by: str, at_us: int) -> bool:
        """The recipient acknowledged the notification. The first acknowledgement stands."""
        with self._tx() as db:
            cur = db.execute(
                """UPDATE deliveries SET acknowledged_us = ?, acknowledged_by = ?,
                    version = version + 1 WHERE key = ? AND acknowledged_us IS NULL""",
                (at_us, by, key),
            )
        return cur.rowcount == 1

    def cancel(self, alarm_id: str, at_us: int) -> int:
        """Cancel the undelivered pages of an alarm (it was acknowledged or cleared). The
        messages that publish its changes to the bed (key ``{alarm_id}:state:...``) still go."""
        with self._tx() as db:
            cur = db.execute(
                f"""UPDATE deliveries SET cancelled_us = ?, version = version + 1
                    WHERE alarm_id = ? AND {_OPEN}
                    AND substr(key, length(alarm_id) + 1, 7) != ':state:'""",
                (at_us, alarm_id),
            )
        return cur.rowcount

    def receipt(self, key: str) -> DeliveryRecord | None:
        row = self._db.execute("SELECT * FROM deliveries WHERE key = ?", (key,)).fetchone()
        return None if row is None else _record(row)

    def receipts(self, alarm_id: str | None = None) -> list[DeliveryRecord]:
        if alarm_id is None:
            rows = self._db.execute("SELECT * FROM deliveries ORDER BY seq").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE alarm_id = ? ORDER BY seq", (alarm_id,)
            ).fetchall()
        return [_record(r) for r in rows]

    # --- escalation progress --------------------------------------------------------------------

    def save_escalation(self, alarm_id: str, step: int, step_started_us: int) -> None:
        with self._tx() as db:
            db.execute(
                """INSERT INTO escalations (alarm_id, step, step_started_us) VALUES (?, ?, ?)
                    ON CONFLICT (alarm_id) DO UPDATE SET step = excluded.step,
                    step_started_us = excluded.step_started_us
                    WHERE escalations.stopped_us IS NULL""",
                (alarm_id, step, step_started_us),
            )

    def stop_escalation(self, alarm_id: str, at_us: int) -> None:
        with self._tx() as db:
            db.execute(
                """INSERT INTO escalations (alarm_id, step, step_started_us, stopped_us)
                    VALUES (?, -1, ?, ?) ON CONFLICT (alarm_id) DO UPDATE
                    SET stopped_us = coalesce(escalations.stopped_us, excluded.stopped_us)""",
                (alarm_id, at_us, at_us),
            )

    def reopen_escalation(self, alarm_id: str) -> None:
        """An alarm handed over and taken back escalates again from here."""
        with self._tx() as db:
            db.execute("DELETE FROM escalations WHERE alarm_id = ?", (alarm_id,))

    def escalation_stopped(self, alarm_id: str) -> bool:
        row = self._db.execute(
            "SELECT stopped_us FROM escalations WHERE alarm_id = ?", (alarm_id,)
        ).fetchone()
        return row is not None and row["stopped_us"] is not None

    def open_escalations(self) -> list[EscalationState]:
        rows = self._db.execute(
            "SELECT * FROM escalations WHERE stopped_us IS NULL ORDER BY step_started_us"
        ).fetchall()
        return [EscalationState(r["alarm_id"], r["step"], r["step_started_us"]) for r in rows]

    def unescalated_alarms(self) -> list[str]:
        """Alarms with recorded events but no escalation yet (a crash came in between)."""
        rows = self._db.execute(
            """SELECT alarm_id FROM alarm_events WHERE alarm_id NOT IN
                (SELECT alarm_id FROM escalations) GROUP BY alarm_id ORDER BY min(seq)"""
        ).fetchall()
        return [r["alarm_id"] for r in rows]

    # --- copying to the central database --------------------------------------------------------

    def uncopied(self, limit: int = 1000) -> tuple[list[StoredEvent], list[DeliveryRecord]]:
        """Events and delivery receipts that the central database has not seen in this form."""
        events = [
            _stored_event(r)
            for r in self._db.execute(
                "SELECT * FROM alarm_events WHERE copied = 0 ORDER BY seq LIMIT ?", (limit,)
            )
        ]
        deliveries = [
            _record(r)
            for r in self._db.execute(
                "SELECT * FROM deliveries WHERE version > copied_version ORDER BY seq LIMIT ?",
                (limit,),
            )
        ]
        return events, deliveries

    async def copy_to_store(self, store: AlarmRepository, *, batch: int = 1000) -> tuple[int, int]:
        """Copy events and receipts not yet in the central database; returns how many of each.

        Raises :class:`~eicu.errors.StorageUnavailable` when the database cannot be reached; then
        nothing is marked and the next call copies it all. A receipt that changes while it is
        being copied is copied again next time.
        """
        n_events = n_deliveries = 0
        while True:
            versions = {
                r["key"]: r["version"]
                for r in self._db.execute(
                    "SELECT key, version FROM deliveries WHERE version > copied_version "
                    "ORDER BY seq LIMIT ?",
                    (batch,),
                )
            }
            events, deliveries = self.uncopied(batch)
            if not events and not deliveries:
                return n_events, n_deliveries
            await store.write_alarms(events, deliveries)
            with self._tx() as db:
                db.executemany(
                    "UPDATE alarm_events SET copied = 1 WHERE event_id = ?",
                    [(e.event_id,) for e in events],
                )
                db.executemany(
                    "UPDATE deliveries SET copied_version = max(copied_version, ?) WHERE key = ?",
                    [(versions.get(d.key, 0), d.key) for d in deliveries],
                )
            n_events += len(events)
            n_deliveries += len(deliveries)


async def run_copy(
    outbox: Outbox,
    store: AlarmRepository,
    *,
    interval_s: float = 1.0,
    retry_min_s: float = 0.5,
    retry_max_s: float = 30.0,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Copy the outbox to the store as soon as events are recorded and every ``interval_s``
    (of ``clock``) until cancelled (receipts change without an event); while the database is
    away, wait with jittered exponential backoff and keep everything local. An event reaches
    the store within one write of being recorded, so a worker killed right after it leaves it
    there for the worker that takes its beds over."""
    if not (interval_s > 0):
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    backoff = Backoff(retry_min_s, retry_max_s)
    recorded = asyncio.Event()
    unlisten = outbox.listen(recorded.set)
    try:
        await _copy_loop(outbox, store, recorded, backoff, interval_s, clock)
    finally:
        unlisten()


async def _copy_loop(
    outbox: Outbox,
    store: AlarmRepository,
    recorded: asyncio.Event,
    backoff: Backoff,
    interval_s: float,
    clock: Clock,
) -> None:
    available = True
    while True:
        recorded.clear()  # what is recorded from now on is copied by the next pass
        try:
            n_events, n_deliveries = await outbox.copy_to_store(store)
        except StorageUnavailable as exc:
            if available:
                log.warning("alarm tables unavailable, the outbox keeps everything: %s", exc)
            available = False
            await clock.sleep(backoff.next_s())
            continue
        if not available:
            log.info("alarm tables available again")
        available = True
        backoff.reset()
        if n_events or n_deliveries:
            log.debug("copied %d alarm events and %d receipts", n_events, n_deliveries)
        await clock.wait(recorded, interval_s)


def _stored_event(row: sqlite3.Row) -> StoredEvent:
    event = AlarmEvent(
        alarm_id=row["alarm_id"],
        bed=BedKey(row["site"], row["bed"]),
        kind=row["kind"],
        priority=Priority(row["priority"]),
        category=Category(row["category"]),
        state=AlarmState(row["state"]),
        time_us=row["time_us"],
        actor=row["actor"],
        reason=row["reason"],
        audio_paused_until_us=row["audio_paused_until_us"],
    )
    return StoredEvent(row["event_id"], event, row["recorded_us"])


def _notification(row: sqlite3.Row) -> Notification:
    body: dict[str, Any] = json.loads(row["body"])
    return Notification(
        key=row["key"],
        alarm_id=row["alarm_id"],
        recipient=row["recipient"],
        channel=row["channel"],
        address=row["address"],
        body=body,
        created_us=row["created_us"],
    )


def _record(row: sqlite3.Row) -> DeliveryRecord:
    return DeliveryRecord(
        key=row["key"],
        alarm_id=row["alarm_id"],
        recipient=row["recipient"],
        channel=row["channel"],
        address=row["address"],
        enqueued_us=row["enqueued_us"],
        sent_us=row["sent_us"],
        delivered_us=row["delivered_us"],
        acknowledged_us=row["acknowledged_us"],
        acknowledged_by=row["acknowledged_by"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        failed_us=row["failed_us"],
        cancelled_us=row["cancelled_us"],
    )
