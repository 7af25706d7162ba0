"""An alarm from event to people over every channel, in real time, against a real Mosquitto, a
real SMTP server, a real HTTP receiver and a real PostgreSQL that is down while the alarm fires."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from alerting.channels import EmailChannel, MqttChannel, SmtpSettings, WebhookChannel
from alerting.escalation import Dispatcher, Rota
from alerting.outbox import Outbox, run_copy
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority
from eicu.clock import ManualClock
from eicu.config import MqttSettings
from eicu.devservices import Mosquitto, Postgres
from eicu.models import BedKey
from eicu.store.pg import PgStore
from tests.alarm_servers import HookServer, MailServer

pytestmark = [pytest.mark.broker, pytest.mark.db]

BED = BedKey("karamay", "bed-07")


@pytest.fixture
def mail() -> Iterator[MailServer]:
    server = MailServer().start()
    yield server
    server.stop()


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


def _doc(message: aiomqtt.Message) -> dict[str, Any]:
    assert isinstance(message.payload, bytes)
    doc: dict[str, Any] = json.loads(message.payload)
    return doc


def _pages(received: list[aiomqtt.Message]) -> list[dict[str, Any]]:
    return [d for d in map(_doc, received) if d["type"] == "page"]


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


async def test_alarm_reaches_everyone_while_the_central_database_is_down(
    tmp_path: Path,
    broker: Mosquitto,
    mail: MailServer,
    hook: HookServer,
    pg_server: Postgres,
    db_url: str,
) -> None:
    timeouts = {"high": 1.0, "medium": 5.0, "low": 10.0}
    rota = Rota.from_dict(
        {
            "delivery_timeout_s": 0.8,
            "retry_min_s": 0.2,
            "retry_max_s": 1.0,
            "sites": {
                "karamay": {
                    "levels": [
                        {
                            "role": "bedside_nurse",
                            "ack_timeout_s": timeouts,
                            "contacts": [
                                {"name": "karamay-station", "channel": "mqtt"},
                                {
                                    "name": "nurse-li",
                                    "channel": "email",
                                    "address": "li@karamay.test",
                                },
                            ],
                        },
                        {
                            "role": "on_call_physician",
                            "ack_timeout_s": timeouts,
                            "contacts": [
                                {"name": "dr-chen", "channel": "webhook", "address": hook.url()}
                            ],
                        },
                        {
                            "role": "command_center_intensivist",
                            "ack_timeout_s": timeouts,
                            "contacts": [
                                {
                                    "name": "dr-wang",
                                    "channel": "email",
                                    "address": "wang@hangzhou.test",
                                }
                            ],
                        },
                    ]
                }
            },
        }
    )
    channels = {
        "mqtt": MqttChannel(MqttSettings(port=broker.port, client_id="eicu-alarms"), timeout_s=3),
        "webhook": WebhookChannel(timeout_s=2, max_attempts=2, backoff_min_s=0.05),
        "email": EmailChannel(SmtpSettings(port=mail.port, timeout_s=3)),
    }
    store = PgStore(db_url, connect_timeout_s=1)
    await store.open()
    event = AlarmEvent(
        alarm_id="vt-1",
        bed=BED,
        kind="VTACH",
        priority=Priority.HIGH,
        category=Category.PHYSIOLOGICAL,
        state=AlarmState.ACTIVE,
        time_us=1_780_000_000_000_000,
    )
    events: asyncio.Queue[AlarmEvent] = asyncio.Queue()
    received: list[aiomqtt.Message] = []

    pg_server.stop()
    try:
        with Outbox(tmp_path / "outbox.db") as box:
            # Real time, which the test moves ahead past the acknowledgement timeouts.
            clock = ManualClock(running=True)
            dispatcher = Dispatcher(rota, box, channels, poll_s=0.05, clock=clock)
            async with (
                aiomqtt.Client("127.0.0.1", broker.port, identifier="remote-icu") as remote,
                asyncio.TaskGroup() as tg,
            ):
                await remote.subscribe("eicu/v1/karamay/+/alarms", qos=1)

                async def listen() -> None:
                    async for message in remote.messages:
                        received.append(message)

                listener = tg.create_task(listen(), name="remote-icu")
                engine = tg.create_task(dispatcher.run(events), name="dispatcher")
                copier = tg.create_task(
                    run_copy(box, store, interval_s=0.1, retry_min_s=0.1, retry_max_s=0.3),
                    name="copier",
                )
                await events.put(event)
                await _until(lambda: len(_pages(received)) == 1 and len(mail.messages) == 1)
                # Nobody acknowledges within 1 s: the physician is paged.
                clock.advance(1.0)
                await _until(lambda: len(hook.requests) == 1, timeout_s=5)
                page = hook.requests[0]
                assert page.body["role"] == "on_call_physician"
                assert await dispatcher.acknowledge(page.key, "dr-chen") == "vt-1"
                acknowledged = dataclasses.replace(
                    event, state=AlarmState.ACKNOWLEDGED, actor="dr-chen", time_us=event.time_us + 1
                )
                await events.put(acknowledged)
                # The bed saw the alarm start and its acknowledgement.
                await _until(lambda: len(received) == 3)
                # Past the next level's timeout: nobody else is paged.
                clock.advance(2.0)
                await dispatcher.tick()
                await dispatcher.drain()
                assert len(mail.messages) == 1 and len(hook.requests) == 1
                assert len(_pages(received)) == 1
                assert box.uncopied()[0], "the database is down: nothing was copied"

                pg_server.start()

                def copied() -> bool:
                    events_left, deliveries_left = box.uncopied()
                    return not events_left and not deliveries_left

                await _until(copied, timeout_s=15)
                for task in (listener, engine, copier):
                    task.cancel()
    finally:
        if not pg_server.running:
            pg_server.start()
        for channel in channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        await store.close()

    assert {m.topic.value for m in received} == {"eicu/v1/karamay/bed-07/alarms"}
    states = [_doc(m) for m in received if _doc(m)["type"] == "state"]
    assert [(d["state"], d["actor"]) for d in states] == [
        ("active", "engine"),
        ("acknowledged", "dr-chen"),
    ]
    payload = _pages(received)[0]
    assert (payload["key"], payload["kind"], payload["priority"]) == (
        "vt-1:0:bedside_nurse:karamay-station:mqtt",
        "VTACH",
        "high",
    )
    assert mail.handler.envelopes[0][1] == ["li@karamay.test"]
    assert _rows(db_url, "SELECT state, actor FROM alarm_events ORDER BY time") == [
        ("active", "engine"),
        ("acknowledged", "dr-chen"),
    ]
    assert _rows(
        db_url,
        "SELECT recipient, channel, delivered IS NOT NULL, acknowledged_by FROM alarm_deliveries "
        "WHERE recipient != 'bed' ORDER BY enqueued, recipient",
    ) == [
        ("karamay-station", "mqtt", True, None),
        ("nurse-li", "email", True, None),
        ("dr-chen", "webhook", True, "dr-chen"),
    ]
    delivered_states = (
        "SELECT count(*) FROM alarm_deliveries WHERE recipient = 'bed' AND delivered IS NOT NULL"
    )
    assert _rows(db_url, delivered_states) == [(2,)]
