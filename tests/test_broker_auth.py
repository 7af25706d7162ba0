"""Broker accounts against a real Mosquitto: a gateway publishes to its own site only."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from eicu.brokerauth import BrokerAuth, password_hash
from eicu.devservices import Mosquitto

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
    broker = Mosquitto(auth=auth.mosquitto_config()).start()
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
        await asyncio.sleep(1.0)
        listener.cancel()
    assert received == [
        "eicu/v1/karamay/bed01/numerics",
        "eicu/v1/karamay/bed02/numerics",
        "eicu/v1/karamay/bed01/alarms/ack",
        "eicu/v1/karamay/bed01/status",
        "eicu/v1/karamay/_gateway/gw-karamay/status",
    ]


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
