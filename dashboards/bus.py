"""The dashboard fed by the bus (``eicu dashboard``): the beds' snapshots the workers publish on
``eicu/state/<site>`` (eicu.live), the links of remote sites the hub's feed publishes on
``eicu/state/<site>/link`` (eicu.site_link; retained, so they are known at once), the waveforms
of the beds a page shows (subscribed while it shows them), and alarm commands sent to each bed's
owner with their answers.

One MQTT connection per dashboard process (``BusBeds.run``), reopened with a backoff; while it is
down the snapshots age and every view shows them as stale as they are (a bed whose snapshot is
older than its silence limit is stale). A message that cannot be read is counted by reason and
costs nothing else.

Alarm history and review come from the store (the workers copy every alarm event there as soon
as it is recorded); acknowledgements and pauses are commands on
``eicu/v1/<site>/<bed>/alarms/cmd``, which the broker brings to the bed's owner (on NATS through
the partition mappings), answered on this process's ``eicu/reply/<id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from eicu import bus, wire
from eicu.alarm_model import AlarmEvent
from eicu.alarms.policy import AlarmPolicy
from eicu.alarms.state import Alarm
from eicu.backoff import Backoff
from eicu.config import MqttSettings
from eicu.errors import PayloadError
from eicu.live import (
    STATE_FILTER,
    BedSnapshot,
    Mark,
    Ring,
    SignalTrace,
    bed_of_live_waveform_topic,
    decode_batch,
    live_waveform_topic,
    site_of_state_topic,
)
from eicu.models import AlarmCommand, BedKey, WaveformFrame
from eicu.site_link import LINK_FILTER, SiteLink, decode_link, site_of_link_topic
from eicu.store.base import Store

log = logging.getLogger(__name__)

MARKS_KEPT: Final = 256  # per bed: the marks a page can still ask for
RING_SECONDS: Final = 30.0  # live waveform kept per signal of a shown bed
DELAY_FRESH_S: Final = 5.0  # an owner's input delay counts while its snapshots are this fresh
ANSWER_WAIT_S: Final = 5.0  # how long a command waits for its owner's answer
HISTORY_BACK_US: Final = 24 * 3600 * 1_000_000  # the alarm history a dashboard shows
HISTORY_CACHE_S: Final = 1.0
PARTITION_WAVEFORM: Final = "eicu/p/+/v1/{site}/{bed}/waveform"  # as NATS's mappings put it


def _now_us() -> int:
    return time.time_ns() // 1000


class BusMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "eicu_dashboard_bus_messages",
            "Messages the dashboard read from the bus, by kind (state, waveform, answer)",
            ["kind"],
            registry=registry,
        )
        self.rejected = Counter(
            "eicu_dashboard_bus_rejected",
            "Messages from the bus the dashboard could not read, by reason",
            ["reason"],
            registry=registry,
        )
        self.beds = Gauge(
            "eicu_dashboard_beds", "Beds with a snapshot in this dashboard", registry=registry
        )
        self.connected = Gauge(
            "eicu_dashboard_bus_connected", "1 while the bus connection is up", registry=registry
        )


class BusBeds:
    """:class:`eicu.live.LiveBeds` from the bus (see the module)."""

    def __init__(
        self,
        settings: MqttSettings,
        registry: CollectorRegistry,
        *,
        backoff: Backoff | None = None,
        answer_wait_s: float = ANSWER_WAIT_S,
    ) -> None:
        self._settings = settings
        self.reply_topic = wire.reply_topic(settings.client_id)
        self._backoff = backoff or Backoff(0.5, 10.0)
        self._answer_wait_s = answer_wait_s
        self.metrics = BusMetrics(registry)
        self._snaps: dict[BedKey, BedSnapshot] = {}
        self._links: dict[str, SiteLink] = {}
        self._marks: dict[BedKey, deque[Mark]] = {}
        self._traces: dict[BedKey, dict[str, SignalTrace]] = {}
        self._watching: dict[BedKey, int] = {}
        self._answers: dict[str, asyncio.Future[tuple[list[AlarmEvent], str | None, str]]] = {}
        self._client: bus.Client | None = None
        self._changes: asyncio.Queue[tuple[str, BedKey]] = asyncio.Queue()
        self.connected = asyncio.Event()
        # Other readers of this connection (the consult relay): (topic filter, prefix, handler)
        self._readers: list[tuple[str, str, Callable[[str, bytes], Awaitable[None]]]] = []

    def add_reader(
        self, topic_filter: str, prefix: str, handler: Callable[[str, bytes], Awaitable[None]]
    ) -> None:
        """Also read ``topic_filter`` (QoS 1) on this connection: messages on topics starting
        with ``prefix`` go to ``handler`` (awaited in order; what it raises is counted and
        logged like any message that cannot be read). Add readers before :meth:`run`."""
        self._readers.append((topic_filter, prefix, handler))

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool:
        """Publish on this process's connection; False while the bus is not connected or the
        publish fails (nothing is queued)."""
        client = self._client
        if client is None:
            return False
        try:
            await asyncio.wait_for(client.publish(topic, payload, qos=qos, retain=retain), 5.0)
        except (bus.MqttError, OSError, TimeoutError) as exc:
            log.warning("dashboard: cannot publish on %s: %r", topic[:120], exc)
            return False
        return True

    # -- LiveBeds

    @property
    def alarms_available(self) -> bool:
        """Whether the owners judge alarms: yes until every snapshot says it judges none (the
        beds of remote sites, judged at the site, say so; each row tells its own)."""
        return not self._snaps or any(s.alarms is not None for s in self._snaps.values())

    def snapshots(self, now_us: int) -> list[BedSnapshot]:
        return list(self._snaps.values())

    def snapshot(self, bed: BedKey, now_us: int) -> BedSnapshot | None:
        return self._snaps.get(bed)

    def traces(self, bed: BedKey) -> Mapping[str, SignalTrace]:
        return self._traces.get(bed, {})

    def marks(self, bed: BedKey, after_seq: int) -> tuple[list[Mark], int]:
        kept = self._marks.get(bed)
        if not kept or kept[-1].seq <= after_seq:
            return [], after_seq
        return [m for m in kept if m.seq > after_seq], kept[-1].seq

    def watch(self, bed: BedKey) -> None:
        self._watching[bed] = self._watching.get(bed, 0) + 1
        if self._watching[bed] == 1:
            self._changes.put_nowait(("watch", bed))

    def unwatch(self, bed: BedKey) -> None:
        left = self._watching.get(bed, 0) - 1
        if left > 0:
            self._watching[bed] = left
            return
        self._watching.pop(bed, None)
        self._traces.pop(bed, None)
        self._changes.put_nowait(("unwatch", bed))

    def input_delay_us(self, now_us: int) -> int | None:
        """The worst input delay among the owners heard from in the last DELAY_FRESH_S."""
        fresh = [
            s.input_delay_us
            for s in self._snaps.values()
            if s.input_delay_us is not None and now_us - s.taken_us <= DELAY_FRESH_S * 1e6
        ]
        return max(fresh, default=None)

    def sites(self) -> set[str]:
        return {k.site for k in self._snaps}

    def site_links(self) -> Mapping[str, SiteLink]:
        return self._links

    def starting(self) -> str | None:
        if self._snaps:
            return None
        if not self.connected.is_set():
            return f"not connected to the bus ({self._settings.url}) yet"
        return "waiting for the engines' first bed state"

    # -- commands

    async def command(self, cmd: AlarmCommand) -> tuple[list[AlarmEvent], str | None, str]:
        """Send ``cmd`` to its bed's owner and wait for the answer: (events, error, detail).
        TimeoutError when none comes in time (or the bus is down)."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise TimeoutError("the bus is not connected")
        future = asyncio.get_running_loop().create_future()
        self._answers[cmd.cmd_id] = future
        try:
            async with asyncio.timeout(self._answer_wait_s):
                topic = wire.alarm_command_topic(cmd.bed)
                await client.publish(topic, wire.encode_alarm_command(cmd), qos=1)
                return await future
        except TimeoutError as exc:
            raise TimeoutError(f"no answer from the owner of {cmd.bed} in time") from exc
        finally:
            self._answers.pop(cmd.cmd_id, None)

    # -- reading the bus

    def handle(self, topic: str, payload: bytes, received_us: int) -> None:
        """One message from the bus; what cannot be read is counted and logged, nothing else."""
        try:
            if site_of_state_topic(topic) is not None:
                self._state(payload)
                self.metrics.messages.labels(kind="state").inc()
            elif (site := site_of_link_topic(topic)) is not None:
                self._link(site, topic, payload)
                self.metrics.messages.labels(kind="link").inc()
            elif topic == self.reply_topic:
                cmd_id, events, error, detail = wire.decode_command_answer(payload)
                self.metrics.messages.labels(kind="answer").inc()
                future = self._answers.get(cmd_id)
                if future is not None and not future.done():
                    future.set_result((events, error, detail))
            elif topic.endswith("/waveform"):
                self._waveform(topic, payload, received_us)
                self.metrics.messages.labels(kind="waveform").inc()
            else:
                raise PayloadError("wrong_topic", f"not a topic a dashboard reads: {topic[:120]}")
        except PayloadError as exc:
            self.metrics.rejected.labels(reason=exc.reason).inc()
            log.warning("dashboard: a message on %s not read: %s", topic[:120], exc.detail)
        except Exception:  # a fault in reading one message costs the others nothing
            self.metrics.rejected.labels(reason="internal_error").inc()
            log.exception("dashboard: a message on %s not read", topic[:120])

    async def _read_other(
        self, handler: Callable[[str, bytes], Awaitable[None]], topic: str, payload: bytes
    ) -> None:
        try:
            await handler(topic, payload)
            self.metrics.messages.labels(kind="other").inc()
        except PayloadError as exc:
            self.metrics.rejected.labels(reason=exc.reason).inc()
            log.warning("dashboard: a message on %s not read: %s", topic[:120], exc.detail)
        except Exception:
            self.metrics.rejected.labels(reason="internal_error").inc()
            log.exception("dashboard: a message on %s not read", topic[:120])

    def _state(self, payload: bytes) -> None:
        for snap in decode_batch(payload):
            old = self._snaps.get(snap.bed)
            if old is not None and snap.taken_us < old.taken_us:
                continue  # an older owner's late word (a partition that moved)
            self._snaps[snap.bed] = snap
            if snap.marks:
                kept = self._marks.setdefault(snap.bed, deque(maxlen=MARKS_KEPT))
                last = kept[-1].seq if kept else 0
                if snap.marks_total < last:
                    kept.clear()  # a new owner counts its marks from the start
                    last = 0
                kept.extend(m for m in snap.marks if m.seq > last)
        self.metrics.beds.set(len(self._snaps))

    def _link(self, site: str, topic: str, payload: bytes) -> None:
        """A site's link report; an empty one (a retained report cleared) forgets the site."""
        if not payload:
            self._links.pop(site, None)
            return
        link = decode_link(topic, payload)
        old = self._links.get(site)
        if old is None or link.checked_us >= old.checked_us:
            self._links[site] = link

    def _waveform(self, topic: str, payload: bytes, received_us: int) -> None:
        parts = topic.split("/")
        if len(parts) == 7 and parts[:2] == ["eicu", "p"]:
            topic = "eicu/" + "/".join(parts[3:])  # a partition's view of the gateway topic
        elif (remote := bed_of_live_waveform_topic(topic)) is not None:
            topic = wire.waveform_topic(remote)  # a remote site's, passed on by the hub's feed
        frame = wire.decode(topic, payload, received_us)
        if not isinstance(frame, WaveformFrame):
            raise PayloadError("wrong_topic", f"not a waveform: {topic[:120]}")
        traces = self._traces.get(frame.bed)
        if traces is None:
            return  # no page shows it any more
        for block in frame.blocks:
            trace = traces.get(block.signal)
            if trace is None or trace.fs_hz != block.fs_hz:
                trace = SignalTrace(block.fs_hz, Ring(int(RING_SECONDS * block.fs_hz)))
                traces[block.signal] = trace
            trace.ring.extend(block.physical())
            n = block.samples.shape[0]
            trace.last_t_us = frame.t0_us + block.t_offset_us + int((n - 1) * 1e6 / block.fs_hz)

    @staticmethod
    def _waveform_filters(bed: BedKey) -> list[str]:
        return [
            wire.waveform_topic(bed),
            PARTITION_WAVEFORM.format(site=bed.site, bed=bed.bed),
            live_waveform_topic(bed),  # a remote site's, passed on by the hub's feed
        ]

    async def run(self) -> None:
        """Read the bus until cancelled, reconnecting with the backoff."""
        s = self._settings
        while True:
            try:
                async with bus.Client(s, timeout=10.0, clean_session=True) as client:
                    await client.subscribe(
                        [(STATE_FILTER, 0), (LINK_FILTER, 1), (self.reply_topic, 1)]
                    )
                    for topic_filter, _, _ in self._readers:
                        await client.subscribe(topic_filter, qos=1)
                    for bed in list(self._watching):
                        self._traces.setdefault(bed, {})
                        await client.subscribe([(f, 0) for f in self._waveform_filters(bed)])
                    self._client = client
                    self.connected.set()
                    self.metrics.connected.set(1)
                    self._backoff.reset()
                    log.info("dashboard reading the beds' state on %s", s.url)
                    changes = asyncio.create_task(self._follow_watches(client))
                    try:
                        async for message in client.messages:
                            payload = message.payload
                            if not isinstance(payload, bytes | bytearray):
                                continue
                            topic = message.topic.value
                            reader = next(
                                (r for r in self._readers if topic.startswith(r[1])), None
                            )
                            if reader is not None:
                                await self._read_other(reader[2], topic, bytes(payload))
                                continue
                            self.handle(topic, bytes(payload), _now_us())
                    finally:
                        changes.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await changes
            except (bus.MqttError, OSError, TimeoutError) as exc:
                delay = self._backoff.next_s()
                log.warning("dashboard lost the bus (%s); again in %.1f s", exc, delay)
            else:
                delay = self._backoff.next_s()
            finally:
                self._client = None
                self.connected.clear()
                self.metrics.connected.set(0)
                for future in self._answers.values():
                    if not future.done():
                        future.set_exception(TimeoutError("the bus connection was lost"))
            await asyncio.sleep(delay)

    async def _follow_watches(self, client: bus.Client) -> None:
        """Subscribe to a bed's waveforms while a page shows it."""
        while True:
            change, bed = await self._changes.get()
            filters = self._waveform_filters(bed)
            if change == "watch":
                self._traces.setdefault(bed, {})
                await client.subscribe([(f, 0) for f in filters])
            elif bed not in self._watching:
                await client.unsubscribe(filters)


