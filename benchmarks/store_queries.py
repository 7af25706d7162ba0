"""``eicu stats`` and the latest values on a few million stored numerics: the store's queries
(per-bed counters and the latest-value table, kept at write time) beside the scans they replace,
in the same database; and the cost the bookkeeping adds to a write.

Fills ``numerics`` with ``--beds`` beds x 8 parameters at 1 Hz for ``--hours`` hours (3.5 M rows
by default) in a PostgreSQL of its own, then times each query ``--repeat`` times (median).
With ``EICU_BENCH_TIMESCALE_PG_BIN`` (a PostgreSQL bin folder whose server has TimescaleDB) the
server preloads TimescaleDB and the tables are hypertables.

    python benchmarks/store_queries.py [--beds 20] [--hours 6] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# What stats() and latest() read before the counters: whole-table scans.
STATS_BY_SCAN = """WITH n AS (SELECT bed_id, count(*) AS messages, sum(k) AS samples
                         FROM (SELECT bed_id, count(*) AS k FROM numerics
                               GROUP BY bed_id, time, seq) m GROUP BY bed_id),
                   w AS (SELECT bed_id, sum(n_frames) AS messages, sum(n_samples) AS samples
                         FROM waveforms GROUP BY bed_id)
              SELECT b.site, b.bed, coalesce(n.messages, 0) + coalesce(w.messages, 0),
                     coalesce(n.samples, 0) + coalesce(w.samples, 0)
              FROM beds b LEFT JOIN n USING (bed_id) LEFT JOIN w USING (bed_id)
              ORDER BY b.site, b.bed"""
LATEST_BY_SCAN = """SELECT DISTINCT ON (n.bed_id, n.code) b.site, b.bed, n.code, n.value, n.time
                FROM numerics n JOIN beds b USING (bed_id)
                WHERE n.time > now() - INTERVAL '1 day'
                ORDER BY n.bed_id, n.code, n.time DESC, n.seq DESC"""
PLAIN_INSERT = """INSERT INTO numerics (time, bed_id, code, value, seq, received)
    SELECT TIMESTAMPTZ 'epoch' + t_us * INTERVAL '1 microsecond', bed_id, code, value, seq,
           TIMESTAMPTZ 'epoch' + rx_us * INTERVAL '1 microsecond'
    FROM stage_numerics ON CONFLICT DO NOTHING"""
FILL = """INSERT INTO numerics (time, bed_id, code, value, seq, received)
    SELECT t, b, c, 60 + (s %% 40), s, t
    FROM generate_series(1, %(beds)s) b, generate_series(1, 8) c,
         generate_series(0, %(seconds)s - 1) s,
         LATERAL (SELECT now() - %(seconds)s * INTERVAL '1 second'
                         + s * INTERVAL '1 second' AS t) tt"""


async def timed(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


async def run(beds: int, hours: float, repeat: int, url: str) -> None:
    from eicu.models import Batch, BedKey, NumericsFrame
    from eicu.store import schema
    from eicu.store.pg import PgStore

    store = PgStore(url)
    await store.open()
    seconds = int(hours * 3600)
    async with store._pool.connection() as conn:
        await conn.execute(
            "INSERT INTO beds (site, bed) SELECT 'bench', 'bed' || b FROM generate_series(1, %s) b",
            (beds,),
        )
        t0 = time.perf_counter()
        await conn.execute(FILL, {"beds": beds, "seconds": seconds})
        # The counters and latest values as migration 3 builds them from existing rows.
        (migration,) = [m for m in schema.MIGRATIONS if m.version == 3]
        for stmt in migration.statements:
            if stmt.lstrip().startswith("INSERT"):
                await conn.execute(stmt)
        await conn.commit()
        await conn.execute("ANALYZE")
        fill_s = time.perf_counter() - t0
    rows = beds * 8 * seconds
    print(f"{store.backend}: {rows:,} numeric rows ({beds} beds x 8 values at 1 Hz for "
          f"{hours:g} h), filled in {fill_s:.0f} s")  # fmt: skip
    scan_stats = await timed(lambda: store._fetch(STATS_BY_SCAN), repeat)
    new_stats = await timed(store.stats, repeat)
    scan_latest = await timed(lambda: store._fetch(LATEST_BY_SCAN), repeat)
    new_latest = await timed(store.latest, repeat)
    assert len(await store._fetch(STATS_BY_SCAN)) == len((await store.stats())["beds"])
    print(f"  stats:  scan {scan_stats * 1e3:9.1f} ms   counters     {new_stats * 1e3:7.2f} ms")
    print(f"  latest: scan {scan_latest * 1e3:9.1f} ms   latest table {new_latest * 1e3:7.2f} ms")
    # A write of one second of every bed (8 values each), as the ingest flushes them.
    t_us = int(time.time() * 1e6)
    keys = ("HR", "PR", "SPO2", "RR", "TEMP", "NIBP_SYS", "NIBP_DIA", "NIBP_MEAN")
    seq = iter(range(10**9))

    async def write_second() -> None:
        now = t_us + next(seq) * 1_000_000
        frames = [
            NumericsFrame(BedKey("bench", f"bed{b}"), now, now, dict.fromkeys(keys, 70.0))
            for b in range(1, beds + 1)
        ]
        await store.write(Batch(numerics=frames))

    async def write_second_plain() -> None:  # the same rows, without the bookkeeping
        from eicu.store.base import numeric_rows

        now = t_us + next(seq) * 1_000_000
        frames = [
            NumericsFrame(BedKey("bench", f"bed{b}"), now, now, dict.fromkeys(keys, 70.0))
            for b in range(1, beds + 1)
        ]
        ids = {f.bed: b for b, f in enumerate(frames, 1)}
        async with store._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            async with cur.copy("COPY stage_numerics FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int4", "int2", "float8", "int8", "int8"])
                for row in numeric_rows(frames, ids):
                    await copy.write_row(row)
            await cur.execute(PLAIN_INSERT)

    n = max(repeat, 20)
    for _ in range(2):  # alternate, so that load on the machine falls on both
        write_s = await timed(write_second, n)
        plain_s = await timed(write_second_plain, n)
    print(
        f"  write of {beds * 8} values: with counters and latest values {write_s * 1e3:.1f} ms, "
        f"insert alone {plain_s * 1e3:.1f} ms"
    )
    await store.close()


def main() -> None:
    from eicu.devservices import Postgres

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=20)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bindir = os.environ.get("EICU_BENCH_TIMESCALE_PG_BIN")
    options = {"shared_preload_libraries": "'timescaledb'"} if bindir else None
    server = Postgres(bindir=Path(bindir) if bindir else None, options=options).start()
    try:
        asyncio.run(run(args.beds, args.hours, args.repeat, server.create_database("bench")))
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
