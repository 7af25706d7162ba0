"""Reading one partition of the hub's bus: the one module that imports gmqtt.

The hub's broker (a NATS cluster, see docs/bus.md) maps every gateway message
``eicu/v1/<site>/<bed>/<type>`` to ``eicu/p/<k>/v1/<site>/<bed>/<type>``, where ``k`` is a hash of
(site, bed), so each bed's messages land, in order, in one of a fixed number of partitions. A
worker reads partition ``k`` as an MQTT 3.1.1 persistent-session QoS 1 subscriber of
``eicu/p/<k>/#`` and acknowledges each message (its PUBACK) only when it calls :meth:`ack`, after
the message's data is durable. Until then the broker keeps the message: when the worker dies or
its connection drops, the next consumer of that partition (the same session: the client id is the
partition's, not the worker's) receives it again, flagged ``redelivered``.

    async with PartitionConsumer(settings, partition=3) as consumer:
        async for message in consumer:
            await store(message.topic, message.payload)
            consumer.ack(message)

A consumer is one connection: when it is lost, iteration raises :class:`PartitionConnectionLost`
and the consumer is finished; the caller connects a new one (with its backoff), which resumes the
session. Messages received on a lost connection cannot be acknowledged any more (their ack is
ignored); the broker sends them again. The consumer never reconnects by itself, so that no PUBACK
of an old connection can ever acknowledge a different message on a new one.

The same code reads a single Mosquitto (a site node, a one-machine install), which has no
mappings: one consumer with ``topic_filter="eicu/#"`` reads everything as one partition. A
consumer may also take several filters (``topic_filter=[...]``): the engine reads its partitions
and the unpartitioned ones on one connection (:func:`ingest_topic_filters`,
:func:`ingest_consumer`).

Errors::

    MqttError                       (eicu.bus)
    └── PartitionConnectionLost     the connection was refused or lost; connect a new consumer
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import gmqtt
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError

from eicu.bus import MqttError, tls_context
from eicu.config import MqttSettings

__all__ = [
    "PARTITION_PREFIX",
    "PartitionConnectionLost",
    "PartitionConsumer",
    "PartitionMessage",
    "ingest_consumer",
    "ingest_topic_filters",
    "partition_of",
    "partition_topic_filter",
]

log = logging.getLogger(__name__)

# The topic prefix under which the broker's mappings put the partitions (NATS subject ``eicu.p``).
PARTITION_PREFIX: Final = "eicu/p"
# The gateways' own status messages (not a bed's), read unpartitioned beside the partitions.
GATEWAY_STATUS_FILTER: Final = "eicu/v1/+/_gateway/+/status"
# SUBACK's return code of a refused subscription (MQTT 3.1.1 § 3.9.3).
_SUBACK_FAILURE: Final = 0x80
# PUBACK (MQTT 3.1.1 § 3.4): packet type 4, remaining length 2, the message's packet identifier.
_PUBACK: Final = struct.Struct("!BBH")
_PUBACK_TYPE: Final = 0x40
_DISCONNECT: Final = b"\xe0\x00"
# How long a consumer that stops waits for the broker to close the connection after its
# DISCONNECT (by then the broker has read the PUBACKs written before it).
DISCONNECT_WAIT_S: Final = 2.0


class _DropWritesToClosedSocket(logging.Filter):
    """gmqtt warns for every write to a closed socket; after a lost connection each message
    that was not acknowledged makes one, on purpose (see :meth:`PartitionConsumer._finish`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "[TRYING WRITE TO CLOSED SOCKET]"


logging.getLogger("gmqtt.mqtt.protocol").addFilter(_DropWritesToClosedSocket())
# gmqtt logs every connection, subscription and acknowledgement at INFO; this adapter logs what
# an operator needs (connected, reading, lost) itself.
logging.getLogger("gmqtt").setLevel(logging.WARNING)


def partition_of(site: str, bed: str, partitions: int) -> int:
    """The partition the hub's broker puts bed ``site``/``bed`` in, of ``partitions``: NATS's
    ``partition(n, 1, 2)`` mapping is the 32-bit FNV-1a hash of the two wildcard tokens joined
    without a separator, modulo ``n`` (checked against a real server in tests/test_worker.py).
    A worker uses it for what does not come through a partition: a gateway's status naming beds
    of every partition, and the beds the store knows when it takes a partition over."""
    if partitions < 1:
        raise ValueError(f"need at least one partition, got {partitions}")
    h = 0x811C9DC5
    for byte in (site + bed).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def partition_topic_filter(partition: int, prefix: str = PARTITION_PREFIX) -> str:
    """The MQTT topic filter of one partition: ``eicu/p/<k>/#``."""
    if partition < 0:
        raise ValueError(f"a partition number is >= 0, got {partition}")
    return f"{prefix}/{partition}/#"


def ingest_topic_filters(
    settings: MqttSettings, partitions: Sequence[int] | None, prefix: str = PARTITION_PREFIX
) -> tuple[str, ...]:
    """What the engine subscribes to: ``settings.topic_filter`` (``eicu/#``) without partitions;
    with them, each partition's ``eicu/p/<k>/#`` and the gateways' status topic where a broker
    leaves it unpartitioned (a gateway's status names beds of every partition)."""
    if partitions is None:
        return (settings.topic_filter,)
    return (
        *(partition_topic_filter(k, prefix) for k in partitions),
        GATEWAY_STATUS_FILTER,
    )


def ingest_consumer(
    settings: MqttSettings, partitions: Sequence[int] | None = None
) -> PartitionConsumer:
    """The engine's input: one persistent-session connection with the engine's own client id
    (its user name), reading every topic or the given partitions, acknowledging on :meth:`ack`."""
    return PartitionConsumer(
        settings,
        None,
        client_id=settings.client_id,
        topic_filter=ingest_topic_filters(settings, partitions),
    )


class PartitionConnectionLost(MqttError):
    """The consumer's connection was refused or lost. The consumer is finished: connect a new one,
    which resumes the partition's session; what was not acknowledged comes again."""


@dataclass(eq=False)
class PartitionMessage:
    """One message of a partition. ``topic`` is the gateway's own topic
    (``eicu/v1/<site>/<bed>/<type>``), ``partition_topic`` the one it was delivered on;
    ``redelivered``: the broker sent it before (MQTT DUP), so it may already be stored."""

    topic: str
    payload: bytes
    partition: int
    partition_topic: str
    redelivered: bool
    # the broker's packet identifier of a QoS 1 message; None for QoS 0 (nothing to acknowledge)
    _mid: int | None = field(repr=False, default=None)
    # :meth:`PartitionConsumer.ack` took it (its PUBACK is sent)
    acked: bool = False


class _Client(gmqtt.Client):
    """A gmqtt client that never reconnects by itself: a new connection is a new consumer."""

    async def reconnect(self, delay: bool = False) -> None:
        return None


class PartitionConsumer:
    """A persistent-session QoS 1 subscriber of one partition, acknowledging only on
    :meth:`ack`. ``settings`` give the broker, credentials and TLS; the client id is
    ``<settings.client_id>-p<partition>`` (the session belongs to the partition, so whichever
    worker holds the partition resumes it). ``topic_filter`` (one filter or several) replaces
    ``eicu/p/<k>/#``; with ``partition=None`` it must be given, and so must ``client_id``.
    A message's ``partition`` is the one its topic names (else the consumer's; -1 for none).

    A broker that sends a QoS 1 message again while it is still held here, unacknowledged (NATS
    does after its ``ack_wait``: the same packet identifier, marked DUP), is not passed on a
    second time: the message held is acknowledged under that identifier once it is durable, which
    acknowledges both. ``on_held_redelivery`` is called for each such message."""

    def __init__(
        self,
        settings: MqttSettings,
        partition: int | None,
        *,
        client_id: str | None = None,
        topic_filter: str | Sequence[str] | None = None,
        prefix: str = PARTITION_PREFIX,
        on_held_redelivery: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_held_redelivery = on_held_redelivery
        self.partition = -1 if partition is None else partition
        if topic_filter is None:
            if partition is None:
                raise ValueError("a consumer of no partition needs a topic_filter")
            topic_filter = partition_topic_filter(partition, prefix)
        filters = (topic_filter,) if isinstance(topic_filter, str) else tuple(topic_filter)
        if not filters:
            raise ValueError("a consumer needs at least one topic filter")
        self.topic_filters = filters
        self.topic_filter = ", ".join(filters)
        if client_id is None and partition is None:
            raise ValueError("a consumer of no partition needs a client_id")
        self.client_id = client_id or f"{settings.client_id}-p{partition}"
        self._strip = re.compile(rf"^{re.escape(prefix)}/(\d+)/")
        self._queue: asyncio.Queue[PartitionMessage | None] = asyncio.Queue()
        # received on this connection and not acknowledged yet
        self._pending: set[PartitionMessage] = set()
        # the packet identifiers of those messages
        self._pending_mids: set[int] = set()
        # packet identifiers acknowledged and not yet written, in order (see _write_pubacks)
        self._pubacks: list[int] = []
        self._pubacks_due: asyncio.Handle | None = None
        self._client: _Client | None = None
        self._live = False
        self._lost = False
        self._closed = False
        self._subscribed: asyncio.Future[int] | None = None
        self._gone = asyncio.Event()  # the connection was lost
        self._tasks: set[asyncio.Task[None]] = set()
        # Whether the broker held the partition's session already (CONNACK).
        self.session_present = False

    # --- connection --------------------------------------------------------------------------

    async def connect(self, timeout_s: float = 20.0) -> PartitionConsumer:
        """Connects (resuming the partition's session if the broker holds one) and subscribes.
        Raises :class:`PartitionConnectionLost` when refused or not done within ``timeout_s``."""
        if self._client is not None:
            raise RuntimeError("a PartitionConsumer connects once; make a new one to reconnect")
        s = self.settings
        context = tls_context(s)  # a TLS file that cannot be used: ConfigError, naming its key
        client = _Client(self.client_id, clean_session=False, optimistic_acknowledgement=False)
        handler: Any = getattr(client, "_package_handler", None)
        if getattr(handler, "_optimistic_acknowledgement", True) or not callable(
            getattr(handler, "_handle_qos_1_publish_packet", None)
        ):
            # A gmqtt that acknowledges on receipt would lose what a dead worker held.
            raise RuntimeError("this gmqtt version does not let PUBACKs wait for ack()")
        # QoS 1 messages come here with their packet identifier; ack() writes their PUBACKs.
        # gmqtt would run a task per message and send each PUBACK with a write of its own.
        handler._handle_qos_1_publish_packet = self._on_qos1
        if s.username is not None:
            client.set_auth_credentials(s.username, s.password)
        client.on_connect = self._on_connect
        client.on_message = self._on_qos0
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        self._client = client
        subscribed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._subscribed = subscribed

        async def handshake() -> int:
            await client.connect(
                s.host, s.port, ssl=context or False, keepalive=s.keepalive_s, version=MQTTv311
            )
            client.subscribe([gmqtt.Subscription(f, qos=1) for f in self.topic_filters])
            return await subscribed

        # gmqtt waits for a CONNACK even when the broker closed the connection instead (NATS does
        # when its JetStream cannot answer in time, e.g. just after a node died): the loss ends
        # the wait too.
        done_task = asyncio.ensure_future(handshake())
        gone_task = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait(
                {done_task, gone_task}, timeout=timeout_s, return_when="FIRST_COMPLETED"
            )
        except BaseException:  # the caller was cancelled
            done_task.cancel()
            await self._finish()
            raise
        finally:
            gone_task.cancel()
        if not done_task.done():
            done_task.cancel()
        try:
            granted = await done_task
        except (OSError, MQTTConnectError, asyncio.CancelledError) as exc:
            await self._finish()
            why = (
                "connection lost"
                if self._gone.is_set()
                else f"not done in {timeout_s} s"
                if isinstance(exc, asyncio.CancelledError)
                else "refused"
            )
            raise PartitionConnectionLost(
                f"cannot read {self.topic_filter} at {s.url}: {why} ({exc!r})"
            ) from exc
        if granted >= _SUBACK_FAILURE:
            await self.close()
            raise PartitionConnectionLost(
                f"the broker refused the subscription {self.topic_filter}"
            )
        protocol = getattr(getattr(client, "_connection", None), "_protocol", None)
        if not callable(getattr(protocol, "write_data", None)):
            # ack() writes PUBACKs there: without it nothing would ever be acknowledged
            await self.close()
            raise RuntimeError("this gmqtt version has no connection to write PUBACKs to")
        log.info("reading %s as %s", self.topic_filter, self.client_id)
        return self

    async def close(self) -> None:
        """Disconnects; the session (and every message not acknowledged) stays with the broker
        for the next consumer of the partition."""
        await self._finish()

    async def _finish(self) -> None:
        """Writes the PUBACKs of what was acknowledged (while the connection is live), closes the
        socket and ends iteration. A message this consumer did not acknowledge is never
        acknowledged by its end: the broker sends it again."""
        if self._closed:
            return
        live = self._live
        self._write_pubacks()
        self._live, self._closed = False, True
        if self._pubacks_due is not None:
            self._pubacks_due.cancel()
            self._pubacks_due = None
        self._pubacks = []
        if self._client is not None:
            if live and await self._broker_read_all(self._client):
                with contextlib.suppress(Exception):
                    await self._client._connection.close()  # its keep-alive timer
            else:
                # gmqtt closes the transport (after what was written) before it first yields.
                with contextlib.suppress(Exception):
                    await self._client.disconnect()
        self._queue.put_nowait(None)
        self._pending = set()
        self._pending_mids = set()

    @staticmethod
    async def _broker_read_all(client: _Client) -> bool:
        """Sends DISCONNECT and waits, at most DISCONNECT_WAIT_S, for the broker to close the
        connection, which it does once it has read what came before (MQTT 3.1.1, 3.14.4: the
        server closes the connection on a DISCONNECT the client has not closed it after). A
        broker that sees the session's client id again closes the old connection and drops what
        it had not read of it: without this wait, the PUBACKs written last could be lost to the
        next consumer of the session (on a busy machine, Mosquitto then sent those messages
        again). True when the broker closed it."""
        connection = getattr(client, "_connection", None)
        protocol = getattr(connection, "_protocol", None)
        if protocol is None:
            return False
        protocol.write_data(_DISCONNECT)
        try:
            await asyncio.wait_for(asyncio.shield(protocol.closed), DISCONNECT_WAIT_S)
        except Exception:  # no answer in time, or the connection failed: gmqtt closes it
            return False
        return True

    async def __aenter__(self) -> PartitionConsumer:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._live

    @property
    def unacknowledged(self) -> int:
        """Messages received on this connection and not acknowledged yet."""
        return len(self._pending)

    # --- messages ----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[PartitionMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[PartitionMessage]:
        while True:
            message = await self._queue.get()
            if message is None:
                self._queue.put_nowait(None)  # every later reader ends too
                if self._lost:
                    raise PartitionConnectionLost(f"connection to {self.settings.url} lost")
                return
            yield message

    def ack(self, message: PartitionMessage) -> bool:
        """Acknowledges ``message`` to the broker (its PUBACK), which then forgets it. Returns
        False, and does nothing, for a message of a connection that is no longer live (the broker
        sends it again) or one already acknowledged. The PUBACKs of the messages acknowledged
        in one turn of the event loop are written together, in the order acknowledged, once
        that turn is over (or by :meth:`drain`)."""
        if message.acked or message not in self._pending or not self._live:
            return False
        self._pending.discard(message)
        message.acked = True
        if message._mid is not None:
            self._pending_mids.discard(message._mid)
            self._pubacks.append(message._mid)
            if self._pubacks_due is None:
                self._pubacks_due = asyncio.get_running_loop().call_soon(self._write_pubacks)
        return True

    def _write_pubacks(self) -> None:
        self._pubacks_due = None
        mids, self._pubacks = self._pubacks, []
        connection = None if self._client is None else self._client._connection
        if not mids or not self._live or connection is None:
            return  # a lost connection: the broker sends those messages again
        pack = _PUBACK.pack
        connection._protocol.write_data(b"".join([pack(_PUBACK_TYPE, 2, mid) for mid in mids]))

    async def drain(self) -> None:
        """Writes the PUBACK of every message acknowledged so far to the socket (:meth:`ack`
        only schedules it), e.g. before a worker hands its partition over."""
        self._write_pubacks()
        await asyncio.sleep(0)

    # --- gmqtt callbacks ---------------------------------------------------------------------

    def _on_qos1(
        self, mid: int, payload: bytes, topic: str | bytes, properties: dict[str, Any]
    ) -> None:
        """gmqtt's handler of a QoS 1 PUBLISH (see :meth:`connect`): queued for the reader,
        acknowledged only by :meth:`ack`."""
        self._receive(topic, payload, properties, mid)

    def _on_qos0(
        self, client: Any, topic: str | bytes, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> None:
        """A message with nothing to acknowledge (a retained message replayed at subscription
        comes as QoS 0)."""
        self._receive(topic, payload, properties, None)

    def _receive(
        self, topic: str | bytes, payload: bytes, properties: dict[str, Any], mid: int | None
    ) -> None:
        if self._closed:
            return  # a finished consumer: never acknowledged, the broker sends it again
        redelivered = bool(properties.get("dup"))
        if mid is not None:
            if redelivered and mid in self._pending_mids:
                # sent again while the first is still held here: that one's PUBACK answers both
                if self._on_held_redelivery is not None:
                    self._on_held_redelivery()
                return
            self._pending_mids.add(mid)
        if isinstance(topic, bytes):  # not UTF-8: the ingest refuses it by its topic
            topic = topic.decode("utf-8", errors="replace")
        match = self._strip.match(topic)
        message = PartitionMessage(
            topic="eicu/" + topic[match.end() :] if match else topic,
            payload=bytes(payload),
            partition=int(match.group(1)) if match else self.partition,
            partition_topic=topic,
            redelivered=redelivered,
            _mid=mid,
        )
        self._pending.add(message)
        self._queue.put_nowait(message)

    def _on_connect(self, client: Any, flags: int, rc: int, properties: Any) -> None:
        # Live from the CONNACK on: a resumed session's messages may come before the SUBACK.
        self._live = rc == 0 and not self._closed
        self.session_present = bool(flags)

    def _on_subscribe(self, client: Any, mid: int, qos: tuple[int, ...], properties: Any) -> None:
        if self._subscribed is not None and not self._subscribed.done():
            # One granted QoS per filter: the worst decides (any refusal refuses all).
            self._subscribed.set_result(max(qos) if qos else _SUBACK_FAILURE)

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        if self._closed:
            return
        if self._live:
            log.warning("lost %s: what was not acknowledged comes again", self.topic_filter)
        self._lost = True
        self._live = False
        self._gone.set()
        task = asyncio.ensure_future(self._finish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
