"""Remote sites on the bus (docs/remote-sites.md): the site's capture stream, the hub's stream
that sources it across the leaf link, the state of that source, and the hub's reader of it.

At a site, the stream :data:`~eicu.sites.SITE_STREAM` captures every gateway subject
(``eicu.v1.>``) that the site's NATS server (a leaf node with JetStream domain ``site-<id>``)
takes in over MQTT. At the hub, stream ``SITE_<id>`` sources it through the site's JetStream API
(``$JS.site-<id>.API``): NATS copies the site's messages in order and, after a cut of the link,
resumes from the next one. :class:`SiteStreamConsumer` reads ``SITE_<id>`` with the interface
of :class:`~eicu.bus.partitioned.PartitionConsumer` (messages with their gateway topic,
acknowledged by :meth:`SiteStreamConsumer.ack` once durable), so the engine's ingest reads
either.

Errors::

    PartitionConnectionLost (eicu.bus.partitioned)  the hub's NATS cannot be reached or the
                                                    stream cannot be read; connect a new consumer
    ConfigError (eicu.errors)                       a stream exists with another configuration
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)

from eicu.bus.partitioned import PartitionConnectionLost
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.errors import ConfigError
from eicu.sites import (
    GATEWAY_SUBJECTS,
    SITE_STREAM,
    check_site_id,
    hub_stream,
    site_domain,
    site_stream_api,
)
from eicu.wire import device_time_us

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "FEED_CONSUMER",
    "SiteMessage",
    "SiteStreamConsumer",
    "SourceState",
    "connect",
    "ensure_hub_stream",
    "ensure_site_stream",
    "follow_newest",
    "keep_sources_current",
    "read_source_state",
    "resume_source_if_waiting",
    "source_state",
    "subject_to_topic",
]

log = logging.getLogger(__name__)

# How long a site keeps what it captured, and the hub what it sourced: a week of outage.
DEFAULT_MAX_AGE_S: Final = 7 * 86_400.0
# The durable consumer of ``SITE_<id>`` that the hub's feed reads.
FEED_CONSUMER: Final = "eicu-site-feed"
_NATS_ERRORS: Final = (nats.errors.Error, OSError, asyncio.TimeoutError)


async def connect(
    servers: Sequence[str],
    *,
    name: str,
    user: str | None = None,
    password: str | None = None,
    credentials_file: str | None = None,
    tls: ssl.SSLContext | None = None,
    connect_timeout_s: float = 5.0,
) -> NatsClient:
    """A NATS connection that reconnects forever (its errors logged at DEBUG, its losses at
    WARNING). :class:`PartitionConnectionLost` when no server answers at first, or one refuses
    the user."""
    refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    async def error(exc: Exception) -> None:
        log.debug("%s: NATS client: %r", name, exc)
        # nats-py reports a refused first connection as a plain error naming the violation.
        refusal = isinstance(exc, nats.errors.AuthorizationError) or (
            "Authorization Violation" in str(exc)
        )
        if refusal and not refused.done():
            refused.set_result(exc)

    async def disconnected() -> None:
        log.warning("%s: disconnected from NATS", name)

    options: dict[str, Any] = {
        "servers": list(servers),
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1.0,
        "connect_timeout": connect_timeout_s,
        "error_cb": error,
        "disconnected_cb": disconnected,
        "user": user,
        "password": password,
        "tls": tls,
        "user_credentials": credentials_file,
    }
    where = ",".join(servers)
    # nats-py retries a first connection as often as a lost one (forever here, a refused
    # password included): the first one ends at a refusal or its own deadline.
    connecting = asyncio.ensure_future(
        nats.connect(**{k: v for k, v in options.items() if v is not None})
    )
    try:
        waits: set[asyncio.Future[Any]] = {connecting, refused}
        await asyncio.wait(waits, timeout=connect_timeout_s * 2, return_when="FIRST_COMPLETED")
    finally:
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_NATS_ERRORS):
                await connecting
    if refused.done():
        raise PartitionConnectionLost(
            f"NATS at {where} refused {user or 'the connection'}: {refused.result()!r}"
        )
    if connecting.cancelled():
        raise PartitionConnectionLost(
            f"cannot connect to NATS at {where} within {connect_timeout_s * 2} s"
        )
    try:
        return connecting.result()
    except _NATS_ERRORS as exc:
        raise PartitionConnectionLost(f"cannot connect to NATS at {where}: {exc!r}") from exc


def site_stream_config(max_age_s: float, max_bytes: int | None) -> StreamConfig:
    """The site's capture stream: every gateway subject, on disk, oldest dropped first once
    ``max_age_s`` or ``max_bytes`` (None: no byte limit) is reached."""
    if max_age_s <= 0:
        raise ConfigError("EICU_SITE_MAX_AGE_S", f"must be > 0, got {max_age_s}")
    if max_bytes is not None and max_bytes <= 0:
        raise ConfigError("EICU_SITE_MAX_BYTES", f"must be > 0, got {max_bytes}")
    return StreamConfig(
        name=SITE_STREAM,
        description="eicu: everything the site's gateways and engine publish, for the hub",
        subjects=[GATEWAY_SUBJECTS],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        max_bytes=max_bytes if max_bytes is not None else -1,
        num_replicas=1,
    )


# What the hub copies from a site's stream, in two sources that run side by side over the leaf
# link, each in the site's order: the waveforms, which are most of the bytes, and everything else
# (numerics, statuses, alarm changes: a few percent of the bytes). After a cut the second
# source's backlog is across in a small part of the time the waveforms' takes, and the site's
# live numerics and alarms follow it at once instead of waiting behind the waveforms. Together
# the filters take every subject eicu uses (eicu.wire.parse_topic): the 5-token
# eicu.v1.<site>.<bed>.<kind> of each kind and everything of 6 tokens or more; a message of
# another shape is no eicu topic (the site's engine counts it as bad input) and is not copied.
BULK_SUBJECTS: Final = ("eicu.v1.*.*.waveform",)
PRIORITY_SUBJECTS: Final = (
    "eicu.v1.*.*.numerics",
    "eicu.v1.*.*.status",
    "eicu.v1.*.*.alarms",
    "eicu.v1.*.*.*.>",
)


SOURCE_SUBJECTS: Final = (PRIORITY_SUBJECTS, BULK_SUBJECTS)


def _site_sources(site_id: str) -> list[StreamSource]:
    """The two sources, in the order of :data:`SOURCE_SUBJECTS`."""
    external = ExternalStream(api=site_stream_api(site_id))
    return [
        StreamSource(
            name=SITE_STREAM,
            external=external,
            subject_transforms=[SubjectTransform(src=f, dest="") for f in subjects],
        )
        for subjects in SOURCE_SUBJECTS
    ]


def _starting_after(config: StreamConfig, copied: Sequence[int]) -> StreamConfig:
    """``config`` with each source (in the order of :data:`SOURCE_SUBJECTS`) starting after the
    newest site sequence the hub holds of its subjects (``copied``; 0: none, NATS's choice)."""
    sources = [
        dataclasses.replace(source, opt_start_seq=after + 1) if after else source
        for source, after in zip(config.sources or [], copied, strict=True)
    ]
    return dataclasses.replace(config, sources=sources)


def hub_stream_config(site_id: str, max_age_s: float) -> StreamConfig:
    """The hub's ``SITE_<id>``: the site's capture stream sourced through its domain's API, its
    numerics, statuses and alarms in one source and its waveforms in another."""
    if max_age_s <= 0:
        raise ConfigError("EICU_SITE_MAX_AGE_S", f"must be > 0, got {max_age_s}")
    return StreamConfig(
        name=hub_stream(site_id),
        description=f"eicu: the data of remote site {site_id}, sourced from its leaf node",
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        sources=_site_sources(site_id),
    )


def _source_key(source: StreamSource) -> tuple[object, ...]:
    transforms = tuple((t.src, t.dest) for t in source.subject_transforms or [])
    api = source.external.api if source.external else None
    return (source.name, api, source.filter_subject or None, transforms)


async def _ensure(nc: NatsClient, config: StreamConfig) -> None:
    js = nc.jetstream()
    try:
        info = await js.stream_info(str(config.name))
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        log.info("stream %s created", config.name)
        return
    have = info.config
    have_sources = [_source_key(s) for s in have.sources or []]
    want_sources = [_source_key(s) for s in config.sources or []]
    if have_sources != want_sources and _one_whole_source(have, config):
        await _split_source(nc, config)
        return
    if have_sources != want_sources or list(have.subjects or []) != list(config.subjects or []):
        raise ConfigError(
            "stream",
            f"stream {config.name} exists with other subjects or sources "
            f"({have.subjects}, {[s.name for s in have.sources or []]}): not one of eicu's",
        )
    if (have.max_age, have.max_bytes) != (config.max_age, config.max_bytes):
        await js.update_stream(config)
        log.info("stream %s: limits updated", config.name)


def _one_whole_source(have: StreamConfig, want: StreamConfig) -> bool:
    """``have`` sources the same site stream as ``want`` in one source of every subject (a hub
    stream made before its sources were split)."""
    sources = have.sources or []
    wanted = want.sources or []
    if len(sources) != 1 or not wanted:
        return False
    (one,) = sources
    key = _source_key(one)
    return key[2] is None and key[3] == () and key[:2] == _source_key(wanted[0])[:2]


async def _split_source(nc: NatsClient, config: StreamConfig) -> None:
    """Replaces a hub stream's one source by ``config``'s, each starting after the newest site
    message of its subjects the stream holds: nothing copied twice, nothing left out."""
    js = nc.jetstream()
    copied = await _copied_by_source(js, str(config.name))
    await js.update_stream(_starting_after(config, copied))
    log.info("stream %s: its source split in two, after site messages %s", config.name, copied)


async def ensure_site_stream(
    nc: NatsClient, *, max_age_s: float = DEFAULT_MAX_AGE_S, max_bytes: int | None = None
) -> None:
    """Creates the site's capture stream on the site's NATS server (``nc``), or brings its
    limits up to date; :class:`ConfigError` when a stream of that name captures something else."""
    await _ensure(nc, site_stream_config(max_age_s, max_bytes))


async def ensure_hub_stream(
    nc: NatsClient, site_id: str, *, max_age_s: float = DEFAULT_MAX_AGE_S
) -> None:
    """Creates ``SITE_<id>`` on the hub's NATS server (``nc``), sourcing the site's stream."""
    await _ensure(nc, hub_stream_config(site_id, max_age_s))


@dataclass(frozen=True, slots=True)
class SourceState:
    """What the hub's ``SITE_<id>`` says about its sources: ``silent_s``, the seconds since a
    source last heard from the site (the most recent of the sources; None: never); ``lag``,
    messages the site holds that the hub has not copied yet (as of the last contact, all sources
    together); ``error``: a source's error, if any ("no source" while they are being set up
    again); ``most_silent_s``: the seconds since the source heard from the site least recently
    (None when one never did); ``unstored``, messages the hub holds that ``eicu site-feed`` has
    not stored yet; ``oldest_unstored_us``, the device time of the oldest of them (None: none,
    or its time unknown); ``unstored_behind_s``, how far that oldest one lies behind the newest
    message of its own subject the hub holds, by their device times (one device's clock, so a
    monitor's wrong clock does not count; None when not known)."""

    site_id: str
    silent_s: float | None
    lag: int
    error: str | None
    messages: int
    most_silent_s: float | None = None
    unstored: int = 0
    oldest_unstored_us: int | None = None
    unstored_behind_s: float | None = None


def _silent_s(active_ns: int | None) -> float | None:
    return None if active_ns is None or active_ns < 0 else active_ns / 1e9


async def source_state(nc: NatsClient, site_id: str, *, unstored: bool = False) -> SourceState:
    """The state of the hub's copy of one site (``nc``: the hub's NATS); with ``unstored``,
    what the feed has not stored of it too (a few more requests)."""
    info = await nc.jetstream().stream_info(hub_stream(site_id))
    sources = info.sources or []
    if not sources:  # between the two updates that set a source up again, or never set up
        return SourceState(site_id, None, 0, "no source", int(info.state.messages))
    silent = [_silent_s(source.active) for source in sources]
    known = [x for x in silent if x is not None]
    error = None
    for source in sources:
        if source.error is not None:
            error = getattr(source.error, "description", None) or str(source.error)
            break
    pending, oldest_us, behind_s = (
        await _unstored(nc.jetstream(), site_id) if unstored else (0, None, None)
    )
    return SourceState(
        site_id,
        min(known) if known else None,
        sum(int(source.lag or 0) for source in sources),
        error,
        int(info.state.messages),
        None if None in silent else max(known),
        pending,
        oldest_us,
        behind_s,
    )


# How many messages after the feed's acknowledged floor are read for a device time (statuses
# and alarm changes may carry none).
_TIMED_LOOKAHEAD: Final = 8


async def _unstored(js: Any, site_id: str) -> tuple[int, int | None, float | None]:
    """Messages of the hub's ``SITE_<id>`` the feed has not stored (acknowledged) yet, the
    device time of the oldest of them, and how far it lies behind the newest message of its
    subject at the hub: what a page must say is still to come."""
    try:
        return await _read_unstored(js, hub_stream(site_id))
    except nats.js.errors.NotFoundError:
        return 0, None, None  # no feed has started on this stream
    except _NATS_ERRORS as exc:
        # The link's own state is read apart: a slow answer here costs only this part.
        log.warning("what %s holds unstored not read: %r", hub_stream(site_id), exc)
        return 0, None, None


async def _read_unstored(js: Any, stream: str) -> tuple[int, int | None, float | None]:
    info = await js.consumer_info(stream, FEED_CONSUMER)
    unstored = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    if unstored == 0:
        return 0, None, None
    first = int(info.ack_floor.stream_seq or 0) + 1
    for seq in range(first, first + _TIMED_LOOKAHEAD):
        try:
            msg = await js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            continue  # deleted, or past the end
        if msg.subject is None or msg.data is None:
            continue
        oldest = device_time_us(subject_to_topic(msg.subject), msg.data)
        if oldest is None:
            continue
        newest_msg = await js.get_last_msg(stream, msg.subject)
        newest = device_time_us(subject_to_topic(msg.subject), newest_msg.data or b"")
        behind = None if newest is None else max(0.0, (newest - oldest) / 1e6)
        return unstored, oldest, behind
    return unstored, None, None


async def read_source_state(nc: NatsClient, site_id: str, *, timeout_s: float = 2.0) -> SourceState:
    """:func:`source_state` within ``timeout_s``; :class:`PartitionConnectionLost` when the
    hub's NATS does not answer or has no ``SITE_<id>`` (the state of the link is then not
    known)."""
    try:
        return await asyncio.wait_for(source_state(nc, site_id, unstored=True), timeout_s)
    except _NATS_ERRORS as exc:
        raise PartitionConnectionLost(f"the state of {hub_stream(site_id)}: {exc!r}") from exc


async def _newest_site_sequence(js: Any, stream: str, subjects: Sequence[str], hub: bool) -> int:
    """The newest message of ``subjects`` in ``stream``: its sequence in the site's stream (at
    the hub, from ``Nats-Stream-Source``; at the site, its own); 0 for none."""
    newest = 0
    for subject in subjects:
        try:
            msg = await js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            continue
        seq = (_site_sequence(msg.headers) or 0) if hub else int(msg.seq or 0)
        newest = max(newest, seq)
    return newest


async def _copied_by_source(js: Any, stream: str) -> list[int]:
    """The newest site sequence the hub's ``stream`` holds of each source's subjects."""
    return [
        await _newest_site_sequence(js, stream, subjects, hub=True) for subjects in SOURCE_SUBJECTS
    ]


async def resume_source_if_waiting(
    nc: NatsClient, site_id: str, *, silent_after_s: float = 15.0, timeout_s: float = 2.0
) -> bool:
    """Sets the hub's sources of the site up again when NATS is waiting to retry one while the
    link is back: a source silent for over ``silent_after_s``, the site's stream reachable
    through its domain and holding messages of that source's subjects the hub has not copied.
    A source whose setup failed is retried on NATS's own back-off, which grows by 10 s a
    failure up to 2 minutes (docs/remote-sites.md); removing the sources and adding them again
    sets them up at once, each from the sequence after the last one of its own the hub's stream
    holds. True when it did."""
    state = await source_state(nc, site_id)
    if state.most_silent_s is not None and state.most_silent_s <= silent_after_s:
        return False
    hub_js = nc.jetstream()
    hub_info = await hub_js.stream_info(hub_stream(site_id))
    try:
        site_js = nc.jetstream(domain=site_domain(site_id), timeout=timeout_s)
        await site_js.stream_info(SITE_STREAM)
    except _NATS_ERRORS:
        return False  # the link is still down: nothing to resume from
    # A source's state does not say which of them it is (the server lists them in no set
    # order): the copy is behind when the site holds a message of some source's subjects newer
    # than the newest of them the hub holds.
    copied = await _copied_by_source(hub_js, hub_stream(site_id))
    at_site = [
        await _newest_site_sequence(site_js, SITE_STREAM, subjects, hub=False)
        for subjects in SOURCE_SUBJECTS
    ]
    if not any(a > c for a, c in zip(at_site, copied, strict=True)):
        return False  # nothing new at the site: a quiet site, not a waiting source
    # The stream as eicu made it (the server's own additions to its configuration left out),
    # each source starting after the newest message of its own subjects the hub holds (what
    # NATS would find itself, also where a source has copied nothing yet since it was split).
    config = hub_stream_config(site_id, hub_info.config.max_age or DEFAULT_MAX_AGE_S)
    config = _starting_after(config, copied)
    log.warning(
        "site %s: its link is back and the hub's copy is %s s behind; setting its sources up again",
        site_id,
        "?" if state.most_silent_s is None else f"{state.most_silent_s:.0f}",
    )
    await hub_js.update_stream(dataclasses.replace(config, sources=[]))
    await hub_js.update_stream(config)
    return True


async def keep_sources_current(
    nc: NatsClient,
    site_id: str,
    *,
    period_s: float = 5.0,
    silent_after_s: float = 15.0,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Every ``period_s``, :func:`resume_source_if_waiting`; until cancelled."""
    while True:
        try:
            await resume_source_if_waiting(nc, site_id, silent_after_s=silent_after_s)
        except _NATS_ERRORS as exc:
            log.debug("site %s: source not checked (%r)", site_id, exc)
        await clock.sleep(period_s)


async def follow_newest(
    nc: NatsClient,
    site_id: str,
    subject: str,
    on_message: Callable[[str, bytes], Awaitable[None] | None],
    idle_heartbeat_s: float = 5.0,
    *,
    new_only: bool = False,
) -> Any:
    """Follows ``subject`` in the hub's ``SITE_<id>`` from the newest message of each subject it
    matches (deliver policy "last per subject"; with ``new_only``, from the next message
    appended), then every message appended after, through an ordered, ephemeral consumer (it
    sets itself up again after a gap, and leaves nothing behind on the server).
    ``on_message(subject, payload)`` for each. Returns the subscription (its ``unsubscribe``
    ends it); PartitionConnectionLost when the stream cannot be read."""
    js = nc.jetstream()

    async def deliver(msg: Msg) -> None:
        result = on_message(msg.subject, bytes(msg.data))
        if result is not None:
            await result

    try:
        return await js.subscribe(
            subject,
            stream=hub_stream(site_id),
            cb=deliver,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW if new_only else DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=idle_heartbeat_s,
        )
    except _NATS_ERRORS as exc:
        raise PartitionConnectionLost(
            f"cannot follow {subject} in {hub_stream(site_id)}: {exc!r}"
        ) from exc


def subject_to_topic(subject: str) -> str:
    """The MQTT topic of a NATS subject, as NATS's MQTT listener converts them: a level
    separator ``/`` is ``.``, a ``.`` inside a level is ``//``."""
    return subject.replace("//", "\0").replace(".", "/").replace("\0", ".")


@dataclass(eq=False)
class SiteMessage:
    """One message of a site's stream at the hub: ``topic`` the gateway's (``eicu/v1/...``),
    ``site_seq`` its sequence in the site's capture stream, ``redelivered`` when JetStream sent
    it before (it may already be stored)."""

    topic: str
    payload: bytes
    site_seq: int | None
    redelivered: bool
    _msg: Msg = field(repr=False)
    acked: bool = False
    partition: int = -1


class SiteStreamConsumer:
    """Reads the hub's ``SITE_<id>`` through the durable pull consumer ``eicu-site-feed``
    (explicit acknowledgement, at most ``max_ack_pending`` held), in the site's order. A message
    is acknowledged only by :meth:`ack`; one not acknowledged within ``ack_wait_s`` comes again.
    Messages whose topic names another site are acknowledged and counted in ``wrong_site``,
    never passed on: a site speaks for its own beds only."""

    def __init__(
        self,
        nc: NatsClient,
        site_id: str,
        *,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 4096,
        batch: int = 256,
    ) -> None:
        self.site_id = check_site_id(site_id)
        self.stream = hub_stream(site_id)
        self.topic_filter = f"{self.stream} ({FEED_CONSUMER})"
        self.client_id = FEED_CONSUMER
        self._nc = nc
        self._ack_wait_s = ack_wait_s
        self._max_ack_pending = max_ack_pending
        self._batch = batch
        self._queue: asyncio.Queue[SiteMessage | None] = asyncio.Queue(maxsize=2 * batch)
        self._acking: set[asyncio.Task[None]] = set()
        self._fetcher: asyncio.Task[None] | None = None
        self._closed = False
        self._lost: BaseException | None = None
        self._ended = False  # the fetcher has stopped (its end marker may not fit the queue)
        self._held = 0  # passed on and not acknowledged
        self.wrong_site = 0
        self.session_present = True

    async def connect(self, timeout_s: float = 20.0) -> SiteStreamConsumer:
        """Creates (or finds) the durable consumer and starts fetching."""
        js = self._nc.jetstream(timeout=timeout_s)
        config = ConsumerConfig(
            durable_name=FEED_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait_s,
            max_ack_pending=self._max_ack_pending,
        )
        try:
            subscription = await js.pull_subscribe(
                "", durable=FEED_CONSUMER, stream=self.stream, config=config
            )
        except _NATS_ERRORS as exc:
            raise PartitionConnectionLost(f"cannot read stream {self.stream}: {exc!r}") from exc
        self._fetcher = asyncio.create_task(self._fetch(subscription), name=f"feed[{self.site_id}]")
        return self

    async def _fetch(self, subscription: Any) -> None:
        try:
            while not self._closed:
                try:
                    batch = await subscription.fetch(self._batch, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    # nothing new within the second (nats-py raises either, depending on where
                    # its wait ended)
                    continue
                for msg in batch:
                    message = self._message(msg)
                    if message is not None:
                        await self._queue.put(message)
        except asyncio.CancelledError:
            raise
        except _NATS_ERRORS as exc:
            self._lost = exc
        finally:
            self._ended = True
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)

    def _message(self, msg: Msg) -> SiteMessage | None:
        topic = subject_to_topic(msg.subject)
        parts = topic.split("/")
        metadata = msg.metadata
        message = SiteMessage(
            topic=topic,
            payload=bytes(msg.data),
            site_seq=_site_sequence(msg.headers),
            redelivered=metadata.num_delivered > 1 if metadata.num_delivered else False,
            _msg=msg,
        )
        if len(parts) < 3 or parts[2] != self.site_id:
            self.wrong_site += 1
            log.warning("site %s sent a message for another site; not taken", self.site_id)
            self._schedule(msg.ack())
            return None
        return message

    def __aiter__(self) -> AsyncIterator[SiteMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[SiteMessage]:
        while True:
            # a fetcher that ended on a full queue left no end marker: the empty queue is its end
            message = None if self._ended and self._queue.empty() else await self._queue.get()
            if message is None:
                self._queue.put_nowait(None)
                if self._lost is not None:
                    raise PartitionConnectionLost(f"reading {self.stream}: {self._lost!r}")
                return
            self._held += 1
            yield message

    def ack(self, message: SiteMessage) -> bool:
        """Acknowledges ``message`` to JetStream (its data is durable). False when it was
        acknowledged already or the consumer is closed (JetStream sends it again)."""
        if message.acked or self._closed:
            return False
        message.acked = True
        self._held -= 1
        self._schedule(message._msg.ack())
        return True

    def _schedule(self, ack: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(ack)
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def drain(self) -> None:
        """Waits until every acknowledgement given so far is sent to the server."""
        while self._acking:
            await asyncio.gather(*list(self._acking), return_exceptions=True)
        with contextlib.suppress(*_NATS_ERRORS):
            await self._nc.flush(timeout=5)

    async def close(self) -> None:
        """Stops fetching; what was not acknowledged comes again to the next reader."""
        if self._closed:
            return
        self._closed = True
        if self._fetcher is not None:
            self._fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetcher
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    @property
    def connected(self) -> bool:
        return not self._closed and self._nc.is_connected

    @property
    def unacknowledged(self) -> int:
        """Messages passed on by this consumer and not acknowledged yet."""
        return self._held


def _site_sequence(headers: dict[str, str] | None) -> int | None:
    """The sequence in the site's stream, from ``Nats-Stream-Source`` (``<stream>:<hash>
    <sequence> ...``) that JetStream adds to every sourced message."""
    if not headers:
        return None
    value = headers.get("Nats-Stream-Source")
    if not value:
        return None
    parts = value.split()
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return None
