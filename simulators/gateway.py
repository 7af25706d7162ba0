"""A simulated bedside gateway: one MQTT connection for several beds, with an outbox.

Messages wait in the outbox until the broker acknowledges them (QoS 1); when the connection
drops, the gateway reconnects and sends them again, as a real gateway does, so a broker restart
loses nothing. Only acknowledged messages count in the summary.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from dataclasses import dataclass, field

from eicu import bus, wire
from eicu.config import MqttSettings
from eicu.models import BedKey, StatusFrame

log = logging.getLogger(__name__)

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
# aiomqtt warns about every publish still awaiting its acknowledgement; a gateway keeps a
# window of them on purpose, and failures surface as exceptions.
_mqtt_log = logging.getLogger("simulators.gateway.mqtt")
_mqtt_log.setLevel(logging.ERROR)


@dataclass
class Outgoing:
    topic: str
    payload: bytes
    bed: BedKey | None  # counted in the summary when set
    samples: int
    retain: bool = False


@dataclass
class BedCount:
    messages: int = 0
    samples: int = 0


@dataclass
class Gateway:
    mqtt: MqttSettings
    site: str
    name: str
    beds: list[str]
    max_outbox: int = 200_000
    window: int = 256  # publishes awaiting acknowledgement at once
    outbox: deque[Outgoing] = field(default_factory=deque)
    counts: dict[str, BedCount] = field(default_factory=dict)
    dropped: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: bool = False
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, item: Outgoing) -> None:
        if len(self.outbox) >= self.max_outbox:
            self.outbox.popleft()
            self.dropped += 1
        self.outbox.append(item)
        self._wake.set()

    def status(self, state: str, ts_us: int) -> None:
        frame = StatusFrame(self.site, state, ts_us, gateway=self.name, beds=tuple(self.beds))  # type: ignore[arg-type]
        self.send(
            Outgoing(
                wire.gateway_status_topic(self.site, self.name),
                wire.encode_status(frame),
                None,
                0,
                True,
            )
        )

    async def run(self) -> None:
        will_frame = StatusFrame(
            self.site, "offline", None, gateway=self.name, beds=tuple(self.beds)
        )
        will = bus.Will(
            wire.gateway_status_topic(self.site, self.name),
            wire.encode_status(will_frame, with_time=False),
            qos=1,
            retain=True,
        )
        delay_s = 0.2
        while True:
            try:
                # A broker that binds client ids to user names uses the account's name instead.
                async with bus.Client(
                    self.mqtt,
                    identifier=f"eicu-gw-{self.site}-{self.name}",
                    will=will,
                    socket_options=NODELAY,
                    max_inflight_messages=self.window,
                    logger=_mqtt_log,
                    timeout=30,
                ) as client:
                    self.connected.set()
                    delay_s = 0.2
                    await self._pump(client)
                    return
            except bus.MqttError as exc:
                self.connected.clear()
                if self._closing and not self.outbox:
                    return
                log.info("gateway %s/%s: broker lost (%s); reconnecting", self.site, self.name, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    async def _pump(self, client: bus.Client) -> None:
        while True:
            if not self.outbox:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            n = min(len(self.outbox), self.window)
            items = [self.outbox[i] for i in range(n)]
            results = await asyncio.gather(
                *(client.publish(it.topic, it.payload, qos=1, retain=it.retain) for it in items),
                return_exceptions=True,
            )
            failed = next((i for i, r in enumerate(results) if isinstance(r, BaseException)), None)
            done = n if failed is None else failed
            for _ in range(done):
                it = self.outbox.popleft()
                if it.bed is not None:
                    count = self.counts.setdefault(it.bed.bed, BedCount())
                    count.messages += 1
                    count.samples += it.samples
            if failed is not None:
                exc = results[failed]
                raise exc if isinstance(exc, bus.MqttError) else bus.MqttError(str(exc))

    async def close(self, timeout_s: float = 30.0) -> None:
        """Send what is left (bounded by ``timeout_s``)."""
        self._closing = True
        self._wake.set()
