"""Bedside to database through a real Mosquitto and a real PostgreSQL: nothing lost, nothing
twice, bad payloads rejected while good traffic flows, broker and database outages survived."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from eicu import wire
from eicu.config import IngestSettings, MqttSettings
from eicu.devservices import Mosquitto, Postgres
from eicu.models import BedKey, NumericsFrame, SignalBlock, StatusFrame, WaveformFrame
from eicu.store import Store
from ingest.engine import Engine
from simulators.run import SimulationPlan, simulate

pytestmark = [pytest.mark.broker, pytest.mark.db]


async def _started(broker: Mosquitto, store: Store, tmp_path: Path) -> Engine:
    engine = _engine(broker, store, tmp_path)
    await engine.start()
    await engine.wait_connected()
    return engine


def _engine(
    broker: Mosquitto, store: Store, tmp_path: Path, name: str = "engine", **settings: Any
) -> Engine:
    mqtt = MqttSettings.from_url(broker.url, client_id=f"eicu-test-{name}")
    # Waveforms stored in segments of half a second: a bed's last frames, held for a segment
    # that never fills once its stream ends, are written 2 s later (5 s with 2 s segments).
    ingest = IngestSettings(
        spool_dir=tmp_path / f"spool-{name}",
        flush_interval_s=0.1,
        waveform_segment_s=0.5,
        **settings,
    )
    return Engine(mqtt, ingest, store)


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _settle(engine: Engine, expected_frames: int, timeout_s: float = 60.0) -> None:
    """Wait until the engine has stored what it should, then a little longer for stragglers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if engine.writer.stored_frames >= expected_frames and engine.writer.pending_frames == 0:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)


def _total(summary: dict[str, object]) -> int:
    beds = summary["beds"]
    assert isinstance(beds, dict)
    return sum(b["messages"] for b in beds.values())


