"""The engine copies its alarm outbox into the central PostgreSQL while it runs: alarms that fire
while the database is down reach it once it is back, each event exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from eicu.alarms.policy import load_policy, override
from eicu.config import IngestSettings, MqttSettings
from eicu.devservices import Mosquitto, Postgres
from eicu.models import BedKey, NumericsFrame
from eicu.store.pg import PgStore
from eicu.store.sqlite import SqliteStore
from ingest.engine import Engine

pytestmark = [pytest.mark.broker, pytest.mark.db]

BEDS = [BedKey("s", f"b{i}") for i in range(4)]


async def _until(check: Callable[[], object], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.1)


def _stored_ids(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM alarm_events")]


async def test_alarms_fired_while_the_database_is_down_reach_it_once_when_it_is_back(
    tmp_path: Path, broker: Mosquitto, pg_server: Postgres, db_url: str
) -> None:
    alarm_store = PgStore(db_url, connect_timeout_s=1)
    await alarm_store.open()
    engine = Engine(
        MqttSettings(port=broker.port, client_id="eicu-test"),
        IngestSettings(spool_dir=tmp_path / "spool"),
        SqliteStore(tmp_path / "x.sqlite"),
        alarms_outbox=tmp_path / "alarms.db",
        alarm_store=alarm_store,
    )
    service = engine.alarms
    assert service is not None
    for bed in BEDS:  # no condition delay: an alarm on the first sample beyond the limit
        policy, _ = override(load_policy(), bed, "HR_HIGH", "delay_s", 0, user="t", now_us=1)
        service.machine.set_policy(bed, policy)
    seqs = dict.fromkeys(BEDS, 0)

    def send(bed: BedKey, hr: float) -> None:
        now_us = time.time_ns() // 1000
        values: dict[str, float | None] = {"HR": hr, "SPO2": 97.0, "RR": 16.0}
        engine.router.route(NumericsFrame(bed, seqs[bed], now_us, values, received_us=now_us))
        seqs[bed] += 1

    def uncopied() -> int:
        events, deliveries = service.outbox.uncopied()
        return len(events) + len(deliveries)

    await engine.store.open()
    await engine.start()
    try:
        send(BEDS[0], 150.0)
        await _until(lambda: len(_stored_ids(db_url)) == 1, timeout_s=10)

        pg_server.stop()
        try:
            for bed in BEDS[1:]:
                send(bed, 150.0)
            await _until(lambda: len(service.outbox.events()) == 4, timeout_s=5)
            send(BEDS[0], 80.0)  # the first alarm clears
            alarm = next(a for a in service.machine.alarms() if a.bed == BEDS[1])
            service.acknowledge(alarm.alarm_id, "nurse-li", time.time_ns() // 1000)
            await _until(lambda: len(service.outbox.events()) == 6, timeout_s=5)
            await asyncio.sleep(2.0)  # the copier keeps trying meanwhile
            assert uncopied() == 5
        finally:
            pg_server.start()
        await _until(lambda: uncopied() == 0, timeout_s=60)
        audit_trail = [s.event_id for s in service.outbox.events()]
    finally:
        await engine.stop()
        await engine.store.close()
        await alarm_store.close()

    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT state, actor FROM alarm_events ORDER BY time").fetchall()
    stored = _stored_ids(db_url)
    assert sorted(stored) == sorted(audit_trail)
    assert len(stored) == len(set(stored)) == 6
    assert ("acknowledged", "nurse-li") in rows
    assert ("cleared", "engine") in rows
