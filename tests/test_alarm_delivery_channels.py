"""Delivery channels against real receivers: an aiohttp server, aiosmtpd, Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from alerting.channels import (
    EmailChannel,
    MqttChannel,
    SmtpSettings,
    WebhookChannel,
    email_key_header,
    email_text,
)
from alerting.escalation import Dispatcher, Rota
from alerting.outbox import Outbox
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Channel, Notification, Priority
from eicu.clock import ManualClock
from eicu.config import AlertingSettings, MqttSettings, Secret, Settings
from eicu.devservices import Mosquitto, free_port
from eicu.errors import ConfigError, DeliveryError
from eicu.models import BedKey
from tests.alarm_servers import HookServer, MailServer

T0_US = 1_780_000_000_000_000
BODY: dict[str, object] = {
    "site": "karamay",
    "bed": "bed-07",
    "kind": "SPO2_LOW",
    "priority": "high",
    "category": "physiological",
    "state": "active",
    "time_us": T0_US,
    "value": 82.0,
    "limit": 88.0,
    "role": "bedside_nurse",
    "step": 0,
    "patient_name": "Aygul Tursun",  # must never leave the engine
}


def note(key: str, channel: Channel, address: str) -> Notification:
    return Notification(key, "alarm-1", "nurse-3", channel, address, dict(BODY), T0_US)


@pytest.fixture
def mail() -> Iterator[MailServer]:
    server = MailServer().start()
    yield server
    server.stop()


async def test_webhook_posts_json_with_the_idempotency_key(hook: HookServer) -> None:
    channel = WebhookChannel(timeout_s=2)
    try:
        receipt = await channel.send(note("k-1", "webhook", hook.url("/page")))
    finally:
        await channel.close()
    assert (receipt.key, receipt.channel, receipt.attempts) == ("k-1", "webhook", 1)
    [request] = hook.requests
    assert (request.path, request.key) == ("/page", "k-1")
    assert request.body["key"] == "k-1"
    assert request.body["kind"] == "SPO2_LOW"
    assert request.body["value"] == 82.0
    assert "patient_name" not in request.body


async def test_webhook_retries_server_errors_then_succeeds_once(hook: HookServer) -> None:
    hook.plan = [500, 503, 429, 408]
    clock = ManualClock(T0_US, autojump=True)
    delays = clock.sleeps
    channel = WebhookChannel(timeout_s=2, max_attempts=5, backoff_min_s=0.1, clock=clock)
    try:
        receipt = await channel.send(note("k-2", "webhook", hook.url()))
    finally:
        await channel.close()
    assert receipt.attempts == 5
    assert receipt.delivered_us == T0_US + sum(round(d * 1e6) for d in delays)  # its clock
    assert [r.status for r in hook.requests] == [500, 503, 429, 408, 200]
    assert {r.key for r in hook.requests} == {"k-2"}
    assert hook.accepted == {"k-2": 1}
    # Jittered exponential backoff: each delay within [d/2, d] for d = 0.1, 0.2, 0.4, 0.8.
    assert len(delays) == 4
    for delay, nominal in zip(delays, (0.1, 0.2, 0.4, 0.8), strict=True):
        assert nominal / 2 <= delay <= nominal


async def test_webhook_honours_retry_after_up_to_the_longest_delay(hook: HookServer) -> None:
    clock = ManualClock(T0_US, autojump=True)
    delays = clock.sleeps
    channel = WebhookChannel(timeout_s=2, backoff_min_s=0.1, backoff_max_s=5, clock=clock)
    try:
        hook.plan, hook.retry_after = [429], "3"
        await channel.send(note("k-2a", "webhook", hook.url()))
        hook.plan, hook.retry_after = [503], "120"
        await channel.send(note("k-2b", "webhook", hook.url()))
    finally:
        await channel.close()
    assert delays == [3.0, 5.0]
    assert hook.accepted == {"k-2a": 1, "k-2b": 1}


async def test_webhook_does_not_retry_a_refusal(hook: HookServer) -> None:
    hook.plan = [404]
    channel = WebhookChannel(timeout_s=2, max_attempts=5, clock=ManualClock(autojump=True))
    try:
        with pytest.raises(DeliveryError) as caught:
            await channel.send(note("k-3", "webhook", hook.url()))
    finally:
        await channel.close()
    assert not caught.value.retryable
    assert caught.value.key == "k-3"
    assert len(hook.requests) == 1


async def test_webhook_gives_up_after_its_attempts_when_nobody_listens() -> None:
    channel = WebhookChannel(timeout_s=1, max_attempts=3, clock=ManualClock(autojump=True))
    try:
        with pytest.raises(DeliveryError) as caught:
            await channel.send(note("k-4", "webhook", f"http://127.0.0.1:{free_port()}/x"))
    finally:
        await channel.close()
    assert caught.value.retryable
    assert "3 attempts" in str(caught.value)


async def test_webhook_times_out(hook: HookServer) -> None:
    # A server that accepts the connection and never answers.
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = WebhookChannel(timeout_s=0.2, max_attempts=2, clock=ManualClock(autojump=True))
    try:
        with pytest.raises(DeliveryError) as caught:
            await channel.send(note("k-5", "webhook", f"http://127.0.0.1:{port}/"))
    finally:
        await channel.close()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
    assert caught.value.retryable
    assert len(writers) == 2  # both attempts reached the server


async def test_email_carries_the_essentials_and_no_patient_name(mail: MailServer) -> None:
    channel = EmailChannel(SmtpSettings(port=mail.port, sender="alarms@eicu.test", timeout_s=5))
    receipt = await channel.send(note("k-6", "email", "dr.chen@hospital.test"))
    assert receipt.channel == "email"
    [msg] = mail.messages
    assert mail.handler.envelopes == [("alarms@eicu.test", ["dr.chen@hospital.test"])]
    assert msg["Subject"] == "[HIGH] SPO2_LOW karamay/bed-07 active"
    assert msg["X-Eicu-Idempotency-Key"] == "k-6"
    text = msg.get_content()
    assert "Aygul" not in text and "Tursun" not in text
    assert "Priority: high" in text
    assert "Value: 82.0 (limit 88.0)" in text
    assert "k-6" in text
    assert email_text(note("k-6", "email", "x@y"))[1] == text.replace("\r\n", "\n")


async def test_long_idempotency_keys_stay_on_one_header_line(mail: MailServer) -> None:
    """A key is never folded or turned into encoded words: a receiver matching the raw header
    finds it whole; one that cannot stand on a header line is sent as its digest."""
    channel = EmailChannel(SmtpSettings(port=mail.port, sender="alarms@eicu.test", timeout_s=5))
    long_key = "karamay/bed-07/SPO2_LOW/1733000000000000:2:attending:" + "dr.chen-" * 40 + ":email"
    too_long = "k" * 1200
    not_ascii = "alarm-1:0:bedside_nurse:Dr Çelik:email"
    for key in (long_key, too_long, not_ascii):
        await channel.send(note(key, "email", "dr.chen@hospital.test"))
    headers = [raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n") for raw in mail.handler.raw]
    key_lines = [[h for h in hs if h.startswith(b"X-Eicu-Idempotency-Key:")] for hs in headers]
    assert key_lines[0] == [b"X-Eicu-Idempotency-Key: " + long_key.encode()]
    for i, key in ((1, too_long), (2, not_ascii)):
        digest = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        assert key_lines[i] == [b"X-Eicu-Idempotency-Key: " + digest.encode()]
        assert email_key_header(key) == digest
        assert key in mail.messages[i].get_content()  # the body has the key in full
    # no header is folded onto a continuation line, and none is longer than RFC 5322 allows
    for lines in headers:
        assert all(line[:1] not in (b" ", b"\t") and len(line) <= 998 for line in lines)
    assert mail.messages[0]["X-Eicu-Idempotency-Key"] == long_key


async def test_email_to_a_server_that_is_down_is_retryable() -> None:
    channel = EmailChannel(SmtpSettings(port=free_port(), timeout_s=2))
    with pytest.raises(DeliveryError) as caught:
        await channel.send(note("k-7", "email", "dr.chen@hospital.test"))
    assert caught.value.retryable


@pytest.mark.broker
async def test_mqtt_publishes_the_alarm_back_to_the_bed(broker: Mosquitto) -> None:
    settings = MqttSettings(port=broker.port, client_id="eicu-alarm-out")
    channel = MqttChannel(settings, timeout_s=5)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="remote-icu") as remote:
        await remote.subscribe("eicu/v1/karamay/+/alarms", qos=1)
        try:
            receipt = await channel.send(note("k-8", "mqtt", "karamay/bed-07"))
            async with asyncio.timeout(5):
                message = await anext(aiter(remote.messages))
        finally:
            await channel.close()
    assert receipt.detail == "puback"
    assert message.topic.value == "eicu/v1/karamay/bed-07/alarms"
    assert message.qos == 1
    payload = json.loads(message.payload)  # type: ignore[arg-type]
    assert payload["key"] == "k-8"
    assert payload["alarm_id"] == "alarm-1"
    assert (payload["kind"], payload["priority"], payload["state"]) == (
        "SPO2_LOW",
        "high",
        "active",
    )
    assert "patient_name" not in payload


@pytest.mark.broker
async def test_every_change_of_an_alarm_is_published_to_its_bed_once(
    tmp_path: Path, broker: Mosquitto
) -> None:
    bed = BedKey("karamay", "bed-07")
    start = AlarmEvent(
        "karamay/bed-07/SPO2_LOW/1", bed, "SPO2_LOW", Priority.MEDIUM, Category.PHYSIOLOGICAL,
        AlarmState.ACTIVE, 1_780_000_000_000_000, reason="started: present for 15 s",
    )  # fmt: skip
    changes = [
        start,
        dataclasses.replace(start, priority=Priority.HIGH, time_us=start.time_us + 1,
                            reason="escalated to high"),
        dataclasses.replace(start, priority=Priority.HIGH, time_us=start.time_us + 2,
                            actor="nurse-li", reason="audio paused for 120 s",
                            audio_paused_until_us=start.time_us + 120_000_002),
        dataclasses.replace(start, priority=Priority.HIGH, state=AlarmState.ACKNOWLEDGED,
                            time_us=start.time_us + 3, actor="nurse-li", reason="acknowledged"),
        dataclasses.replace(start, priority=Priority.HIGH, state=AlarmState.CLEARED,
                            time_us=start.time_us + 4, reason="condition ended"),
    ]  # fmt: skip
    rota = Rota.from_dict(
        {"sites": {"karamay": {"levels": [{
            "role": "bedside_nurse",
            "ack_timeout_s": {"high": 60, "medium": 60, "low": 60},
            "contacts": [{"name": "station", "channel": "mqtt"}],
        }]}}}
    )  # fmt: skip
    channel = MqttChannel(MqttSettings(port=broker.port, client_id="eicu-alarm-out"), timeout_s=5)
    received: list[dict[str, object]] = []
    with Outbox(tmp_path / "outbox.db") as outbox:
        dispatcher = Dispatcher(rota, outbox, {"mqtt": channel})
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="remote-icu") as remote:
            await remote.subscribe("eicu/v1/karamay/+/alarms", qos=1)
            try:
                for event in [*changes, *changes]:  # each handled twice: published once
                    await dispatcher.handle(event)
                    await dispatcher.drain()
                async with asyncio.timeout(5):
                    async for message in remote.messages:
                        received.append(json.loads(message.payload))  # type: ignore[arg-type]
                        if len(received) == len(changes) + 1:
                            break
                with contextlib.suppress(TimeoutError):  # nothing more comes
                    async with asyncio.timeout(1):
                        received.append(json.loads((await anext(aiter(remote.messages))).payload))  # type: ignore[arg-type]
            finally:
                await dispatcher.close()
                await channel.close()
    states = [d for d in received if d["type"] == "state"]
    pages = [d for d in received if d["type"] == "page"]
    assert len(pages) == 1 and pages[0]["role"] == "bedside_nurse"
    assert [(d["state"], d["priority"], d["actor"], d["reason"]) for d in states] == [
        (e.state.value, e.priority.value, e.actor, e.reason) for e in changes
    ]
    assert states[2]["audio_paused_until_us"] == changes[2].audio_paused_until_us
    assert len({d["key"] for d in received}) == len(received)
    assert all(str(d["key"]).startswith(start.alarm_id + ":state:") for d in states)


@pytest.mark.broker
async def test_mqtt_broker_down_is_a_retryable_delivery_error(broker: Mosquitto) -> None:
    channel = MqttChannel(MqttSettings(port=broker.port, client_id="eicu-alarm-out"), timeout_s=2)
    broker.stop()
    try:
        with pytest.raises(DeliveryError) as caught:
            await channel.send(note("k-9", "mqtt", "karamay/bed-07"))
        assert caught.value.retryable
        broker.start()
        receipt = await channel.send(note("k-9", "mqtt", "karamay/bed-07"))
        assert receipt.key == "k-9"
    finally:
        await channel.close()


async def test_mqtt_bad_address_is_refused() -> None:
    channel = MqttChannel(MqttSettings(port=free_port()), timeout_s=1)
    with pytest.raises(DeliveryError) as caught:
        await channel.send(note("k-10", "mqtt", "not a bed"))
    assert not caught.value.retryable


def test_alerting_settings_from_the_environment(tmp_path: Path) -> None:
    rota_file = tmp_path / "rota.json"
    env = {
        "EICU_SMTP_URL": "smtp+starttls://alarms:s3cret@mail.example:587",
        "EICU_SMTP_SENDER": "alarms@eicu.example",
        "EICU_ROTA_FILE": str(rota_file),
        "EICU_OUTBOX_PATH": str(tmp_path / "outbox.db"),
    }
    alerting = Settings.from_env(env).alerting
    assert alerting.smtp == SmtpSettings(
        host="mail.example",
        port=587,
        sender="alarms@eicu.example",
        username="alarms",
        password=Secret("s3cret"),
        starttls=True,
    )
    assert "s3cret" not in repr(alerting)
    assert (alerting.rota_path, alerting.outbox_path) == (rota_file, tmp_path / "outbox.db")
    assert Settings.from_env({}).alerting == AlertingSettings()
    with pytest.raises(ConfigError, match="EICU_SMTP_URL"):
        Settings.from_env({"EICU_SMTP_URL": "http://mail.example"})
    with pytest.raises(ConfigError, match=r"rota\.json"):
        Rota.from_file(rota_file)  # not there
    rota_file.write_text(json.dumps({"sites": {"s": {"levels": []}}}))
    with pytest.raises(ConfigError, match=r"sites\.s\.levels"):
        Rota.from_file(rota_file)


async def test_a_broker_that_never_answers_leaves_no_connection_behind() -> None:
    """A broker that accepts the connection but never acknowledges it (hung, or a firewall's
    half-open path): each send times out as a retryable error, and its connection is closed at
    once, not left open (with its reader) until the client object happens to be collected."""
    accepted: list[asyncio.StreamReader] = []
    closed = asyncio.Event()
    n_closed = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal n_closed
        accepted.append(reader)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):  # the CONNECT, never answered
                pass
        n_closed += 1
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = MqttChannel(MqttSettings(port=port, client_id="eicu-alarm-out"), timeout_s=0.5)
    try:
        for attempt in range(3):
            closed.clear()
            with pytest.raises(DeliveryError) as caught:
                await channel.send(note(f"k-{11 + attempt}", "mqtt", "karamay/bed-07"))
            assert caught.value.retryable
            async with asyncio.timeout(5):  # closed by the channel, not by a collection
                await closed.wait()
        assert (len(accepted), n_closed) == (3, 3)
    finally:
        await channel.close()
        server.close()
        await server.wait_closed()


async def test_a_connect_given_up_while_its_socket_opens_leaves_no_connection_behind() -> None:
    """A connect cancelled while the TCP connection is still being made (a broker slow to
    accept) closes that connection as soon as it is made, instead of leaving it open with
    nobody reading it."""
    from eicu import bus

    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # a queue of one connection
    listener.setblocking(False)
    port = listener.getsockname()[1]
    # The queue is full: the kernel drops the client's SYN and the client sends it again
    # about a second later, its connect blocked in aiomqtt's thread meanwhile.
    filler = socket.create_connection(("127.0.0.1", port))
    client = bus.Client(MqttSettings(port=port, client_id="eicu-slow-accept"), timeout=30)
    accepted: list[socket.socket] = [filler]
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.__aenter__()
        first, _ = await loop.sock_accept(listener)  # room in the queue: the SYN gets through
        first.close()
        async with asyncio.timeout(15):
            conn, _ = await loop.sock_accept(listener)
        accepted.append(conn)
        conn.setblocking(False)
        async with asyncio.timeout(15):  # closed by the client, not by a collection
            while await loop.sock_recv(conn, 4096):
                pass
    finally:
        for sock in accepted:
            sock.close()
        listener.close()


@pytest.mark.broker
async def test_entering_a_connected_client_again_is_refused_and_leaves_it_connected(
    broker: Mosquitto,
) -> None:
    """The cleanup of a failed connect closes only a connection of its own: entering a client
    that is already connected is refused, and the first connection goes on."""
    from eicu import bus

    client = bus.Client(MqttSettings(port=broker.port, client_id="eicu-twice"), timeout=5)
    async with client:
        with pytest.raises(aiomqtt.MqttReentrantError):
            await client.__aenter__()
        await client.publish("eicu/test/still-connected", b"1", qos=1, timeout=5)
