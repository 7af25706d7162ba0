"""The MQTT side of the ingest: subscribe, decode, route, hand to the writer; reconnect forever."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import aiomqtt

from eicu import wire
from eicu.config import AdmissionSettings, MqttSettings
from eicu.errors import PayloadError
from eicu.metrics import IngestMetrics
from eicu.models import AlarmAck, StatusFrame
from ingest.admission import REFUSALS, Admission, DeadLetters
from ingest.state import BedRouter
from ingest.writer import Backoff, StoreWriter

log = logging.getLogger(__name__)

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
OVERLOAD_LOG_EVERY_S = 60.0


def byte_bounded_queue(max_bytes: int, metrics: IngestMetrics) -> type[asyncio.Queue[Any]]:
    """The class of aiomqtt's incoming queue, bounded in payload bytes: a message that would
    take it past ``max_bytes`` is dropped and counted (``engine_overloaded``); the queue's bytes
    are the gauge ``eicu_ingest_mqtt_queue_bytes``."""

    class ByteBoundedQueue(asyncio.Queue[Any]):
        bytes = 0
        _logged_s = -OVERLOAD_LOG_EVERY_S

        def put_nowait(self, item: Any) -> None:
            size = len(item.payload) if isinstance(item.payload, bytes | bytearray) else 0
            if self.bytes + size > max_bytes:
                metrics.refused.labels(reason="engine_overloaded").inc()
                metrics.refused_bytes.inc(size)
                now_s = time.monotonic()
                if now_s - self._logged_s >= OVERLOAD_LOG_EVERY_S:
                    self._logged_s = now_s
                    log.warning(
                        "incoming messages over %d bytes waiting: dropping (engine overloaded)",
                        max_bytes,
                    )
                return
            super().put_nowait(item)

        def _put(self, item: Any) -> None:
            self.bytes += len(item.payload) if isinstance(item.payload, bytes | bytearray) else 0
            metrics.mqtt_queue_bytes.set(self.bytes)
            super()._put(item)

        def _get(self) -> Any:
            item = super()._get()
            self.bytes -= len(item.payload) if isinstance(item.payload, bytes | bytearray) else 0
            metrics.mqtt_queue_bytes.set(self.bytes)
            return item

    return ByteBoundedQueue


class Ingest:
    def __init__(
        self,
        settings: MqttSettings,
        router: BedRouter,
        writer: StoreWriter,
        metrics: IngestMetrics,
        admission: Admission | None = None,
        mqtt_queue_max_bytes: int = 64 * 2**20,
    ) -> None:
        self._settings = settings
        self._router = router
        self._writer = writer
        self._metrics = metrics
        self.admission = admission or Admission(AdmissionSettings(), metrics)
        self.dead_letters = DeadLetters(self.admission.settings, writer.add_dead_letter)
        self._queue_type = byte_bounded_queue(mqtt_queue_max_bytes, metrics)
        self.connected = asyncio.Event()
        self.rejected = 0
        # Takes the remote ICU's alarm acknowledgements (the engine's alarm stage); without it
        # they are ignored.
        self.on_alarm_ack: Callable[[AlarmAck], object] | None = None

    def handle(self, topic: str, payload: bytes, received_us: int) -> None:
        """Admit, decode and pass on one message. Refused messages and bad payloads are counted
        and dead-lettered (a few whole, the rest summed up)."""
        refused = self.admission.check(topic, len(payload))
        if refused is not None:
            # Too large is what the decoder would say too: counted with its rejections.
            counter = self._metrics.rejected if refused == "oversized" else self._metrics.refused
            counter.labels(reason=refused).inc()
            self._metrics.refused_bytes.inc(len(payload))
            self.dead_letters.add(received_us, topic, refused, REFUSALS[refused], payload)
            return
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
            self.dead_letters.add(received_us, topic, exc.reason, exc.detail, payload)
            return
        if frame is None:
            return
        if isinstance(frame, StatusFrame) and frame.beds:
            beds, refused_beds = self.admission.admit_beds(frame.site, frame.beds)
            if refused_beds:
                # The gateway's status is kept; beds that do not exist are left out of it.
                self._metrics.refused.labels(reason="unknown_bed").inc(refused_beds)
                frame = dataclasses.replace(frame, beds=beds)
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
            self.dead_letters.add(received_us, topic, "internal_error", repr(exc)[:500], payload)

    async def run(self) -> None:
        s = self._settings
        backoff = Backoff(s.reconnect_min_s, s.reconnect_max_s)
        while True:
            try:
                async with aiomqtt.Client(
                    s.host,
                    s.port,
                    username=s.username,
                    password=s.password,
                    identifier=s.client_id,
                    clean_session=False,  # the broker keeps our QoS 1 messages while we are away
                    keepalive=s.keepalive_s,
                    socket_options=NODELAY,
                    max_inflight_messages=1000,
                    queue_type=self._queue_type,
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
            except aiomqtt.MqttError as exc:
                self._metrics.mqtt_connected.set(0)
                self.connected.clear()
                self._metrics.mqtt_reconnects.inc()
                delay_s = backoff.next_s()
                log.warning("broker connection lost (%s); retrying in %.1f s", exc, delay_s)
                await asyncio.sleep(delay_s)

    async def run_dead_letters(self) -> None:
        """Sum up each window's refused and rejected messages, even when no more come."""
        window_s = self.admission.settings.dead_letter_window_s
        while True:
            await asyncio.sleep(window_s)
            self.dead_letters.flush()
