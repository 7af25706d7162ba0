"""Broker accounts against a real Mosquitto: a gateway publishes to its own site only."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from alerting.channels import MqttChannel
from eicu import bus, wire
from eicu.alarm_model import Notification
from eicu.brokerauth import BrokerAuth, listener_settings, password_hash
from eicu.config import IngestSettings, MqttSettings, Secret, Settings
from eicu.devservices import Mosquitto
from eicu.errors import ConfigError
from eicu.models import BedKey, NumericsFrame
from eicu.store import open_store
from ingest.engine import Engine

pytestmark = pytest.mark.broker


def test_password_hash_is_mosquittos_pbkdf2_format() -> None:
    salt = bytes(range(12))
    text = password_hash("secret", salt=salt)
    prefix, iterations, salt_b64, key_b64 = text.split("$")[1:]
    assert prefix == "7" and iterations == "101" and base64.b64decode(salt_b64) == salt
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101, 64)
    assert base64.b64decode(key_b64) == expected


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, str]]]:
    auth = BrokerAuth(tmp_path / "auth")
    passwords = {
        "engine": auth.add("engine", "engine"),
        "gw-karamay": auth.add("gw-karamay", "gateway", "karamay"),
        "gw-hotan": auth.add("gw-hotan", "gateway", "hotan"),
    }
    assert (auth.passwd.stat().st_mode & 0o777) == 0o600
    broker = Mosquitto(auth=auth.mosquitto_config(), listener=listener_settings()).start()
    yield broker, passwords
    broker.cleanup()


async def test_gateway_is_refused_outside_its_site(
    secured: tuple[Mosquitto, dict[str, str]],
) -> None:
    broker, pw = secured
    received: list[str] = []
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, username="engine", password=pw["engine"]
    ) as engine:
        await engine.subscribe("eicu/#", qos=1)  # the engine's default subscription

        async def listen() -> None:
            async for message in engine.messages:
                received.append(message.topic.value)

        listener = asyncio.create_task(listen())
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username="gw-karamay", password=pw["gw-karamay"]
        ) as gateway:
            await gateway.publish("eicu/v1/karamay/bed01/numerics", b"{}", qos=1)
            await gateway.publish("eicu/v1/hotan/bed01/numerics", b"{}", qos=1)  # not its site
            await gateway.publish("eicu/v1/karamay/bed02/numerics", b"{}", qos=1)
            # Acknowledgements of alarms: of its own site's beds only.
            await gateway.publish("eicu/v1/hotan/bed01/alarms/ack", b"{}", qos=1)
            await gateway.publish("eicu/v1/karamay/bed01/alarms/ack", b"{}", qos=1)
            # The alarm state is the engine's: a gateway cannot forge it, nor invent topics.
            await gateway.publish("eicu/v1/karamay/bed01/alarms", b"{}", qos=1)
            await gateway.publish("eicu/v1/karamay/bed01/other", b"{}", qos=1)
            await gateway.publish("eicu/v1/karamay/bed01/status", b"{}", qos=1)
            # Its own status, under its account name; never another gateway's.
            await gateway.publish("eicu/v1/karamay/_gateway/gw-karamay/status", b"{}", qos=1)
            await gateway.publish("eicu/v1/karamay/_gateway/gw-1/status", b"{}", qos=1)
            await gateway.publish("eicu/v1/hotan/_gateway/gw-hotan/status", b"{}", qos=1)
            # Other protocol versions are not a gateway's to write.
            await gateway.publish("eicu/v2/karamay/bed01/numerics", b"{}", qos=1)
            # Nor a dashboard's commands, nor the beds' state.
            await gateway.publish("eicu/v1/karamay/bed01/alarms/cmd", b"{}", qos=1)
            await gateway.publish("eicu/state/karamay", b"{}", qos=1)
        await asyncio.sleep(1.0)
        listener.cancel()
    assert received == [
        "eicu/v1/karamay/bed01/numerics",
        "eicu/v1/karamay/bed02/numerics",
        "eicu/v1/karamay/bed01/alarms/ack",
        "eicu/v1/karamay/bed01/status",
        "eicu/v1/karamay/_gateway/gw-karamay/status",
    ]


async def test_a_dashboard_reads_the_state_and_sends_commands_only(tmp_path: Path) -> None:
    auth = BrokerAuth(tmp_path / "auth")
    pw = {"engine": auth.add("engine", "engine"), "dash1": auth.add("dash1", "dashboard")}
    broker = Mosquitto(auth=auth.mosquitto_config(), listener=listener_settings()).start()
    try:
        engine_got: list[str] = []
        dash_got: list[str] = []

        def client(user: str, password: str) -> aiomqtt.Client:
            return aiomqtt.Client("127.0.0.1", broker.port, username=user, password=password)

        async def listen(c: aiomqtt.Client, into: list[str]) -> None:
            async for message in c.messages:
                into.append(message.topic.value)

        async with (
            client("engine", pw["engine"]) as engine,
            client("engine-state", pw["engine"]) as state,
            client("dash1", pw["dash1"]) as dash,
        ):
            await engine.subscribe("eicu/#", qos=1)
            await dash.subscribe([("eicu/state/+", 1), ("eicu/reply/#", 1)])
            listeners = [
                asyncio.create_task(listen(engine, engine_got)),
                asyncio.create_task(listen(dash, dash_got)),
            ]
            await dash.publish("eicu/v1/karamay/bed01/alarms/cmd", b"{}", qos=1)
            await dash.publish("eicu/v1/karamay/bed01/numerics", b"{}", qos=1)  # not its to say
            await dash.publish("eicu/v1/karamay/bed01/alarms", b"{}", qos=1)
            await dash.publish("eicu/state/karamay", b"{}", qos=1)
            await state.publish("eicu/state/karamay", b"{}", qos=1)
            await state.publish("eicu/reply/dash1", b"{}", qos=1)
            await state.publish("eicu/reply/dash2", b"{}", qos=1)  # another dashboard's answers
            await state.publish("eicu/v1/karamay/bed01/alarms", b"{}", qos=1)  # not the state's
            await asyncio.sleep(1.0)
            for listener in listeners:
                listener.cancel()
        assert dash_got == ["eicu/state/karamay", "eicu/reply/dash1"]
        assert engine_got == [
            "eicu/v1/karamay/bed01/alarms/cmd", "eicu/state/karamay", "eicu/reply/dash1",
            "eicu/reply/dash2",
        ]  # fmt: skip
    finally:
        broker.cleanup()


async def test_wrong_password_and_anonymous_are_refused(
    secured: tuple[Mosquitto, dict[str, str]],
) -> None:
    broker, pw = secured
    for username, password in (("gw-karamay", "wrong"), (None, None), ("nobody", pw["engine"])):
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, username=username, password=password, timeout=5
            ):
                pass


def test_cli_writes_the_files(tmp_path: Path) -> None:
    import sys

    cmd = [sys.executable, "-m", "eicu.cli", "broker-auth", "--dir", str(tmp_path)]
    out = subprocess.run(
        [*cmd, "add-gateway", "karamay", "gw1"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "gw1: password" in out.stderr
    assert "user gw1\ntopic write eicu/v1/karamay/+/numerics" in (tmp_path / "acl").read_text()
    assert (tmp_path / "passwd").read_text().startswith("gw1:$7$101$")


def test_an_engine_is_three_broker_users_with_one_password(tmp_path: Path) -> None:
    auth = BrokerAuth(tmp_path)
    auth.add("engine", "engine")
    auth.add("gw1", "gateway", "karamay")
    users = [line.split(":")[0] for line in auth.passwd.read_text().splitlines()]
    assert users == ["engine", "engine-alarms", "engine-state", "gw1"]
    hashes = {line.split(":", 1)[1] for line in auth.passwd.read_text().splitlines()[:3]}
    assert len(hashes) == 1
    acl = auth.acl.read_text()
    assert "user engine\ntopic read eicu/#\n" in acl
    assert "user engine-alarms\ntopic write eicu/v1/+/+/alarms\n" in acl
    assert "user engine-state\ntopic write eicu/state/#\ntopic write eicu/reply/#\n" in acl
    # No account may take a broker user (and so a client id) another already has.
    with pytest.raises(ConfigError, match="engine-alarms"):
        auth.add("engine-alarms", "gateway", "karamay")
    with pytest.raises(ConfigError, match="gw1-alarms"):
        auth.add("gw1-alarms", "gateway", "karamay")
        auth.add("gw1", "engine")
    assert [a.name for a in auth.accounts()] == ["engine", "gw1", "gw1-alarms"]


async def test_a_gateway_cannot_take_over_the_engines_session(
    secured: tuple[Mosquitto, dict[str, str]], tmp_path: Path
) -> None:
    """A gateway credential connecting again and again with the engine's client id neither
    disconnects the engine nor costs it a message; the engine's alarm channel still works."""
    broker, pw = secured
    env = {"EICU_MQTT_URL": f"mqtt://engine:{pw['engine']}@127.0.0.1:{broker.port}"}
    mqtt = Settings.from_env(env).mqtt
    assert mqtt is not None and mqtt.client_id == "engine"  # the engine's id is its user name
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    await store.open()
    ingest = IngestSettings(spool_dir=tmp_path / "spool", flush_interval_s=0.05)
    engine = Engine(mqtt, dataclasses.replace(ingest, analyse_signals=False), store)
    await engine.start()
    await engine.wait_connected()
    bed = BedKey("karamay", "bed01")
    n = 300
    t0_us = time.time_ns() // 1000 - n * 10_000
    attacker = MqttSettings(
        port=broker.port,
        username="gw-hotan",
        password=Secret(pw["gw-hotan"]),
        client_id=mqtt.client_id,
    )
    gateway = MqttSettings(
        port=broker.port,
        username="gw-karamay",
        password=Secret(pw["gw-karamay"]),
        client_id="gw-karamay",
    )
    takeovers = 0

    async def attack() -> None:
        nonlocal takeovers
        for _ in range(10):
            async with bus.Client(attacker, clean_session=True):
                takeovers += 1  # connected, under its own name whatever it asked for
                await asyncio.sleep(0.02)

    try:
        async with bus.Client(gateway) as gw:
            attacks = asyncio.create_task(attack())
            for seq in range(1, n + 1):
                frame = NumericsFrame(bed, seq, t0_us + seq * 10_000, {"HR": 80.0})
                await gw.publish(wire.numerics_topic(bed), wire.encode_numerics(frame), qos=1)
                await asyncio.sleep(0)
            await attacks
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while engine.writer.stored_frames < n and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # The engine's alarm channel connects as its own user, beside the ingest.
        channel = MqttChannel(mqtt.for_alarms(), timeout_s=5)
        async with bus.Client(gateway) as gw:
            await gw.subscribe("eicu/v1/karamay/+/alarms", qos=1)
            body: dict[str, object] = {"site": "karamay", "bed": "bed01", "kind": "HR_HIGH"}
            note = Notification("k-1", "alarm-1", "station", "mqtt", "karamay/bed01", body, t0_us)
            await channel.send(note)
            await channel.close()
            async with asyncio.timeout(5):
                message = await anext(aiter(gw.messages))
        assert message.topic.value == "eicu/v1/karamay/bed01/alarms"
        reconnects = engine.metrics.mqtt_reconnects._value.get()
    finally:
        await engine.stop()
        await store.close()
    assert takeovers == 10
    assert reconnects == 0
    assert engine.writer.stored_frames == n


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    cmd = [sys.executable, "-m", "eicu.cli", "broker-auth", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)


