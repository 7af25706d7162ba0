"""The engine's beds as the dashboard reads them (eicu.live): snapshots taken from the engine's
memory, for a dashboard in the same process (``eicu serve``, ``eicu demo``), and the publisher
that puts them on the bus for dashboards in processes of their own (``eicu worker``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from eicu import bus
from eicu.alarms.state import Alarm
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.config import MqttSettings
from eicu.live import BedSnapshot, Mark, SignalTrace, batches, encode_batch
from eicu.models import BedKey
from eicu.site_link import SiteLink
from ingest.scores import BedScores
from ingest.signals import Derived
from ingest.state import BedState

if TYPE_CHECKING:
    from ingest.engine import Engine

log = logging.getLogger(__name__)

MARKS_IN_SNAPSHOT = 64  # the newest marks a published snapshot carries (~12 s of beats)
FORWARD_MAX = 4096  # live messages waiting to be passed on (a few seconds of 200 beds' waveforms)


def snapshot(
    key: BedKey,
    state: BedState,
    scores: BedScores | None,
    derived: Derived | None,
    alarms: tuple[Alarm, ...] | None,
    now_us: int,
    *,
    marks_after: int | None = None,
    input_delay_us: int | None = None,
    copy: bool = True,
    signals: bool = True,
) -> BedSnapshot:
    """``key``'s snapshot from the engine's state at engine time ``now_us``. ``marks_after``:
    carry only the marks numbered after it (None: none). ``copy=False``: the latest values by
    reference, for a reader done with it before the engine's loop goes on (the census);
    ``signals=False``: without the live signals' times (the census shows none)."""
    news2 = rising = None
    news2_us = invalid = None
    if scores is not None:
        invalid = scores.invalid
        if scores.news2 is not None:
            news2, news2_us = scores.news2.as_dict(), scores.news2_us
            det = scores.deterioration
            if det is not None and det.active:
                rising = tuple(det.reasons)
    hr = None
    rhythms: tuple[str, ...] = ()
    quality: dict[str, str] = {}
    marks: tuple[Mark, ...] = ()
    marks_total = 0
    if derived is not None:
        hr = derived.hr_bpm.get("ECG_II")
        if hr is None and derived.hr_bpm:
            hr = next(iter(derived.hr_bpm.values()))
        rhythms = tuple(sorted(str(label) for label in derived.rhythms))
        quality = dict(derived.quality)
        marks_total = derived.marks_total
        if marks_after is not None and marks_total > marks_after:
            # the marks are numbered in order: the new ones are the newest, read from the end
            # (a bed keeps hundreds; a second brings a few)
            new: list[Mark] = []
            for m in reversed(derived.marks):
                if m.seq <= marks_after or len(new) == MARKS_IN_SNAPSHOT:
                    break
                new.append(m)
            marks = tuple(reversed(new))
    return BedSnapshot(
        bed=key,
        taken_us=now_us,
        status=state.status,
        standby_until_us=state.standby_until_us,
        new=state.new,
        last_seen_us=state.last_seen_us,
        clock_offset_us=state.clock_offset_us,
        latest=dict(state.latest) if copy else state.latest,
        signals={name: (s.fs_hz, s.last_t_us) for name, s in state.signals.items()}
        if signals
        else {},
        news2=news2,
        news2_us=news2_us,
        news2_invalid=invalid,
        rising_reasons=rising,
        hr_bpm=hr,
        rhythms=rhythms,
        quality=quality,
        marks=marks,
        marks_total=marks_total,
        alarms=alarms,
        input_delay_us=input_delay_us,
    )


def _alarms_by_bed(engine: Engine) -> dict[BedKey, tuple[Alarm, ...]] | None:
    if engine.alarms is None:
        return None
    out: dict[BedKey, list[Alarm]] = {}
    for alarm in engine.alarms.machine.alarms():
        out.setdefault(alarm.bed, []).append(alarm)
    return {bed: tuple(group) for bed, group in out.items()}


