"""The embedded store: SQLite behind the same interface, so ``eicu demo`` needs no server.

Times are integer microseconds. Same tables and keys as PostgreSQL; writes are idempotent
(``INSERT OR IGNORE`` on the same unique keys). Calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from eicu.alarm_model import DeliveryRecord, StoredEvent
from eicu.codes import BY_KEY
from eicu.errors import StorageUnavailable
from eicu.models import Batch, BedKey
from eicu.store.base import (
    ALARM_DELIVERY_COLUMNS,
    ALARM_EVENT_COLUMNS,
    STATS_SQL,
    BedDevice,
    CallRecord,
    LatestValue,
    NumericSample,
    TrendPoint,
    WaveformWindow,
    alarm_delivery_rows,
    alarm_event_rows,
    bed_device_records,
    bed_devices_query,
    beds_in,
    call_records,
    check_bucket_s,
    delivery_records,
    device_rows,
    last_sequence_doc,
    latest_doc,
    minute_ceil_us,
    numeric_rows,
    numeric_samples,
    stats_doc,
    status_rows,
    stored_events,
    stored_sequence_doc,
    waveform_rows,
    window_from_blocks,
)
from eicu.store.patients import PatientMethods, Steps, violation
from eicu.store.patients import tables as patient_tables
from eicu.store.segments import decode_blocks
from eicu.store.sessions import TABLES as session_tables
from eicu.store.sessions import SessionMethods

T = TypeVar("T")
CALL_COLUMNS = (
    "call_id, site, bed, caller, cart, alarm_id, started, answered, ended, outcome, end_reason, "
    "ended_by"
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS bed_devices (site TEXT NOT NULL, bed TEXT NOT NULL,
        device_id TEXT NOT NULL, id_type TEXT NOT NULL, first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL, PRIMARY KEY (site, bed, device_id, id_type))""",
    """CREATE TABLE IF NOT EXISTS beds (bed_id INTEGER PRIMARY KEY, site TEXT NOT NULL,
        bed TEXT NOT NULL, UNIQUE (site, bed))""",
    """CREATE TABLE IF NOT EXISTS numerics (time INTEGER NOT NULL, bed_id INTEGER NOT NULL,
        code INTEGER NOT NULL, value REAL, seq INTEGER NOT NULL, received INTEGER NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS numerics_key ON numerics (bed_id, code, time, seq)",
    """CREATE TABLE IF NOT EXISTS waveforms (time INTEGER NOT NULL, bed_id INTEGER NOT NULL,
        seq INTEGER NOT NULL, n_frames INTEGER NOT NULL, duration_us INTEGER NOT NULL,
        n_samples INTEGER NOT NULL,
        data BLOB NOT NULL, received INTEGER NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS waveforms_key ON waveforms (bed_id, time, seq)",
    """CREATE TABLE IF NOT EXISTS status_events (time INTEGER NOT NULL, site TEXT NOT NULL,
        bed TEXT NOT NULL DEFAULT '', gateway TEXT NOT NULL DEFAULT '', state TEXT NOT NULL,
        beds TEXT NOT NULL DEFAULT '', device_time INTEGER)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS status_events_key
        ON status_events (site, bed, gateway, time, state)""",
    """CREATE TABLE IF NOT EXISTS dead_letters (received INTEGER NOT NULL, topic TEXT NOT NULL,
        reason TEXT NOT NULL, detail TEXT NOT NULL, payload BLOB NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_key ON dead_letters (received, topic, reason)",
    """CREATE TABLE IF NOT EXISTS consult_calls (call_id TEXT PRIMARY KEY, site TEXT NOT NULL,
        bed TEXT NOT NULL, caller TEXT NOT NULL, cart TEXT NOT NULL DEFAULT '',
        alarm_id TEXT NOT NULL DEFAULT '', started INTEGER NOT NULL, answered INTEGER,
        ended INTEGER, outcome TEXT, end_reason TEXT NOT NULL DEFAULT '',
        ended_by TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX IF NOT EXISTS consult_calls_bed ON consult_calls (site, bed, started)",
    # The alarm audit trail and delivery receipts (see eicu.store.schema, migration 4).
    """CREATE TABLE IF NOT EXISTS alarm_events (event_id TEXT PRIMARY KEY,
        alarm_id TEXT NOT NULL, site TEXT NOT NULL, bed TEXT NOT NULL, kind TEXT NOT NULL,
        priority TEXT NOT NULL, category TEXT NOT NULL, state TEXT NOT NULL,
        time INTEGER NOT NULL, actor TEXT NOT NULL, reason TEXT NOT NULL,
        audio_paused_until INTEGER, recorded INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS alarm_events_alarm ON alarm_events (alarm_id, time)",
    "CREATE INDEX IF NOT EXISTS alarm_events_time ON alarm_events (time)",
    """CREATE TABLE IF NOT EXISTS alarm_deliveries (key TEXT PRIMARY KEY,
        alarm_id TEXT NOT NULL, recipient TEXT NOT NULL, channel TEXT NOT NULL,
        address TEXT NOT NULL, enqueued INTEGER NOT NULL, sent INTEGER, delivered INTEGER,
        acknowledged INTEGER, acknowledged_by TEXT, attempts INTEGER NOT NULL,
        last_error TEXT NOT NULL, failed INTEGER, cancelled INTEGER)""",
    "CREATE INDEX IF NOT EXISTS alarm_deliveries_alarm ON alarm_deliveries (alarm_id)",
    # Patients, their stays, notes and changes (eicu.store.patients; PostgreSQL's migration 5).
    *patient_tables("INTEGER PRIMARY KEY AUTOINCREMENT"),
    *session_tables,  # dashboard sessions (eicu.store.sessions; PostgreSQL's migration 6)
    """CREATE VIEW IF NOT EXISTS numerics_1m AS
        SELECT (time / 60000000) * 60000000 AS bucket, bed_id, code, avg(value) AS avg_value,
               min(value) AS min_value, max(value) AS max_value, count(value) AS n_values
        FROM numerics GROUP BY 1, 2, 3""",
)


_PLACES_EVENT = ", ".join("?" * len(ALARM_EVENT_COLUMNS.split(", ")))
_PLACES_DELIVERY = ", ".join("?" * len(ALARM_DELIVERY_COLUMNS.split(", ")))
# The merge of PostgreSQL's store (eicu.store.pg), in SQLite's words.
_UPSERT_ALARM_DELIVERIES = f"""INSERT INTO alarm_deliveries ({ALARM_DELIVERY_COLUMNS})
    VALUES ({_PLACES_DELIVERY})
    ON CONFLICT (key) DO UPDATE SET
        sent = coalesce(alarm_deliveries.sent, excluded.sent),
        delivered = coalesce(alarm_deliveries.delivered, excluded.delivered),
        acknowledged = coalesce(alarm_deliveries.acknowledged, excluded.acknowledged),
        acknowledged_by = coalesce(alarm_deliveries.acknowledged_by, excluded.acknowledged_by),
        attempts = max(alarm_deliveries.attempts, excluded.attempts),
        last_error = CASE WHEN excluded.attempts >= alarm_deliveries.attempts
                          THEN excluded.last_error ELSE alarm_deliveries.last_error END,
        failed = coalesce(alarm_deliveries.failed, excluded.failed),
        cancelled = coalesce(alarm_deliveries.cancelled, excluded.cancelled)"""


class SqliteStore(PatientMethods, SessionMethods):
    """SQLite behind the :class:`~eicu.store.base.Store` interface."""

    backend = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._bed_ids: dict[BedKey, int] = {}

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        if not url.startswith("sqlite:///"):
            raise ValueError(f"expected sqlite:///path, got {url!r}")
        return cls(url.removeprefix("sqlite:///") or ":memory:")

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                if self._conn is None:
                    raise StorageUnavailable("the SQLite store is closed")
                try:
                    return fn(self._conn)
                except sqlite3.OperationalError as exc:
                    raise StorageUnavailable(f"SQLite: {exc}") from exc

        return await asyncio.to_thread(locked)

    async def open(self) -> None:
        def connect() -> None:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            for stmt in _SCHEMA:
                conn.execute(stmt)
            self._conn = conn

        await asyncio.to_thread(connect)

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(close)

    async def _steps(self, steps: Steps) -> Any:
        """One operation of eicu.store.patients in one transaction."""

        def run(conn: sqlite3.Connection) -> Any:
            conn.execute("BEGIN IMMEDIATE")
            try:
                try:
                    sql, params = next(steps)
                    while True:
                        rows = conn.execute(sql, params).fetchall()
                        sql, params = steps.send(rows)
                except StopIteration as done:
                    conn.execute("COMMIT")
                    return done.value
            except sqlite3.IntegrityError as exc:
                conn.execute("ROLLBACK")
                raise violation(str(exc)) from exc
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        return await self._call(run)

    async def write(self, batch: Batch) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN")
            try:
                ids = self._resolve_beds(conn, beds_in(batch))
                conn.executemany(
                    "INSERT OR IGNORE INTO numerics VALUES (?, ?, ?, ?, ?, ?)",
                    numeric_rows(batch.numerics, ids),
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO waveforms VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    waveform_rows(batch.waveforms, ids),
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO status_events VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (t, site, bed or "", gw or "", state, ",".join(beds), dev)
                        for t, site, bed, gw, state, beds, dev in status_rows(batch.statuses)
                    ],
                )
                conn.executemany(
                    """INSERT INTO bed_devices VALUES (?, ?, ?, ?, ?, ?)
                       ON CONFLICT (site, bed, device_id, id_type) DO UPDATE
                       SET first_seen = min(first_seen, excluded.first_seen),
                           last_seen = max(last_seen, excluded.last_seen)""",
                    device_rows(batch.statuses),
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?)",
                    [
                        (d.received_us, d.topic, d.reason, d.detail, d.payload[:65536])
                        for d in batch.dead_letters
                    ],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._call(write)

    def _resolve_beds(self, conn: sqlite3.Connection, beds: set[BedKey]) -> dict[BedKey, int]:
        for b in beds:
            if b in self._bed_ids:
                continue
            conn.execute("INSERT OR IGNORE INTO beds (site, bed) VALUES (?, ?)", (b.site, b.bed))
            row = conn.execute(
                "SELECT bed_id FROM beds WHERE site = ? AND bed = ?", (b.site, b.bed)
            ).fetchone()
            self._bed_ids[b] = int(row[0])
        return self._bed_ids

    async def _fetch(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await self._call(lambda conn: conn.execute(query, params).fetchall())

    async def latest(self, max_age_s: float = 86_400.0) -> dict[BedKey, dict[str, LatestValue]]:
        import time

        since_us = int((time.time() - max_age_s) * 1e6)
        rows = await self._fetch(
            """SELECT b.site, b.bed, n.code, n.value, n.time FROM numerics n
               JOIN beds b USING (bed_id)
               JOIN (SELECT bed_id, code, max(time) AS t FROM numerics WHERE time > ?
                     GROUP BY bed_id, code) m
                 ON m.bed_id = n.bed_id AND m.code = n.code AND m.t = n.time
               ORDER BY n.seq""",
            (since_us,),
        )
        return latest_doc(rows)

    async def trend(
        self, bed: BedKey, key: str, start_us: int, end_us: int, bucket_s: int = 60
    ) -> list[TrendPoint]:
        # The numerics_1m view's minutes, merged, straight from the raw values: the same
        # figures, and the time range can use the numerics index.
        bucket_us = check_bucket_s(bucket_s) * 1_000_000
        rows = await self._fetch(
            """SELECT (n.time / ?) * ? AS merged, avg(n.value), min(n.value), max(n.value),
                      count(n.value)
               FROM numerics n JOIN beds b USING (bed_id)
               WHERE b.site = ? AND b.bed = ? AND n.code = ? AND n.time >= ? AND n.time < ?
               GROUP BY merged ORDER BY merged""",
            (bucket_us, bucket_us, bed.site, bed.bed, BY_KEY[key].code,
             minute_ceil_us(start_us), minute_ceil_us(end_us)),
        )  # fmt: skip
        return [TrendPoint(int(r[0]), r[1], r[2], r[3], int(r[4])) for r in rows]

    async def waveform(
        self, bed: BedKey, signal: str, start_us: int, end_us: int
    ) -> WaveformWindow:
        rows = await self._fetch(
            """SELECT w.time, w.data FROM waveforms w JOIN beds b USING (bed_id)
               WHERE b.site = ? AND b.bed = ? AND w.time >= ? AND w.time < ?
               ORDER BY w.time, w.seq""",
            (bed.site, bed.bed, start_us - 600_000_000, end_us),
        )
        pieces: list[tuple[int, object]] = []
        for t0_us, data in rows:
            pieces.extend((int(t0_us), block) for block in decode_blocks(data, only=signal))
        return window_from_blocks(signal, pieces, start_us, end_us)

    async def numerics(
        self, start_us: int, end_us: int, bed: BedKey | None = None
    ) -> list[NumericSample]:
        one = "" if bed is None else "AND b.site = ? AND b.bed = ?"
        rows = await self._fetch(
            f"""SELECT b.site, b.bed, n.code, n.value, n.time FROM numerics n
               JOIN beds b USING (bed_id) WHERE n.time >= ? AND n.time < ? {one}
               ORDER BY n.time, n.bed_id, n.seq, n.code""",
            (start_us, end_us) if bed is None else (start_us, end_us, bed.site, bed.bed),
        )
        return numeric_samples(rows)

    async def stats(self) -> dict[str, dict[str, dict[str, int]]]:
        return stats_doc(await self._fetch(STATS_SQL))

    async def dead_letter_counts(self) -> dict[str, int]:
        rows = await self._fetch("SELECT reason, count(*) FROM dead_letters GROUP BY reason")
        return {reason: int(n) for reason, n in rows}

    async def stored_sequences(
        self, since_us: int, until_us: int, beds: Collection[BedKey]
    ) -> dict[tuple[BedKey, str], frozenset[int]]:
        names = sorted(str(b) for b in beds)
        if not names:
            return {}
        chosen = f"(b.site || '/' || b.bed) IN ({', '.join('?' * len(names))})"
        rows = []
        for kind, table, frames in (
            ("numerics", "numerics", "1"),
            ("waveform", "waveforms", "t.n_frames"),
        ):
            rows += await self._fetch(
                f"""SELECT DISTINCT b.site, b.bed, '{kind}', t.seq, {frames} FROM {table} t
                    JOIN beds b USING (bed_id)
                    WHERE t.time >= ? AND t.time < ? AND {chosen}""",
                (since_us, until_us, *names),
            )
        return stored_sequence_doc(rows)

    async def last_sequences(self, since_us: int, until_us: int) -> dict[tuple[BedKey, str], int]:
        rows = []
        for kind, table, frames in (
            ("numerics", "numerics", "1"),
            ("waveform", "waveforms", "t.n_frames"),
        ):
            rows += await self._fetch(
                f"""SELECT b.site, b.bed, '{kind}', max(t.seq), {frames} FROM {table} t
                    JOIN beds b USING (bed_id)
                    JOIN (SELECT bed_id, max(time) AS newest FROM {table}
                          WHERE time >= ? AND time < ? GROUP BY bed_id) m
                      ON m.bed_id = t.bed_id AND m.newest = t.time
                    GROUP BY t.bed_id""",
                (since_us, until_us),
            )
        return last_sequence_doc(rows)

    # --- video consult audit -------------------------------------------------------------------

    async def call_started(self, call: CallRecord) -> None:
        await self._call(
            lambda conn: conn.execute(
                """INSERT OR IGNORE INTO consult_calls
                   (call_id, site, bed, caller, cart, alarm_id, started, answered, ended,
                    outcome, end_reason, ended_by)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (call.call_id, call.bed.site, call.bed.bed, call.caller, call.cart,
                 call.alarm_id, call.started_us, call.answered_us, call.ended_us, call.outcome,
                 call.end_reason, call.ended_by),
            )
        )  # fmt: skip

    async def call_ended(
        self,
        call_id: str,
        ended_us: int,
        outcome: str,
        end_reason: str,
        ended_by: str,
        answered_us: int | None = None,
    ) -> None:
        await self._call(
            lambda conn: conn.execute(
                """UPDATE consult_calls SET ended = ?, outcome = ?, end_reason = ?,
                       ended_by = ?, answered = coalesce(answered, ?)
                   WHERE call_id = ? AND ended IS NULL""",
                (ended_us, outcome, end_reason, ended_by, answered_us, call_id),
            )
        )

    async def calls(self, start_us: int, end_us: int) -> list[CallRecord]:
        rows = await self._fetch(
            f"SELECT {CALL_COLUMNS} FROM consult_calls WHERE started >= ? AND started < ? "
            "ORDER BY started, call_id",
            (start_us, end_us),
        )
        return call_records(rows)

    async def bed_devices(self, bed: BedKey | None = None) -> list[BedDevice]:
        return bed_device_records(await self._fetch(*bed_devices_query(bed, "?")))

    # --- alarm audit trail and delivery receipts -------------------------------------------------

    async def write_alarms(
        self, events: Sequence[StoredEvent], deliveries: Sequence[DeliveryRecord]
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN")
            try:
                conn.executemany(
                    f"INSERT OR IGNORE INTO alarm_events ({ALARM_EVENT_COLUMNS}) "
                    f"VALUES ({_PLACES_EVENT})",
                    alarm_event_rows(events),
                )
                conn.executemany(_UPSERT_ALARM_DELIVERIES, alarm_delivery_rows(deliveries))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._call(write)

    async def alarm_events(
        self, start_us: int, end_us: int, beds: Collection[BedKey] | None = None
    ) -> list[StoredEvent]:
        if beds is not None and not beds:
            return []
        params: tuple[object, ...] = (start_us, end_us)
        of_beds = ""
        if beds is not None:
            names = sorted(str(b) for b in beds)
            of_beds = f"AND (site || '/' || bed) IN ({', '.join('?' * len(names))}) "
            params += tuple(names)
        rows = await self._fetch(
            f"SELECT {ALARM_EVENT_COLUMNS} FROM alarm_events WHERE time >= ? AND time < ? "
            f"{of_beds}ORDER BY time, recorded, event_id",
            params,
        )
        return stored_events(rows)

    async def alarm_deliveries(self, alarm_id: str) -> list[DeliveryRecord]:
        rows = await self._fetch(
            f"SELECT {ALARM_DELIVERY_COLUMNS} FROM alarm_deliveries WHERE alarm_id = ? "
            "ORDER BY enqueued, key",
            (alarm_id,),
        )
        return delivery_records(rows)
