"""The Timescale path and the plain-PostgreSQL fallback run the same schema through one code path.

The TimescaleDB tests need a PostgreSQL server with the extension, which is in no package
registry this project's CI reaches, so they skip there. To run them, either

- ``EICU_TEST_TIMESCALE_PG_BIN``: a PostgreSQL bin folder whose server has TimescaleDB
  installed (the tests start their own servers from it on free ports, preloading the
  extension, and restart them), or
- ``EICU_TEST_TIMESCALE_URL``: a TimescaleDB server (extension preloaded) on which the tests
  may create databases (the restart and not-preloaded tests then skip).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from alerting.outbox import event_id
from eicu.alarm_model import AlarmState, StoredEvent
from eicu.config import StoreSettings
from eicu.devservices import Postgres, ServiceError
from eicu.errors import SchemaError
from eicu.models import Batch, BedKey, NumericsFrame, SignalBlock, WaveformFrame
from eicu.store import schema, timescale
from eicu.store.pg import PgStore

pytestmark = pytest.mark.db

TS_BIN = os.environ.get("EICU_TEST_TIMESCALE_PG_BIN")
TS_URL = os.environ.get("EICU_TEST_TIMESCALE_URL")
NO_TIMESCALE = (
    "no TimescaleDB server: set EICU_TEST_TIMESCALE_PG_BIN to a PostgreSQL bin folder whose "
    "server has TimescaleDB 2.x (or EICU_TEST_TIMESCALE_URL to such a server)"
)
needs_timescale = pytest.mark.skipif(not (TS_BIN or TS_URL), reason=NO_TIMESCALE)
needs_timescale_bin = pytest.mark.skipif(
    not TS_BIN, reason="set EICU_TEST_TIMESCALE_PG_BIN: the test starts and restarts servers"
)
PRELOAD = {"shared_preload_libraries": "'timescaledb'", "timescaledb.telemetry_level": "off"}
_names = itertools.count()
BED = BedKey("ts", "bed1")
OTHER = BedKey("ts", "bed2")


# --- what needs no TimescaleDB ------------------------------------------------------------------


async def test_plain_postgresql_fallback_and_idempotent_migrations(db_url: str) -> None:
    for _ in range(2):  # a second start applies nothing and breaks nothing
        store = PgStore(db_url)
        await store.open()
        assert store.backend == "postgresql"
        await store.close()
    with psycopg.connect(db_url) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'numerics_1m'").fetchone()
    assert versions == [(m.version,) for m in schema.MIGRATIONS]
    assert kind == ("v",)  # a plain view with the continuous aggregate's columns


async def test_timescale_required_but_absent_is_a_clear_error(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
    if available:
        pytest.skip("this server has TimescaleDB")
    store = PgStore(db_url, timescale_mode="require")
    with pytest.raises(SchemaError, match="TimescaleDB is required"):
        await store.open()
    await store.close()


@pytest.mark.parametrize(
    ("mode", "available", "preloaded", "installed", "expected"),
    [
        ("auto", True, True, False, "timescale"),
        ("auto", True, True, True, "timescale"),
        ("require", True, True, False, "timescale"),
        ("auto", False, False, False, "plain"),
        ("auto", True, False, False, "plain"),  # installed on the server, not preloaded
        ("off", True, True, False, "plain"),
        ("off", False, False, False, "plain"),
        ("require", False, False, False, "TimescaleDB is required but unavailable"),
        ("require", True, False, False, "shared_preload_libraries"),
        ("auto", True, False, True, "shared_preload_libraries"),  # the database uses it
        ("off", True, True, True, "EICU_TIMESCALE=off"),
    ],
)
def test_plan_falls_back_only_in_auto_mode_and_names_the_setting(
    mode: str, available: bool, preloaded: bool, installed: bool, expected: str
) -> None:
    if expected in ("timescale", "plain"):
        plan, why = timescale.plan(mode, available, preloaded, installed)
        assert plan == expected
        if mode == "auto" and available and not preloaded:
            assert "shared_preload_libraries" in why
    else:
        with pytest.raises(SchemaError, match=expected):
            timescale.plan(mode, available, preloaded, installed)


def test_chunk_intervals_scale_with_the_beds() -> None:
    hours = [timescale.numerics_chunk_s(beds) // 3600 for beds in (1, 20, 200, 10_000)]
    assert hours == [168, 43, 4, 1]  # 25 M rows at 8 values a second per bed, 1 h to 7 days
    assert timescale.waveforms_chunk_s(20) // 3600 == 23


# --- TimescaleDB --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ts_server() -> Iterator[Postgres | None]:
    """A TimescaleDB server of this module's own (None when only a URL was given)."""
    if not TS_BIN:
        yield None
        return
    try:
        server = Postgres(bindir=Path(TS_BIN), options=PRELOAD).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start TimescaleDB from {TS_BIN}: {exc}")
    yield server
    server.cleanup()


