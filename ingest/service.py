"""The MQTT side of the ingest: subscribe, decode, route, hand to the writer; reconnect forever."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from eicu import bus, wire
from eicu.config import AdmissionSettings, MqttSettings
from eicu.errors import PayloadError
from eicu.metrics import IngestMetrics
from eicu.models import AlarmAck, AlarmCommand, BedKey, StatusFrame
from ingest.admission import REFUSALS, Admission, DeadLetters
from ingest.state import BedRouter
from ingest.writer import Backoff, Receipt, StoreWriter

if TYPE_CHECKING:
    from eicu.alarm_model import AlarmEvent
    from eicu.bus.ownership import PartitionOwnership

log = logging.getLogger(__name__)

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
OVERLOAD_LOG_EVERY_S = 60.0
# How long a partition handed over waits for what it took to be stored before it lets go.
HANDOVER_WRITE_S = 10.0
# How long taking a partition over waits for its subscription before the next claim.
SUBSCRIBE_WAIT_S = 10.0


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


class _Reader:
    """One persistent-session subscription of the ingest and its window of messages waiting to
    be acknowledged (each with the receipt of what it put into the writer)."""

    def __init__(
        self, name: str, client_id: str, filters: tuple[str, ...], partition: int | None = None
    ) -> None:
        self.name = name
        self.client_id = client_id
        self.filters = filters
        self.partition = partition
        self.consumer: Any = None
        self.window: deque[tuple[Any, Receipt]] = deque()
        self.subscribed = asyncio.Event()
        self.up = False

    def attach(self, consumer: Any) -> None:
        """A new connection: what the old one held comes again from the broker."""
        self.consumer = consumer
        self.window = deque()

    def pump(self) -> None:
        window, consumer = self.window, self.consumer
        while window and window[0][1].durable:
            consumer.ack(window.popleft()[0])

    async def finish(self) -> None:
        """Acknowledge what is durable, wait until those PUBACKs are sent, disconnect."""
        consumer = self.consumer
        if consumer is None:
            return
        self.pump()
        await consumer.drain()
        await consumer.close()
        self.consumer = None


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
        # A dashboard's change to a bed's alarms (acknowledge, pause), answered on its reply topic.
        self.on_alarm_command: Callable[[AlarmCommand], object] | None = None
        # Takes the alarm changes another engine published on its beds' alarms topics (the
        # hub's copy of a remote site's alarms); without it they are passed over.
        self.on_alarm_state: Callable[[AlarmEvent], object] | None = None
        # The open subscriptions (kept open by a cancelled run() until close()), by name.
        self._readers: dict[str, _Reader] = {}
        # With partition owners (eicu worker): who holds which partition, and what the engine
        # does when one is taken over (before its reader starts) or lost (after it stopped).
        self._ownership: PartitionOwnership | None = None
        self.on_partition_gained: Callable[[int], Awaitable[None]] | None = None
        self.on_partition_lost: Callable[[int], None] | None = None
        # Awaited once a lost partition's messages are durable, before its key is let go.
        self.on_partition_released: Callable[[int], Awaitable[None]] | None = None
        self._durable = asyncio.Event()  # set whenever the writer made something durable
        # Set once the engine can take messages (kernels warmed, sequences resumed); until then
        # the subscriptions exist and the broker keeps what arrives.
        self.accepting = asyncio.Event()
        # Readers of other sources than the MQTT broker (run_sources), by reader name: each
        # makes a consumer with the PartitionConsumer's interface (connect, iterate, ack,
        # drain, close), e.g. the hub's reader of a remote site's stream.
        self._sources: dict[str, Callable[[], Any]] = {}
        # messages the broker sent again while still held here, since the last warning of them
        self._held_again = 0
        self._held_again_warned = -math.inf  # time.monotonic() of that warning

    def handle(self, topic: str, payload: bytes, received_us: int) -> None:
        """Admit, decode and pass on one message. Refused messages and bad payloads are counted
        and dead-lettered (a few whole, the rest summed up). The hub's own topics (a bed's
        state, answers, alarm events; ``wire.is_internal_topic``) are not input: passed over."""
        if wire.is_internal_topic(topic):
            return
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
            if self.on_alarm_state is not None and wire.is_alarm_state_topic(topic):
                event = wire.decode_alarm_state(topic, payload)
                if event is not None:
                    self.on_alarm_state(event)
                return
            if wire.is_alarm_command_topic(topic):
                cmd = wire.decode_alarm_command(topic, payload, received_us)
                if self.on_alarm_command is not None:
                    self.on_alarm_command(cmd)
                else:
                    log.warning("alarm command %s of %s: this engine judges no alarms", cmd.action,
                                cmd.bed)  # fmt: skip
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
        if isinstance(frame, StatusFrame) and frame.beds and self._ownership is not None:
            # A gateway's status names beds of every partition: this engine takes its own.
            owned = tuple(b for b in frame.beds if self.owns(frame.site, b))
            if not owned:
                return
            frame = dataclasses.replace(frame, beds=owned)
        if isinstance(frame, StatusFrame) and frame.beds:
            beds, refused_beds = self.admission.admit_beds(frame.site, frame.beds)
            if refused_beds:
                # The gateway's status is kept; beds that do not exist are left out of it.
                self._metrics.refused.labels(reason="unknown_bed").inc(refused_beds)
                frame = dataclasses.replace(frame, beds=beds)
        if self._router.route(frame):
            self._writer.add(frame)
        elif not isinstance(frame, StatusFrame):
            self._writer.add_repeat(frame)
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

    def _held_redelivery(self) -> None:
        """The broker sent a message again while this engine still held it (its ``ack_wait``
        passed): counted, and a warning at most every OVERLOAD_LOG_EVERY_S, since the engine is
        further behind than its acknowledgement window allows (docs/bus.md)."""
        self._metrics.redelivered_held.inc()
        self._held_again += 1
        now = time.monotonic()
        if now - self._held_again_warned >= OVERLOAD_LOG_EVERY_S:
            log.warning(
                "messages sent again by the broker while still held here (their ack_wait "
                "passed before they were stored): %d since the last warning; this engine is "
                "further behind than its acknowledgement window allows (see max_ack_pending in "
                "docs/bus.md, or add workers)",
                self._held_again,
            )
            self._held_again, self._held_again_warned = 0, now

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
            from eicu.bus.partitioned import ingest_topic_filters

            s = self._settings
            await self._read(_Reader("ingest", s.client_id, ingest_topic_filters(s, s.partitions)))

    async def run_sources(self, sources: Mapping[str, Callable[[], Any]]) -> None:
        """The input from other sources than the MQTT broker: one reader per source, each
        connecting a new consumer from its factory after a loss (with the backoff), and
        acknowledging each message after persist, as a persistent session's reader does."""
        if not sources:
            raise ValueError("run_sources needs at least one source")
        self._sources = dict(sources)
        async with asyncio.TaskGroup() as group:
            for name in sources:
                group.create_task(self._read(_Reader(name, name, ())), name=f"ingest[{name}]")

    async def run_owned(self, ownership: PartitionOwnership) -> None:
        """The worker's input: one persistent session per partition it owns (client id
        ``eicu-p-<k>``: the session belongs to the partition, so the next owner resumes it),
        started and stopped as ``ownership`` hands partitions over, beside one reader of the
        gateways' own status (unpartitioned; only beds of owned partitions are taken from it)."""
        from eicu.bus.partitioned import GATEWAY_STATUS_FILTER, PARTITION_PREFIX

        s = self._settings
        self._ownership = ownership
        status = _Reader("gateway-status", f"{s.client_id}-status", (GATEWAY_STATUS_FILTER,))
        tasks: dict[int | str, asyncio.Task[None]] = {
            "status": asyncio.create_task(self._read(status), name="ingest-gateway-status")
        }

        async def gain(k: int) -> None:
            if self.on_partition_gained is not None:
                await self.on_partition_gained(k)
            reader = _Reader(f"p{k}", f"eicu-p-{k}", (f"{PARTITION_PREFIX}/{k}/#",), partition=k)
            tasks[k] = asyncio.create_task(self._read(reader), name=f"ingest-p{k}")
            # Claims go on once the partition's session exists; a node that does not answer
            # holds them up for a while only (the reader keeps trying on its own).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.subscribed.wait(), SUBSCRIBE_WAIT_S)

        async def lose(k: int) -> None:
            task = tasks.pop(k, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # The partition's beds are no longer judged here, and what they put into the
            # writer is written now: the next owner goes on from what is stored.
            if self.on_partition_lost is not None:
                self.on_partition_lost(k)
            reader = self._readers.get(f"p{k}")
            if reader is not None:
                await self._until_durable(reader, HANDOVER_WRITE_S)
                del self._readers[f"p{k}"]
                self._refresh_connected()
                await reader.finish()
            if self.on_partition_released is not None:
                await self.on_partition_released(k)

        try:
            await ownership.run(gain, lose)
        finally:
            for task in tasks.values():
                task.cancel()
            for task in tasks.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def owns(self, site: str, bed: str) -> bool:
        """Whether this process holds bed ``site``/``bed`` (always, without partition owners)."""
        ownership = self._ownership
        if ownership is None:
            return True
        from eicu.bus.partitioned import partition_of

        return partition_of(site, bed, ownership.partitions) in ownership.owned

    def _pump_all(self) -> None:
        for reader in self._readers.values():
            reader.pump()
        self._durable.set()

    async def _until_durable(self, reader: _Reader, timeout_s: float) -> None:
        """Wait until every message ``reader`` took is durable (at most ``timeout_s``: what is
        not by then comes again to the next owner, which stores it once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        reader.pump()
        while reader.window and loop.time() < deadline:
            self._durable.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._durable.wait(), deadline - loop.time())
            reader.pump()
        if reader.window:
            log.warning(
                "%s: %d messages not yet stored at hand-over; the next owner takes them",
                reader.name,
                len(reader.window),
            )

    async def _read(self, reader: _Reader) -> None:
        """One persistent-session reader, reconnecting forever. Each QoS 1 message is
        acknowledged (its PUBACK) only once every row it produced is durable (stored, or fsynced
        to the spool), in the order received: the broker keeps the rest for the next connection,
        or the next owner, as long as the session lasts. What is held unacknowledged is bounded
        by the broker's in-flight window for this client."""
        from eicu.bus.partitioned import PartitionConnectionLost, PartitionConsumer

        s = self._settings
        backoff = Backoff(s.reconnect_min_s, s.reconnect_max_s)
        self._writer.on_durable = self._pump_all
        first = True
        while True:
            if not first:
                s = s.next_node()  # a lost node: try the next one of the cluster
            first = False
            source = self._sources.get(reader.name)
            consumer = (
                source()
                if source is not None
                else PartitionConsumer(
                    s,
                    None if reader.partition is None else reader.partition,
                    client_id=reader.client_id,
                    topic_filter=reader.filters,
                    on_held_redelivery=self._held_redelivery,
                )
            )
            reader.attach(consumer)
            self._readers[reader.name] = reader
            try:
                await consumer.connect()
                where = reader.name if source is not None else s.url
                log.info("subscribed to %s on %s", consumer.topic_filter, where)
                backoff.reset()
                reader.subscribed.set()
                self._connection(reader, True)
                writer = self._writer
                window = reader.window
                await self.accepting.wait()
                async for message in consumer:
                    receipt = Receipt()
                    writer.receipt = receipt
                    try:
                        self._handle_safely(message.topic, message.payload)
                    finally:
                        writer.receipt = None
                    receipt.sealed = True
                    window.append((message, receipt))
                    reader.pump()
                raise PartitionConnectionLost(f"connection to {s.url} closed")
            except PartitionConnectionLost as exc:
                await consumer.close()
                self._connection(reader, False)
                self._metrics.mqtt_reconnects.inc()
                delay_s = backoff.next_s()
                log.warning("broker connection lost (%s); retrying in %.1f s", exc, delay_s)
                await asyncio.sleep(delay_s)
            except asyncio.CancelledError:
                # Stopping on purpose (the engine stops, or the partition is handed over): the
                # consumer stays open (in ``_readers``) until the writer has stored (or spooled)
                # what it holds, so that it is acknowledged (see close()); no lost connection.
                raise

    def _connection(self, reader: _Reader, up: bool) -> None:
        reader.up = up
        self._refresh_connected()

    def _refresh_connected(self) -> None:
        """``connected`` is set while every open reader is subscribed."""
        readers = self._readers.values()
        if readers and all(r.up for r in readers):
            self._metrics.mqtt_connected.set(1)
            self.connected.set()
        else:
            self._metrics.mqtt_connected.set(0)
            self.connected.clear()

    async def close(self) -> None:
        """After the ingest was cancelled and the writer closed: acknowledge what is durable,
        wait until those PUBACKs are sent, and disconnect (the broker keeps the rest)."""
        self._writer.on_durable = None
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            await reader.finish()

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
                    await self.accepting.wait()
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
