"""The hub's bus on real NATS servers started by the tests: gateway messages partitioned by
(site, bed) over a 3-node cluster, read by persistent-session QoS 1 subscribers that acknowledge
by hand; nothing unacknowledged is lost when a subscriber or a broker node dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import nats
import pytest

from eicu.bus import Client, MqttError
from eicu.bus.partitioned import (
    PartitionConnectionLost,
    PartitionConsumer,
    PartitionMessage,
    partition_topic_filter,
)
from eicu.config import MqttSettings, Secret
from eicu.devservices import (
    MQTT_ACK_WAIT_S,
    NatsCluster,
    NatsServer,
    ServiceError,
    nats_partition_mappings,
)

pytestmark = [pytest.mark.nats]

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
# How long a delivered QoS 1 message may stay unacknowledged before the server sends it again:
# short here, so that a takeover is quick to test.
ACK_WAIT_S = 1.0
WAIT_S = 30.0  # generous: the machine may be busy
PUBACK_WAIT_S = 2.0


def _cluster(ack_wait_s: float) -> Iterator[NatsCluster]:
    try:
        servers = NatsCluster(partitions=PARTITIONS, mqtt_ack_wait_s=ack_wait_s).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start the NATS cluster for the tests: {exc}")
    yield servers
    servers.cleanup()


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    """Redelivers quickly: for the tests that kill."""
    yield from _cluster(ACK_WAIT_S)


@pytest.fixture
def calm_cluster() -> Iterator[NatsCluster]:
    """Redelivers only after the default wait, so that a slow test machine sees no message
    twice where nothing failed."""
    yield from _cluster(MQTT_ACK_WAIT_S)


@pytest.fixture
def single() -> Iterator[NatsServer]:
    """One node, one partition: every bed's messages in partition 0."""
    try:
        server = NatsServer(partitions=1, mqtt_ack_wait_s=ACK_WAIT_S).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start NATS for the tests: {exc}")
    yield server
    server.cleanup()


def settings(server: NatsServer, client_id: str) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=server.mqtt_port, client_id=client_id, keepalive_s=5)


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


async def read_until(server: NatsServer, partition: int, last: bytes) -> list[bytes]:
    """The payloads a new consumer of ``partition``'s session reads, each acknowledged, up to
    and including ``last``."""
    consumer = PartitionConsumer(settings(server, "worker"), partition)
    seen: list[bytes] = []
    async with consumer, asyncio.timeout(WAIT_S):
        async for message in consumer:
            seen.append(message.payload)
            consumer.ack(message)
            if message.payload == last:
                break
    return seen


class Received:
    """What subscribers received: (partition, topic, payload) in arrival order."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, str, bytes]] = []

    def payloads(self) -> set[bytes]:
        return {payload for _, _, payload in self.messages}


async def read_partition(
    urls: list[MqttSettings], partition: int, received: Received, stop: asyncio.Event
) -> None:
    """A worker's loop: reads one partition, acknowledging each message once recorded; when the
    connection is lost, resumes the partition's session on the next node."""
    node = 0
    while not stop.is_set():
        consumer = PartitionConsumer(urls[node % len(urls)], partition)
        try:
            await consumer.connect()
            async for message in consumer:
                received.messages.append((partition, message.topic, message.payload))
                consumer.ack(message)
                if stop.is_set():
                    break
        except PartitionConnectionLost:
            node += 1
            await asyncio.sleep(0.05)
        finally:
            await consumer.close()