@pytest.fixture
def ts_url(ts_server: Postgres | None) -> str:
    """A fresh database on the TimescaleDB server."""
    if not (TS_BIN or TS_URL):
        pytest.skip(NO_TIMESCALE)
    name = f"ts{os.getpid()}_{next(_names)}"
    if ts_server is not None:
        return ts_server.create_database(name)
    assert TS_URL is not None
    with psycopg.connect(TS_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return psycopg.conninfo.make_conninfo(TS_URL, dbname=name)


@pytest.fixture
async def ts_store(ts_url: str) -> AsyncIterator[PgStore]:
    store = PgStore(ts_url, timescale_mode="require")
    await store.open()
    yield store
    await store.close()


def _query(url: str, q: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(q, params or None)
        return cur.fetchall() if cur.description else []


def _jobs(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    rows = _query(
        url,
        """SELECT j.proc_name, coalesce(c.view_name, j.hypertable_name), j.config
           FROM timescaledb_information.jobs j
           LEFT JOIN timescaledb_information.continuous_aggregates c
             ON c.materialization_hypertable_name = j.hypertable_name
           WHERE j.job_id >= 1000""",
    )
    return {(proc, table): config for proc, table, config in rows}


def _minute(t_s: float) -> int:
    return int(t_s) // 60 * 60_000_000


def _numerics(bed: BedKey, t0_us: int, n: int, step_us: int = 1_000_000) -> list[NumericsFrame]:
    return [
        NumericsFrame(bed, i, t0_us + i * step_us, {"HR": 60.0 + i % 50, "SPO2": 90.0 + i % 7})
        for i in range(n)
    ]


def _waves(bed: BedKey, t0_us: int, n: int) -> list[WaveformFrame]:
    rng = np.random.default_rng(7)
    return [
        WaveformFrame(
            bed,
            i,
            t0_us + i * 200_000,
            (SignalBlock("ECG_II", 250.0, 200.0, 0, rng.integers(-900, 900, 50).astype(np.int16)),),
        )
        for i in range(n)
    ]


@needs_timescale
async def test_every_start_after_the_first_works(ts_url: str) -> None:
    for _ in range(3):
        store = PgStore(ts_url, timescale_mode="require")
        await store.open()
        assert store.backend == "timescaledb"
        await store.close()
    rows = _query(ts_url, "SELECT hypertable_name FROM timescaledb_information.hypertables")
    hypertables = {r[0] for r in rows}
    assert {"numerics", "waveforms"} <= hypertables
    jobs = _jobs(ts_url)
    assert ("policy_compression", "numerics") in jobs
    assert ("policy_compression", "waveforms") not in jobs  # segments are compressed already
    assert ("policy_retention", "waveforms") in jobs
    assert ("policy_refresh_continuous_aggregate", "numerics_1m") in jobs
    assert ("policy_compression", "numerics_1m") in jobs
    assert ("policy_retention", "numerics_1m") in jobs
    indexes = _query(
        ts_url,
        """SELECT indexdef FROM pg_indexes i JOIN timescaledb_information.continuous_aggregates c
           ON i.tablename = c.materialization_hypertable_name
           WHERE c.view_name = 'numerics_1m' AND indexdef LIKE '%(bed_id, code, bucket)%'""",
    )
    assert indexes


@needs_timescale
async def test_a_database_first_used_without_timescale_moves_to_it(ts_url: str) -> None:
    store = PgStore(ts_url, timescale_mode="off")
    await store.open()
    t0 = _minute(time.time()) - 10 * 60_000_000
    await store.write(Batch(numerics=_numerics(BED, t0, 120)))
    before = await store.trend(BED, "HR", t0, t0 + 120_000_000)
    await store.close()
    store = PgStore(ts_url, timescale_mode="require")
    await store.open()  # the plain view dropped, the tables turned into hypertables
    try:
        assert store.backend == "timescaledb"
        assert await store.trend(BED, "HR", t0, t0 + 120_000_000) == before
    finally:
        await store.close()
    store = PgStore(ts_url, timescale_mode="off")
    with pytest.raises(SchemaError, match="EICU_TIMESCALE=off"):
        await store.open()
    await store.close()


@needs_timescale
async def test_policies_and_chunk_intervals_follow_their_settings(ts_url: str) -> None:
    first = StoreSettings(beds=20, numerics_keep_days=400, trends_refresh_window_h=3)
    second = StoreSettings(
        beds=200,
        numerics_keep_days=30,
        waveforms_keep_days=10,
        numerics_compress_after_h=12,
        trends_refresh_window_h=6,
        trends_compress_after_days=14,
    )
    for settings in (first, second, second):
        store = PgStore(ts_url, settings=settings, timescale_mode="require")
        await store.open()
        await store.close()
    jobs = _jobs(ts_url)
    seconds = {
        key: _query(ts_url, "SELECT extract(epoch FROM %s::interval)::bigint", (str(value),))[0][0]
        for key, value in [
            ("numerics_keep", jobs["policy_retention", "numerics"]["drop_after"]),
            ("waveforms_keep", jobs["policy_retention", "waveforms"]["drop_after"]),
            ("compress", jobs["policy_compression", "numerics"]["compress_after"]),
            ("window", jobs["policy_refresh_continuous_aggregate", "numerics_1m"]["start_offset"]),
            ("trends_compress", jobs["policy_compression", "numerics_1m"]["compress_after"]),
        ]
    }
    assert seconds == {
        "numerics_keep": 30 * 86400,
        "waveforms_keep": 10 * 86400,
        "compress": 12 * 3600,
        "window": 6 * 3600,
        "trends_compress": 14 * 86400,
    }
    intervals = dict(
        _query(
            ts_url,
            """SELECT hypertable_name, extract(epoch FROM time_interval)::bigint
               FROM timescaledb_information.dimensions
               WHERE hypertable_name IN ('numerics', 'waveforms')""",
        )
    )
    assert intervals == {
        "numerics": timescale.numerics_chunk_s(200),
        "waveforms": timescale.waveforms_chunk_s(200),
    }
    n_jobs = len(_query(ts_url, "SELECT 1 FROM timescaledb_information.jobs WHERE job_id >= 1000"))
    assert n_jobs == 6  # replaced, never added twice


@needs_timescale
async def test_backfilled_hours_old_numerics_reach_the_trends(
    ts_store: PgStore, ts_url: str
) -> None:
    now_s = time.time()
    t_old = _minute(now_s - 5 * 3600)
    # Materialise the last 6 hours first, as the refresh policy would have: the aggregate's
    # watermark is then past the data backfilled below.
    await ts_store.write(Batch(numerics=_numerics(BED, _minute(now_s) - 600_000_000, 300)))
    with psycopg.connect(ts_url, autocommit=True) as conn:
        conn.execute(
            "CALL refresh_continuous_aggregate('numerics_1m', now() - INTERVAL '6 hours', "
            "now() - INTERVAL '1 minute')"
        )
    assert await ts_store.trend(BED, "HR", t_old, t_old + 600_000_000) == []
    await ts_store.write(Batch(numerics=_numerics(BED, t_old, 601)))  # 10 min, 5 h old
    await ts_store.refresh_trends()  # the write scheduled it; wait for it either way
    trend = await ts_store.trend(BED, "HR", t_old, t_old + 660_000_000)
    assert [p.n for p in trend] == [60] * 10 + [1]
    assert trend[0].min == 60.0 and trend[0].max == 109.0
    assert _query(ts_url, "SELECT count(*) FROM trends_pending") == [(0,)]
    assert ts_store.metrics.registry.get_sample_value("eicu_store_trend_refreshes_total") >= 1


@needs_timescale
async def test_compression_round_trip_leaves_every_query_unchanged(
    ts_store: PgStore, ts_url: str
) -> None:
    t0 = _minute(time.time() - 3 * 86400)  # three days back: chunks the policy would compress
    numerics = _numerics(BED, t0, 3600) + _numerics(OTHER, t0, 3600, 2_000_000)
    waves = _waves(BED, t0, 300)
    batch = Batch(numerics=numerics, waveforms=waves)
    await ts_store.write(batch)
    await ts_store.refresh_trends()
    end = t0 + 7200 * 1_000_000

    async def everything() -> tuple[Any, ...]:
        window = await ts_store.waveform(BED, "ECG_II", t0, t0 + 60_000_000)
        return (
            await ts_store.trend(BED, "HR", t0, end),
            await ts_store.trend(OTHER, "SPO2", t0, end, bucket_s=600),
            await ts_store.numerics(t0, end),
            await ts_store.numerics(t0, end, bed=OTHER),  # one bed's (the FHIR API, PCD-01 out)
            await ts_store.stats(),
            await ts_store.latest(max_age_s=5 * 86400),
            window.t_us.tolist(),
            window.values.tolist(),
        )

    before = await everything()
    assert before[3] == [n for n in before[2] if n.bed == OTHER] and before[3]
    with psycopg.connect(ts_url, autocommit=True) as conn:
        for table in ("numerics", "waveforms"):  # waveforms too: still readable if compressed
            conn.execute(f"ALTER TABLE {table} SET (timescaledb.compress)")
            conn.execute(f"SELECT compress_chunk(c) FROM show_chunks('{table}') c")
        conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => TRUE) FROM show_chunks('numerics_1m') c"
        )
        compressed = conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE is_compressed"
        ).fetchone()
    assert compressed is not None and compressed[0] >= 3
    assert await everything() == before
    await ts_store.write(batch)  # a retry into compressed chunks stores nothing twice
    assert await everything() == before
    with psycopg.connect(ts_url, autocommit=True) as conn:
        for table in ("numerics", "waveforms", "numerics_1m"):
            conn.execute(
                f"SELECT decompress_chunk(c, if_compressed => TRUE) FROM show_chunks('{table}') c"
            )
    assert await everything() == before


