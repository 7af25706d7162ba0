"""Alarm delivery as a process of its own: engines publish their alarm events on the bus, and
``eicu alarms deliver`` processes page for them (docs/alarm-delivery.md, "Delivery as a
process").

The engine's side, :func:`run_publish`: every event the alarm stage records in the engine's
outbox (fsynced) is published at QoS 1 on ``eicu/alarm/<k>/<site>/<bed>`` (``k`` the bed's
delivery partition, :func:`delivery_partition`), in the order it was recorded, and marked
published only when the broker's PUBACK has come back. While the broker cannot be reached the
events wait in the outbox, and go out in order when it is back: nothing recorded is lost.

The delivery side, :class:`Delivery`: the delivery partitions are shared by the delivery
processes through the same ownership as the workers' (NATS key-value buckets of their own, or
every partition for a single process). A partition is read as an MQTT persistent session of
its own (client id ``<EICU_MQTT_CLIENT_ID>-delivery-p<k>``, whichever process holds it), and a
message is acknowledged only after its event is recorded in the delivery process's outbox and
its pages enqueued there (:meth:`~alerting.escalation.Dispatcher.handle`): a delivery process
killed at any moment leaves what it had not recorded to the session, and the next holder
receives it again. A process that takes a partition over (or starts for the first time, before
the broker kept anything for it) first reads the live alarms of that partition's beds from the
store's audit trail and goes on with their escalations where the receipts there say they
stood (:meth:`~alerting.escalation.Dispatcher.take_over`), so nobody is paged twice for a step.

An event handled twice (the engine published it again after a crash, or a bed's new worker
adopted it) changes nothing: the outbox records it once and a page's key is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter

from alerting.escalation import Dispatcher
from alerting.outbox import Outbox, event_id
from eicu import bus, wire
from eicu.alarm_model import AlarmEvent, AlarmState
from eicu.backoff import Backoff
from eicu.bus.ownership import PartitionOwnership
from eicu.bus.partitioned import PartitionConnectionLost, PartitionConsumer, partition_of
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.config import IngestSettings, MqttSettings
from eicu.errors import PayloadError, StorageUnavailable
from eicu.models import BedKey

if TYPE_CHECKING:
    from eicu.store.base import AlarmRepository

__all__ = ["Delivery", "DeliveryFeedMetrics", "delivery_partition", "run_publish"]

log = logging.getLogger(__name__)

_STOPPING: Final = (AlarmState.ACKNOWLEDGED, AlarmState.CLEARED)
# How far back a process taking a delivery partition over looks for live alarms.
LOOKBACK_US: Final = 86_400 * 1_000_000
STORE_WAIT_S: Final = 5.0
# How often, and how far back, the store's audit trail is compared with what came on the bus: an
# event an engine recorded and copied but never published (killed or stopped before) is
# handled from the store.
RECONCILE_S: Final = 5.0
RECONCILE_BACK_US: Final = 600 * 1_000_000
# An event's time is its bed's device time, which may run ahead of this clock by as much as
# the engine lets a device clock run ahead (by default).
RECONCILE_AHEAD_US: Final = int(IngestSettings.device_clock_max_ahead_s * 1_000_000)


def delivery_partition(bed: BedKey, partitions: int) -> int:
    """The delivery partition of a bed (the same hash as the hub's bed partitions)."""
    return partition_of(bed.site, bed.bed, partitions)


# --- the engine's side --------------------------------------------------------------------------


async def run_publish(
    outbox: Outbox,
    settings: MqttSettings,
    partitions: int,
    *,
    interval_s: float = 1.0,
    retry_min_s: float = 0.2,
    retry_max_s: float = 10.0,
    timeout_s: float = 5.0,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Publish the outbox's unpublished events in the order they were recorded, at once when
    events are recorded (and every ``interval_s``), until cancelled. ``settings``: the
    publishing connection (the engine's alarm connection, ``MqttSettings.for_alarms``)."""
    recorded = asyncio.Event()
    unlisten = outbox.listen(recorded.set)
    backoff = Backoff(retry_min_s, retry_max_s)
    stack: contextlib.AsyncExitStack | None = None
    client: bus.Client | None = None
    available = True
    try:
        while True:
            recorded.clear()  # what is recorded from now on is published by the next pass
            batch = outbox.unpublished()
            if not batch:
                await clock.wait(recorded, interval_s)
                continue
            done: list[str] = []
            try:
                if client is None:
                    client = bus.Client(settings, keepalive=settings.keepalive_s, timeout=timeout_s)
                    stack = contextlib.AsyncExitStack()
                    await asyncio.wait_for(stack.enter_async_context(client), timeout_s)
                for stored in batch:
                    event = stored.event
                    topic = wire.alarm_event_topic(delivery_partition(event.bed, partitions),
                                                   event.bed)  # fmt: skip
                    payload = wire.encode_alarm_event(stored.event_id, event)
                    await asyncio.wait_for(client.publish(topic, payload, qos=1), timeout_s)
                    done.append(stored.event_id)
            except (bus.MqttError, OSError, TimeoutError) as exc:
                if done:
                    outbox.mark_published(done)
                if available:
                    log.warning("alarm events wait in the outbox (broker %s: %r)", settings.url,
                                exc)  # fmt: skip
                available = False
                client = None
                if stack is not None:
                    with contextlib.suppress(Exception):
                        await stack.aclose()
                    stack = None
                await clock.sleep(backoff.next_s())
                continue
            outbox.mark_published(done)
            if not available:
                log.info("alarm events published again on %s", settings.url)
            available = True
            backoff.reset()
    finally:
        unlisten()
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


# --- the delivery side --------------------------------------------------------------------------


class DeliveryFeedMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "eicu_delivery_events",
            "Alarm events, by outcome (handled: from the bus; from_store: recorded and copied "
            "by an engine but never published; repeat: an event handled before; rejected: a "
            "message that is not an alarm event, acknowledged and dropped)",
            ["outcome"],
            registry=self.registry,
        )
        self.taken_over = Counter(
            "eicu_delivery_taken_over",
            "Live alarms whose escalation went on from the store when a partition was taken",
            registry=self.registry,
        )


class Delivery:
    """Reads the alarm events of the delivery partitions this process owns and hands them to
    the dispatcher (module docstring). ``store``: the alarm tables (None: no take-over from the
    store; a single process that never moves partitions)."""

    def __init__(
        self,
        settings: MqttSettings,
        dispatcher: Dispatcher,
        ownership: PartitionOwnership,
        *,
        store: AlarmRepository | None = None,
        clock: Clock = SYSTEM_CLOCK,
        metrics: DeliveryFeedMetrics | None = None,
    ) -> None:
        self._settings = settings
        self.dispatcher = dispatcher
        self.ownership = ownership
        self.partitions = ownership.partitions
        self._store = store
        self._clock = clock
        self.metrics = metrics or DeliveryFeedMetrics()
        self._readers: dict[int, asyncio.Task[None]] = {}
        # partition -> subscribed (its session exists) and caught up from the store
        self.reading: dict[int, asyncio.Event] = {}

    def client_id(self, k: int) -> str:
        return f"{self._settings.client_id}-delivery-p{k}"

    @property
    def ready(self) -> bool:
        """Every partition owned is read (and the first claims are done)."""
        owned = self.ownership.owned
        return self.ownership.settled.is_set() and all(
            k in self.reading and self.reading[k].is_set() for k in owned
        )

    async def run(self) -> None:
        """Resume what this process's outbox holds, then read the owned partitions and keep
        the escalations' time, until cancelled."""
        await self.dispatcher.resume()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.dispatcher.keep_time(), name="delivery-escalation")
                tg.create_task(self.ownership.run(self._gain, self._lose), name="delivery-owners")
                if self._store is not None:
                    tg.create_task(self._reconcile_loop(), name="delivery-reconcile")
        finally:
            for task in self._readers.values():
                task.cancel()
            await asyncio.gather(*self._readers.values(), return_exceptions=True)
            self._readers.clear()
            await self.dispatcher.close()

    async def _gain(self, k: int) -> None:
        self.reading[k] = asyncio.Event()
        self._readers[k] = asyncio.create_task(self._read(k), name=f"delivery-p{k}")

    async def _lose(self, k: int) -> None:
        task = self._readers.pop(k, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.reading.pop(k, None)
        gone = {b for b in self.dispatcher.escalating_beds() if self._partition(b) == k}
        for bed in gone:
            self.dispatcher.hand_over(bed)
        log.info("delivery partition %d handed over (%d beds escalating)", k, len(gone))

    def _partition(self, bed: BedKey) -> int:
        return delivery_partition(bed, self.partitions)

    async def _read(self, k: int) -> None:
        """Read partition ``k`` until cancelled. A lost connection is made again with the
        backoff; so is a fault in handling a message (not acknowledged: it comes again)."""
        s = self._settings
        backoff = Backoff(s.reconnect_min_s, s.reconnect_max_s)
        caught_up = False
        while True:
            consumer = PartitionConsumer(
                s,
                k,
                client_id=self.client_id(k),
                topic_filter=wire.alarm_event_filter(k),
                prefix=wire.ALARM_EVENT_ROOT,
            )
            try:
                await consumer.connect()
                if not caught_up:
                    # The session exists now: what engines publish from here on is kept for us.
                    await self._take_over(k)
                    caught_up = True
                self.reading[k].set()
                backoff.reset()
                async for message in consumer:
                    await self._handle(message.partition_topic, message.payload)
                    consumer.ack(message)
                raise PartitionConnectionLost(f"connection to {s.url} closed")
            except asyncio.CancelledError:
                await consumer.close()
                raise
            except Exception as exc:
                self.reading[k].clear()
                delay_s = backoff.next_s()
                if isinstance(exc, PartitionConnectionLost):
                    log.warning("delivery partition %d: %s; again in %.1f s", k, exc, delay_s)
                else:
                    log.exception("delivery partition %d: a fault; read again in %.1f s", k,
                                  delay_s)  # fmt: skip
                await consumer.close()
                await asyncio.sleep(delay_s)

    async def _reconcile_loop(self) -> None:
        while True:
            await self._clock.sleep(RECONCILE_S)
            try:
                await self.reconcile()
            except (StorageUnavailable, TimeoutError) as exc:
                log.debug("alarm trail not compared with the store now: %s", exc)
            except Exception:  # the comparison is a safety net: it never stops delivery
                log.exception("alarm trail not compared with the store")

    async def reconcile(self) -> int:
        """Handle the events of the owned partitions' beds that the store holds (the last
        RECONCILE_BACK_US) and this process has not seen, oldest first. Returns how many."""
        store = self._store
        owned = {k for k, ev in self.reading.items() if ev.is_set()}
        if store is None or not owned:
            return 0
        now_us = self._clock.now_us()
        rows = await asyncio.wait_for(
            store.alarm_events(now_us - RECONCILE_BACK_US, now_us + RECONCILE_AHEAD_US),
            STORE_WAIT_S,
        )
        handled = 0
        settled_us = now_us - int(RECONCILE_S * 1_000_000)
        for row in rows:
            if self._partition(row.event.bed) not in owned:
                continue
            if row.recorded_us > settled_us:
                continue  # recorded a moment ago: it may still be on its way over the bus
            if self.dispatcher.seen(row.event_id):
                continue
            last = self.dispatcher.last_event(row.event.alarm_id)
            if last is not None and last.time_us >= row.event.time_us:
                continue  # an older change than what this process has of the alarm
            log.warning("alarm event %s of %s came from the store, not the bus",
                        row.event.state.value, row.event.alarm_id)  # fmt: skip
            await self.dispatcher.handle(row.event)
            self.metrics.events.labels(outcome="from_store").inc()
            handled += 1
        return handled

    async def _handle(self, topic: str, payload: bytes) -> None:
        try:
            _, event = wire.decode_alarm_event(topic, payload)
        except PayloadError as exc:
            self.metrics.events.labels(outcome="rejected").inc()
            log.error("not an alarm event on %s (%s): %s", topic, exc.reason, exc.detail)
            return
        if self.dispatcher.seen(event_id(event)):
            # Sent again by the bus, or handled from the store before it came: the dispatcher
            # has it, and a stale state must not be published to the bed again.
            self.metrics.events.labels(outcome="repeat").inc()
            return
        await self.dispatcher.handle(event)
        self.metrics.events.labels(outcome="handled").inc()

    async def _take_over(self, k: int) -> int:
        """The live alarms of partition ``k``'s beds, from the store: their escalations go on
        here where the receipts say they stood. Best effort: without the store, an alarm's
        next event (or the engine's publishing it again) starts its escalation."""
        store = self._store
        if store is None:
            return 0
        now_us = self._clock.now_us()
        try:
            stored = await asyncio.wait_for(
                store.alarm_events(now_us - LOOKBACK_US, now_us + 600_000_000), STORE_WAIT_S
            )
        except (StorageUnavailable, TimeoutError) as exc:
            log.warning("delivery partition %d: live alarms not read from the store (%s)", k, exc)
            return 0
        except Exception:  # best effort: the partition is read whatever the store says
            log.exception("delivery partition %d: live alarms not read from the store", k)
            return 0
        latest: dict[str, AlarmEvent] = {}
        for row in stored:
            if self._partition(row.event.bed) == k:
                latest[row.event.alarm_id] = row.event  # oldest first: the last one stays
        live = [e for e in latest.values() if e.state not in _STOPPING]
        taken = 0
        for event in live:
            if not self.dispatcher.can_take_over(event.alarm_id):
                continue
            try:
                receipts = await asyncio.wait_for(
                    store.alarm_deliveries(event.alarm_id), STORE_WAIT_S
                )
            except (StorageUnavailable, TimeoutError) as exc:
                log.warning("receipts of %s not read (%r)", event.alarm_id, exc)
                receipts = []
            await self.dispatcher.take_over(event, receipts)
            taken += 1
        self.metrics.taken_over.inc(taken)
        if taken:
            log.info("delivery partition %d: %d live alarms taken over", k, taken)
        return taken