class BusDesk:
    """:class:`eicu.live.AlarmDesk` of a dashboard fed by the bus: live alarms from the beds'
    snapshots, history from the store, changes as commands to the beds' owners."""

    def __init__(self, beds: BusBeds, store: Store, policy: AlarmPolicy) -> None:
        self._beds = beds
        self._store = store
        self._policy = policy
        self._history: tuple[float, list[AlarmEvent]] = (-1e9, [])

    @property
    def policy(self) -> AlarmPolicy:
        return self._policy

    def policy_for(self, bed: BedKey) -> AlarmPolicy:
        return self._policy

    def alarms(self) -> list[Alarm]:
        return [a for s in self._beds.snapshots(_now_us()) for a in s.alarms or ()]

    def alarm(self, alarm_id: str) -> Alarm:
        for alarm in self.alarms():
            if alarm.alarm_id == alarm_id:
                return alarm
        raise KeyError(alarm_id)

    async def recent(self, limit: int) -> list[AlarmEvent]:
        at, events = self._history
        if time.monotonic() - at > HISTORY_CACHE_S:
            now = _now_us()
            rows = await self._store.alarm_events(now - HISTORY_BACK_US, now + 600_000_000)
            events = [r.event for r in rows]
            self._history = (time.monotonic(), events)
        return events[-limit:]

    async def events_since(self, start_us: int) -> list[AlarmEvent]:
        rows = await self._store.alarm_events(start_us, _now_us() + 600_000_000)
        return [r.event for r in rows]

    async def _send(self, cmd: AlarmCommand) -> list[AlarmEvent]:
        events, error, detail = await self._beds.command(cmd)
        if error == "not_live":
            raise KeyError(cmd.alarm_id or str(cmd.bed))
        if error is not None:
            raise ValueError(detail or error)
        self._history = (-1e9, [])  # the next history read sees the change
        return events

    async def acknowledge(self, alarm_id: str, user: str, now_us: int) -> list[AlarmEvent]:
        bed = self.alarm(alarm_id).bed
        cmd = AlarmCommand(bed, "ack", alarm_id, user, uuid.uuid4().hex, self._beds.reply_topic)
        return await self._send(cmd)

    async def pause(
        self, target: BedKey | str, user: str, now_us: int, duration_s: float
    ) -> list[AlarmEvent]:
        if isinstance(target, BedKey):
            bed, alarm_id = target, None
        else:
            bed, alarm_id = self.alarm(target).bed, target
        cmd = AlarmCommand(
            bed, "pause", alarm_id, user, uuid.uuid4().hex, self._beds.reply_topic, duration_s
        )
        return await self._send(cmd)
