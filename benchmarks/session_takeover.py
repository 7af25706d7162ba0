"""A gateway credential connecting again and again with the engine's client id, against a broker
configured by ``eicu broker-auth config`` (client ids bound to user names) beside the same broker
without that binding.

    python benchmarks/session_takeover.py [--beds 20] [--duration 15] [--every 1.5]

Each run: a real Mosquitto with the eicu accounts, the engine (SQLite store) connected as its
engine account, ``--beds`` simulated beds publishing through one gateway account for
``--duration`` seconds, and another gateway's credential connecting with the engine's client id
every ``--every`` seconds. Printed per run: the engine's broker disconnections
(``eicu_mqtt_reconnects``), the messages the broker acknowledged to the gateway, those the engine
stored, and the share lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eicu import bus
from eicu.brokerauth import BrokerAuth, listener_settings
from eicu.config import IngestSettings, MqttSettings, Secret
from eicu.devservices import Mosquitto
from eicu.store import open_store
from ingest.engine import Engine
from simulators.run import SimulationPlan, simulate


async def one_run(bound: bool, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    auth = BrokerAuth(folder / "auth")
    pw_engine = auth.add("engine", "engine")
    pw_site = auth.add("gw-icu", "gateway", "icu")
    pw_other = auth.add("gw-other", "gateway", "other")
    broker = Mosquitto(
        auth=auth.mosquitto_config(), listener=listener_settings() if bound else None
    ).start()
    store = open_store(f"sqlite:///{folder / 'store.db'}")
    await store.open()
    engine_mqtt = MqttSettings(
        port=broker.port, username="engine", password=Secret(pw_engine), client_id="engine",
        reconnect_min_s=0.2, reconnect_max_s=1.0,
    )  # fmt: skip
    ingest = IngestSettings(spool_dir=folder / "spool", flush_interval_s=0.1, analyse_signals=False)
    engine = Engine(engine_mqtt, ingest, store)
    attacker = dataclasses.replace(
        engine_mqtt, username="gw-other", password=Secret(pw_other)
    )  # asks for the engine's client id
    site = MqttSettings(port=broker.port, username="gw-icu", password=Secret(pw_site))
    stop = asyncio.Event()

    async def attack() -> None:
        while not stop.is_set():
            with contextlib.suppress(bus.MqttError):
                async with bus.Client(attacker, clean_session=True, timeout=5):
                    await asyncio.sleep(0.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.every)

    try:
        await engine.start()
        await engine.wait_connected()
        attacking = asyncio.create_task(attack())
        plan = SimulationPlan(site="icu", beds=args.beds, duration_s=args.duration)
        summary = await simulate(site, plan)
        stop.set()
        await attacking
        beds = summary["beds"]
        assert isinstance(beds, dict)
        sent = sum(b["messages"] for b in beds.values())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and engine.writer.stored_frames < sent:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # stragglers
        stats = (await store.stats())["beds"]
        stored = sum(b["messages"] for b in stats.values())
        disconnects = engine.metrics.mqtt_reconnects._value.get()
    finally:
        await engine.stop()
        await store.close()
        broker.cleanup()
    return {
        "disconnects": disconnects,
        "sent": sent,
        "stored": stored,
        "lost_pct": 100.0 * (sent - stored) / sent if sent else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beds", type=int, default=20)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of streaming")
    parser.add_argument("--every", type=float, default=1.5, help="seconds between takeovers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the lost connections are counted, not logged
    print(
        f"{args.beds} beds for {args.duration:g} s, a takeover attempt every {args.every:g} s\n"
        f"{'broker':<34} {'disconnects':>11} {'acknowledged':>12} {'stored':>8} {'lost':>7}"
    )
    for bound, label in (
        (False, "without use_username_as_clientid"),
        (True, "eicu broker-auth config"),
    ):
        with tempfile.TemporaryDirectory(prefix="eicu-takeover-") as tmp:
            r = asyncio.run(one_run(bound, args, Path(tmp)))
        print(
            f"{label:<34} {r['disconnects']:>11.0f} {r['sent']:>12.0f} {r['stored']:>8.0f} "
            f"{r['lost_pct']:>6.1f}%"
        )


if __name__ == "__main__":
    main()
