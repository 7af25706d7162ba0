"""Escalation driven by the engine: a rota in the alerting settings, a simulated VT bed, a page to
a real HTTP receiver, and an acknowledgement through the alarm service that stops escalation."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
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
from tests.alarm_servers import HookServer, Request

pytestmark = [pytest.mark.broker]

ACK_TIMEOUT_S = 3  # the nurse's timeout for a high-priority alarm


@pytest.fixture
async def hook() -> AsyncIterator[HookServer]:
    server = await HookServer().start()
    yield server
    await server.stop()


def _rota(hook: HookServer) -> dict[str, object]:
    timeouts = {"high": ACK_TIMEOUT_S, "medium": 120, "low": 600}
    return {
        "version": 1,
        "delivery_timeout_s": 5,
        "sites": {
            "s": {
                "levels": [
                    {
                        "role": "bedside_nurse",
                        "ack_timeout_s": timeouts,
                        "contacts": [
                            {
                                "name": "nurse-li",
                                "channel": "webhook",
                                "address": hook.url("/nurse"),
                            }
                        ],
                    },
                    {
                        "role": "on_call_physician",
                        "ack_timeout_s": timeouts,
                        "contacts": [
                            {"name": "dr-chen", "channel": "webhook", "address": hook.url("/phys")}
                        ],
                    },
                ]
            }
        },
    }


def _engine(
    tmp_path: Path, broker: Mosquitto, hook: HookServer, clock: Clock = SYSTEM_CLOCK
) -> Engine:
    """An engine on the test broker, its outbox at ``tmp_path/alarms.db``, paging the rota, its
    alarm stage on ``clock``."""
    rota_path = tmp_path / "rota.json"
    rota_path.write_text(json.dumps(_rota(hook)))
    alerting = AlertingSettings(outbox_path=tmp_path / "alarms.db", rota_path=rota_path)
    return Engine(
        MqttSettings(port=broker.port, client_id="eicu-test"),
        IngestSettings(spool_dir=tmp_path / "spool"),
        SqliteStore(tmp_path / "x.sqlite"),
        alerting=alerting,
        clock=clock,
    )


def _pages(hook: HookServer, path: str) -> list[Request]:
    """High-priority pages for the VT bed (VTACH, or TACHY for its rate) accepted at ``path``."""
    return [
        r
        for r in hook.requests
        if r.path == path and r.status == 200 and r.body["priority"] == "high"
    ]


async def _feed_until(
    engine: Engine, group: SynthGroup, check: Callable[[], bool], timeout_s: float
) -> None:
    """Route the simulated bed's frames as their time comes (the backlog at once), letting the
    engine's own alarm loop evaluate on the wall clock, until ``check()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met while feeding the simulated bed")
        now_us = time.time_ns() // 1000
        while group._start_us + int(group.bank.t_s * 1e6) <= now_us - 250_000:
            for _bed, frame, numerics, on in group.tick(0.25):
                if not on:
                    continue
                for f in (numerics, frame):
                    if f is not None:
                        rx = getattr(f, "t0_us", None) or getattr(f, "ts_us", 0)
                        engine.router.route(dataclasses.replace(f, received_us=rx))
        await asyncio.sleep(0.1)


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

        await _feed_until(engine, group, lambda: bool(_pages(hook, "/nurse")), timeout_s=30.0)
        page = _pages(hook, "/nurse")[0]
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
        assert not [r for r in _pages(hook, "/phys") if r.body["alarm_id"] == alarm_id]
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
        await _feed_until(engine, group, lambda: bool(_pages(hook, "/nurse")), timeout_s=30.0)
        assert not _pages(hook, "/phys")
        await _past_the_nurses_timeout(engine, clock)
        phys = _pages(hook, "/phys")[0]
        assert phys.body["role"] == "on_call_physician" and phys.body["step"] == 1
        nurse = _pages(hook, "/nurse")
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