@contextlib.asynccontextmanager
async def partition_readers(
    urls: list[MqttSettings], partitions: range, received: Received
) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(read_partition(urls, k, received, stop), name=f"partition[{k}]")
        for k in partitions
    ]
    try:
        yield stop
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def subscribe_once(server: NatsServer, partitions: range) -> None:
    """Creates each partition's persistent session (and its durable subscription) on the broker.
    The first MQTT connection to a cluster creates NATS's MQTT streams, which a busy machine may
    not finish within the server's 5 s: the server then drops the connection, and a worker tries
    again, as here."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    for k in partitions:
        while True:
            consumer = PartitionConsumer(settings(server, "worker"), k)
            try:
                await consumer.connect()
                break
            except PartitionConnectionLost:
                if loop.time() > deadline:
                    raise
            finally:
                await consumer.close()


class Gateway:
    """A bedside gateway: QoS 1 publishes through the product's MQTT adapter, each one counted
    as acknowledged when its PUBACK came; on a lost broker it reconnects to the next node and
    sends the unacknowledged message again."""

    def __init__(self, nodes: list[NatsServer]) -> None:
        self.nodes = nodes
        self.acked: list[bytes] = []
        self.node = 0

    async def publish_all(self, messages: list[tuple[str, bytes]], after: Callable[[int], object]):
        pending = list(messages)
        while pending:
            server = self.nodes[self.node % len(self.nodes)]
            try:
                async with Client(settings(server, "gateway-1"), timeout=5) as client:
                    while pending:
                        topic, payload = pending[0]
                        # not acknowledged in time: sent again (on the next node if need be)
                        await client.publish(topic, payload, qos=1, timeout=PUBACK_WAIT_S)
                        self.acked.append(payload)
                        pending.pop(0)
                        after(len(self.acked))
            except MqttError:
                self.node += 1
                await asyncio.sleep(0.05)


def bed_traffic(beds: int, per_bed: int) -> list[tuple[str, bytes]]:
    """Numerics and waveforms of ``beds`` beds, interleaved as a gateway sends them; the payload
    names the bed and a per-bed sequence number."""
    out = []
    for seq in range(per_bed):
        for bed in range(beds):
            kind = "numerics" if seq % 4 == 0 else "waveform"
            out.append((f"eicu/v1/site-a/bed-{bed}/{kind}", f"bed-{bed}:{seq}".encode()))
    return out


def by_bed(messages: list[tuple[int, str, bytes]]) -> dict[str, list[tuple[int, int]]]:
    beds: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for partition, _, payload in messages:
        bed, _, seq = payload.decode().partition(":")
        beds[bed].append((partition, int(seq)))
    return beds


# --- the configuration ----------------------------------------------------------------------------


def test_partition_mappings_keep_site_and_bed_together() -> None:
    mappings = nats_partition_mappings(8)
    assert mappings["eicu.v1.*.*.numerics"] == (
        "eicu.p.{{partition(8,1,2)}}.v1.{{wildcard(1)}}.{{wildcard(2)}}.numerics"
    )
    assert "eicu.v1.*.*.alarms" not in mappings  # the engine's alarms to the site stay as sent
    assert partition_topic_filter(3) == "eicu/p/3/#"
    with pytest.raises(ValueError):
        nats_partition_mappings(0)
    with pytest.raises(ValueError):
        partition_topic_filter(-1)


def test_a_cluster_gets_distinct_ports_and_one_that_fails_leaves_no_node_running() -> None:
    cluster = NatsCluster(partitions=PARTITIONS)
    try:
        ports = [p for n in cluster.nodes for p in (n.port, n.mqtt_port, n.http_port)]
        ports += [n.cluster_port for n in cluster.nodes if n.cluster_port is not None]
        assert len(ports) == 12 and len(set(ports)) == 12
        # a node that cannot bind its route port exits: the cluster never comes up, and the
        # nodes that did start are stopped before the error
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", cluster.nodes[2].cluster_port or 0))
            taken.listen()
            with pytest.raises(ServiceError):
                cluster.start(timeout_s=3.0)
        assert all(n.proc is None for n in cluster.nodes)
    finally:
        cluster.cleanup()


# --- partitions over the cluster --------------------------------------------------------------


async def test_each_bed_in_one_partition_in_order_across_nodes(
    calm_cluster: NatsCluster,
) -> None:
    """A gateway on node 0, subscribers of every partition on node 1: each message once, each
    bed's messages in one partition and in the order sent, the beds spread over partitions."""
    cluster = calm_cluster
    await subscribe_once(cluster[1], range(PARTITIONS))
    traffic = bed_traffic(beds=24, per_bed=12)
    received = Received()
    async with partition_readers([settings(cluster[1], "worker")], range(PARTITIONS), received):
        gateway = Gateway([cluster[0]])
        await gateway.publish_all(traffic, after=lambda n: None)
        await until(lambda: len(received.messages) >= len(traffic), "every message received")

    assert sorted(received.payloads()) == sorted(p for _, p in traffic)
    assert len(received.messages) == len(traffic)  # nothing twice without a failure
    beds = by_bed(received.messages)
    for bed, seen in beds.items():
        assert len({partition for partition, _ in seen}) == 1, f"{bed} in several partitions"
        assert [seq for _, seq in seen] == sorted(seq for _, seq in seen), f"{bed} out of order"
    assert len({seen[0][0] for seen in beds.values()}) > 1  # 24 beds do not all hash alike
    assert {tuple(topic.split("/")[:2]) for _, topic, _ in received.messages} == {("eicu", "v1")}