async def test_round_trip_of_every_message_kind(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    engine = await _started(broker, store, tmp_path)
    bed = BedKey("karamay", "bed07")
    # a device clock in step with the hub's (the store keeps a far-off one at its receipt time)
    t0 = int(time.time()) * 1_000_000 - 60_000_000
    ecg = (np.sin(np.arange(125) / 10) * 900).astype(np.int16)
    resp = np.full(31, -32768, dtype=np.int16)  # a whole block with no valid sample
    frame = WaveformFrame(
        bed,
        1,
        t0,
        (
            SignalBlock("ECG_II", 250.0, 200.0, 0, ecg),
            SignalBlock("RESP", 62.5, 100.0, 0, resp, 8000),
        ),
    )
    numerics = NumericsFrame(bed, 1, t0, {"HR": 88.0, "SPO2": None, "ACVPU": 2.0, "O2": 1.0})
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-test") as client:
        await client.publish(wire.waveform_topic(bed), wire.encode_waveform(frame), qos=1)
        await client.publish(wire.numerics_topic(bed), wire.encode_numerics(numerics), qos=1)
        await client.publish(
            wire.status_topic(bed),
            wire.encode_status(StatusFrame("karamay", "online", t0, bed="bed07")),
            qos=1,
            retain=True,
        )
        await client.publish(
            wire.gateway_status_topic("karamay", "gw1"),
            wire.encode_status(  # a standby of now: one older than its lifetime is ignored
                StatusFrame(
                    "karamay", "standby", time.time_ns() // 1000, gateway="gw1", beds=("bed07",)
                )
            ),
            qos=1,
            retain=True,
        )
    await _settle(engine, 4)
    await engine.stop()
    window = await store.waveform(bed, "ECG_II", t0, t0 + 1_000_000)
    np.testing.assert_array_equal(window.values, ecg / 200.0)
    resp_back = await store.waveform(bed, "RESP", t0, t0 + 1_000_000)
    assert resp_back.values.shape == (31,) and np.isnan(resp_back.values).all()
    stats = await store.stats()
    assert stats["beds"]["karamay/bed07"] == {"messages": 2, "samples": 125 + 31 + 4}
    assert engine.router.beds[bed].status == "standby"  # the gateway's word came last
    assert engine.router.beds[bed].latest["ACVPU"] == (2.0, t0)


async def test_many_beds_every_sample_stored_exactly_once(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    engine = await _started(broker, store, tmp_path)
    mqtt = MqttSettings.from_url(broker.url)
    summary = await simulate(
        mqtt, SimulationPlan(site="icu", beds=100, duration_s=8.0, scenario="mix")
    )
    await _settle(engine, _total(summary))
    await engine.stop()
    stats = await store.stats()
    assert len(summary["beds"]) == 100  # type: ignore[arg-type]
    assert stats["beds"] == summary["beds"]
    assert engine.metrics.duplicates.labels(kind="waveform")._value.get() == 0


async def test_bad_payloads_rejected_while_good_traffic_continues(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    from eicu.config import AdmissionSettings
    from tests.test_wire import BAD

    # every bad message kept one by one (more of one reason than a window's default share)
    admission = AdmissionSettings(dead_letters_per_window=len(BAD))
    engine = _engine(broker, store, tmp_path, admission=admission)
    await engine.start()
    await engine.wait_connected()
    mqtt = MqttSettings.from_url(broker.url)
    sim = asyncio.create_task(
        simulate(mqtt, SimulationPlan(site="good", beds=5, duration_s=10.0, speed=2.0))
    )
    expected: dict[str, int] = {}
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bad-gateway") as client:
        for topic, payload, reason in BAD:
            if not topic.isprintable():
                continue  # Mosquitto drops a client that names a topic with control characters
            await client.publish(topic, payload, qos=1)
            if not topic.startswith("eicu/"):
                continue  # outside the engine's subscription: the broker never hands it over
            # eicu/v2/... is inside it: seen, counted and dead-lettered as unknown_version.
            expected[reason] = expected.get(reason, 0) + 1
    summary = await sim
    await _settle(engine, _total(summary))
    await engine.stop()
    assert (await store.stats())["beds"] == summary["beds"]
    assert await store.dead_letter_counts() == expected
    for reason, n in expected.items():
        assert engine.metrics.rejected.labels(reason=reason)._value.get() == n


async def test_broker_restart_mid_stream_loses_nothing(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    engine = await _started(broker, store, tmp_path)
    mqtt = MqttSettings.from_url(broker.url)
    sim = asyncio.create_task(
        simulate(mqtt, SimulationPlan(site="icu", beds=10, duration_s=14.0, speed=2.0))
    )
    await _until(lambda: engine.writer.stored_data_frames > 0, "the stream to be stored")
    broker.stop()
    await _until(lambda: not engine.ingest.connected.is_set(), "the engine to lose the broker")
    # the broker stays down for a second of the stream (two simulated seconds at this speed)
    await asyncio.sleep(1.0)
    broker.start()
    summary = await sim
    await _settle(engine, _total(summary))
    await engine.stop()
    assert engine.metrics.mqtt_reconnects._value.get() >= 1
    assert (await store.stats())["beds"] == summary["beds"]


@pytest.mark.slow
async def test_database_down_beyond_the_memory_bound_then_every_sample_once(
    broker: Mosquitto, pg_server: Postgres, store: Store, tmp_path: Path
) -> None:
    # a small memory bound, so the outage also exercises the on-disk spool; short retries
    engine = _engine(
        broker, store, tmp_path, memory_max_frames=500, batch_max_frames=200,
        write_retry_max_s=1.0,
    )  # fmt: skip
    spool = tmp_path / "spool-engine"
    await engine.start()
    await engine.wait_connected()
    mqtt = MqttSettings.from_url(broker.url)
    sim = asyncio.create_task(simulate(mqtt, SimulationPlan(site="icu", beds=20, duration_s=14.0)))
    await _until(lambda: engine.writer.stored_data_frames > 0, "the stream to be stored")
    pg_server.stop()
    # down until more has arrived than memory holds: the rest is in the spool
    await _until(
        lambda: engine.writer.pending_frames > 500 and any(spool.glob("*.batch")),
        "frames beyond the memory bound spooled",
    )
    assert not engine.writer.available
    assert not sim.done()  # the stream goes on while the database comes back
    pg_server.start()
    summary = await sim
    await _settle(engine, _total(summary), timeout_s=90.0)
    await engine.stop()
    assert (await store.stats())["beds"] == summary["beds"]


async def test_engine_stopped_with_database_down_resumes_from_spool(
    broker: Mosquitto, pg_server: Postgres, store: Store, tmp_path: Path
) -> None:
    engine = _engine(broker, store, tmp_path, "a")
    await engine.start()
    await engine.wait_connected()
    mqtt = MqttSettings.from_url(broker.url)
    pg_server.stop()
    try:
        summary = await simulate(
            mqtt, SimulationPlan(site="icu", beds=4, duration_s=8.0, speed=4.0)
        )
        await asyncio.sleep(1.0)
        await engine.stop(drain_timeout_s=1.0)  # SIGTERM with the database away: spooled
    finally:
        pg_server.start()
    assert list((tmp_path / "spool-a").glob("*.batch"))
    again = _engine(broker, store, tmp_path, "a")
    await again.start()
    await _settle(again, _total(summary))
    await again.stop()
    assert (await store.stats())["beds"] == summary["beds"]
    print(json.dumps(summary))


async def test_coded_waveforms_are_stored_as_the_same_frames_raw(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    # The same simulated beds, one site's gateway sending its samples compressed by the
    # project's codec (wire.FLAG_CODED), the other's raw: the store holds the same samples.
    engine = await _started(broker, store, tmp_path)
    mqtt = MqttSettings.from_url(broker.url)
    plans = [
        SimulationPlan(site=site, beds=3, duration_s=6.0, speed=2.0, seed=4, coded=coded)
        for site, coded in (("raw", False), ("coded", True))
    ]
    start_us = time.time_ns() // 1000
    raw, coded = await asyncio.gather(*(simulate(mqtt, plan) for plan in plans))
    await _settle(engine, _total(raw) + _total(coded))
    await engine.stop()
    rejected = [s for m in engine.metrics.rejected.collect() for s in m.samples if s.value]
    assert rejected == []
    stats = (await store.stats())["beds"]
    assert stats == {**raw["beds"], **coded["beds"]}  # type: ignore[dict-item]
    end_us = start_us + 60_000_000  # at twice real time, device times run ahead of the clock
    for bed in ("bed001", "bed002", "bed003"):
        for signal in ("ECG_II", "PLETH"):
            windows = [
                await store.waveform(BedKey(site, bed), signal, start_us, end_us)
                for site in ("raw", "coded")
            ]
            assert windows[0].values.shape[0] > 0
            np.testing.assert_array_equal(windows[0].values, windows[1].values)