class EngineBeds:
    """:class:`eicu.live.LiveBeds` over an engine in the same process: every read is of the
    engine's memory at that moment (run on the engine's event loop)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def alarms_available(self) -> bool:
        return self._engine.alarms is not None

    def snapshots(self, now_us: int) -> list[BedSnapshot]:
        e = self._engine
        alarms = _alarms_by_bed(e)
        out = []
        for key, state in list(e.router.beds.items()):
            bed_alarms = None if alarms is None else alarms.get(key, ())
            out.append(
                snapshot(key, state, e.scores.beds.get(key), e.signals.derived.get(key),
                         bed_alarms, now_us, copy=False, signals=False)
            )  # fmt: skip
        return out

    def snapshot(self, bed: BedKey, now_us: int) -> BedSnapshot | None:
        e = self._engine
        state = e.router.beds.get(bed)
        if state is None:
            return None
        alarms = None
        if e.alarms is not None:
            alarms = tuple(a for a in e.alarms.machine.alarms() if a.bed == bed)
        return snapshot(bed, state, e.scores.beds.get(bed), e.signals.derived.get(bed), alarms,
                        now_us)  # fmt: skip

    def traces(self, bed: BedKey) -> Mapping[str, SignalTrace]:
        state = self._engine.router.beds.get(bed)
        return state.signals if state is not None else {}

    def marks(self, bed: BedKey, after_seq: int) -> tuple[list[Mark], int]:
        derived = self._engine.signals.derived.get(bed)
        if derived is None or derived.marks_total <= after_seq:
            return [], after_seq
        return [m for m in derived.marks if m.seq > after_seq], derived.marks_total

    def watch(self, bed: BedKey) -> None:
        """Every bed's waveforms are in the engine's memory already."""

    def unwatch(self, bed: BedKey) -> None:
        """See :meth:`watch`."""

    def input_delay_us(self, now_us: int) -> int | None:
        return self._engine.router.input_delay_us(now_us)

    def sites(self) -> set[str]:
        return {k.site for k in list(self._engine.router.beds)}

    def site_links(self) -> Mapping[str, SiteLink]:
        """An engine's own beds come over no site link."""
        return {}

    def starting(self) -> str | None:
        e = self._engine
        if e.router.beds or e.warmed:
            return None
        return (
            "the engine is starting: compiling its signal kernels (up to a minute the first time)"
        )


