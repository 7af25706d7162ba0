"""The PostgreSQL store, using TimescaleDB when the extension is present.

One code path: the same tables, writes and queries either way; :mod:`eicu.store.timescale`
adds hypertables, compression, retention and the continuous aggregate when it can.

Writes go through COPY (binary) into per-connection staging tables, then
``INSERT ... ON CONFLICT DO NOTHING`` into the real tables in the same transaction, so a batch
retried after an uncertain commit stores every sample once.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import psycopg
import psycopg_pool
from psycopg import sql

from eicu.errors import SchemaError, StorageUnavailable
from eicu.models import Batch, BedKey
from eicu.store import schema, timescale
from eicu.store.base import (
    STATS_SQL,
    CallRecord,
    LatestValue,
    NumericSample,
    TrendPoint,
    WaveformWindow,
    beds_in,
    call_records,
    check_bucket_s,
    last_sequence_doc,
    latest_doc,
    minute_ceil_us,
    numeric_rows,
    numeric_samples,
    stats_doc,
    status_rows,
    waveform_rows,
    window_from_blocks,
)
from eicu.store.segments import decode_blocks

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


class PgStore:
    """PostgreSQL (and TimescaleDB) behind the :class:`~eicu.store.base.Store` interface."""

    def __init__(
        self,
        url: str,
        *,
        timescale_mode: TimescaleMode = "auto",
        retention: timescale.RetentionPolicy | None = None,
        pool_max: int = 4,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._url = url
        self._mode = timescale_mode
        self._retention = retention or timescale.RetentionPolicy()
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
        self.backend = "postgresql"

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self._connect_timeout_s)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc
        await self.migrate()

    async def close(self) -> None:
        await self._pool.close()

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.set_autocommit(True)
        for stmt in _STAGE:
            await conn.execute(stmt)
        await conn.set_autocommit(False)

    async def migrate(self) -> list[int]:
        """Apply pending migrations (idempotent, serialised by an advisory lock)."""
        try:
            async with self._pool.connection() as conn:
                await conn.set_autocommit(True)
                await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
                try:
                    applied = await self._migrate(conn)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
                    await conn.set_autocommit(False)
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc
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
        await self._setup_timescale(conn)
        return applied

    async def _setup_timescale(self, conn: psycopg.AsyncConnection[Any]) -> None:
        has_ts = False
        if self._mode != "off":
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                has_ts = True
            except psycopg.Error as exc:
                if self._mode == "require":
                    raise SchemaError(f"TimescaleDB is required but unavailable: {exc}") from exc
                log.info("TimescaleDB not available, using plain PostgreSQL: %s", str(exc).strip())
        if has_ts:
            kind = await (
                await conn.execute("SELECT relkind FROM pg_class WHERE relname = 'numerics_1m'")
            ).fetchone()
            if kind is not None and kind[0] == "v":
                await conn.execute("DROP VIEW numerics_1m")
            for stmt in timescale.statements(self._retention):
                if stmt.startswith("ALTER TABLE") and "timescaledb.compress" in stmt:
                    table = stmt.split()[2]
                    cur = await conn.execute(timescale.COMPRESSION_ENABLED, (table,))
                    row = await cur.fetchone()
                    if row is not None and row[0]:
                        continue
                await conn.execute(stmt)
            self.backend = "timescaledb"
        else:
            await conn.execute(schema.PLAIN_TRENDS_VIEW)
            self.backend = "postgresql"

    # --- writes ----------------------------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                bed_ids = await self._resolve_beds(conn, beds_in(batch))
                if batch.numerics:
                    await self._copy_numerics(conn, bed_ids, batch)
                if batch.waveforms:
                    await self._copy_waveforms(conn, bed_ids, batch)
                if batch.statuses:
                    await self._insert_statuses(conn, batch)
                if batch.dead_letters:
                    await self._insert_dead_letters(conn, batch)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc

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

    async def _copy_numerics(
        self, conn: psycopg.AsyncConnection[Any], bed_ids: dict[BedKey, int], batch: Batch
    ) -> None:
        async with conn.cursor() as cur:
            async with cur.copy("COPY stage_numerics FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int4", "int2", "float8", "int8", "int8"])
                for row in numeric_rows(batch.numerics, bed_ids):
                    await copy.write_row(row)
            await cur.execute(
                f"""INSERT INTO numerics (time, bed_id, code, value, seq, received)
                    SELECT {_US.format("t_us")}, bed_id, code, value, seq, {_US.format("rx_us")}
                    FROM stage_numerics ON CONFLICT DO NOTHING"""
            )

    async def _copy_waveforms(
        self, conn: psycopg.AsyncConnection[Any], bed_ids: dict[BedKey, int], batch: Batch
    ) -> None:
        async with conn.cursor() as cur:
            async with cur.copy("COPY stage_waveforms FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int4", "int8", "int4", "int4", "int4", "bytea", "int8"])
                for row in waveform_rows(batch.waveforms, bed_ids):
                    await copy.write_row(row)
            await cur.execute(
                f"""INSERT INTO waveforms
                        (time, bed_id, seq, n_frames, duration_us, n_samples, data, received)
                    SELECT {_US.format("t_us")}, bed_id, seq, n_frames, duration_us, n_samples,
                           data, {_US.format("rx_us")}
                    FROM stage_waveforms ON CONFLICT DO NOTHING"""
            )

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
            f"""SELECT DISTINCT ON (n.bed_id, n.code) b.site, b.bed, n.code, n.value,
                       {_EPOCH_US.format("n.time")}
                FROM numerics n JOIN beds b USING (bed_id)
                WHERE n.time > now() - %s * INTERVAL '1 second'
                ORDER BY n.bed_id, n.code, n.time DESC, n.seq DESC""",
            (max_age_s,),
        )
        return latest_doc(rows)

    async def trend(
        self, bed: BedKey, key: str, start_us: int, end_us: int, bucket_s: int = 60
    ) -> list[TrendPoint]:
        from eicu.codes import BY_KEY

        bucket = check_bucket_s(bucket_s)
        if self.backend != "timescaledb":
            # Plain PostgreSQL: numerics_1m is a view over the raw values, and a range on its
            # bucket cannot use an index; the same figures straight from the raw values can.
            rows = await self._fetch(
                f"""SELECT {_EPOCH_US.format("merged")}, avg(n.value), min(n.value),
                           max(n.value), count(n.value)
                    FROM numerics n JOIN beds b USING (bed_id),
                         LATERAL (SELECT date_bin(%s * INTERVAL '1 second', n.time,
                                                  TIMESTAMPTZ 'epoch') AS merged) m
                    WHERE b.site = %s AND b.bed = %s AND n.code = %s
                      AND n.time >= {_US.format("%s::bigint")}
                      AND n.time < {_US.format("%s::bigint")}
                    GROUP BY merged ORDER BY merged""",
                (bucket, bed.site, bed.bed, BY_KEY[key].code, minute_ceil_us(start_us),
                 minute_ceil_us(end_us)),
            )  # fmt: skip
            return [TrendPoint(int(r[0]), r[1], r[2], r[3], int(r[4])) for r in rows]
        rows = await self._fetch(
            f"""SELECT {_EPOCH_US.format("merged")},
                       sum(t.avg_value * t.n_values) / nullif(sum(t.n_values), 0),
                       min(t.min_value), max(t.max_value), sum(t.n_values)
                FROM numerics_1m t JOIN beds b USING (bed_id),
                     LATERAL (SELECT date_bin(%s * INTERVAL '1 second', t.bucket,
                                              TIMESTAMPTZ 'epoch') AS merged) m
                WHERE b.site = %s AND b.bed = %s AND t.code = %s
                  AND t.bucket >= {_US.format("%s::bigint")}
                  AND t.bucket < {_US.format("%s::bigint")}
                GROUP BY merged ORDER BY merged""",
            (bucket, bed.site, bed.bed, BY_KEY[key].code, start_us, end_us),
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

    async def numerics(self, start_us: int, end_us: int) -> list[NumericSample]:
        rows = await self._fetch(
            f"""SELECT b.site, b.bed, n.code, n.value, {_EPOCH_US.format("n.time")}
                FROM numerics n JOIN beds b USING (bed_id)
                WHERE n.time >= {_US.format("%s::bigint")} AND n.time < {_US.format("%s::bigint")}
                ORDER BY n.time, n.bed_id, n.seq, n.code""",
            (start_us, end_us),
        )
        return numeric_samples(rows)

    async def stats(self) -> dict[str, dict[str, dict[str, int]]]:
        return stats_doc(await self._fetch(STATS_SQL))

    async def dead_letter_counts(self) -> dict[str, int]:
        rows = await self._fetch("SELECT reason, count(*) FROM dead_letters GROUP BY reason")
        return {reason: int(n) for reason, n in rows}

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
