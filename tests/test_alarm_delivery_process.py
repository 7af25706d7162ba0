"""Alarm delivery as a process of its own (``eicu alarms deliver``): an engine that publishes its
alarm events on the bus (``EICU_ALARM_DELIVERY=bus``) and pages nobody itself, a real Mosquitto,
a real PostgreSQL, a real HTTP receiver for the pages; the delivery process killed with SIGKILL
mid-escalation, started after the alarm, and the publisher cut off from its broker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from alerting.feed import delivery_partition, run_publish
from alerting.outbox import Outbox, event_id
from eicu import wire
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority, StoredEvent
from eicu.config import AlertingSettings, IngestSettings, MqttSettings
from eicu.devservices import DeliveryProcess, Mosquitto, NatsServer, ServiceError
from eicu.errors import PayloadError
from eicu.models import BedKey
from eicu.store import Store, open_store
from ingest.engine import Engine
from simulators.beds import SynthGroup
from tests.alarm_servers import HookServer
from tests.tcp_proxy import TcpProxy
from tests.vt_bed import feed_until, pages, rota_doc

pytestmark = [pytest.mark.broker, pytest.mark.db]

PARTITIONS = 2


@pytest.fixture
def processes() -> Iterator[list[DeliveryProcess]]:
    """Delivery processes started by a test, stopped after it whatever happened."""
    started: list[DeliveryProcess] = []
    yield started
    for process in started:
        process.stop()


def _delivery(
    tmp_path: Path, broker: Mosquitto, db_url: str, hook: HookServer, started: list[DeliveryProcess]
) -> DeliveryProcess:
    rota = tmp_path / "rota.json"
    rota.write_text(json.dumps(rota_doc(hook)))
    process = DeliveryProcess(
        broker.url,
        db_url,
        tmp_path / "delivery.db",
        tmp_path / "delivery.log",
        env={"EICU_ROTA_FILE": str(rota), "EICU_ALARM_PARTITIONS": str(PARTITIONS)},
    )
    started.append(process)
    return process


async def _until_delivered(outbox: Path, key: str, timeout_s: float = 30.0) -> None:
    """Until the delivery process's outbox records notification ``key`` as taken by its
    receiver."""
    import sqlite3

    def delivered() -> bool:
        db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5.0)
        try:
            row = db.execute("SELECT delivered_us FROM deliveries WHERE key = ?", (key,)).fetchone()
        finally:
            db.close()
        return row is not None and row[0] is not None

    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(delivered):
        assert time.monotonic() < deadline, f"{key} not recorded as delivered in {timeout_s} s"
        await asyncio.sleep(0.05)


async def _engine(tmp_path: Path, broker: Mosquitto, store: Store) -> Engine:
    """An engine that publishes its alarm events for delivery and pages nobody itself."""
    alerting = AlertingSettings(
        outbox_path=tmp_path / "engine-alarms.db", delivery="bus", partitions=PARTITIONS
    )
    engine = Engine(
        MqttSettings(port=broker.port, client_id="eicu-test"),
        IngestSettings(spool_dir=tmp_path / "spool"),
        store,
        alerting=alerting,
        alarm_store=store,
    )
    assert engine.dispatcher is None
    await engine.start()
    return engine


def _vt_bed() -> SynthGroup:
    # VT runs from 60 s to 90 s of the scenario: the bed starts 70 s in the past.
    return SynthGroup([BedKey("s", "vt")], ["vt"], [2], time.time_ns() // 1000 - 70_000_000)


async def test_a_delivery_process_pages_escalates_and_stops_through_a_sigkill(
    tmp_path: Path,
    broker: Mosquitto,
    db_url: str,
    hook: HookServer,
    processes: list[DeliveryProcess],
) -> None:
    store = open_store(db_url)
    await store.open()
    engine = await _engine(tmp_path, broker, store)
    try:
        delivery = _delivery(tmp_path, broker, db_url, hook, processes)
        await asyncio.to_thread(delivery.wait_ready)
        group = _vt_bed()
        await feed_until(engine, group, lambda: bool(pages(hook, "/nurse")), timeout_s=30.0)
        nurse = pages(hook, "/nurse")[0]
        alarm_id = nurse.body["alarm_id"]
        assert nurse.body["role"] == "bedside_nurse" and nurse.body["bed"] == "vt"

        # A crash right after the nurse's page was taken and recorded (a crash between the
        # receiver's answer and the record sends it again under the same idempotency key, for
        # the receiver to drop); a new process on the same outbox goes on.
        await _until_delivered(tmp_path / "delivery.db", nurse.key)
        delivery.kill()
        again = _delivery(tmp_path, broker, db_url, hook, processes)
        await asyncio.to_thread(again.wait_ready)
        await feed_until(engine, group, lambda: bool(pages(hook, "/phys")), timeout_s=30.0)
        phys = pages(hook, "/phys")[0]
        assert phys.body["alarm_id"] == alarm_id and phys.body["step"] == 1
        assert hook.accepted[nurse.key] == 1, "the nurse was paged once, crash or not"

        # The physician acknowledges at the bedside: the escalation stops in the delivery
        # process, fed by the engine's event.
        assert engine.alarms is not None
        events = engine.alarms.acknowledge(alarm_id, "dr-chen", time.time_ns() // 1000)
        assert events
        with Outbox(tmp_path / "delivery.db") as box:
            async with asyncio.timeout(15):
                while not box.escalation_stopped(alarm_id):
                    await asyncio.sleep(0.05)
            # no page left to send (the changes published to the bed may still be on the way)
            assert not [r for r in box.receipts(alarm_id) if r.open and ":state:" not in r.key]
        assert hook.accepted[phys.key] == 1
        assert not [k for k, n in hook.accepted.items() if n > 1], "no page sent twice"
        # The receipts reach the store.
        async with asyncio.timeout(15):
            while not any(r.key == phys.key for r in await store.alarm_deliveries(alarm_id)):
                await asyncio.sleep(0.1)
    finally:
        await engine.stop()
        await store.close()


async def test_an_alarm_raised_before_any_delivery_process_ran_is_paged_once_one_starts(
    tmp_path: Path,
    broker: Mosquitto,
    db_url: str,
    hook: HookServer,
    processes: list[DeliveryProcess],
) -> None:
    store = open_store(db_url)
    await store.open()
    engine = await _engine(tmp_path, broker, store)
    try:
        group = _vt_bed()
        t0_us = time.time_ns() // 1000 - 3_600_000_000

        async def stored() -> list[str]:
            rows = await store.alarm_events(t0_us, t0_us + 7_200_000_000)
            return [r.event.alarm_id for r in rows if r.event.priority is Priority.HIGH]

        found: list[str] = []

        def raised() -> bool:
            return bool(found)

        async def poll() -> None:
            while not found:
                found.extend(await stored())
                await asyncio.sleep(0.1)

        poller = asyncio.create_task(poll())
        try:
            # Nobody reads the alarm events yet: the broker keeps none for delivery.
            await feed_until(engine, group, raised, timeout_s=30.0)
        finally:
            poller.cancel()
        assert not hook.requests
        delivery = _delivery(tmp_path, broker, db_url, hook, processes)
        await asyncio.to_thread(delivery.wait_ready)
        await feed_until(engine, group, lambda: bool(pages(hook, "/nurse")), timeout_s=20.0)
        assert pages(hook, "/nurse")[0].body["alarm_id"] in found
        assert "live alarms taken over" in delivery.log()
        assert not [k for k, n in hook.accepted.items() if n > 1]
    finally:
        await engine.stop()
        await store.close()


BED = BedKey("s", "b1")


def _event(n: int, bed: BedKey = BED) -> AlarmEvent:
    return AlarmEvent(
        alarm_id=f"{bed}/VTACH/{n}",
        bed=bed,
        kind="VTACH",
        priority=Priority.HIGH,
        category=Category.PHYSIOLOGICAL,
        state=AlarmState.ACTIVE,
        time_us=1_780_000_000_000_000 + n,
    )


async def test_events_recorded_while_the_broker_is_away_are_published_in_order_when_it_is_back(
    tmp_path: Path, broker: Mosquitto
) -> None:
    proxy = TcpProxy(broker.port)  # not started: the broker cannot be reached
    settings = MqttSettings(port=proxy.port, client_id="eicu-test-alarms")
    received: list[tuple[str, AlarmEvent]] = []
    with Outbox(tmp_path / "engine.db") as box:
        publisher = asyncio.create_task(
            run_publish(box, settings, PARTITIONS, retry_min_s=0.05, retry_max_s=0.2)
        )
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="reader") as reader:
                await reader.subscribe(f"{wire.ALARM_EVENT_ROOT}/#", qos=1)
                for n in range(5):
                    box.record(_event(n))
                await asyncio.sleep(0.3)  # several failed attempts
                assert len(box.unpublished()) == 5
                proxy.start()
                async with asyncio.timeout(10):
                    async for message in reader.messages:
                        assert isinstance(message.payload, bytes)
                        received.append(
                            wire.decode_alarm_event(str(message.topic), message.payload)
                        )
                        if len(received) == 5:
                            break
                assert [e.time_us for _, e in received] == [_event(n).time_us for n in range(5)]
                assert [i for i, _ in received] == [event_id(_event(n)) for n in range(5)]
                topic = wire.alarm_event_topic(delivery_partition(_event(0).bed, PARTITIONS),
                                               _event(0).bed)  # fmt: skip
                assert topic.endswith("/s/b1")
                async with asyncio.timeout(5):
                    while box.unpublished():
                        await asyncio.sleep(0.02)
                # Recording the same event again publishes nothing new.
                assert not box.record(_event(0))
                assert not box.unpublished()
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            proxy.stop()


def test_an_alarm_event_on_the_bus_is_checked_against_its_topic() -> None:
    e = _event(1)
    payload = wire.encode_alarm_event("abc", e)
    assert wire.decode_alarm_event("eicu/alarm/1/s/b1", payload) == ("abc", e)
    with pytest.raises(PayloadError) as wrong_bed:
        wire.decode_alarm_event("eicu/alarm/1/s/b2", payload)
    assert wrong_bed.value.reason == "wrong_topic"
    with pytest.raises(PayloadError) as not_ours:
        wire.decode_alarm_event("eicu/v1/s/b1/alarms", payload)
    assert not_ours.value.reason == "wrong_topic"
    with pytest.raises(PayloadError) as no_id:
        wire.decode_alarm_event("eicu/alarm/1/s/b1", payload.replace(b'"abc"', b'""'))
    assert no_id.value.reason == "malformed"
    with pytest.raises(PayloadError) as bad_state:
        wire.decode_alarm_event("eicu/alarm/1/s/b1", payload.replace(b'"active"', b'"maybe"'))
    assert bad_state.value.reason == "malformed"
    assert wire.is_internal_topic("eicu/alarm/1/s/b1")
    assert not wire.is_internal_topic("eicu/v1/s/b1/numerics")


def test_an_outbox_of_schema_1_counts_its_events_as_published(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with Outbox(path) as box:
        box.record(_event(1))
    db = sqlite3.connect(path)
    db.execute("DROP INDEX alarm_events_unpublished")
    db.execute("ALTER TABLE alarm_events DROP COLUMN published")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    with Outbox(path) as box:
        assert not box.unpublished()  # an upgraded engine does not send its old trail
        box.record(_event(2))
        assert [s.event for s in box.unpublished()] == [_event(2)]


@pytest.mark.nats
async def test_two_delivery_processes_on_nats_one_killed_the_other_goes_on_with_its_escalation(
    tmp_path: Path, db_url: str, hook: HookServer
) -> None:
    """One delivery partition shared by two processes through NATS: the one holding it pages
    the nurse and is SIGKILLed; the other takes the partition and the alarm over from the store
    and pages the physician at the nurse's timeout, the nurse paged once."""
    try:
        server = NatsServer(partitions=None).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start NATS for the test: {exc}")
    rota = tmp_path / "rota.json"
    rota.write_text(json.dumps(rota_doc(hook)))
    started: list[DeliveryProcess] = []

    def delivery(name: str) -> DeliveryProcess:
        process = DeliveryProcess(
            server.url,
            db_url,
            tmp_path / f"delivery-{name}.db",
            tmp_path / f"delivery-{name}.log",
            env={
                "EICU_ROTA_FILE": str(rota),
                "EICU_ALARM_PARTITIONS": "1",
                "EICU_NATS_URL": server.nats_url,
                "EICU_WORKER_ID": name,
                "EICU_OWNERSHIP_TTL_S": "1.5",
            },
        )
        started.append(process)
        return process

    store = open_store(db_url)
    await store.open()
    engine: Engine | None = None
    try:
        first = delivery("d1")
        await asyncio.to_thread(first.wait_ready)
        second = delivery("d2")
        await asyncio.to_thread(second.wait_ready)
        alerting = AlertingSettings(
            outbox_path=tmp_path / "engine-alarms.db", delivery="bus", partitions=1
        )
        engine = Engine(
            MqttSettings(port=server.mqtt_port, client_id="eicu-test"),
            IngestSettings(spool_dir=tmp_path / "spool"),
            store,
            alerting=alerting,
            alarm_store=store,
        )
        await engine.start()
        group = _vt_bed()
        await feed_until(engine, group, lambda: bool(pages(hook, "/nurse")), timeout_s=30.0)
        nurse = pages(hook, "/nurse")[0]
        alarm_id = nurse.body["alarm_id"]

        async def nurse_receipt_stored() -> bool:
            rows = await store.alarm_deliveries(alarm_id)
            return any(r.key == nurse.key and r.delivered_us is not None for r in rows)

        async with asyncio.timeout(15):
            while not await nurse_receipt_stored():
                await asyncio.sleep(0.1)
        first.kill()
        await feed_until(engine, group, lambda: bool(pages(hook, "/phys")), timeout_s=30.0)
        phys = pages(hook, "/phys")[0]
        assert phys.body["alarm_id"] == alarm_id and phys.body["step"] == 1
        assert hook.accepted[nurse.key] == 1
        assert "live alarms taken over" in second.log()
        assert "step 0, paging bedside_nurse" in first.log()
        assert "step 1, paging on_call_physician" in second.log()
    finally:
        if engine is not None:
            await engine.stop()
        await store.close()
        for process in started:
            process.stop()
        server.cleanup()


