"""The MQTT side of the ingest: subscribe, decode, route, hand to the writer; reconnect forever."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from eicu import bus, wire
from eicu.config import AdmissionSettings, MqttSettings
from eicu.errors import PayloadError
from eicu.metrics import IngestMetrics
from eicu.models import AlarmAck, BedKey, StatusFrame
from ingest.admission import REFUSALS, Admission, DeadLetters
from ingest.state import BedRouter
from ingest.writer import Backoff, Receipt, StoreWriter

log = logging.getLogger(__name__)

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
OVERLOAD_LOG_EVERY_S = 60.0


class _Held:
    """Bytes waiting in the incoming queue (read by the gauge when metrics are scraped)."""

    bytes = 0


def byte_bounded_queue(max_bytes: int, metrics: IngestMetrics) -> type[asyncio.Queue[Any]]:
    """The class of aiomqtt's incoming queue, bounded in payload bytes: a message that would
    take it past ``max_bytes`` is dropped and counted (``engine_overloaded``); the queue's bytes
    are the gauge ``eicu_ingest_mqtt_queue_bytes``."""
    held = _Held()
    metrics.mqtt_queue_bytes.set_function(lambda: held.bytes)
    overloaded = metrics.refused.labels(reason="engine_overloaded")

    def size(item: Any) -> int:
        payload = item.payload
        return len(payload) if isinstance(payload, bytes | bytearray) else 0

    class ByteBoundedQueue(asyncio.Queue[Any]):
        _logged_s = -OVERLOAD_LOG_EVERY_S

        def put_nowait(self, item: Any) -> None:
            n = size(item)
            if held.bytes + n > max_bytes:
                overloaded.inc()
                metrics.refused_bytes.inc(n)
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
            held.bytes += size(item)
            super()._put(item)

        def _get(self) -> Any:
            item = super()._get()
            held.bytes -= size(item)
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
        self._refused: dict[str, Any] = {}  # reason -> its counter
        self._refused_bytes = 0  # added to the counter every second: no lock per message
        # Set while the broker connection is up and subscribed (cleared when it is lost).
        self.connected = asyncio.Event()
        self.rejected = 0
        # Takes the remote ICU's alarm acknowledgements (the engine's alarm stage); without it
        # they are ignored.
        self.on_alarm_ack: Callable[[AlarmAck], object] | None = None
        # The consumer (and its acknowledging) kept open by a cancelled run() until close().
        self._consumer: Any = None
        self._pump: Callable[[], None] | None = None

    def handle(self, topic: str, payload: bytes, received_us: int) -> None:
        """Admit, decode and pass on one message. Refused messages and bad payloads are counted
        and dead-lettered (a few whole, the rest summed up)."""
        refused = self.admission.check(topic, len(payload))
        if refused is not None:
            self._refusal(refused, topic, payload, received_us)
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
        admission = self.admission
        if isinstance(frame, StatusFrame):
            names = (frame.bed,) if frame.bed is not None else frame.beds
            for name in names:
                self._mark_new(BedKey(frame.site, name))
        elif frame.bed in admission.watching:
            state = self._router.beds.get(frame.bed)
            if state is not None:
                admission.observe(
                    frame.bed, state.messages, state.first_seen_us, state.last_seen_us
                )
            self._mark_new(frame.bed)

    def _mark_new(self, bed: BedKey) -> None:
        """Tell the bed's state whether it is new (see ingest.admission)."""
        state = self._router.beds.get(bed)
        if state is not None:
            state.new = self.admission.is_new(bed)

    def _refusal(self, reason: str, topic: str, payload: bytes, received_us: int) -> None:
        counter = self._refused.get(reason)
        if counter is None:
            # Too large is what the decoder would say too: counted with its rejections.
            family = self._metrics.rejected if reason == "oversized" else self._metrics.refused
            counter = self._refused[reason] = family.labels(reason=reason)
        counter.inc()
        self._refused_bytes += len(payload)
        self.dead_letters.add(received_us, topic, reason, REFUSALS[reason], payload)

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

    @property
    def url(self) -> str:
        """The broker's URL (no password)."""
        return self._settings.url

    async def run(self) -> None:
        if self._settings.ack == "receipt":
            await self._run_ack_on_receipt()
        else:
            await self._run_ack_after_persist()

    async def _run_ack_after_persist(self) -> None:
        """Each QoS 1 message is acknowledged (its PUBACK) only once every row it produced is
        durable (stored, or fsynced to the spool), in the order received: the broker keeps the
        rest for the next connection, or the next engine, as long as the session lasts. What is
        held unacknowledged is bounded by the broker's in-flight window for this client."""
        from eicu.bus.partitioned import PartitionConnectionLost, ingest_consumer

        s = self._settings
        backoff = Backoff(s.reconnect_min_s, s.reconnect_max_s)
        while True:
            consumer = ingest_consumer(s, s.partitions)
            window: deque[tuple[Any, Receipt]] = deque()

            def pump(consumer: Any = consumer, window: deque[tuple[Any, Receipt]] = window) -> None:
                while window and window[0][1].durable:
                    consumer.ack(window.popleft()[0])

            self._pump = pump
            try:
                await consumer.connect()
                log.info("subscribed to %s on %s", consumer.topic_filter, s.url)
                backoff.reset()
                self._metrics.mqtt_connected.set(1)
                self.connected.set()
                self._writer.on_durable = pump
                writer = self._writer
                async for message in consumer:
                    receipt = Receipt()
                    writer.receipt = receipt
                    try:
                        self._handle_safely(message.topic, message.payload)
                    finally:
                        writer.receipt = None
                    receipt.sealed = True
                    window.append((message, receipt))
                    pump()
                raise PartitionConnectionLost(f"connection to {s.url} closed")
            except PartitionConnectionLost as exc:
                self._writer.on_durable = None
                await consumer.close()
                self._metrics.mqtt_connected.set(0)
                self.connected.clear()
                self._metrics.mqtt_reconnects.inc()
                delay_s = backoff.next_s()
                log.warning("broker connection lost (%s); retrying in %.1f s", exc, delay_s)
                await asyncio.sleep(delay_s)
            except asyncio.CancelledError:
                # The engine stops: the consumer stays open until the writer has stored (or
                # spooled) what it holds, so that it is acknowledged (see close()).
                self._consumer = consumer
                raise

    async def close(self) -> None:
        """After the ingest was cancelled and the writer closed: acknowledge what is durable,
        wait until those PUBACKs are sent, and disconnect (the broker keeps the rest)."""
        consumer, self._consumer = self._consumer, None
        self._writer.on_durable = None
        if consumer is None:
            return
        if self._pump is not None:
            self._pump()
        await consumer.drain()
        await consumer.close()

    async def _run_ack_on_receipt(self) -> None:
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
                    queue_type=self._queue_type,
                ) as client:
                    from eicu.bus.partitioned import ingest_topic_filters

                    filters = ingest_topic_filters(s, s.partitions)
                    await client.subscribe([(f, 1) for f in filters])
                    log.info("subscribed to %s on %s", ", ".join(filters), s.url)
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

    def flush_counts(self) -> None:
        self._metrics.refused_bytes.inc(self._refused_bytes)
        self._refused_bytes = 0

    async def run_dead_letters(self) -> None:
        """Each second: the refused bytes into their counter, and the dead-letter window's sum
        once it is over (even when no more refusals come)."""
        while True:
            await asyncio.sleep(1.0)
            self.flush_counts()
            self.dead_letters.flush_if_due()
