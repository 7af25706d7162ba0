"""The Timescale path and the plain-PostgreSQL fallback run the same schema through one code path.

The TimescaleDB test needs a server with the extension (it is not in the package registries this
project's CI reaches): point ``EICU_TEST_TIMESCALE_URL`` at an empty database on one.
"""

from __future__ import annotations

import os

import psycopg
import pytest

from eicu.store.pg import PgStore

pytestmark = pytest.mark.db


async def test_plain_postgresql_fallback_and_idempotent_migrations(db_url: str) -> None:
    for _ in range(2):  # a second start applies nothing and breaks nothing
        store = PgStore(db_url)
        await store.open()
        assert store.backend == "postgresql"
        await store.close()
    with psycopg.connect(db_url) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'numerics_1m'").fetchone()
    assert versions == [(1,), (2,)]
    assert kind == ("v",)  # a plain view with the continuous aggregate's columns


async def test_timescale_required_but_absent_is_a_clear_error(db_url: str) -> None:
    from eicu.errors import SchemaError

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


@pytest.mark.skipif(
    not os.environ.get("EICU_TEST_TIMESCALE_URL"),
    reason="set EICU_TEST_TIMESCALE_URL to an empty database on a TimescaleDB 2.x server",
)
async def test_timescaledb_hypertables_policies_and_trends() -> None:
    import time

    from eicu.models import Batch, BedKey, NumericsFrame

    url = os.environ["EICU_TEST_TIMESCALE_URL"]
    for _ in range(2):
        store = PgStore(url, timescale_mode="require")
        await store.open()
        assert store.backend == "timescaledb"
        await store.close()
    store = PgStore(url, timescale_mode="require")
    await store.open()
    bed = BedKey("ts", "bed1")
    t0 = (int(time.time()) // 60 - 5) * 60_000_000
    frames = [NumericsFrame(bed, i, t0 + i * 1_000_000, {"HR": 60.0 + i}) for i in range(120)]
    await store.write(Batch(numerics=frames))
    trend = await store.trend(bed, "HR", t0, t0 + 180_000_000)
    assert [p.n for p in trend] == [60, 60]
    assert trend[0].min == 60.0 and trend[1].max == 179.0
    await store.close()
    with psycopg.connect(url) as conn:
        hypertables = {
            r[0]
            for r in conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables"
            ).fetchall()
        }
        jobs = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs"
            ).fetchall()
        }
        caggs = conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates"
        ).fetchall()
    assert {"numerics", "waveforms"} <= hypertables
    assert ("policy_compression", "numerics") in jobs
    assert ("policy_retention", "waveforms") in jobs
    assert ("numerics_1m",) in caggs
