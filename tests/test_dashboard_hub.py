"""``eicu dashboard`` beside two ``eicu worker`` processes on NATS: the census holds the beds of
every worker's partitions, a bed's waveforms come through its partition, and an acknowledgement
reaches the bed's owner through the partition mappings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dashboards.users import Role, Users
from eicu import bus, wire
from eicu.alarms.policy import DEFAULT_PATH
from eicu.bus.partitioned import partition_of
from eicu.config import MqttSettings
from eicu.devservices import DashboardProcess, NatsServer, ServiceError
from eicu.devservices import WorkerProcess as Worker
from eicu.models import BedKey, NumericsFrame
from simulators.run import SimulationPlan, simulate
from tests.cheap_argon2 import cheap_hasher
from tests.dashboard_beds import live_ecg_samples

pytestmark = [pytest.mark.db]

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
SICK = BedKey("hub", "bed009")
PASSWORD = "intensivist-password"
WAIT_S = 90.0


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    try:
        server = NatsServer(partitions=PARTITIONS).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start NATS for the tests: {exc}")
    yield server
    server.cleanup()


def prompt_policy_file(tmp: Path) -> Path:
    """The default policy with no delay on the NEWS2 bands: the sick bed's alarm starts at once."""
    raw = json.loads(DEFAULT_PATH.read_text())
    for kind in ("NEWS2_MEDIUM", "NEWS2_HIGH"):
        raw["conditions"][kind]["delay_s"] = 0
    path = tmp / "policy.json"
    path.write_text(json.dumps(raw))
    return path


async def until(what: str, check: object, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def test_the_dashboard_reads_every_worker_and_commands_the_owner(
    nats: NatsServer, db_url: str, tmp_path: Path
) -> None:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("ada", Role.INTENSIVIST, PASSWORD)
    env = {
        "EICU_ALARM_POLICY_FILE": str(prompt_policy_file(tmp_path)),
        "EICU_STATE_PERIOD_S": "0.5",
    }
    workers = [
        Worker(
            name,
            mqtt_urls=[nats.url],
            nats_urls=[nats.nats_url],
            db_url=db_url,
            workdir=tmp_path,
            partitions=PARTITIONS,
            ownership_ttl_s=2.0,
            env=env,
            pythonpath=ROOT,
        )
        for name in ("w1", "w2")
    ]
    dashboard = DashboardProcess(nats.url, db_url, users.path, tmp_path / "dashboard.log")
    try:
        dashboard.wait_ready()

        async def shared() -> bool:  # every partition read, by both workers
            return (
                all(w.reading for w in workers)
                and len(set().union(*(w.reading for w in workers))) == PARTITIONS
            )

        await until("both workers read partitions", shared)
        mqtt = MqttSettings.from_url(nats.url, client_id="eicu-test-gateway")
        plan = SimulationPlan(site="hub", beds=4, duration_s=24.0, scenario="stable", speed=1.0)
        gateway = asyncio.create_task(simulate(mqtt, plan, asyncio.Event()))
        sick = MqttSettings.from_url(nats.url, client_id="eicu-test-sick")
        async with bus.Client(sick) as c:
            values: dict[str, float | None] = {
                "RR": 31.0,
                "SPO2": 89.0,
                "HR": 134.0,
                "NIBP_SYS": 88.0,
            }
            frame = NumericsFrame(SICK, 1, time.time_ns() // 1000, values)
            await c.publish(wire.numerics_topic(SICK), wire.encode_numerics(frame), qos=1)
        beds = {f"hub/bed00{i}" for i in range(1, 5)} | {str(SICK)}
        owners = {
            w.name
            for w in workers
            for b in beds
            if partition_of("hub", b.split("/")[1], PARTITIONS) in w.reading
        }
        assert owners == {"w1", "w2"}, "the beds of this test all fell to one worker"
        client = httpx.AsyncClient(base_url=dashboard.url, timeout=10)
        async with contextlib.aclosing(client):
            r = await client.post("/api/login", json={"name": "ada", "password": PASSWORD})
            assert r.status_code == 200, r.text
            client.headers["x-csrf-token"] = r.json()["csrf"]

            async def census_full() -> bool:
                rows = (await client.get("/api/census")).json()["beds"]
                return {b["bed"] for b in rows} >= beds

            await until("every bed in the census", census_full, 30)

            async def alarm_shown() -> bool:
                live = (await client.get("/api/alarms", params={"bed": str(SICK)})).json()
                return any(a["kind"] == "NEWS2_HIGH" for a in live["alarms"])

            await until("the sick bed's alarm", alarm_shown, 30)
            live = (await client.get("/api/alarms", params={"bed": str(SICK)})).json()["alarms"]
            (alarm,) = (a for a in live if a["kind"] == "NEWS2_HIGH")
            r = await client.post(f"/api/alarms/{alarm['alarm_id']}/ack")
            assert r.status_code == 200, r.text + dashboard.log()[-2000:]
            (event,) = r.json()["events"]
            assert (event["state"], event["actor"]) == ("acknowledged", "ada")

            # a bed's waveforms through its partition (NATS maps the gateway's topic)
            samples = await live_ecg_samples(
                client, dashboard.url, BedKey("hub", "bed001"), 250, 10
            )
            assert samples >= 250, f"{samples} ECG samples in 10 s"

            # the sick bed's worker is killed: the other takes its partitions over, and the
            # census goes on from the new owner's state, the acknowledged alarm still
            # acknowledged (adopted, not raised again)
            k = partition_of(SICK.site, SICK.bed, PARTITIONS)
            victim = next(w for w in workers if k in w.reading)
            heir = next(w for w in workers if w is not victim)
            victim.kill()
            killed_us = time.time_ns() // 1000

            async def taken_over() -> bool:
                return len(heir.reading) == PARTITIONS

            await until("the other worker reads every partition", taken_over, 30)

            async def fresh_again() -> bool:
                rows = {b["bed"]: b for b in (await client.get("/api/census")).json()["beds"]}
                return all(
                    not rows[b]["stale"] and (rows[b]["last_seen_us"] or 0) > killed_us
                    for b in beds - {str(SICK)}
                )

            await until("every streaming bed fresh from the new owner", fresh_again, 30)
            rows = {b["bed"]: b for b in (await client.get("/api/census")).json()["beds"]}
            headline = rows[str(SICK)]["alarm"]
            assert headline is not None and headline["alarm_id"] == alarm["alarm_id"]
            assert headline["state"] == "acknowledged", headline
        await gateway
    finally:
        dashboard.stop()
        for w in workers:
            w.stop()
