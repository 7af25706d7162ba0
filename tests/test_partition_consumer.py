"""The partition consumer's acknowledgements on a real Mosquitto broker: PUBACKs sent only by
``ack()``, those of one event-loop turn in one write, and what was acknowledged never sent
again to the next consumer of the session."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import pytest

from eicu.bus.partitioned import PartitionConsumer, PartitionMessage
from eicu.config import MqttSettings
from eicu.devservices import Mosquitto

pytestmark = pytest.mark.broker

WAIT_S = 20.0
TOPIC = "eicu/v1/icu/bed-01/numerics"


def _consumer(broker: Mosquitto) -> PartitionConsumer:
    settings = MqttSettings(host="127.0.0.1", port=broker.port, client_id="reader", keepalive_s=5)
    return PartitionConsumer(settings, None, client_id="reader", topic_filter="eicu/#")


async def _publish(broker: Mosquitto, payloads: list[bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw") as gateway:
        for payload in payloads:
            await gateway.publish(TOPIC, payload, qos=1)


async def _take(consumer: PartitionConsumer, n: int) -> list[PartitionMessage]:
    taken: list[PartitionMessage] = []

    async def take() -> None:
        async for message in consumer:
            taken.append(message)
            if len(taken) == n:
                return

    await asyncio.wait_for(take(), WAIT_S)
    return taken


async def test_pubacks_of_one_turn_go_out_in_one_write_and_nothing_acknowledged_comes_again(
    broker: Mosquitto,
) -> None:
    first = _consumer(broker)
    async with first:  # the session exists before anything is published
        payloads = [b"m%d" % i for i in range(40)]
        await _publish(broker, payloads)
        held = await _take(first, 40)
        assert [m.payload for m in held] == payloads
        assert first.unacknowledged == 40

        transport: Any = first._client._connection._transport  # type: ignore[union-attr]
        writes: list[bytes] = []
        write = transport.write

        def counting(data: bytes) -> None:
            writes.append(bytes(data))
            write(data)

        transport.write = counting
        try:
            assert all(first.ack(m) for m in held[:30])  # one turn of the loop
            assert not any(first.ack(m) for m in held[:30])  # once only
            await first.drain()
        finally:
            transport.write = write
        assert len(writes) == 1 and len(writes[0]) == 30 * 4  # 30 PUBACKs, one write
        assert first.unacknowledged == 10

    # The same session again: the 10 not acknowledged come first, flagged as sent before, and
    # none of the 30 acknowledged; then what is published now.
    second = _consumer(broker)
    async with second:
        assert second.session_present
        await _publish(broker, [b"after"])
        again = await _take(second, 11)
        assert [m.payload for m in again] == [*payloads[30:], b"after"]
        assert all(m.redelivered for m in again[:10])
        for m in again:
            assert second.ack(m)
        await second.drain()
        assert not first.ack(held[35])  # a message of a closed connection: not acknowledged
