"""The demo's embedded broker: Mosquitto where installed, amqtt otherwise, chosen by
EICU_EMBEDDED_BROKER; both carry QoS 1 messages; a Mosquitto child dies
with its parent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiomqtt
import pytest

from eicu.commands.embedded import EmbeddedBroker, chosen_kind
from eicu.devservices import mosquitto_binary
from eicu.errors import ConfigError

needs_mosquitto = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto not installed (Debian package 'mosquitto')"
)


def test_the_choice_follows_the_setting_and_what_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert chosen_kind({"EICU_EMBEDDED_BROKER": "amqtt"}) == "amqtt"
    assert chosen_kind({"EICU_EMBEDDED_BROKER": " Amqtt "}) == "amqtt"
    with pytest.raises(
        ConfigError, match="EICU_EMBEDDED_BROKER: one of mosquitto, amqtt, not 'rabbit'"
    ):
        chosen_kind({"EICU_EMBEDDED_BROKER": "rabbit"})
    monkeypatch.setattr("eicu.commands.embedded.mosquitto_binary", lambda: None)
    assert chosen_kind({}) == "amqtt"
    with pytest.raises(ConfigError, match="mosquitto binary is not installed"):
        chosen_kind({"EICU_EMBEDDED_BROKER": "mosquitto"})
    monkeypatch.setattr("eicu.commands.embedded.mosquitto_binary", lambda: "/usr/sbin/mosquitto")
    assert chosen_kind({}) == "mosquitto"


async def _round_trip(port: int, n: int = 50) -> list[bytes]:
    """``n`` QoS 1 messages through the broker to a subscriber with a persistent session."""
    got: list[bytes] = []
    async with (
        aiomqtt.Client("127.0.0.1", port, identifier="sub", clean_session=False) as sub,
        aiomqtt.Client("127.0.0.1", port, identifier="pub") as pub,
    ):
        await sub.subscribe("eicu/t/#", qos=1)
        for i in range(n):
            await pub.publish(f"eicu/t/{i}", str(i).encode(), qos=1)
        async with asyncio.timeout(20):
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                got.append(message.payload)
                if len(got) == n:
                    break
    return got


@pytest.mark.parametrize("kind", [pytest.param("mosquitto", marks=needs_mosquitto), "amqtt"])
async def test_each_broker_carries_qos1_messages(kind: str, tmp_path: Path) -> None:
    broker = EmbeddedBroker(kind=kind, folder=tmp_path / "broker")
    await broker.start()
    try:
        got = await _round_trip(broker.port)
    finally:
        await broker.stop()
    assert got == [str(i).encode() for i in range(50)]
    if kind == "mosquitto":
        assert (tmp_path / "broker" / "mosquitto.conf").exists()  # in the folder it was given


@needs_mosquitto
def test_a_killed_parent_leaves_no_broker_behind(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from eicu.commands.embedded import EmbeddedBroker

        async def main():
            broker = EmbeddedBroker(kind="mosquitto", folder=Path({str(tmp_path)!r}))
            await broker.start()
            print(broker._mosquitto.proc.pid, flush=True)
            await asyncio.sleep(120)

        asyncio.run(main())
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    ) as parent:
        try:
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
            os.kill(child, 0)  # running
            parent.send_signal(signal.SIGKILL)
            parent.wait(10)
            # the kernel sends the broker SIGTERM when its parent dies
            assert _gone_within(child, 10.0), "the embedded Mosquitto outlived its killed parent"
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()


def _gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text().split()[2] == "Z":  # ended, not yet reaped by its new parent
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return False