async def test_the_printed_configuration_binds_client_ids(tmp_path: Path) -> None:
    """What ``eicu broker-auth config`` prints runs a Mosquitto in which a gateway asking for
    the engine's client id gets its own."""
    import os

    from eicu.devservices import free_port, mosquitto_binary, wait_port

    folder = str(tmp_path / "auth")
    passwords = {}
    for args in (("add-engine", "engine"), ("add-gateway", "karamay", "gw1")):
        out = _cli("--dir", folder, *args)
        assert out.returncode == 0, out.stderr
        passwords[args[-1]] = out.stderr.split(" password ")[1].split()[0]
    port = free_port()
    out = _cli("--dir", folder, "config", "--port", str(port), "--bind", "127.0.0.1")
    assert out.returncode == 0, out.stderr
    assert "use_username_as_clientid true" in out.stdout.split(f"listener {port} 127.0.0.1")[1]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(out.stdout + ("user root\n" if os.geteuid() == 0 else ""))
    binary = mosquitto_binary()
    assert binary is not None
    proc = subprocess.Popen([binary, "-c", str(conf)], cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_port, port)
        engine = MqttSettings(
            port=port, username="engine", password=Secret(passwords["engine"]), client_id="engine"
        )
        gateway = dataclasses.replace(engine, username="gw1", password=Secret(passwords["gw1"]))
        async with bus.Client(engine, clean_session=False) as listener:
            await listener.subscribe("eicu/v1/#", qos=1)
            async with bus.Client(gateway, identifier="engine") as gw:
                await gw.publish("eicu/v1/karamay/bed01/numerics", b"{}", qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(listener.messages))
        assert message.topic.value == "eicu/v1/karamay/bed01/numerics"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--cafile", "ca.pem"), "--certfile"),
        (("--require-certificate",), "--require-certificate"),
        (("--identity-as-username",), "--identity-as-username"),
        (("--port", "70000"), "--port"),
    ],
)
def test_config_refuses_incomplete_tls(tmp_path: Path, args: tuple[str, ...], flag: str) -> None:
    out = _cli("--dir", str(tmp_path), "config", *args)
    assert out.returncode == 2
    assert f"error: {flag}:" in out.stderr


def test_config_with_tls_and_client_certificates(tmp_path: Path) -> None:
    files = ("--cafile", "ca.pem", "--certfile", "broker.pem", "--keyfile", "broker.key")
    out = _cli("--dir", str(tmp_path), "config", *files, "--require-certificate")
    assert out.returncode == 0, out.stderr
    listener = out.stdout.split("\nlistener 8883\n")[1].splitlines()
    assert f"cafile {Path('ca.pem').resolve()}" in listener
    assert "require_certificate true" in listener
    assert "use_identity_as_username true" not in listener  # passwords still asked
    assert listener[-1] == "use_username_as_clientid true"
    assert "max_packet_size 600000" in out.stdout