class StatePublisher:
    """Publishes the snapshots of the beds an engine holds on ``eicu/state/<site>`` (QoS 0), for
    dashboards in processes of their own: every ``period_s``, and at once (within
    ``urgent_s``) for a bed whose alarms changed. Each snapshot carries the marks made since the
    previous one. One connection of its own (``MqttSettings.for_state``), reopened with a
    backoff after a failure; what cannot be published is skipped (the next period brings the
    state again), never queued.

    ``input_delay``: whether the snapshots carry the engine's input delay (the hub's feed of
    remote sites sends none: how far a site's data lag is its link's, not the engine's)."""

    def __init__(
        self,
        engine: Engine,
        settings: MqttSettings,
        period_s: float = 1.0,
        *,
        urgent_s: float = 0.05,
        clock: Clock = SYSTEM_CLOCK,
        client_factory: Callable[[MqttSettings], bus.Client] | None = None,
        input_delay: bool = True,
    ) -> None:
        self._engine = engine
        self._input_delay = input_delay
        self._settings = settings
        self._period_s = period_s
        self._urgent_s = urgent_s
        self._clock = clock
        self._marks_sent: dict[BedKey, int] = {}
        self._urgent: set[BedKey] = set()
        self._replies: list[tuple[str, bytes]] = []
        self._retained: dict[str, bytes] = {}  # topic -> the newest payload to publish retained
        # live data passed on (QoS 0), the newest FORWARD_MAX: what waits longer is stale anyway
        self._forwards: deque[tuple[str, bytes]] = deque(maxlen=FORWARD_MAX)
        self._wake = asyncio.Event()
        self._client_factory = client_factory or (lambda s: bus.Client(s, timeout=5.0))
        self.published = 0  # state messages published
        self.failures = 0  # connections lost, and beds or batches that could not be published
        self._unshown: set[BedKey] = set()  # beds whose fault has been logged (once each)

    def alarms_changed(self, beds: set[BedKey]) -> None:
        """Publish these beds' snapshots soon (an alarm of theirs changed)."""
        self._urgent |= beds
        self._wake.set()

    def reply(self, topic: str, payload: bytes) -> None:
        """Publish an answer to a dashboard's command (QoS 1) on this connection, soon. Answers
        are few; one that cannot be published is dropped with the connection (the dashboard
        gives up waiting and says so)."""
        self._replies.append((topic, payload))
        self._wake.set()

    def forward(self, topic: str, payload: bytes) -> None:
        """Publish live data (QoS 0, not retained) on this connection, soon; with the connection
        down, or more than ``FORWARD_MAX`` waiting, the oldest is dropped: it is live or
        nothing."""
        self._forwards.append((topic, payload))
        self._wake.set()

    def announce(self, topic: str, payload: bytes) -> None:
        """Publish ``payload`` retained (QoS 1) on this connection, soon: a reader that
        subscribes later gets it at once. Only the newest of one topic goes; one that cannot be
        published is dropped with the connection (the caller announces again)."""
        self._retained[topic] = payload
        self._wake.set()

    def take(self, beds: set[BedKey] | None, now_us: int) -> list[BedSnapshot]:
        """The snapshots to publish now: of ``beds`` (None: every bed held)."""
        e = self._engine
        alarms = _alarms_by_bed(e)
        delay = e.router.input_delay_us(now_us) if self._input_delay else None
        out = []
        held = e.router.beds
        for key in list(held) if beds is None else [b for b in beds if b in held]:
            after = self._marks_sent.get(key, 0)
            try:
                snap = snapshot(
                    key, held[key], e.scores.beds.get(key), e.signals.derived.get(key),
                    None if alarms is None else alarms.get(key, ()), now_us,
                    marks_after=after, input_delay_us=delay,
                )  # fmt: skip
            except Exception:  # one bed's fault costs the others nothing
                self.failures += 1
                if key not in self._unshown:
                    self._unshown.add(key)
                    log.exception("the state of %s cannot be published", key)
                continue
            self._marks_sent[key] = snap.marks_total
            out.append(snap)
        for gone in set(self._marks_sent) - set(held):
            del self._marks_sent[gone]
        return out

    def encode(self, batch: list[BedSnapshot]) -> bytes | None:
        """The state message of ``batch``; a bed whose state cannot be encoded is left out
        (logged once, counted), the others go."""
        try:
            return encode_batch(batch)
        except (ValueError, TypeError):
            good = []
            for snap in batch:
                try:
                    encode_batch([snap])
                except (ValueError, TypeError):
                    self.failures += 1
                    if snap.bed not in self._unshown:
                        self._unshown.add(snap.bed)
                        log.exception("the state of %s cannot be encoded", snap.bed)
                else:
                    good.append(snap)
            return encode_batch(good) if good else None

    async def run(self) -> None:
        from eicu.backoff import Backoff

        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                async with self._client_factory(self._settings) as client:
                    log.info("publishing bed state on %s", self._settings.url)
                    backoff.reset()
                    await self._publish_forever(client)
            except (bus.MqttError, OSError, TimeoutError) as exc:
                self.failures += 1
                delay = backoff.next_s()
                log.warning("bed state not published (%s); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
            except Exception:  # a fault here never stops the engine: it judges on regardless
                self.failures += 1
                delay = backoff.next_s()
                log.exception("bed state not published; again in %.1f s", delay)
                await asyncio.sleep(delay)

    async def _publish_forever(self, client: bus.Client) -> None:
        loop = asyncio.get_running_loop()
        next_full = loop.time()
        while True:
            wait = max(0.0, next_full - loop.time())
            if not (self._urgent or self._replies or self._retained or self._forwards):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            beds: set[BedKey] | None
            if loop.time() >= next_full:
                beds, next_full = None, loop.time() + self._period_s
            elif self._urgent:
                await asyncio.sleep(self._urgent_s)  # alarm changes of one pass go together
                beds = self._urgent
            else:
                beds = set()  # woken for answers or announcements only
            self._urgent = set()
            # the state first: an answer's reader then sees the change in the bed's snapshot
            for topic, batch in batches(self.take(beds, self._clock.now_us())):
                payload = self.encode(batch)
                if payload is not None:
                    await client.publish(topic, payload, qos=0)
                    self.published += 1
            replies, self._replies = self._replies, []
            for topic, payload in replies:
                await client.publish(topic, payload, qos=1)
            retained, self._retained = self._retained, {}
            for topic, payload in retained.items():
                await client.publish(topic, payload, qos=1, retain=True)
            while self._forwards:
                topic, payload = self._forwards.popleft()
                await client.publish(topic, payload, qos=0)
