"""Escalation driven by the engine: a rota in the alerting settings, a simulated VT bed, a page to
a real HTTP receiver, and an acknowledgement through the alarm service that stops escalation."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from alerting.outbox import Outbox
from eicu.alarm_model import AlarmState, Notification
from eicu.clock import SYSTEM_CLOCK, Clock, ManualClock
from eicu.config import AlertingSettings, IngestSettings, MqttSettings
from eicu.devservices import Mosquitto
from eicu.models import BedKey
from eicu.store.sqlite import SqliteStore
from ingest.engine import Engine
from simulators.beds import SynthGroup
from tests.alarm_servers import HookServer
from tests.vt_bed import ACK_TIMEOUT_S, feed_until, pages, rota_doc

pytestmark = [pytest.mark.broker]


def _engine(
    tmp_path: Path, broker: Mosquitto, hook: HookServer, clock: Clock = SYSTEM_CLOCK
) -> Engine:
    """An engine on the test broker, its outbox at ``tmp_path/alarms.db``, paging the rota, its
    alarm stage on ``clock``."""
    rota_path = tmp_path / "rota.json"
    rota_path.write_text(json.dumps(rota_doc(hook)))
    alerting = AlertingSettings(outbox_path=tmp_path / "alarms.db", rota_path=rota_path)
    return Engine(
        MqttSettings(port=broker.port, client_id="eicu-test"),
        IngestSettings(spool_dir=tmp_path / "spool"),
        SqliteStore(tmp_path / "x.sqlite"),
        alerting=alerting,
        clock=clock,
    )


async def _past_the_nurses_timeout(engine: Engine, clock: ManualClock) -> None:
    """Move the alarm stage's clock past the nurse's acknowledgement timeout and let the
    dispatcher do what is due then."""
    assert engine.dispatcher is not None
    clock.advance(ACK_TIMEOUT_S + 0.5)
    await engine.dispatcher.tick()
    await engine.dispatcher.drain()


async def test_engine_pages_the_rota_for_a_vt_bed_and_acknowledgement_stops_escalation(
    tmp_path: Path, broker: Mosquitto, hook: HookServer
) -> None:
    # The alarm stage runs on real time, which the test moves ahead past the nurse's timeout.
    clock = ManualClock(running=True)
    engine = _engine(tmp_path, broker, hook, clock)
    assert engine.alarms is not None and engine.dispatcher is not None
    await engine.store.open()
    await engine.start()
    try:
        # VT runs from 60 s to 90 s of the scenario: start the bed 70 s in the past.
        start_us = time.time_ns() // 1000 - 70_000_000
        group = SynthGroup([BedKey("s", "vt")], ["vt"], [2], start_us)

        await feed_until(engine, group, lambda: bool(pages(hook, "/nurse")), timeout_s=30.0)
        page = pages(hook, "/nurse")[0]
        assert page.body["bed"] == "vt" and page.body["kind"] in ("VTACH", "TACHY")
        assert page.body["role"] == "bedside_nurse"
        alarm_id = page.body["alarm_id"]
        assert engine.alarms.outbox.receipt(page.key) is not None

        events = engine.alarms.acknowledge(alarm_id, "nurse-li", clock.now_us())
        assert events and events[-1].state in (AlarmState.ACKNOWLEDGED, AlarmState.CLEARED)
        outbox = engine.alarms.outbox
        async with asyncio.timeout(5):
            while not outbox.escalation_stopped(alarm_id):
                await asyncio.sleep(0.05)
        # Past the nurse's timeout nobody else is paged for the acknowledged alarm.
        await _past_the_nurses_timeout(engine, clock)
        assert not [r for r in pages(hook, "/phys") if r.body["alarm_id"] == alarm_id]
        assert alarm_id not in engine.dispatcher.escalating
    finally:
        await engine.stop()
        await engine.store.close()


async def test_without_acknowledgement_the_engine_escalates_to_the_next_level(
    tmp_path: Path, broker: Mosquitto, hook: HookServer
) -> None:
    clock = ManualClock(running=True)
    engine = _engine(tmp_path, broker, hook, clock)
    await engine.store.open()
    await engine.start()
    try:
        start_us = time.time_ns() // 1000 - 70_000_000
        group = SynthGroup([BedKey("s", "vt")], ["vt"], [2], start_us)
        await feed_until(engine, group, lambda: bool(pages(hook, "/nurse")), timeout_s=30.0)
        assert not pages(hook, "/phys")
        await _past_the_nurses_timeout(engine, clock)
        phys = pages(hook, "/phys")[0]
        assert phys.body["role"] == "on_call_physician" and phys.body["step"] == 1
        nurse = pages(hook, "/nurse")
        assert nurse and hook.requests.index(nurse[0]) < hook.requests.index(phys)
    finally:
        await engine.stop()
        await engine.store.close()


async def test_engine_sends_pages_left_pending_in_the_outbox_when_it_starts(
    tmp_path: Path, broker: Mosquitto, hook: HookServer
) -> None:
    outbox_path = tmp_path / "alarms.db"
    key = "s/vt/VTACH/1:0:bedside_nurse:nurse-li:webhook"
    with Outbox(outbox_path) as outbox:  # a page enqueued before a crash, never sent
        body: dict[str, object] = {"site": "s", "bed": "vt", "kind": "VTACH", "priority": "high"}
        notification = Notification(
            key, "s/vt/VTACH/1", "nurse-li", "webhook", hook.url("/nurse"), body, 1
        )
        assert outbox.enqueue(notification)
    engine = _engine(tmp_path, broker, hook)
    await engine.store.open()
    await engine.start()
    try:
        async with asyncio.timeout(10):
            while hook.accepted[key] == 0:
                await asyncio.sleep(0.05)
        assert engine.alarms is not None
        receipt = engine.alarms.outbox.receipt(key)
        assert receipt is not None and receipt.delivered_us is not None
    finally:
        await engine.stop()
        await engine.store.close()
    assert hook.accepted[key] == 1