async def test_alarms_to_the_site_are_not_partitioned(calm_cluster: NatsCluster) -> None:
    """The engine's alarms back to a site keep their topic (the site subscribes to it)."""
    cluster = calm_cluster
    await subscribe_once(cluster[0], range(1))  # the cluster's MQTT streams exist (see there)
    async with Client(settings(cluster[2], "site-a-display")) as site:
        await site.subscribe("eicu/v1/site-a/+/alarms", qos=1)
        async with Client(settings(cluster[0], "engine-alarms")) as engine:
            await engine.publish("eicu/v1/site-a/bed-3/alarms", b"{}", qos=1)
        message = await asyncio.wait_for(anext(aiter(site.messages)), WAIT_S)
    assert message.topic.value == "eicu/v1/site-a/bed-3/alarms"


# --- a subscriber that dies -----------------------------------------------------------------------

_CHILD = """
import asyncio, sys
from eicu.bus.partitioned import PartitionConsumer
from eicu.config import MqttSettings, Secret

async def main(port, ack_first, total):
    consumer = PartitionConsumer(
        MqttSettings(host="127.0.0.1", port=port, client_id="worker"), 0)
    await consumer.connect()
    print("READY", flush=True)
    n = 0
    async for message in consumer:
        n += 1
        if n <= ack_first:
            consumer.ack(message)
        if n == total:
            await consumer.drain()
            print("HOLDING", flush=True)

asyncio.run(main(*map(int, sys.argv[1:])))
"""


async def _line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), WAIT_S)
        if not line:
            raise AssertionError(f"worker exited before {prefix!r}")
        if line.startswith(prefix):
            return line.strip()


