"""A bed's alarms cannot be blinded by one message's device time or by a stale standby: a real
Mosquitto, a real PostgreSQL, the engine with its alarm stage, and a gateway publishing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from eicu import wire
from eicu.alarm_model import AlarmState
from eicu.alarms.policy import load_policy, override, parse_policy
from eicu.codes import BY_CODE
from eicu.config import AlertingSettings, IngestSettings, MqttSettings
from eicu.devservices import Mosquitto
from eicu.models import BedKey, NumericsFrame, StatusFrame
from eicu.store import open_store
from ingest.engine import Engine

pytestmark = [pytest.mark.broker, pytest.mark.db]

BED = BedKey("karamay", "bed07")
YEAR_2099_US = 4_070_908_800_000_000
NORMAL = {"HR": 80.0, "SPO2": 97.0, "RR": 16.0}
STALE_AFTER_S = 2.0  # DATA_STALE's after_s in the bed's policy (the default policy's is 10 s)


@contextlib.asynccontextmanager
async def _running(
    tmp_path: Path, broker: Mosquitto, db_url: str, **ingest: Any
) -> AsyncIterator[Engine]:
    # Short delays keep the test quick; the rules and the state machine are as usual: a silent
    # bed stale after STALE_AFTER_S (the site's policy), HR_HIGH and SPO2_LOW after 1 s (the
    # bed's own).
    raw = load_policy().to_dict()
    raw["conditions"]["DATA_STALE"]["after_s"] = STALE_AFTER_S
    site_policy = parse_policy(raw)
    engine = Engine(
        MqttSettings(port=broker.port, client_id="eicu-test"),
        IngestSettings(spool_dir=tmp_path / "spool", flush_interval_s=0.1, **ingest),
        open_store(db_url),
        alerting=AlertingSettings(outbox_path=tmp_path / "alarms.db", policy=site_policy),
    )
    assert engine.alarms is not None
    policy = site_policy
    for kind in ("HR_HIGH", "SPO2_LOW"):
        policy, _ = override(policy, BED, kind, "delay_s", 1, user="t", now_us=1)
    engine.alarms.machine.set_policy(BED, policy)
    await engine.store.open()
    await engine.start()
    await engine.wait_connected()
    try:
        yield engine
    finally:
        await engine.stop()
        await engine.store.close()


async def _until(check: Callable[[], object], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


def _alarms(engine: Engine, kind: str) -> list[AlarmState]:
    assert engine.alarms is not None
    return [a.state for a in engine.alarms.machine.alarms() if a.bed == BED and a.kind == kind]


def _counter(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class _Gateway:
    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seq = 0

    async def numerics(self, values: dict[str, float], ts_us: int | None = None) -> None:
        ts = time.time_ns() // 1000 if ts_us is None else ts_us
        frame = NumericsFrame(BED, self.seq, ts, dict(values))
        self.seq += 1
        await self.client.publish(wire.numerics_topic(BED), wire.encode_numerics(frame), qos=1)

    async def stream(self, values: dict[str, float], until: Callable[[], object]) -> None:
        """Live numerics four times a second until ``until()``."""
        async with asyncio.timeout(30.0):
            while not until():
                await self.numerics(values)
                await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def _gateway(broker: Mosquitto) -> AsyncIterator[_Gateway]:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-test") as client:
        yield _Gateway(client)


async def test_a_future_dated_message_never_masks_real_hr_180(
    tmp_path: Path, broker: Mosquitto, db_url: str
) -> None:
    async with _running(tmp_path, broker, db_url) as engine, _gateway(broker) as gw:
        for _ in range(3):
            await gw.numerics(NORMAL)
        # One message that says it was measured in 2099, with a normal heart rate.
        await gw.numerics({"HR": 70.0, "SPO2": 97.0, "RR": 16.0}, ts_us=YEAR_2099_US)
        await gw.stream({"HR": 180.0, "SPO2": 97.0, "RR": 16.0}, lambda: _alarms(engine, "HR_HIGH"))
        assert _alarms(engine, "HR_HIGH") == [AlarmState.ACTIVE]
        state = engine.router.beds[BED]
        assert state.latest["HR"][0] == 180.0
        assert state.latest["HR"][1] <= state.device_now_us(time.time_ns() // 1000)
        # Flagged: counted, and a technical condition of the bed.
        assert (
            _counter(
                engine, "eicu_ingest_device_time_faults_total", kind="numerics", direction="ahead"
            )
            == 1
        )
        await _until(lambda: _alarms(engine, "DEVICE_CLOCK"))
        device_clock = [a for a in engine.alarms.machine.alarms() if a.kind == "DEVICE_CLOCK"]
        assert "ahead of the engine's clock" in device_clock[0].detail
        await _until(lambda: engine.writer.pending_frames == 0 and engine.writer.stored_frames >= 5)
    # Stored at the time it was received (so retention and chunking never see 2099), with the
    # device's own time kept beside it.
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(
            "SELECT code, value, time, device_time FROM numerics WHERE device_time IS NOT NULL"
        )
        rows = await cur.fetchall()
    assert {(BY_CODE[code].key, value) for code, value, _, _ in rows} == {
        ("HR", 70.0),
        ("SPO2", 97.0),
        ("RR", 16.0),
    }
    for _, _, received, device_time in rows:
        assert int(device_time.timestamp() * 1e6) == YEAR_2099_US
        assert abs(received.timestamp() - time.time()) < 600


async def test_a_retained_standby_never_silences_a_monitored_bed(
    tmp_path: Path, broker: Mosquitto, db_url: str
) -> None:
    """The attack: a retained standby without a time, then a bed with HR 180 and SpO2 80."""
    async with _gateway(broker) as gw:
        await gw.client.publish(
            wire.status_topic(BED), b'{"v":1,"state":"standby"}', qos=1, retain=True
        )
    async with _running(tmp_path, broker, db_url) as engine, _gateway(broker) as gw:
        await _until(
            lambda: BED in engine.router.beds and engine.router.beds[BED].status == "standby"
        )
        await _until(lambda: _alarms(engine, "BED_STANDBY"))  # shown while it lasts
        await gw.stream(
            {"HR": 180.0, "SPO2": 80.0, "RR": 16.0},
            lambda: _alarms(engine, "HR_HIGH") and _alarms(engine, "SPO2_LOW"),
        )


async def test_a_retained_standby_older_than_its_lifetime_is_ignored(
    tmp_path: Path, broker: Mosquitto, db_url: str
) -> None:
    now_us = time.time_ns() // 1000
    old = StatusFrame(BED.site, "standby", now_us - 7200 * 1_000_000, bed=BED.bed)
    async with _gateway(broker) as gw:
        await gw.client.publish(wire.status_topic(BED), wire.encode_status(old), qos=1, retain=True)
    async with (
        _running(tmp_path, broker, db_url, standby_max_s=3600.0) as engine,
        _gateway(broker) as gw,
    ):
        await _until(lambda: _counter(engine, "eicu_ingest_standby_expired_total") == 1)
        await gw.stream(NORMAL, lambda: BED in engine.router.beds)
        assert engine.router.beds[BED].status == "online"
        # Silent now: without the standby, the bed's silence is an alarm of its own.
        await _until(lambda: _alarms(engine, "DATA_STALE"), timeout_s=30.0)
        assert not _alarms(engine, "BED_STANDBY")


async def test_a_standby_ends_after_its_lifetime(
    tmp_path: Path, broker: Mosquitto, db_url: str
) -> None:
    async with (
        _running(tmp_path, broker, db_url, standby_max_s=10.0) as engine,
        _gateway(broker) as gw,
    ):
        await gw.stream(NORMAL, lambda: gw.seq >= 3)
        now_us = time.time_ns() // 1000
        standby = StatusFrame(BED.site, "standby", now_us - 7 * 1_000_000, bed=BED.bed)
        await gw.client.publish(wire.status_topic(BED), wire.encode_status(standby), qos=1)
        await _until(lambda: _alarms(engine, "BED_STANDBY") == [AlarmState.ACTIVE])
        # The monitor stops sending: in standby that is expected, and raises nothing until the
        # standby's 10 s are over (3 s from now, after the bed has been silent for longer than
        # STALE_AFTER_S); then the silent bed's alarm starts.
        ends_us = now_us + 3 * 1_000_000
        await _until(lambda: _alarms(engine, "DATA_STALE"), timeout_s=30.0)
        assert time.time_ns() // 1000 >= ends_us
        assert _alarms(engine, "BED_STANDBY") != [AlarmState.ACTIVE]
        assert engine.router.beds[BED].status_at(time.time_ns() // 1000) == "online"
