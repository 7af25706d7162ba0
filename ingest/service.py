"""The MQTT side of the ingest: subscribe, decode, route, hand to the writer; reconnect forever."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from eicu import bus, wire
from eicu.config import MqttSettings
from eicu.errors import PayloadError
from eicu.metrics import IngestMetrics
from eicu.models import AlarmAck, DeadLetter
from ingest.state import BedRouter
from ingest.writer import Backoff, StoreWriter

log = logging.getLogger(__name__)

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class Ingest:
    def __init__(
        self,
        settings: MqttSettings,
        router: BedRouter,
        writer: StoreWriter,
        metrics: IngestMetrics,
    ) -> None:
        self._settings = settings
        self._router = router
        self._writer = writer
        self._metrics = metrics
        self.connected = asyncio.Event()
        self.rejected = 0
        # Takes the remote ICU's alarm acknowledgements (the engine's alarm stage); without it
        # they are ignored.
        self.on_alarm_ack: Callable[[AlarmAck], object] | None = None

    def handle(self, topic: str, payload: bytes, received_us: int) -> None:
        """Decode one message and pass it on. Bad payloads are counted and dead-lettered."""
        try:
            if wire.is_alarm_ack_topic(topic):
                ack = wire.decode_alarm_ack(topic, payload, received_us)
                if self.on_alarm_ack is not None:
                    self.on_alarm_ack(ack)
                return
            frame = wire.decode(topic, payload, received_us)
        except PayloadError as exc:
            self.rejected += 1
            self._metrics.rejected.labels(reason=exc.reason).inc()
            log.debug("rejected a message on %s: %s", topic, exc.reason)
            self._writer.add_dead_letter(
                DeadLetter(received_us, topic[:512], exc.reason, exc.detail, payload)
            )
            return
        if frame is None:
            return
        if self._router.route(frame):
            self._writer.add(frame)

    def _handle_safely(self, topic: str, payload: bytes) -> None:
        """A message that trips a fault in the engine is kept, counted and logged; the loop
        goes on, so one bad message never stops a ward's data."""
        received_us = time.time_ns() // 1000
        try:
            self.handle(topic, payload, received_us)
        except Exception as exc:
            log.exception("internal error on a message on %s; kept as a dead letter", topic)
            self._metrics.internal_errors.inc()
            self._writer.add_dead_letter(
                DeadLetter(received_us, topic[:512], "internal_error", repr(exc)[:500], payload)
            )

    async def run(self) -> None:
        s = self._settings
        backoff = Backoff(s.reconnect_min_s, s.reconnect_max_s)
        while True:
            try:
                async with bus.Client(
                    s,
                    clean_session=False,  # the broker keeps our QoS 1 messages while we are away
                    keepalive=s.keepalive_s,
                    socket_options=NODELAY,
                    max_inflight_messages=1000,
                ) as client:
                    await client.subscribe(s.topic_filter, qos=1)
                    log.info("subscribed to %s on %s", s.topic_filter, s.url)
                    backoff.reset()
                    self._metrics.mqtt_connected.set(1)
                    self.connected.set()
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes | bytearray):
                            payload = str(payload).encode()
                        self._handle_safely(message.topic.value, bytes(payload))
            except bus.MqttError as exc:
                self._metrics.mqtt_connected.set(0)
                self.connected.clear()
                self._metrics.mqtt_reconnects.inc()
                delay_s = backoff.next_s()
                log.warning("broker connection lost (%s); retrying in %.1f s", exc, delay_s)
                await asyncio.sleep(delay_s)
