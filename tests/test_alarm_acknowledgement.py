"""Acknowledgements reach the alarm state machine from every side, against a real Mosquitto and
a real HTTP receiver: the remote ICU over MQTT (``.../alarms/ack``), a page's recipient through
the dispatcher; and every change of the alarm is published back to the bed's alarms topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from eicu import wire
from eicu.alarm_model import AlarmState
from eicu.alarms.policy import load_policy, override
from eicu.clock import SYSTEM_CLOCK, Clock, ManualClock
from eicu.config import AlertingSettings, IngestSettings, MqttSettings
from eicu.devservices import Mosquitto
from eicu.errors import PayloadError
from eicu.models import AlarmAck, BedKey, NumericsFrame
from eicu.store.sqlite import SqliteStore
from ingest.engine import Engine
from tests.alarm_servers import HookServer

pytestmark = [pytest.mark.broker]

BED = BedKey("s", "b1")
ACK_TIMEOUT_S = 2


def _rota(hook: HookServer) -> dict[str, object]:
    timeouts = {"high": ACK_TIMEOUT_S, "medium": ACK_TIMEOUT_S, "low": ACK_TIMEOUT_S}
    return {
        "version": 1,
        "sites": {
            "s": {
                "levels": [
                    {
                        "role": "bedside_nurse",
                        "ack_timeout_s": timeouts,
                        "contacts": [{"name": "station", "channel": "mqtt"}],
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


@contextlib.asynccontextmanager
async def _running(
    tmp_path: Path, broker: Mosquitto, hook: HookServer | None, clock: Clock = SYSTEM_CLOCK
) -> AsyncIterator[Engine]:
    """The engine with the rota above, or with none when ``hook`` is None; its alarm stage on
    ``clock``."""
    rota_path = None
    if hook is not None:
        rota_path = tmp_path / "rota.json"
        rota_path.write_text(json.dumps(_rota(hook)))
    engine = Engine(
        MqttSettings(port=broker.port, client_id="eicu-test"),
        IngestSettings(spool_dir=tmp_path / "spool"),
        SqliteStore(tmp_path / "x.sqlite"),
        alerting=AlertingSettings(outbox_path=tmp_path / "alarms.db", rota_path=rota_path),
        clock=clock,
    )
    assert engine.alarms is not None
    # No condition delay for this bed: the alarm starts on the first sample beyond the limit.
    policy, _ = override(load_policy(), BED, "HR_HIGH", "delay_s", 0, user="t", now_us=1)
    engine.alarms.machine.set_policy(BED, policy)
    await engine.store.open()
    await engine.start()
    await engine.wait_connected()
    try:
        yield engine
    finally:
        await engine.stop()
        await engine.store.close()


@contextlib.asynccontextmanager
async def _remote_icu(
    broker: Mosquitto,
) -> AsyncIterator[tuple[aiomqtt.Client, list[dict[str, Any]]]]:
    """The remote ICU: a gateway publishing HR 150 for the bed twice a second and listening to
    the bed's alarms topic."""
    received: list[dict[str, Any]] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="remote-icu") as client:
        await client.subscribe(wire.alarms_topic(BED), qos=1)

        async def listen() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                received.append(json.loads(message.payload))

        async def feed() -> None:
            for seq in range(10_000):
                now_us = time.time_ns() // 1000
                frame = NumericsFrame(BED, seq, now_us, {"HR": 150.0, "SPO2": 97.0, "RR": 16.0})
                await client.publish(wire.numerics_topic(BED), wire.encode_numerics(frame), qos=1)
                await asyncio.sleep(0.5)

        tasks = [asyncio.create_task(listen()), asyncio.create_task(feed())]
        try:
            yield client, received
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _until(check: Callable[[], object], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


def _find(received: list[dict[str, Any]], type_: str, state: str) -> list[dict[str, Any]]:
    return [d for d in received if d.get("type") == type_ and d.get("state") == state]


async def _past_the_nurses_timeout(engine: Engine, clock: ManualClock) -> None:
    """Move the alarm stage's clock past the nurse's acknowledgement timeout and let the
    dispatcher do what is due then (a page to the physician, were the alarm still open)."""
    assert engine.dispatcher is not None
    clock.advance(ACK_TIMEOUT_S + 1.0)
    await engine.dispatcher.tick()
    await engine.dispatcher.drain()


def _counter(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_remote_icu_acknowledges_over_mqtt_and_every_change_is_published_back(
    tmp_path: Path, broker: Mosquitto, hook: HookServer
) -> None:
    # The alarm stage runs on real time, which the test moves ahead past the nurse's timeout.
    clock = ManualClock(running=True)
    async with (
        _running(tmp_path, broker, hook, clock) as engine,
        _remote_icu(broker) as (client, got),
    ):
        assert engine.alarms is not None
        await _until(lambda: _find(got, "state", "active") and _find(got, "page", "active"))
        active = _find(got, "state", "active")[0]
        alarm_id = active["alarm_id"]
        assert (active["site"], active["bed"], active["kind"]) == ("s", "b1", "HR_HIGH")
        assert active["key"] == f"{alarm_id}:state:" + active["key"].rsplit(":", 1)[1]
        assert _find(got, "page", "active")[0]["role"] == "bedside_nurse"

        topic = wire.alarm_ack_topic(BED)
        bad = [
            b"not json",
            json.dumps({"v": 1, "alarm_id": "s/b2/HR_HIGH/1", "user": "x"}).encode(),  # other bed
            json.dumps({"v": 1, "alarm_id": alarm_id}).encode(),  # nobody
            json.dumps({"v": 1, "alarm_id": alarm_id, "user": "x\x07"}).encode(),
        ]
        for payload in bad:
            await client.publish(topic, payload, qos=1)
        unknown = AlarmAck(BED, "s/b1/HR_HIGH/123", "nurse-li")
        await client.publish(topic, wire.encode_alarm_ack(unknown), qos=1)
        await _until(
            lambda: (
                _counter(engine, "eicu_ingest_rejected_total", reason="malformed") == 4
                and _counter(
                    engine, "eicu_alarm_acknowledgements_total", source="mqtt", outcome="not_live"
                )
                == 1
            )
        )
        assert engine.alarms.machine.alarm(alarm_id).state == AlarmState.ACTIVE

        ack = AlarmAck(BED, alarm_id, "nurse-li", time.time_ns() // 1000)
        await client.publish(topic, wire.encode_alarm_ack(ack), qos=1)
        await _until(lambda: _find(got, "state", "acknowledged"))
        acked = _find(got, "state", "acknowledged")[0]
        assert (acked["alarm_id"], acked["actor"]) == (alarm_id, "nurse-li@s")
        assert engine.alarms.machine.alarm(alarm_id).state == AlarmState.ACKNOWLEDGED
        audited = engine.alarms.outbox.events(alarm_id)[-1].event
        assert (audited.state, audited.actor) == (AlarmState.ACKNOWLEDGED, "nurse-li@s")
        assert engine.alarms.outbox.escalation_stopped(alarm_id)
        # Past the nurse's timeout the physician is not paged for the acknowledged alarm.
        await _past_the_nurses_timeout(engine, clock)
        assert not hook.requests
        # The same acknowledgement again changes nothing.
        await client.publish(topic, wire.encode_alarm_ack(ack), qos=1)
        await _until(
            lambda: (
                _counter(
                    engine, "eicu_alarm_acknowledgements_total", source="mqtt", outcome="already"
                )
                == 1
            )
        )
        assert len(_find(got, "state", "acknowledged")) == 1
    keys = [d["key"] for d in got]
    assert len(keys) == len(set(keys))  # every message has its own idempotency key


async def test_a_page_acknowledged_by_its_recipient_acknowledges_the_alarm(
    tmp_path: Path, broker: Mosquitto, hook: HookServer
) -> None:
    clock = ManualClock(running=True)
    async with (
        _running(tmp_path, broker, hook, clock) as engine,
        _remote_icu(broker) as (_client, got),
    ):
        assert engine.alarms is not None and engine.dispatcher is not None
        await _until(lambda: _find(got, "page", "active"))
        page = _find(got, "page", "active")[0]
        assert await engine.dispatcher.acknowledge(page["key"], "nurse-wu") == page["alarm_id"]
        alarm = engine.alarms.machine.alarm(page["alarm_id"])
        assert (alarm.state, alarm.acknowledged_by) == (AlarmState.ACKNOWLEDGED, "nurse-wu")
        audited = engine.alarms.outbox.events(page["alarm_id"])[-1].event
        assert (audited.state, audited.actor) == (AlarmState.ACKNOWLEDGED, "nurse-wu")
        receipt = engine.alarms.outbox.receipt(page["key"])
        assert receipt is not None and receipt.acknowledged_by == "nurse-wu"
        await _until(lambda: _find(got, "state", "acknowledged"))
        await _past_the_nurses_timeout(engine, clock)
        assert not hook.requests  # nobody else paged


async def test_without_a_rota_alarm_changes_still_reach_the_bed(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with _running(tmp_path, broker, None) as engine, _remote_icu(broker) as (client, got):
        assert engine.alarms is not None
        await _until(lambda: _find(got, "state", "active"))
        alarm_id = _find(got, "state", "active")[0]["alarm_id"]
        ack = AlarmAck(BED, alarm_id, "nurse-li")
        await client.publish(wire.alarm_ack_topic(BED), wire.encode_alarm_ack(ack), qos=1)
        await _until(lambda: _find(got, "state", "acknowledged"))
        assert not [d for d in got if d["type"] == "page"]  # nobody to page
        assert engine.alarms.outbox.escalation_stopped(alarm_id)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("eicu/v1/s/b1/alarms/ack", b"[]", "malformed"),
        ("eicu/v1/s/b 1/alarms/ack", b"{}", "wrong_topic"),
        (
            "eicu/v1/s/b1/alarms/ack",
            b'{"v": 2, "alarm_id": "s/b1/X/1", "user": "a"}',
            "unknown_version",
        ),
        ("eicu/v1/s/b1/alarms/ack", b'{"v": 1, "alarm_id": "s/b1/X/1", "user": ""}', "malformed"),
        ("eicu/v1/s/b1/alarms/ack", b'{"v": 1, "alarm_id": "t/b1/X/1", "user": "a"}', "malformed"),
        (
            "eicu/v1/s/b1/alarms/ack",
            b'{"v": 1, "alarm_id": "s/b1/X/1", "user": "a", "ts_ms": 5}',
            "impossible_time",
        ),
    ],
)
def test_bad_acknowledgements_name_what_is_wrong(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        wire.decode_alarm_ack(topic, payload)
    assert caught.value.reason == reason


def test_acknowledgement_round_trip() -> None:
    ack = AlarmAck(BED, "s/b1/HR_HIGH/17", "nurse-li", 1_764_302_400_000_000)
    back = wire.decode_alarm_ack(wire.alarm_ack_topic(BED), wire.encode_alarm_ack(ack), 9)
    assert back == AlarmAck(BED, ack.alarm_id, "nurse-li", ack.ts_us, 9)
    assert wire.is_alarm_ack_topic(wire.alarm_ack_topic(BED))
    assert not wire.is_alarm_ack_topic(wire.alarms_topic(BED))