async def test_unacknowledged_messages_come_to_the_next_subscriber_after_sigkill(
    single: NatsServer,
) -> None:
    """A worker receives 40 messages of its partition, acknowledges 15 and is SIGKILLed; the
    next subscriber of the partition (the same session) receives the other 25, flagged as sent
    before, and nothing acknowledged comes again."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CHILD), str(single.mqtt_port), "15", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        await _line(proc, "READY")
        traffic = bed_traffic(beds=4, per_bed=10)
        await Gateway([single]).publish_all(traffic, after=lambda n: None)
        await _line(proc, "HOLDING")  # 40 received, the PUBACKs of the first 15 sent
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()

    consumer = PartitionConsumer(settings(single, "worker"), 0)
    again: list[PartitionMessage] = []
    async with consumer:
        assert consumer.session_present

        async def take() -> None:
            async for message in consumer:
                again.append(message)
                consumer.ack(message)
                if len(again) == 25:
                    return

        await asyncio.wait_for(take(), WAIT_S)
    assert [m.payload for m in again] == [p for _, p in traffic[15:]]
    assert all(m.redelivered for m in again)


async def test_unacknowledged_messages_come_again_after_a_clean_disconnect(
    single: NatsServer,
) -> None:
    """Disconnecting without acknowledging leaves the messages with the broker; a message
    acknowledged after its connection closed is not acknowledged."""
    await subscribe_once(single, range(1))
    traffic = bed_traffic(beds=2, per_bed=5)
    await Gateway([single]).publish_all(traffic, after=lambda n: None)

    first = PartitionConsumer(settings(single, "worker"), 0)
    held: list[PartitionMessage] = []
    async with first:
        async for message in first:
            held.append(message)
            if len(held) <= 4:
                assert first.ack(message)
            if len(held) == len(traffic):
                break
        await first.drain()  # the four PUBACKs out before the DISCONNECT
    assert not first.ack(held[-1])  # too late: the connection is closed

    # Every unacknowledged message comes again, in order. An acknowledged one may come again too
    # (at least once: the broker may not have handled a PUBACK before the connection closed);
    # the engine drops such a repeat by its sequence.
    unacked = [p for _, p in traffic[4:]]
    again = await read_until(single, 0, unacked[-1])
    assert [p for p in again if p in unacked] == unacked
    assert set(again) <= {p for _, p in traffic}


async def test_a_message_sent_again_while_still_held_is_not_read_twice(single: NatsServer) -> None:
    """NATS sends a QoS 1 message again once it has waited ``ack_wait`` without its PUBACK (the
    same packet identifier, marked DUP). A consumer that still holds it does not pass it on a
    second time, and the PUBACK of the message it holds, sent once it is durable, answers both:
    nothing comes again afterwards."""
    await subscribe_once(single, range(1))
    traffic = bed_traffic(beds=2, per_bed=3)
    await Gateway([single]).publish_all(traffic, after=lambda n: None)
    again: list[int] = []
    first = PartitionConsumer(
        settings(single, "worker"), 0, on_held_redelivery=lambda: again.append(1)
    )
    held: list[PartitionMessage] = []
    async with first:
        async with asyncio.timeout(WAIT_S):
            async for message in first:
                held.append(message)
                if len(held) == len(traffic):
                    break
        # held past ack_wait (1 s here): every message comes again, and is passed over
        await until(lambda: len(again) >= len(traffic), "every held message sent again")
        assert first._queue.empty()
        assert first.unacknowledged == len(traffic)
        assert all(first.ack(m) for m in held)
    # closed: the broker has read the PUBACKs (close() waits for it to end the connection)
    assert sorted(m.payload for m in held) == sorted(p for _, p in traffic)
    # Acknowledged: the partition's session holds nothing more of them.
    topic, marker = "eicu/v1/site-a/bed-0/numerics", b"marker"
    await Gateway([single]).publish_all([(topic, marker)], after=lambda n: None)
    assert await read_until(single, 0, marker) == [marker]


# --- a broker node that dies ----------------------------------------------------------------------


async def _stream_leader(server: NatsServer, stream: str) -> str:
    nc = await nats.connect(server.nats_url, connect_timeout=5)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None and info.cluster.leader is not None
        return str(info.cluster.leader)
    finally:
        await nc.close()


@pytest.mark.parametrize("victim", ["stream-leader", "clients-node"])
async def test_sigkill_of_a_node_loses_no_acknowledged_message(
    cluster: NatsCluster, victim: str
) -> None:
    """A gateway publishes 600 messages; after 150 a node is SIGKILLed: the leader of the MQTT
    message stream (the gateway and the subscribers are on the other two nodes), or the node the
    gateway and the subscribers are connected to (they move to the others). Every message the
    broker acknowledged (PUBACK) reaches the partitions' subscribers."""
    await subscribe_once(cluster[0], range(PARTITIONS))  # MQTT's streams exist from here on
    leader_name = await _stream_leader(cluster[0], "$MQTT_msgs")
    leader = next(node for node in cluster.nodes if node.name == leader_name)
    first, second = (node for node in cluster.nodes if node is not leader)
    if victim == "stream-leader":
        doomed, gateway_order, reader_order = leader, [first, second], [second, first]
    else:
        doomed, gateway_order, reader_order = first, [first, second, leader], [first, second]
    traffic = bed_traffic(beds=20, per_bed=30)
    received = Received()
    killed = asyncio.Event()

    def after(acked: int) -> None:
        if acked == 150 and not killed.is_set():
            doomed.kill()
            killed.set()

    readers = [settings(node, "worker") for node in reader_order]
    async with partition_readers(readers, range(PARTITIONS), received):
        gateway = Gateway(gateway_order)
        await asyncio.wait_for(gateway.publish_all(traffic, after=after), 4 * WAIT_S)
        acked = set(gateway.acked)
        await until(lambda: acked <= received.payloads(), "every acknowledged message received")

    assert killed.is_set()
    assert len(acked) == len(traffic)
    # Duplicates are possible (a redelivery, a gateway's retry); partitions stay whole.
    for bed, seen in by_bed(received.messages).items():
        assert len({partition for partition, _ in seen}) == 1, f"{bed} in several partitions"


# --- authentication -------------------------------------------------------------------------------


async def test_users_with_passwords_and_partitions_in_their_account() -> None:
    """With users the server admits only them (MQTT included), and the partition mappings apply
    in their account."""
    users = {"worker": "worker-secret", "gateway-1": "gateway-secret"}
    try:
        server = NatsServer(partitions=1, users=users).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start NATS for the tests: {exc}")
    try:
        worker = replace(
            settings(server, "worker"), username="worker", password=Secret("worker-secret")
        )
        with pytest.raises(PartitionConnectionLost):
            await PartitionConsumer(replace(worker, password=Secret("wrong")), 0).connect()
        async with PartitionConsumer(worker, 0) as consumer:
            gateway = replace(
                settings(server, "gateway-1"),
                username="gateway-1",
                password=Secret("gateway-secret"),
            )
            async with Client(gateway) as client:
                await client.publish("eicu/v1/site-a/bed-1/numerics", b"{}", qos=1)
            message = await asyncio.wait_for(anext(aiter(consumer)), WAIT_S)
            assert message.partition_topic == "eicu/p/0/v1/site-a/bed-1/numerics"
            assert message.topic == "eicu/v1/site-a/bed-1/numerics"
            consumer.ack(message)
    finally:
        server.cleanup()
