"""``eicu worker`` on a 3-node NATS cluster: workers share the partitions; one SIGKILLed
mid-stream and one started while the gateways publish lose nothing and store nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from eicu.bus.partitioned import partition_of
from eicu.config import MqttSettings, Settings
from eicu.devservices import NatsCluster, NatsServer, ServiceError
from eicu.devservices import WorkerProcess as Worker
from eicu.errors import ConfigError
from eicu.store import Store, open_store
from simulators.run import SimulationPlan, simulate

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8
BEDS = 12
TTL_S = 2.0
WAIT_S = 120.0  # generous: the machine may be busy


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = open_store(db_url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    try:
        servers = NatsCluster(partitions=PARTITIONS, mqtt_ack_wait_s=2.0).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start the NATS cluster for the tests: {exc}")
    yield servers
    servers.cleanup()


def start_worker(name: str, cluster: NatsCluster, db_url: str, tmp: Path, first: int) -> Worker:
    mqtt = [n.url for n in cluster.nodes]
    return Worker(
        name,
        mqtt_urls=mqtt[first:] + mqtt[:first],  # each worker starts on another node
        nats_urls=[n.nats_url for n in cluster.nodes],
        db_url=db_url,
        workdir=tmp,
        partitions=PARTITIONS,
        ownership_ttl_s=TTL_S,
        pythonpath=ROOT,
    )


async def _until(what: str, condition: object, timeout_s: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def _all_read(workers: list[Worker]) -> bool:
    return set().union(*(w.reading for w in workers)) == set(range(PARTITIONS))


@pytest.mark.nats
@pytest.mark.db
@pytest.mark.slow
async def test_workers_share_partitions_and_a_killed_one_loses_nothing(
    cluster: NatsCluster, store: Store, db_url: str, tmp_path: Path
) -> None:
    workers = [start_worker(f"w{i}", cluster, db_url, tmp_path, i) for i in range(2)]
    try:
        try:
            await _until("the two workers read every partition", lambda: _all_read(workers))
        except AssertionError:
            pytest.fail("\n".join(f"{w.name}: {w.reading}\n{w.tail()}" for w in workers))
        assert workers[0].reading and workers[1].reading, "the partitions are shared"
        plan = SimulationPlan(site="hub", beds=BEDS, duration_s=40.0, speed=2.0)
        publishing = asyncio.create_task(simulate(MqttSettings.from_url(cluster[0].url), plan))

        async def some_stored() -> bool:
            beds = (await store.stats())["beds"]
            return sum(b["messages"] for b in beds.values()) >= 4 * BEDS

        await _until("some data stored", some_stored)
        held = set(workers[0].reading)
        workers[0].kill()
        # Its partitions move to the survivor within the ownership's TTL (and a margin).
        workers[1].reading.clear()

        async def taken_over() -> bool:
            return held <= workers[1].reading

        await _until(f"{held} taken over", taken_over, timeout_s=30.0)
        # A worker started while the gateways publish takes its share.
        workers.append(start_worker("w2", cluster, db_url, tmp_path, 2))

        async def joined() -> bool:
            return bool(workers[2].reading)

        await _until("the new worker reads some partitions", joined)
        assert not publishing.done(), "the kill and the join were to happen mid-stream"
        summary = await publishing
        assert "unsent" not in summary and "dropped" not in summary
        published = summary["beds"]

        async def all_in() -> bool:
            return (await store.stats())["beds"] == published

        try:
            await _until("every published sample stored", all_in, timeout_s=60.0)
        except AssertionError:
            stored = (await store.stats())["beds"]
            pytest.fail(f"stored {stored} != published {published}\n" + workers[1].tail())
    finally:
        for w in workers:
            if w.process.poll() is None:
                w.stop()


async def test_partition_of_is_the_brokers_partition() -> None:
    """The hash the worker computes for a bed is the partition the NATS mapping puts it in."""
    try:
        server = NatsServer(partitions=PARTITIONS).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start NATS for the tests: {exc}")
    try:
        nc = await nats.connect(server.nats_url)
        got: dict[tuple[str, str], int] = {}
        done = asyncio.Event()
        pairs = [(f"site{i % 3}", f"bed{i:03d}") for i in range(40)] + [("karamay", "icu-12")]

        async def take(msg: nats.aio.msg.Msg) -> None:
            tokens = msg.subject.split(".")
            got[(tokens[4], tokens[5])] = int(tokens[2])
            if len(got) == len(pairs):
                done.set()

        await nc.subscribe("eicu.p.>", cb=take)
        for site, bed in pairs:
            await nc.publish(f"eicu.v1.{site}.{bed}.numerics", b"{}")
        await asyncio.wait_for(done.wait(), 10.0)
        await nc.close()
    finally:
        server.cleanup()
    assert got == {(s, b): partition_of(s, b, PARTITIONS) for s, b in pairs}
    assert len(set(got.values())) > 1


def test_worker_settings() -> None:
    env = {
        "EICU_MQTT_URL": "mqtt://a:1883, mqtt://b:1884",
        "EICU_NATS_URL": "nats://a:4222,nats://b:4223",
        "EICU_PARTITION_COUNT": "16",
        "EICU_WORKER_ID": "w1",
    }
    s = Settings.from_env(env)
    assert s.mqtt is not None and (s.mqtt.host, s.mqtt.port) == ("a", 1883)
    assert s.mqtt.alternates == (("b", 1884),)
    nxt = s.mqtt.next_node()
    assert (nxt.host, nxt.port, nxt.alternates) == ("b", 1884, (("a", 1883),))
    assert s.worker.nats_urls == ("nats://a:4222", "nats://b:4223")
    assert (s.worker.partition_count, s.worker.worker_id) == (16, "w1")
    with pytest.raises(ConfigError, match="EICU_NATS_URL"):
        Settings.from_env({**env, "EICU_NATS_URL": "http://a"})
    with pytest.raises(ConfigError, match="EICU_MQTT_URL"):
        Settings.from_env({**env, "EICU_MQTT_URL": "mqtt://a,mqtts://b"})
    with pytest.raises(ConfigError, match="EICU_PARTITION_COUNT"):
        Settings.from_env({**env, "EICU_PARTITION_COUNT": "0"})
