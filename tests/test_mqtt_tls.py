"""MQTT over TLS against a real Mosquitto TLS listener, with a CA the test makes: the broker's
certificate and host name verified, client certificates, the engine ingesting over mqtts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from alerting.channels import MqttChannel
from eicu import bus
from eicu.alarm_model import Notification
from eicu.brokerauth import BrokerAuth, ListenerTls, listener_settings
from eicu.config import IngestSettings, MqttSettings, Settings
from eicu.devservices import Mosquitto
from eicu.errors import ConfigError
from eicu.store import open_store
from ingest.engine import Engine
from simulators.run import SimulationPlan, simulate
from tests.pki import Issued, TestCa

pytestmark = pytest.mark.broker


@dataclass
class Pki:
    ca: TestCa
    server: Issued
    other_ca: TestCa


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = TestCa(tmp_path / "ca")
    return Pki(ca, ca.server("127.0.0.1", "localhost"), TestCa(tmp_path / "other", "other CA"))


@pytest.fixture
def tls_broker(pki: Pki) -> Iterator[Mosquitto]:
    """A TLS listener (anonymous clients allowed: this tests the transport only)."""
    tls = ListenerTls(pki.ca.cert, pki.server.cert, pki.server.key)
    broker = Mosquitto(listener=listener_settings(tls)[:-1]).start()  # not bound to user names
    yield broker
    broker.cleanup()


def _mqtts(broker: Mosquitto, env: dict[str, str], host: str = "127.0.0.1") -> MqttSettings:
    settings = Settings.from_env({"EICU_MQTT_URL": f"mqtts://{host}:{broker.port}", **env})
    assert settings.mqtt is not None and settings.mqtt.tls
    return settings.mqtt


async def test_verified_connection_carries_messages(tls_broker: Mosquitto, pki: Pki) -> None:
    settings = _mqtts(tls_broker, {"EICU_MQTT_CA_FILE": str(pki.ca.cert)})
    async with bus.Client(settings) as client:
        await client.subscribe("eicu/v1/karamay/+/alarms", qos=1)
        await client.publish("eicu/v1/karamay/bed01/alarms", b"{}", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(client.messages))
    assert message.topic.value == "eicu/v1/karamay/bed01/alarms"


async def test_a_broker_signed_by_another_ca_is_refused_naming_the_setting(
    tls_broker: Mosquitto, pki: Pki
) -> None:
    settings = _mqtts(tls_broker, {"EICU_MQTT_CA_FILE": str(pki.other_ca.cert)})
    with pytest.raises(bus.TlsError) as caught:
        async with bus.Client(settings, timeout=5):
            pass
    assert caught.value.key == "EICU_MQTT_CA_FILE"
    assert str(pki.other_ca.cert) in str(caught.value)
    assert isinstance(caught.value, bus.MqttError)  # what every caller already retries on
    # Without a CA file, the system's trusted CAs do not know the test CA either.
    with pytest.raises(bus.TlsError, match="the system's CAs"):
        async with bus.Client(_mqtts(tls_broker, {}), timeout=5):
            pass


async def test_the_brokers_host_name_is_checked(pki: Pki, tmp_path: Path) -> None:
    elsewhere = pki.ca.server("broker.example", file_stem="elsewhere")
    tls = ListenerTls(pki.ca.cert, elsewhere.cert, elsewhere.key)
    broker = Mosquitto(listener=listener_settings(tls)[:-1]).start()
    try:
        settings = _mqtts(broker, {"EICU_MQTT_CA_FILE": str(pki.ca.cert)})
        with pytest.raises(bus.TlsError) as caught:
            async with bus.Client(settings, timeout=5):
                pass
    finally:
        broker.cleanup()
    assert caught.value.key == "EICU_MQTT_URL"
    assert "127.0.0.1" in str(caught.value)


async def test_plain_mqtt_to_a_tls_listener_is_not_connected(tls_broker: Mosquitto) -> None:
    with pytest.raises(bus.MqttError):
        async with bus.Client(MqttSettings(port=tls_broker.port), timeout=3):
            pass


async def test_a_listener_requiring_certificates_takes_the_right_one_and_refuses_none(
    pki: Pki, tmp_path: Path
) -> None:
    """Certificates as identities: the common name is the broker user, so the ACL applies to it
    and, bound to user names, it is the client id (a gateway asking for the engine's id does not
    disconnect the engine)."""
    auth = BrokerAuth(tmp_path / "auth")
    auth.add("engine", "engine")
    auth.add("gw-karamay", "gateway", "karamay")
    tls = ListenerTls(
        pki.ca.cert, pki.server.cert, pki.server.key, require_certificate=True,
        identity_as_username=True,
    )  # fmt: skip
    broker = Mosquitto(auth=auth.mosquitto_config(), listener=listener_settings(tls)).start()
    base = {"EICU_MQTT_CA_FILE": str(pki.ca.cert)}

    def with_cert(issued: Issued) -> MqttSettings:
        files = {"EICU_MQTT_CERT_FILE": str(issued.cert), "EICU_MQTT_KEY_FILE": str(issued.key)}
        return _mqtts(broker, {**base, **files})

    try:
        engine_settings = replace(with_cert(pki.ca.client("engine")), client_id="engine")
        async with bus.Client(engine_settings, clean_session=False) as engine:
            await engine.subscribe("eicu/v1/#", qos=1)
            async with bus.Client(
                with_cert(pki.ca.client("gw-karamay")), identifier="engine"
            ) as gw:
                await gw.publish("eicu/v1/hotan/bed01/numerics", b"not its site", qos=1)
                await gw.publish("eicu/v1/karamay/bed01/numerics", b"its own", qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(engine.messages))
        assert (message.topic.value, message.payload) == (
            "eicu/v1/karamay/bed01/numerics",
            b"its own",
        )
        for settings in (
            _mqtts(broker, base),  # no certificate
            with_cert(pki.other_ca.client("gw-karamay")),  # from a CA the broker does not know
        ):
            with pytest.raises(bus.MqttError):
                async with bus.Client(settings, timeout=3):
                    pass
    finally:
        broker.cleanup()


def test_tls_settings_name_their_keys(pki: Pki, tmp_path: Path) -> None:
    ca = str(pki.ca.cert)
    settings = Settings.from_env(
        {"EICU_MQTT_URL": "mqtts://gw:pw@broker.example", "EICU_MQTT_CA_FILE": ca}
    )
    assert settings.mqtt is not None
    assert (settings.mqtt.port, settings.mqtt.url) == (8883, "mqtts://broker.example:8883")
    assert settings.mqtt.client_id == "gw"  # the user name, as a bound broker would make it
    alarms = settings.mqtt.for_alarms()
    assert (alarms.username, alarms.client_id, alarms.ca_file) == (
        "gw-alarms",
        "gw-alarms",
        pki.ca.cert,
    )
    env = {"EICU_MQTT_URL": "mqtts://gw@b", "EICU_MQTT_CLIENT_ID": "hub-1"}
    assert Settings.from_env(env).mqtt.client_id == "hub-1"  # type: ignore[union-attr]
    assert "pw" not in repr(settings.mqtt)
    tls = {"EICU_MQTT_URL": "mqtts://b"}
    bad = [
        ({"EICU_MQTT_URL": "mqtt://broker", "EICU_MQTT_CA_FILE": ca}, "EICU_MQTT_CA_FILE"),
        ({"EICU_MQTT_CA_FILE": ca}, "EICU_MQTT_CA_FILE"),  # no broker URL: plain localhost
        ({**tls, "EICU_MQTT_CA_FILE": str(tmp_path / "no")}, "EICU_MQTT_CA_FILE"),
        ({**tls, "EICU_MQTT_KEY_FILE": str(pki.server.key)}, "EICU_MQTT_KEY_FILE"),
    ]
    for env, key in bad:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(env)
        assert caught.value.key == key, env
    # A file that is there but is no certificate: refused before any connection.
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    env = {"EICU_MQTT_URL": "mqtts://b", "EICU_MQTT_CERT_FILE": str(not_pem)}
    mqtt = Settings.from_env(env).mqtt
    assert mqtt is not None
    with pytest.raises(ConfigError) as caught:
        bus.tls_context(mqtt)
    assert caught.value.key == "EICU_MQTT_CERT_FILE"
    with pytest.raises(bus.TlsError):
        bus.Client(mqtt)


async def test_the_engine_ingests_and_alarms_over_mqtts(pki: Pki, tmp_path: Path) -> None:
    """The whole path over TLS with passwords, client certificates and bound client ids:
    simulated gateway -> broker -> engine -> store, and the alarm channel back to the site."""
    auth = BrokerAuth(tmp_path / "auth")
    pw_engine = auth.add("engine", "engine")
    pw_gateway = auth.add("gw-icu", "gateway", "icu")
    tls = ListenerTls(pki.ca.cert, pki.server.cert, pki.server.key, require_certificate=True)
    broker = Mosquitto(auth=auth.mosquitto_config(), listener=listener_settings(tls)).start()
    engine_cert = pki.ca.client("eicu-hub")
    site_cert = pki.ca.client("icu-gateway")
    url = f"mqtts://{{}}:{{}}@localhost:{broker.port}"
    engine_env = {
        "EICU_MQTT_URL": url.format("engine", pw_engine),
        "EICU_MQTT_CA_FILE": str(pki.ca.cert),
        "EICU_MQTT_CERT_FILE": str(engine_cert.cert),
        "EICU_MQTT_KEY_FILE": str(engine_cert.key),
    }
    mqtt = Settings.from_env(engine_env).mqtt
    assert mqtt is not None
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    await store.open()
    # half-second waveform segments: a bed's last frames are written 2 s after its stream ends
    settings = IngestSettings(
        spool_dir=tmp_path / "spool", flush_interval_s=0.1, waveform_segment_s=0.5
    )
    engine = Engine(mqtt, settings, store)
    try:
        await engine.start()
        await engine.wait_connected()
        site_env = {
            "EICU_MQTT_CA_FILE": str(pki.ca.cert),
            "EICU_MQTT_CERT_FILE": str(site_cert.cert),
            "EICU_MQTT_KEY_FILE": str(site_cert.key),
        }
        gateway = MqttSettings.from_url(url.format("gw-icu", pw_gateway), env=site_env)
        summary = await simulate(
            gateway, SimulationPlan(site="icu", beds=3, duration_s=5.0, speed=5.0)
        )
        beds = summary["beds"]
        assert isinstance(beds, dict)
        expected = sum(b["messages"] for b in beds.values())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while loop.time() < deadline:
            if engine.writer.stored_frames >= expected and engine.writer.pending_frames == 0:
                break
            await asyncio.sleep(0.1)
        # The alarm channel: its own TLS connection, as engine-alarms.
        channel = MqttChannel(mqtt.for_alarms(), timeout_s=5)
        async with bus.Client(gateway) as site:
            await site.subscribe("eicu/v1/icu/+/alarms", qos=1)
            body: dict[str, object] = {"site": "icu", "bed": "bed001", "kind": "HR_HIGH"}
            await channel.send(Notification("k-1", "a-1", "station", "mqtt", "icu/bed001", body, 0))
            await channel.close()
            async with asyncio.timeout(5):
                message = await anext(aiter(site.messages))
    finally:
        await engine.stop()
        await store.close()
        broker.cleanup()
    assert expected > 0 and len(beds) == 3
    stats = await _stats(tmp_path / "store.db")
    assert stats == beds
    assert engine.metrics.mqtt_reconnects._value.get() == 0
    assert json.loads(message.payload)["key"] == "k-1"


async def _stats(path: Path) -> object:
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        return (await store.stats())["beds"]
    finally:
        await store.close()


def test_commands_refuse_unusable_tls_files_naming_the_key(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("EICU_")}

    def eicu(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "eicu.cli", *args]
        return subprocess.run(
            cmd, env={**base, **env}, capture_output=True, text=True, check=False, timeout=120
        )

    serve = eicu(
        "serve",
        EICU_DATABASE_URL=f"sqlite:///{tmp_path / 'store.db'}",
        EICU_MQTT_URL="mqtts://127.0.0.1:1",
        EICU_MQTT_CERT_FILE=str(not_pem),
    )
    assert serve.returncode == 2
    assert "EICU_MQTT_CERT_FILE: cannot load the client certificate" in serve.stderr
    simulate = eicu("simulate", "--mqtt", "mqtt://127.0.0.1:1", EICU_MQTT_CA_FILE=str(not_pem))
    assert simulate.returncode == 2
    assert "EICU_MQTT_CA_FILE: set, but --mqtt is not mqtts://" in simulate.stderr