@needs_timescale
async def test_job_health_is_read_into_the_metrics(
    ts_store: PgStore, ts_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A job that always fails, started at once by the scheduler.
    with psycopg.connect(ts_url, autocommit=True) as conn:
        conn.execute(
            """CREATE FUNCTION failing_job(job_id int, config jsonb) RETURNS void
               LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'broken on purpose'; END $$"""
        )
        row = conn.execute("SELECT add_job('failing_job', '1 hour', initial_start => now())")
        failing = (row.fetchone() or (0,))[0]
    deadline = time.monotonic() + 60
    rows: list[tuple[Any, ...]] = []
    with caplog.at_level(logging.ERROR, logger="eicu.store.pg"):
        while time.monotonic() < deadline:  # until the scheduler has run it
            rows = await ts_store.check_jobs()
            if any(r[0] == failing and r[7] for r in rows):
                break
            await asyncio.sleep(0.2)
    assert f"TimescaleDB job {failing} (failing_job" in caplog.text
    get = ts_store.metrics.registry.get_sample_value
    labels = {"job": str(failing), "proc": "failing_job", "table": ""}
    assert get("eicu_store_job_failures", labels) == 1
    assert get("eicu_store_job_failing", labels) == 1
    assert get("eicu_store_job_last_run_timestamp_seconds", labels) is not None
    assert get("eicu_store_job_last_success_timestamp_seconds", labels) is None
    # Every policy of the store is reported as TimescaleDB's job statistics have it.
    rows = await ts_store.check_jobs()
    assert len({r[0] for r in rows if str(r[1]).startswith("policy_")}) == 6
    for job_id, proc, table, last_run, _, status, _, failures in rows:
        labels = {"job": str(job_id), "proc": proc, "table": table or ""}
        assert get("eicu_store_job_failing", labels) == (status == "Failed")
        assert get("eicu_store_job_failures", labels) == failures
        if last_run is not None:
            assert get("eicu_store_job_last_run_timestamp_seconds", labels) == float(last_run)


@needs_timescale_bin
async def test_server_restart_and_a_new_start_against_it(ts_server: Postgres, ts_url: str) -> None:
    store = PgStore(ts_url, timescale_mode="require")
    await store.open()
    t0 = _minute(time.time()) - 300_000_000
    await store.write(Batch(numerics=_numerics(BED, t0, 60)))
    await store.close()
    ts_server.stop()
    ts_server.start()
    store = PgStore(ts_url, timescale_mode="require")
    await store.open()
    try:
        await store.write(Batch(numerics=_numerics(BED, t0, 120)))  # half of it again
        assert (await store.stats())["beds"]["ts/bed1"] == {"messages": 120, "samples": 240}
    finally:
        await store.close()


@needs_timescale_bin
async def test_installed_but_not_preloaded(caplog: pytest.LogCaptureFixture) -> None:
    assert TS_BIN is not None
    server = Postgres(bindir=Path(TS_BIN)).start()  # TimescaleDB on disk, not preloaded
    try:
        url = server.create_database("plain")
        with pytest.raises(SchemaError, match="shared_preload_libraries"):
            store = PgStore(url, timescale_mode="require")
            try:
                await store.open()
            finally:
                await store.close()
        store = PgStore(url, timescale_mode="auto")
        with caplog.at_level(logging.WARNING, logger="eicu.store.pg"):
            await store.open()
        await store.close()
        assert store.backend == "postgresql"
        assert "shared_preload_libraries" in caplog.text
    finally:
        server.cleanup()


@needs_timescale
async def test_backfill_left_pending_by_a_stop_is_refreshed_at_the_next_start(
    ts_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now_s = time.time()
    t_old = _minute(now_s - 4 * 3600)
    store = PgStore(ts_url, timescale_mode="require")
    await store.open()
    with psycopg.connect(ts_url, autocommit=True) as conn:
        conn.execute(
            "CALL refresh_continuous_aggregate('numerics_1m', now() - INTERVAL '6 hours', "
            "now() - INTERVAL '1 minute')"
        )
    if store._refresh_task is not None:  # the start's own round, over nothing yet
        await store._refresh_task
    with monkeypatch.context() as m:  # the engine stops before its refresh runs
        m.setattr(store, "_schedule_refresh", lambda: None)
        await store.write(Batch(numerics=_numerics(BED, t_old, 120)))
    await store.close()
    assert _query(ts_url, "SELECT count(*) FROM trends_pending") == [(1,)]
    store = PgStore(ts_url, timescale_mode="require")
    await store.open()
    try:
        await store.refresh_trends()  # after the one the start scheduled
        trend = await store.trend(BED, "HR", t_old, t_old + 120_000_000)
        assert [p.n for p in trend] == [60, 60]
        assert _query(ts_url, "SELECT count(*) FROM trends_pending") == [(0,)]
    finally:
        await store.close()


@needs_timescale
@pytest.mark.parametrize("store_version", [3, 0], ids=["with-store-schema", "alarm-tables-only"])
async def test_the_alarm_tables_join_the_same_migrations_with_timescaledb(
    ts_url: str, store_version: int
) -> None:
    """A database of the former alarm-table runner moves to TimescaleDB and the store's one
    migration runner; the alarm tables stay plain tables, their rows kept, their writes
    idempotent."""
    from tests.test_store_alarms import T0_US, _former_database, receipt, stored

    old = stored("a1", AlarmState.ACTIVE)
    note = receipt("k1", sent_us=T0_US + 10, attempts=1, last_error="HTTP 503")
    _former_database(ts_url, store_version, old, note)
    store = PgStore(ts_url, timescale_mode="require")
    await store.open()
    try:
        assert store.backend == "timescaledb"
        later = stored("a1", AlarmState.CLEARED, 5, reason="condition ended")
        delivered = dataclasses.replace(note, delivered_us=T0_US + 20, attempts=2, last_error="")
        for _ in range(2):
            await store.write_alarms([later, old], [delivered, note])
        assert await store.alarm_events(T0_US, T0_US + 10) == [old, later]
        assert await store.alarm_deliveries("a1") == [delivered]
    finally:
        await store.close()
    versions = _query(ts_url, "SELECT version FROM schema_migrations ORDER BY 1")
    assert versions == [(m.version,) for m in schema.MIGRATIONS]
    assert _query(ts_url, "SELECT to_regclass('alarm_schema_migrations')") == [(None,)]
    hypertables = _query(ts_url, "SELECT hypertable_name FROM timescaledb_information.hypertables")
    assert {"numerics", "waveforms"} <= {r[0] for r in hypertables}
    assert not {"alarm_events", "alarm_deliveries"} & {r[0] for r in hypertables}


@needs_timescale
async def test_what_a_worker_taking_beds_over_reads(ts_store: PgStore) -> None:
    """On hypertables (compressed chunks included): the numbers of the beds' recent messages
    that are stored, and their alarm trail, of those beds alone."""
    from tests.test_store_alarms import T0_US, stored

    bed, other = BedKey("karamay", "bed07"), BedKey("karamay", "bed08")
    now_us = int(time.time() * 1e6)
    waves = [w for w in _waves(bed, now_us, 12) if w.seq != 5]  # 5 never stored
    await ts_store.write(Batch(numerics=_numerics(bed, now_us, 6), waveforms=waves))
    await ts_store.write(Batch(numerics=_numerics(other, now_us, 2)))
    got = await ts_store.stored_sequences(now_us - 10**8, now_us + 10**8, [bed])
    assert got[(bed, "numerics")] == set(range(6))
    assert got[(bed, "waveform")] == set(range(12)) - {5}
    assert (other, "numerics") not in got
    here = stored("a1", AlarmState.ACTIVE)
    there = dataclasses.replace(here.event, alarm_id="b1", bed=other)
    await ts_store.write_alarms([here, StoredEvent(event_id(there), there, T0_US)], [])
    assert await ts_store.alarm_events(T0_US, T0_US + 1, beds=[here.event.bed]) == [here]