async def test_an_event_that_reached_the_store_but_never_the_bus_is_paged(
    tmp_path: Path,
    broker: Mosquitto,
    db_url: str,
    hook: HookServer,
    processes: list[DeliveryProcess],
) -> None:
    """An engine killed (or stopped) after copying an alarm event to the store but before
    publishing it: the delivery process finds it in the store within seconds and pages."""
    store = open_store(db_url)
    await store.open()
    try:
        delivery = _delivery(tmp_path, broker, db_url, hook, processes)
        await asyncio.to_thread(delivery.wait_ready)
        now_us = time.time_ns() // 1000
        bed = BedKey("s", "lost")
        event = AlarmEvent(
            alarm_id=f"{bed}/VTACH/{now_us}", bed=bed, kind="VTACH", priority=Priority.HIGH,
            category=Category.PHYSIOLOGICAL, state=AlarmState.ACTIVE, time_us=now_us,
            reason="started: present for 5 s",
        )  # fmt: skip
        await store.write_alarms([StoredEvent(event_id(event), event, now_us)], [])
        async with asyncio.timeout(30):
            while not [r for r in pages(hook, "/nurse") if r.body["alarm_id"] == event.alarm_id]:
                await asyncio.sleep(0.1)
        assert "came from the store, not the bus" in delivery.log()
        assert not [k for k, n in hook.accepted.items() if n > 1]
    finally:
        await store.close()
