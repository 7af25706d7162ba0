"""The PostgreSQL store, using TimescaleDB when the extension is present.

One code path: the same tables, writes and queries either way; :mod:`eicu.store.timescale`
adds hypertables, compression, retention and the continuous aggregate when it can.

Writes go through COPY (binary) into per-connection staging tables, then
``INSERT ... ON CONFLICT DO NOTHING`` into the real tables in the same transaction, so a batch
retried after an uncertain commit stores every sample once.

The alarm audit trail and delivery receipts (:meth:`PgStore.write_alarms`) are tables of the same
schema, written through the same pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

import psycopg
import psycopg_pool
from psycopg import sql

from eicu.alarm_model import DeliveryRecord, StoredEvent
from eicu.config import StoreSettings
from eicu.errors import EicuError, SchemaError, StorageUnavailable
from eicu.metrics import StoreMetrics
from eicu.models import Batch, BedKey
from eicu.store import schema, timescale
from eicu.store.base import (
    ALARM_DELIVERY_COLUMNS,
    ALARM_DELIVERY_TIMES,
    ALARM_EVENT_COLUMNS,
    ALARM_EVENT_TIMES,
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
from eicu.store.segments import decode_blocks
from eicu.store.sessions import SessionMethods
from eicu.store.timescale import policy_from

log = logging.getLogger(__name__)

TimescaleMode = Literal["auto", "require", "off"]
_LOCK_ID = 0x6E1C0  # advisory lock that serialises migrations
_US = "TIMESTAMPTZ 'epoch' + {} * INTERVAL '1 microsecond'"
_EPOCH_US = "(extract(epoch FROM {}) * 1000000)::bigint"

_STAGE = (
    """CREATE TEMP TABLE IF NOT EXISTS stage_numerics (
        t_us bigint, bed_id integer, code smallint, value double precision, seq bigint,
        rx_us bigint) ON COMMIT DELETE ROWS""",
    """CREATE TEMP TABLE IF NOT EXISTS stage_waveforms (
        t_us bigint, bed_id integer, seq bigint, n_frames integer, duration_us integer,
        n_samples integer,
        data bytea, rx_us bigint) ON COMMIT DELETE ROWS""",
)


def _unavailable(exc: BaseException) -> StorageUnavailable:
    return StorageUnavailable(f"database unavailable: {str(exc).strip()[:200]}")


def _values(columns: str, times: frozenset[str]) -> str:
    """Placeholders for ``columns``, microsecond integers turned into timestamptz."""
    return ", ".join(_US.format("%s::bigint") if c in times else "%s" for c in columns.split(", "))


def _selected(columns: str, times: frozenset[str]) -> str:
    """``columns`` with timestamptz read back as microsecond integers."""
    return ", ".join(_EPOCH_US.format(c) if c in times else c for c in columns.split(", "))


_INSERT_ALARM_EVENTS = f"""INSERT INTO alarm_events ({ALARM_EVENT_COLUMNS})
    VALUES ({_values(ALARM_EVENT_COLUMNS, ALARM_EVENT_TIMES)})
    ON CONFLICT (event_id) DO NOTHING"""

# A receipt copied again (by this process later, or by another one holding an older or newer
# copy) merges: a time once set stays, the attempts only grow, the last error is that of the
# copy with the most attempts.
_UPSERT_ALARM_DELIVERIES = f"""INSERT INTO alarm_deliveries AS d ({ALARM_DELIVERY_COLUMNS})
    VALUES ({_values(ALARM_DELIVERY_COLUMNS, ALARM_DELIVERY_TIMES)})
    ON CONFLICT (key) DO UPDATE SET
        sent = coalesce(d.sent, excluded.sent),
        delivered = coalesce(d.delivered, excluded.delivered),
        acknowledged = coalesce(d.acknowledged, excluded.acknowledged),
        acknowledged_by = coalesce(d.acknowledged_by, excluded.acknowledged_by),
        attempts = greatest(d.attempts, excluded.attempts),
        last_error = CASE WHEN excluded.attempts >= d.attempts
                          THEN excluded.last_error ELSE d.last_error END,
        failed = coalesce(d.failed, excluded.failed),
        cancelled = coalesce(d.cancelled, excluded.cancelled)"""


class PgStore(PatientMethods, SessionMethods):
    """PostgreSQL (and TimescaleDB) behind the :class:`~eicu.store.base.Store` interface."""

    def __init__(
        self,
        url: str,
        *,
        settings: StoreSettings | None = None,
        timescale_mode: TimescaleMode | None = None,
        retention: timescale.RetentionPolicy | None = None,
        metrics: StoreMetrics | None = None,
        pool_max: int = 4,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._url = url
        self._settings = settings or StoreSettings()
        self._mode = timescale_mode or self._settings.timescale
        self._retention = retention or policy_from(self._settings)
        self.metrics = metrics or StoreMetrics()
        self._lag_us = int(self._settings.device_time_max_lag_h * 3600e6)
        self._lead_us = int(self._settings.device_time_max_lead_s * 1e6)
        self._connect_timeout_s = connect_timeout_s
        self._pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_max,
            open=False,
            configure=self._configure,
            kwargs={"connect_timeout": max(1, int(connect_timeout_s))},
            timeout=connect_timeout_s,
            reconnect_timeout=0,  # never give up reconnecting in the background
        )
        self._bed_ids: dict[BedKey, int] = {}
        self._job_failures: dict[int, int] = {}
        self._refresh_task: asyncio.Task[None] | None = None
        self._refresh_lock = asyncio.Lock()
        self._maintain_task: asyncio.Task[None] | None = None
        self._migrated = False  # the schema is up to date (open succeeded)
        self.backend = "postgresql"

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool and apply pending migrations. With the database down this raises
        :class:`StorageUnavailable` and leaves the pool open, reconnecting: call it again."""
        try:
            # Not wait=True: a pool that times out waiting is closed and cannot be opened again.
            await self._pool.open()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc
        await self.migrate()
        if self.backend == "timescaledb":
            self._schedule_refresh()  # what an earlier run left pending
        self._maintain_task = asyncio.create_task(self._maintain_loop(), name="store-maintenance")

    async def close(self) -> None:
        for task in (self._maintain_task, self._refresh_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, EicuError):
                    await task
        await self._pool.close()

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.set_autocommit(True)
        for stmt in _STAGE:
            await conn.execute(stmt)
        await conn.set_autocommit(False)

    async def migrate(self) -> list[int]:
        """Apply pending migrations and bring TimescaleDB's chunk intervals and policies in line
        with the settings (idempotent, serialised by an advisory lock)."""
        try:
            async with self._pool.connection() as conn:
                await conn.set_autocommit(True)
                await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
                try:
                    applied = await self._migrate(conn)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
                    await conn.set_autocommit(False)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc
        self._migrated = True
        return applied

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> list[int]:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()
        done = {r[0] for r in rows}
        if done and max(done) > schema.LATEST_VERSION:
            raise SchemaError(
                f"database schema is at version {max(done)}, "
                f"this eicu knows up to {schema.LATEST_VERSION}"
            )
        # Decided before any migration: a server with TimescaleDB installed but not preloaded
        # ends the connection on CREATE EXTENSION, and a database using it cannot fall back.
        row = await (await conn.execute(timescale.SERVER_STATE)).fetchone()
        available, preloaded, installed = (bool(v) for v in row) if row else (False,) * 3
        plan, why = timescale.plan(self._mode, available, preloaded, installed)
        if plan == "timescale":
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        applied = []
        for m in schema.MIGRATIONS:
            if m.version in done:
                continue
            async with conn.transaction():
                for stmt in m.statements:
                    await conn.execute(stmt)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (m.version, m.name),
                )
            applied.append(m.version)
            log.info("applied schema migration %d: %s", m.version, m.name)
        if plan == "timescale":
            await self._setup_timescale(conn)
            self.backend = "timescaledb"
        else:
            if self._mode == "auto" and available:
                log.warning("using plain PostgreSQL: %s", why)
            else:
                log.info("using plain PostgreSQL: %s", why)
            await conn.execute(schema.PLAIN_TRENDS_VIEW)
            self.backend = "postgresql"
        return applied

    async def _setup_timescale(self, conn: psycopg.AsyncConnection[Any]) -> None:
        p = self._retention
        kind = await (
            await conn.execute("SELECT relkind FROM pg_class WHERE relname = 'numerics_1m'")
        ).fetchone()
        is_cagg = await (await conn.execute(timescale.IS_CAGG)).fetchone()
        if kind is not None and not (is_cagg and is_cagg[0]):
            # The plain-PostgreSQL view of an earlier start without TimescaleDB.
            await conn.execute("DROP VIEW numerics_1m")
        chunks = (("numerics", p.numerics_chunk_s), ("waveforms", p.waveforms_chunk_s))
        for stmt, (_, chunk_s) in zip(timescale.HYPERTABLES, chunks, strict=True):
            await conn.execute(stmt, (chunk_s,))
        for table, chunk_s in chunks:  # applies to the chunks created from now on
            await conn.execute(
                "SELECT set_chunk_time_interval(%s, %s * INTERVAL '1 second')", (table, chunk_s)
            )
        row = await (await conn.execute(timescale.COMPRESSION_ENABLED, ("numerics",))).fetchone()
        if not (row and row[0]):
            await conn.execute(timescale.NUMERICS_COMPRESSION)
        await conn.execute(timescale.CAGG)
        await conn.execute(timescale.CAGG_INDEX)
        row = await (await conn.execute(timescale.CAGG_COMPRESSED)).fetchone()
        if not (row and row[0]):
            await conn.execute(timescale.CAGG_COMPRESSION)
        await conn.execute(timescale.PENDING_TABLE)
        for job in timescale.jobs(p):
            await self._reconcile_job(conn, job)

    async def _reconcile_job(self, conn: psycopg.AsyncConnection[Any], job: timescale.Job) -> None:
        """Create, replace or remove one background job so that it matches its settings."""
        row = await (await conn.execute(timescale.JOB_CONFIG, (job.proc, job.table))).fetchone()
        if row is None and job.config is None:
            return
        if row is not None:
            _, config, schedule_s = row
            current = {}
            for key in job.config or {}:
                raw = (config or {}).get(key)
                seconds = None
                if raw is not None:
                    cur = await conn.execute(timescale.INTERVAL_S, (str(raw),))
                    seconds = (await cur.fetchone() or (None,))[0]
                current[key] = seconds
            if (
                job.config is not None
                and current == job.config
                and (job.schedule_s is None or schedule_s == job.schedule_s)
            ):
                return
            await conn.execute(timescale.REMOVE[job.proc], (job.table,))
            if job.config is None:
                log.info("removed %s on %s", job.proc, job.table)
                return
            log.info("%s on %s: %s -> %s (seconds)", job.proc, job.table, current, job.config)
        stmt, params = timescale.add_job_sql(job)
        await conn.execute(stmt, params)

    # --- housekeeping ----------------------------------------------------------------------------

    async def _maintain_loop(self) -> None:
        # The first round soon after the start (job health on the metrics from the outset),
        # though not within a short command's lifetime.
        delay_s = min(self._settings.maintenance_interval_s, 10.0)
        while True:
            await asyncio.sleep(delay_s)
            delay_s = self._settings.maintenance_interval_s
            try:
                await self.maintain()
            except StorageUnavailable as exc:
                log.warning("store maintenance skipped: %s", exc)
            except psycopg.Error as exc:
                log.error("store maintenance failed: %s", str(exc).strip()[:300])

    async def maintain(self) -> None:
        """One round of housekeeping: backfilled trends refreshed, old status events and dead
        letters removed, TimescaleDB job health read into the metrics (and logged on failure).
        Runs every ``maintenance_interval_s`` while the store is open."""
        await self.refresh_trends()
        await self.prune()
        await self.check_jobs()

    async def prune(self) -> dict[str, int]:
        """Remove status events and dead letters older than their retention."""
        keep_s = self._retention.events_keep_s
        removed = {}
        for table, column in (("status_events", "time"), ("dead_letters", "received")):
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    cur = await conn.execute(
                        sql.SQL("DELETE FROM {} WHERE {} < now() - %s * INTERVAL '1 second'")
                        .format(sql.Identifier(table), sql.Identifier(column))
                        .as_string(None),
                        (keep_s,),
                    )
                    removed[table] = cur.rowcount
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                raise _unavailable(exc) from exc
            if removed[table]:
                self.metrics.pruned.labels(table=table).inc(removed[table])
        return removed

    async def check_jobs(self) -> list[tuple[Any, ...]]:
        """Read TimescaleDB's job statistics into the metrics; log each job that failed since
        the last check. Returns the rows (job id, proc, table, last run, last success, status,
        runs, failures)."""
        if self.backend != "timescaledb":
            return []
        rows = await self._fetch(timescale.JOB_STATS)
        for job_id, proc, table, last_run, last_ok, status, runs, failures in rows:
            labels = {"job": str(job_id), "proc": str(proc), "table": str(table or "")}
            # never run / never succeeded: TimescaleDB says -infinity
            if last_run is not None and math.isfinite(last_run):
                self.metrics.job_last_run.labels(**labels).set(float(last_run))
            if last_ok is not None and math.isfinite(last_ok):
                self.metrics.job_last_success.labels(**labels).set(float(last_ok))
            self.metrics.job_failures.labels(**labels).set(int(failures or 0))
            self.metrics.job_failing.labels(**labels).set(1 if status == "Failed" else 0)
            before = self._job_failures.get(job_id, 0)
            self._job_failures[job_id] = int(failures or 0)
            if int(failures or 0) > before:
                error = await self._fetch(timescale.LAST_ERROR, (job_id,))
                log.error(
                    "TimescaleDB job %s (%s on %s) failed: %d of %d runs failed, last status %s, "
                    "last error: %s (timescaledb_information.job_history)",
                    job_id, proc, table or "no table", failures, runs, status,
                    error[0][0] if error else "not recorded",
                )  # fmt: skip
        return rows

    async def refresh_trends(self) -> int:
        """Refresh the trend aggregate over the backfilled numerics waiting in
        ``trends_pending``; returns how many pending ranges were handled."""
        if self.backend != "timescaledb":
            return 0
        async with self._refresh_lock:  # one at a time in this process
            return await self._refresh_trends()

    async def _refresh_trends(self) -> int:
        try:
            async with self._pool.connection() as conn:
                await conn.set_autocommit(True)
                try:
                    cur = await conn.execute(
                        "SELECT max(id), min(lo), max(hi), count(*) FROM trends_pending"
                    )
                    last_id, lo, hi, n = await cur.fetchone() or (None, None, None, 0)
                    if last_id is None:
                        return 0
                    await conn.execute(
                        "CALL refresh_continuous_aggregate('numerics_1m', "
                        "time_bucket('1 minute', %s::timestamptz), "
                        "time_bucket('1 minute', %s::timestamptz) + INTERVAL '1 minute')",
                        (lo, hi),
                    )
                    await conn.execute("DELETE FROM trends_pending WHERE id <= %s", (last_id,))
                finally:
                    await conn.set_autocommit(False)
        except psycopg.errors.LockNotAvailable as exc:
            # Another engine (or the policy) is refreshing an overlapping window: the ranges
            # stay pending for the next round.
            log.info("trend refresh postponed: %s", str(exc).strip().splitlines()[0])
            return 0
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc
        self.metrics.trend_refreshes.inc()
        log.info("trends refreshed over backfilled numerics from %s to %s", lo, hi)
        return int(n)

    def _schedule_refresh(self) -> None:
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.create_task(self._refresh_soon(), name="trend-refresh")

    async def _refresh_soon(self) -> None:
        try:
            await self.refresh_trends()
        except StorageUnavailable as exc:  # the pending ranges stay for the next attempt
            log.warning("trend refresh postponed: %s", exc)
        except psycopg.Error as exc:
            log.error("trend refresh failed: %s", str(exc).strip()[:300])

    # --- writes ----------------------------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        late = False
        try:
            async with self._pool.connection() as conn, conn.transaction():
                bed_ids = await self._resolve_beds(conn, beds_in(batch))
                if batch.numerics:
                    late = await self._copy_numerics(conn, bed_ids, batch)
                if batch.waveforms:
                    await self._copy_waveforms(conn, bed_ids, batch)
                if batch.statuses:
                    await self._insert_statuses(conn, batch)
                if batch.dead_letters:
                    await self._insert_dead_letters(conn, batch)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc
        if late:
            self._schedule_refresh()

    async def _resolve_beds(
        self, conn: psycopg.AsyncConnection[Any], beds: set[BedKey]
    ) -> dict[BedKey, int]:
        missing = [b for b in beds if b not in self._bed_ids]
        if missing:
            cur = await conn.execute(
                """INSERT INTO beds (site, bed) SELECT * FROM unnest(%s::text[], %s::text[])
                   ON CONFLICT (site, bed) DO UPDATE SET site = EXCLUDED.site
                   RETURNING site, bed, bed_id""",
                ([b.site for b in missing], [b.bed for b in missing]),
            )
            for site, bed, bed_id in await cur.fetchall():
                self._bed_ids[BedKey(site, bed)] = bed_id
        return self._bed_ids

    def _time_sql(self, column: str) -> str:
        """The stored time: the device time, or the receipt time where the device time is
        further than the allowed lag before it (or lead after it)."""
        return f"CASE WHEN {self._distrusted(column)} THEN rx_us ELSE {column} END"

    def _distrusted(self, column: str) -> str:
        # A receipt time of 0 is unknown (frames built outside the ingest path): no check.
        return (
            f"(rx_us > 0 AND ({column} < rx_us - {self._lag_us} "
            f"OR {column} > rx_us + {self._lead_us}))"
        )

    def _device_time_sql(self, column: str) -> str:
        return f"CASE WHEN {self._distrusted(column)} THEN {_US.format(column)} END"

    async def _copy_numerics(
        self, conn: psycopg.AsyncConnection[Any], bed_ids: dict[BedKey, int], batch: Batch
    ) -> bool:
        """Stage and insert; returns whether rows older than the trends' refresh window were
        stored (their range then waits in ``trends_pending``)."""
        async with conn.cursor() as cur:
            async with cur.copy("COPY stage_numerics FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int4", "int2", "float8", "int8", "int8"])
                for row in numeric_rows(batch.numerics, bed_ids):
                    await copy.write_row(row)
            await cur.execute(
                f"""WITH ins AS (
                        INSERT INTO numerics (time, bed_id, code, value, seq, received,
                                              device_time)
                        SELECT {_US.format(self._time_sql("t_us"))}, bed_id, code, value, seq,
                               {_US.format("rx_us")}, {self._device_time_sql("t_us")}
                        FROM stage_numerics ON CONFLICT DO NOTHING
                        RETURNING bed_id, code, time, seq, value, device_time),
                    lat AS (
                        INSERT INTO latest_values AS l (bed_id, code, time, seq, value)
                        SELECT DISTINCT ON (bed_id, code) bed_id, code, time, seq, value FROM ins
                        ORDER BY bed_id, code, time DESC, seq DESC
                        ON CONFLICT (bed_id, code) DO UPDATE
                        SET time = EXCLUDED.time, seq = EXCLUDED.seq, value = EXCLUDED.value
                        WHERE (EXCLUDED.time, EXCLUDED.seq) > (l.time, l.seq)),
                    cnt AS (
                        INSERT INTO bed_counters AS c (bed_id, messages, samples)
                        SELECT bed_id, count(DISTINCT (time, seq)), count(*) FROM ins
                        GROUP BY bed_id
                        ON CONFLICT (bed_id) DO UPDATE
                        SET messages = c.messages + EXCLUDED.messages,
                            samples = c.samples + EXCLUDED.samples)
                    SELECT min(time), max(time), count(device_time),
                           min(time) < now() - %s * INTERVAL '1 second'
                    FROM ins""",
                (self._retention.late_after_s,),
            )
            lo, hi, replaced, late = await cur.fetchone() or (None, None, 0, False)
            if replaced:
                self.metrics.device_time_replaced.labels(kind="numerics").inc(replaced)
                log.warning(
                    "%d numeric values stored at their receipt time: device time more than "
                    "%.0f h before or %.0f s after it",
                    replaced, self._settings.device_time_max_lag_h,
                    self._settings.device_time_max_lead_s,
                )  # fmt: skip
            if late and self.backend == "timescaledb":
                await cur.execute(
                    """INSERT INTO trends_pending (lo, hi)
                       VALUES (%s, least(%s, now() - %s * INTERVAL '1 second'))""",
                    (lo, hi, self._retention.late_after_s - 60),
                )
                return True
        return False

    async def _copy_waveforms(
        self, conn: psycopg.AsyncConnection[Any], bed_ids: dict[BedKey, int], batch: Batch
    ) -> None:
        async with conn.cursor() as cur:
            async with cur.copy("COPY stage_waveforms FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int4", "int8", "int4", "int4", "int4", "bytea", "int8"])
                for row in waveform_rows(batch.waveforms, bed_ids):
                    await copy.write_row(row)
            # A segment redelivered after a restart may hold more frames than the one stored
            # under the same key (the first run stopped while joining it): the longer one, which
            # holds every frame of the shorter, replaces it, and the counters take the difference.
            await cur.execute(
                f"""WITH src AS (
                        SELECT DISTINCT ON (bed_id, t, seq) *
                        FROM (SELECT {_US.format(self._time_sql("t_us"))} AS t,
                                     {self._device_time_sql("t_us")} AS dev, *
                              FROM stage_waveforms) s
                        ORDER BY bed_id, t, seq, n_frames DESC),
                    old AS (
                        SELECT w.bed_id, w.time, w.seq, w.n_frames, w.n_samples
                        FROM waveforms w JOIN src
                          ON w.bed_id = src.bed_id AND w.time = src.t AND w.seq = src.seq),
                    ins AS (
                        INSERT INTO waveforms AS w (time, bed_id, seq, n_frames, duration_us,
                                                    n_samples, data, received, device_time)
                        SELECT t, bed_id, seq, n_frames, duration_us, n_samples, data,
                               {_US.format("rx_us")}, dev
                        FROM src
                        ON CONFLICT (bed_id, time, seq) DO UPDATE
                        SET n_frames = EXCLUDED.n_frames, duration_us = EXCLUDED.duration_us,
                            n_samples = EXCLUDED.n_samples, data = EXCLUDED.data
                        WHERE EXCLUDED.n_frames > w.n_frames
                        RETURNING bed_id, time, seq, n_frames, n_samples, device_time),
                    cnt AS (
                        INSERT INTO bed_counters AS c (bed_id, messages, samples)
                        SELECT i.bed_id, sum(i.n_frames - coalesce(o.n_frames, 0)),
                               sum(i.n_samples - coalesce(o.n_samples, 0))
                        FROM ins i LEFT JOIN old o USING (bed_id, time, seq) GROUP BY i.bed_id
                        ON CONFLICT (bed_id) DO UPDATE
                        SET messages = c.messages + EXCLUDED.messages,
                            samples = c.samples + EXCLUDED.samples)
                    SELECT count(device_time) FROM ins"""
            )
            replaced = await cur.fetchone()
            if replaced and replaced[0]:
                self.metrics.device_time_replaced.labels(kind="waveforms").inc(replaced[0])
                log.warning("%d waveform segments stored at their receipt time", replaced[0])

    async def _insert_statuses(self, conn: psycopg.AsyncConnection[Any], batch: Batch) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(
                f"""INSERT INTO status_events (time, site, bed, gateway, state, beds, device_time)
                    VALUES ({_US.format("%s")}, %s, %s, %s, %s, %s,
                            {_US.format("%s::bigint")})
                    ON CONFLICT DO NOTHING""",
                [
                    (t, site, bed or "", gw or "", state, beds, dev)
                    for t, site, bed, gw, state, beds, dev in status_rows(batch.statuses)
                ],
            )
            devices = device_rows(batch.statuses)
            if devices:
                await cur.executemany(
                    """INSERT INTO bed_devices VALUES (%s, %s, %s, %s, %s, %s)
                       ON CONFLICT (site, bed, device_id, id_type) DO UPDATE
                       SET first_seen = least(bed_devices.first_seen, EXCLUDED.first_seen),
                           last_seen = greatest(bed_devices.last_seen, EXCLUDED.last_seen)""",
                    devices,
                )

    async def _insert_dead_letters(self, conn: psycopg.AsyncConnection[Any], batch: Batch) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(
                f"""INSERT INTO dead_letters (received, topic, reason, detail, payload)
                    VALUES ({_US.format("%s")}, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
                [
                    (d.received_us, d.topic, d.reason, d.detail, d.payload[:65536])
                    for d in batch.dead_letters
                ],
            )

    # --- queries ---------------------------------------------------------------------------------

    async def _fetch(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchall()
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc

    async def latest(self, max_age_s: float = 86_400.0) -> dict[BedKey, dict[str, LatestValue]]:
        rows = await self._fetch(
            f"""SELECT b.site, b.bed, l.code, l.value, {_EPOCH_US.format("l.time")}
                FROM latest_values l JOIN beds b USING (bed_id)
                WHERE l.time > now() - %s * INTERVAL '1 second'""",
            (max_age_s,),
        )
        return latest_doc(rows)

    async def _bed_id(self, bed: BedKey) -> int | None:
        if bed not in self._bed_ids:
            rows = await self._fetch(
                "SELECT bed_id FROM beds WHERE site = %s AND bed = %s", (bed.site, bed.bed)
            )
            if not rows:
                return None
            self._bed_ids[bed] = int(rows[0][0])
        return self._bed_ids[bed]

    async def trend(
        self, bed: BedKey, key: str, start_us: int, end_us: int, bucket_s: int = 60
    ) -> list[TrendPoint]:
        from eicu.codes import BY_KEY

        bucket = check_bucket_s(bucket_s)
        code = BY_KEY[key].code
        # The bed's id first: a constant reaches both halves of the real-time aggregate (the
        # materialised minutes and the raw values after them), where a join would not.
        bed_id = await self._bed_id(bed)
        if bed_id is None:
            return []
        if self.backend != "timescaledb":
            # Plain PostgreSQL: numerics_1m is a view over the raw values, and a range on its
            # bucket cannot use an index; the same figures straight from the raw values can.
            rows = await self._fetch(
                f"""SELECT {_EPOCH_US.format("merged")}, avg(n.value), min(n.value),
                           max(n.value), count(n.value)
                    FROM numerics n,
                         LATERAL (SELECT date_bin(%s * INTERVAL '1 second', n.time,
                                                  TIMESTAMPTZ 'epoch') AS merged) m
                    WHERE n.bed_id = %s AND n.code = %s
                      AND n.time >= {_US.format("%s::bigint")}
                      AND n.time < {_US.format("%s::bigint")}
                    GROUP BY merged ORDER BY merged""",
                (bucket, bed_id, code, minute_ceil_us(start_us), minute_ceil_us(end_us)),
            )
            return [TrendPoint(int(r[0]), r[1], r[2], r[3], int(r[4])) for r in rows]
        rows = await self._fetch(
            f"""SELECT {_EPOCH_US.format("merged")},
                       sum(t.avg_value * t.n_values) / nullif(sum(t.n_values), 0),
                       min(t.min_value), max(t.max_value), sum(t.n_values)
                FROM numerics_1m t,
                     LATERAL (SELECT date_bin(%s * INTERVAL '1 second', t.bucket,
                                              TIMESTAMPTZ 'epoch') AS merged) m
                WHERE t.bed_id = %s AND t.code = %s
                  AND t.bucket >= {_US.format("%s::bigint")}
                  AND t.bucket < {_US.format("%s::bigint")}
                GROUP BY merged ORDER BY merged""",
            (bucket, bed_id, code, start_us, end_us),
        )
        return [TrendPoint(int(r[0]), r[1], r[2], r[3], int(r[4])) for r in rows]

    async def waveform(
        self, bed: BedKey, signal: str, start_us: int, end_us: int
    ) -> WaveformWindow:
        rows = await self._fetch(
            f"""SELECT {_EPOCH_US.format("w.time")}, w.data
                FROM waveforms w JOIN beds b USING (bed_id)
                WHERE b.site = %s AND b.bed = %s
                  AND w.time >= {_US.format("%s::bigint")} - INTERVAL '10 minutes'
                  AND w.time < {_US.format("%s::bigint")}
                ORDER BY w.time, w.seq""",
            (bed.site, bed.bed, start_us, end_us),
        )
        pieces: list[tuple[int, object]] = []
        for t0_us, data in rows:
            for block in decode_blocks(data, only=signal):
                pieces.append((int(t0_us), block))
        return window_from_blocks(signal, pieces, start_us, end_us)

    async def numerics(
        self, start_us: int, end_us: int, bed: BedKey | None = None
    ) -> list[NumericSample]:
        one = "" if bed is None else "AND b.site = %s AND b.bed = %s"
        rows = await self._fetch(
            f"""SELECT b.site, b.bed, n.code, n.value, {_EPOCH_US.format("n.time")}
                FROM numerics n JOIN beds b USING (bed_id)
                WHERE n.time >= {_US.format("%s::bigint")} AND n.time < {_US.format("%s::bigint")}
                {one} ORDER BY n.time, n.bed_id, n.seq, n.code""",
            (start_us, end_us) if bed is None else (start_us, end_us, bed.site, bed.bed),
        )
        return numeric_samples(rows)

    async def stats(self) -> dict[str, dict[str, dict[str, int]]]:
        return stats_doc(
            await self._fetch(
                """SELECT b.site, b.bed, coalesce(c.messages, 0), coalesce(c.samples, 0)
                   FROM beds b LEFT JOIN bed_counters c USING (bed_id)
                   ORDER BY b.site, b.bed"""
            )
        )

    async def dead_letter_counts(self) -> dict[str, int]:
        rows = await self._fetch("SELECT reason, count(*) FROM dead_letters GROUP BY reason")
        return {reason: int(n) for reason, n in rows}

    async def stored_sequences(
        self, since_us: int, until_us: int, beds: Collection[BedKey]
    ) -> dict[tuple[BedKey, str], frozenset[int]]:
        if not beds:
            return {}
        since, until = _US.format("%(since)s"), _US.format("%(until)s")
        rows = await self._fetch(
            f"""WITH chosen AS (
                    SELECT bed_id, site, bed FROM beds
                    WHERE (site || '/' || bed) = ANY(%(beds)s::text[]))
                SELECT c.site, c.bed, 'numerics', n.seq, 1 FROM chosen c
                  JOIN numerics n ON n.bed_id = c.bed_id
                   AND n.time >= {since} AND n.time < {until}
                  GROUP BY c.site, c.bed, n.seq
                UNION ALL
                SELECT c.site, c.bed, 'waveform', w.seq, w.n_frames FROM chosen c
                  JOIN waveforms w ON w.bed_id = c.bed_id
                   AND w.time >= {since} AND w.time < {until}""",
            {"since": since_us, "until": until_us, "beds": sorted(str(b) for b in beds)},  # type: ignore[arg-type]
        )
        return stored_sequence_doc(rows)

    async def last_sequences(self, since_us: int, until_us: int) -> dict[tuple[BedKey, str], int]:
        from eicu.codes import BY_CODE

        # One index probe per bed and code (numerics_key, waveforms_key), newest first.
        window = f"time >= {_US.format('%(since)s')} AND time < {_US.format('%(until)s')}"
        rows = await self._fetch(
            f"""SELECT b.site, b.bed, 'numerics', last.seq, 1 FROM beds b
                CROSS JOIN LATERAL (
                    SELECT n.seq, n.time FROM unnest(%(codes)s::smallint[]) c(code)
                    CROSS JOIN LATERAL (
                        SELECT seq, time FROM numerics
                        WHERE bed_id = b.bed_id AND code = c.code AND {window}
                        ORDER BY time DESC, seq DESC LIMIT 1) n
                    ORDER BY n.time DESC, n.seq DESC LIMIT 1) last
              UNION ALL
              SELECT b.site, b.bed, 'waveform', w.seq, w.n_frames FROM beds b
                CROSS JOIN LATERAL (
                    SELECT seq, n_frames FROM waveforms
                    WHERE bed_id = b.bed_id AND {window}
                    ORDER BY time DESC, seq DESC LIMIT 1) w""",
            {"since": since_us, "until": until_us, "codes": sorted(BY_CODE)},  # type: ignore[arg-type]
        )
        return last_sequence_doc(rows)

    async def storage_bytes(self) -> dict[str, int]:
        """Bytes on disk per table (hypertables included), for the benchmarks."""
        out = {}
        for table in ("numerics", "waveforms"):
            if self.backend == "timescaledb":
                q = sql.SQL("SELECT hypertable_size({})").format(sql.Literal(table))
            else:
                q = sql.SQL("SELECT pg_total_relation_size({})").format(sql.Literal(table))
            rows = await self._fetch(q.as_string(None))
            out[table] = int(rows[0][0] or 0)
        return out

    # --- archive ---------------------------------------------------------------------------------

    async def export_csv(
        self, folder: Path, before_us: int, after_us: int | None = None
    ) -> dict[str, int]:
        """Write numerics, waveform segments and status events with time in
        [``after_us``, ``before_us``) to CSV files in ``folder`` (created), one per table, so
        they can be archived before retention drops them. Returns the rows written per file.

        Waveform segments are the stored container, base64-encoded (``eicu.store.segments``
        decodes it). Times are ISO 8601 with their offset."""
        from eicu.codes import BY_CODE

        folder.mkdir(parents=True, exist_ok=True)
        names = sql.SQL(", ").join(
            sql.SQL("({}, {})").format(sql.Literal(code), sql.Literal(p.key))
            for code, p in sorted(BY_CODE.items())
        )
        window = sql.SQL("{t} < {before} AND {t} >= {after}")
        queries = {
            "numerics.csv": (
                "SELECT b.site, b.bed, coalesce(k.key, 'code' || n.code) AS parameter, n.value, "
                "n.time, n.seq, n.received, n.device_time "
                "FROM numerics n JOIN beds b USING (bed_id) "
                "LEFT JOIN (VALUES {names}) k(code, key) ON k.code = n.code WHERE {w} "
                "ORDER BY n.time, b.site, b.bed, n.seq, n.code",
                "n.time",
            ),
            "waveforms.csv": (
                "SELECT b.site, b.bed, w.time, w.seq, w.n_frames, w.duration_us, w.n_samples, "
                "w.received, w.device_time, encode(w.data, 'base64') AS data "
                "FROM waveforms w JOIN beds b USING (bed_id) WHERE {w} "
                "ORDER BY w.time, b.site, b.bed, w.seq",
                "w.time",
            ),
            "status_events.csv": (
                "SELECT time, site, bed, gateway, state, beds, device_time FROM status_events "
                "WHERE {w} ORDER BY time, site, bed",
                "time",
            ),
        }
        written = {}
        try:
            async with self._pool.connection() as conn:
                await conn.execute("SET TIME ZONE 'UTC'")
                for name, (query, column) in queries.items():
                    w = window.format(
                        t=sql.SQL(column),
                        before=sql.SQL(_US.format("{}")).format(sql.Literal(int(before_us))),
                        after=sql.SQL(_US.format("{}")).format(sql.Literal(int(after_us)))
                        if after_us is not None
                        else sql.SQL("'-infinity'"),
                    )
                    body = sql.SQL(query).format(names=names, w=w)
                    stmt = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(body)
                    rows = 0
                    with (folder / name).open("wb") as out:
                        async with conn.cursor() as cur, cur.copy(stmt) as copy:
                            async for data in copy:
                                out.write(data)
                        rows = cur.rowcount
                    written[name] = rows
                await conn.rollback()
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc
        return written

    # --- patients ------------------------------------------------------------------------------

    async def _steps(self, steps: Steps) -> Any:
        """One operation of eicu.store.patients in one transaction."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                try:
                    sql, params = next(steps)
                    while True:
                        cur = await conn.execute(sql.replace("?", "%s"), params)
                        rows = await cur.fetchall() if cur.description is not None else []
                        sql, params = steps.send(rows)
                except StopIteration as done:
                    return done.value
        except psycopg.errors.UniqueViolation as exc:
            raise violation(exc.diag.constraint_name or str(exc)) from exc
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc

    # --- video consult audit -------------------------------------------------------------------

    async def _execute(self, query: str, params: tuple[Any, ...]) -> None:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(query, params)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc

    async def call_started(self, call: CallRecord) -> None:
        await self._execute(
            f"""INSERT INTO consult_calls
                   (call_id, site, bed, caller, cart, alarm_id, started, answered, ended,
                    outcome, end_reason, ended_by)
                VALUES (%s, %s, %s, %s, %s, %s, {_US.format("%s::bigint")},
                        {_US.format("%s::bigint")}, {_US.format("%s::bigint")}, %s, %s, %s)
                ON CONFLICT (call_id) DO NOTHING""",
            (call.call_id, call.bed.site, call.bed.bed, call.caller, call.cart, call.alarm_id,
             call.started_us, call.answered_us, call.ended_us, call.outcome, call.end_reason,
             call.ended_by),
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
        await self._execute(
            f"""UPDATE consult_calls SET ended = {_US.format("%s::bigint")}, outcome = %s,
                       end_reason = %s, ended_by = %s,
                       answered = coalesce(answered, {_US.format("%s::bigint")})
                WHERE call_id = %s AND ended IS NULL""",
            (ended_us, outcome, end_reason, ended_by, answered_us, call_id),
        )

    async def calls(self, start_us: int, end_us: int) -> list[CallRecord]:
        def us(column: str) -> str:
            return _EPOCH_US.format(column)

        rows = await self._fetch(
            f"""SELECT call_id, site, bed, caller, cart, alarm_id, {us("started")},
                       {us("answered")}, {us("ended")}, outcome, end_reason, ended_by
                FROM consult_calls
                WHERE started >= {_US.format("%s::bigint")} AND started < {_US.format("%s::bigint")}
                ORDER BY started, call_id""",
            (start_us, end_us),
        )
        return call_records(rows)

    async def bed_devices(self, bed: BedKey | None = None) -> list[BedDevice]:
        return bed_device_records(await self._fetch(*bed_devices_query(bed, "%s")))

    # --- alarm audit trail and delivery receipts -------------------------------------------------

    async def write_alarms(
        self, events: Sequence[StoredEvent], deliveries: Sequence[DeliveryRecord]
    ) -> None:
        if not self._migrated:
            # Opened by the store writer once the database is reachable; until then the rows
            # stay where they are (the outbox) and the caller tries again.
            raise StorageUnavailable("the alarm tables are not ready: the store is not open yet")
        if not events and not deliveries:
            return
        # Idempotent, so tried a second time on a fresh connection when the first was one the
        # server had dropped (a restart): the first copy after an outage goes through.
        for attempt in (1, 2):
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                async with (
                    self._pool.connection() as conn,
                    conn.transaction(),
                    conn.cursor() as cur,
                ):
                    if events:
                        await cur.executemany(_INSERT_ALARM_EVENTS, alarm_event_rows(events))
                    if deliveries:
                        rows = alarm_delivery_rows(deliveries)
                        await cur.executemany(_UPSERT_ALARM_DELIVERIES, rows)
                return
            except psycopg.OperationalError as exc:
                if attempt == 2 or conn is None or not conn.broken:
                    raise _unavailable(exc) from exc
            except psycopg_pool.PoolTimeout as exc:
                raise _unavailable(exc) from exc

    async def alarm_events(
        self, start_us: int, end_us: int, beds: Collection[BedKey] | None = None
    ) -> list[StoredEvent]:
        if beds is not None and not beds:
            return []
        of_beds = "" if beds is None else "AND (site || '/' || bed) = ANY(%s::text[])"
        params: tuple[object, ...] = (start_us, end_us)
        if beds is not None:
            params += (sorted(str(b) for b in beds),)
        rows = await self._fetch(
            f"""SELECT {_selected(ALARM_EVENT_COLUMNS, ALARM_EVENT_TIMES)} FROM alarm_events
                WHERE time >= {_US.format("%s::bigint")} AND time < {_US.format("%s::bigint")}
                {of_beds}
                ORDER BY time, recorded, event_id""",
            params,
        )
        return stored_events(rows)

    async def alarm_deliveries(self, alarm_id: str) -> list[DeliveryRecord]:
        rows = await self._fetch(
            f"""SELECT {_selected(ALARM_DELIVERY_COLUMNS, ALARM_DELIVERY_TIMES)}
                FROM alarm_deliveries WHERE alarm_id = %s ORDER BY enqueued, key""",
            (alarm_id,),
        )
        return delivery_records(rows)
