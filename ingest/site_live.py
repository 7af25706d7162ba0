"""A remote site's newest values at the hub as soon as the hub's copy of its stream holds them,
ahead of the backlog the feed is still storing (docs/remote-sites.md, "Live values while the
backlog drains").

After a cut, ``eicu site-feed`` stores a site's backlog in the site's order, about ten times
faster than real time, and the beds' snapshots it publishes follow what it stores: without more,
the dashboards would show values minutes old until the drain ends. The hub's copy of the site's
stream fills far faster (a JetStream source copies a backlog hundreds of times faster than real
time). So :class:`LiveValues` follows each site's numerics in that copy with an ordered,
ephemeral consumer that starts at the newest message of every bed (deliver policy "last per
subject") and takes each value into the feed's bed state when its device time is newer than what
the bed holds. Storing is not its business: the durable consumer stores every message once, in
order; this reader makes the values the dashboards see current, and nothing else. A value's time
is its device's; a value timed further ahead of the hub's clock than the engine accepts is not
taken (the stored copy goes through the engine's device-clock check).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter

from eicu.bus.partitioned import PartitionConnectionLost
from eicu.bus.sites import follow_newest, subject_to_topic
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.errors import PayloadError
from eicu.live import live_waveform_topic
from eicu.models import BedKey, NumericsFrame
from eicu.wire import decode_numerics, decode_waveform, parse_topic
from ingest.state import BedRouter

log = logging.getLogger(__name__)


async def follow_sites(
    connections: Mapping[str, Any],
    kind: str,
    take: Callable[[str, str, bytes], object],
    what: str,
    *,
    new_only: bool = False,
) -> list[Any]:
    """Follows the ``kind`` messages (``numerics``, ``waveform``) of every site in
    ``connections`` in the hub's copy of its stream (:func:`eicu.bus.sites.follow_newest`),
    handing each to ``take(site, subject, payload)``; a site whose stream cannot be read is
    logged, naming ``what``, and left out. Returns the subscriptions."""
    subscriptions = []
    for site, nc in connections.items():

        def on_message(subject: str, payload: bytes, site: str = site) -> None:
            take(site, subject, payload)

        try:
            sub = await follow_newest(
                nc, site, f"eicu.v1.{site}.*.{kind}", on_message, new_only=new_only
            )
        except PartitionConnectionLost as exc:
            log.warning("site %s: %s not followed (%s)", site, what, exc)
            continue
        subscriptions.append(sub)
    return subscriptions


async def unsubscribe_all(subscriptions: list[Any], what: str) -> None:
    for sub in subscriptions:
        try:
            await sub.unsubscribe()
        except Exception as exc:  # the connection may be gone already
            log.debug("%s: unsubscribe failed: %s", what, exc)
    subscriptions.clear()


def bed_of(site: str, subject: str, kind: str) -> BedKey:
    """The bed of a ``kind`` message on ``subject`` of ``site``'s stream; PayloadError
    (``wrong_topic``, ``wrong_site``) when the subject is not one."""
    found, msg_site, bed = parse_topic(subject_to_topic(subject))
    if found != kind:
        raise PayloadError("wrong_topic", f"not a {kind} topic: {subject[:200]!r}")
    if msg_site != site:
        raise PayloadError("wrong_site", f"site {site} sent {subject[:200]!r}")
    return BedKey(site, bed)


class LiveValueMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.values = Counter(
            "eicu_site_live_values",
            "Numeric values of remote sites' beds taken from the hub's copy of their streams "
            "ahead of storing (newer than what the bed held)",
            ["site"],
            registry=registry,
        )
        self.rejected = Counter(
            "eicu_site_live_rejected",
            "Messages of a site's stream the live reader could not take, by reason",
            ["site", "reason"],
            registry=registry,
        )


class LiveValues:
    """Follows the numerics of every site in ``connections`` (site id -> the feed's NATS
    connection for that site's account) and takes the newer values into ``router``'s beds."""

    def __init__(
        self,
        router: BedRouter,
        connections: Mapping[str, Any],
        registry: CollectorRegistry,
        *,
        max_ahead_s: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_ahead_s < 0:
            raise ValueError(f"max_ahead_s must be >= 0, got {max_ahead_s}")
        self._router = router
        self._connections = dict(connections)
        self._max_ahead_us = int(max_ahead_s * 1e6)
        self._clock = clock
        self.metrics = LiveValueMetrics(registry)
        self._subscriptions: list[Any] = []
        self.taken = 0  # values taken, every site

    async def start(self) -> None:
        """Subscribes to every site's numerics; a site whose stream cannot be read is logged
        and left to the stored path (its values then come as they are stored)."""
        self._subscriptions = await follow_sites(
            self._connections, "numerics", self.take, "live values (shown as stored)"
        )

    async def stop(self) -> None:
        await unsubscribe_all(self._subscriptions, "live values")

    def take(self, site: str, subject: str, payload: bytes) -> int:
        """One numerics message of ``site``'s stream: its values newer than the bed's go into the
        bed's state. Returns how many were taken; a message that cannot be read is counted by
        reason and costs nothing else."""
        now_us = self._clock.now_us()
        try:
            frame = decode_numerics(bed_of(site, subject, "numerics"), payload, now_us)
        except PayloadError as exc:
            self.metrics.rejected.labels(site=site, reason=exc.reason).inc()
            log.debug("site %s: live value not taken: %s", site, exc)
            return 0
        if frame.ts_us > now_us + self._max_ahead_us:
            self.metrics.rejected.labels(site=site, reason="clock_ahead").inc()
            return 0
        n = apply_newer(self._router, frame)
        if n:
            self.metrics.values.labels(site=site).inc(n)
            self.taken += n
        return n


def apply_newer(router: BedRouter, frame: NumericsFrame) -> int:
    """``frame``'s values whose device time is newer than the bed's into the bed's state (a
    missing value, None, is a value too: the monitor sent it so). Returns how many."""
    state = router.bed(frame.bed)
    taken = 0
    for key, value in frame.values.items():
        held = state.latest.get(key)
        if held is None or held[1] < frame.ts_us:
            state.latest[key] = (value, frame.ts_us)
            state.latest_received_us[key] = frame.received_us
            taken += 1
    if taken:
        state.last_seen_us = max(state.last_seen_us, frame.ts_us)
        if state.status == "unknown":
            state.status = "online"
            state.status_us = frame.ts_us
    return taken


# A waveform frame older than this (by its device time against the hub's clock) is backlog, not
# live: it is stored and shown in review, never drawn as the live trace.
LIVE_WAVEFORM_WINDOW_S: Final = 10.0


class LiveWaveforms:
    """Passes each site's live waveform frames, as its gateways sent them, from the hub's copy
    of its stream to the dashboards (``forward(topic, payload)``: the state publisher's QoS 0
    publish, on ``eicu.live.live_waveform_topic``), so a remote bed's view draws its waveforms
    as a hub bed's. Only what is live goes: a frame whose first sample is more than
    ``window_s`` old, or not newer than the last one passed on for its bed, is a backlog's (it is
    stored, and reviewed from the store); a frame timed further ahead of the hub's clock than
    the engine accepts, or that cannot be read, is counted and dropped."""

    def __init__(
        self,
        connections: Mapping[str, Any],
        forward: Callable[[str, bytes], None],
        registry: CollectorRegistry,
        *,
        max_ahead_s: float,
        window_s: float = LIVE_WAVEFORM_WINDOW_S,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_ahead_s < 0 or window_s <= 0:
            raise ValueError(f"need max_ahead_s >= 0 and window_s > 0: {max_ahead_s}, {window_s}")
        self._connections = dict(connections)
        self._forward = forward
        self._max_ahead_us = int(max_ahead_s * 1e6)
        self._window_us = int(window_s * 1e6)
        self._clock = clock
        self._newest: dict[BedKey, int] = {}  # the first-sample time last passed on, per bed
        self._subscriptions: list[Any] = []
        self.passed = Counter(
            "eicu_site_live_waveforms",
            "Live waveform frames of remote sites passed on to the dashboards",
            ["site"],
            registry=registry,
        )
        self.skipped = Counter(
            "eicu_site_live_waveforms_skipped",
            "Waveform frames of remote sites not passed on live, by reason (backlog: older "
            "than the live window or than the bed's last; the rest as the wire protocol says)",
            ["site", "reason"],
            registry=registry,
        )

    async def start(self) -> None:
        """Follows every site's waveforms from now on; a site whose stream cannot be read is
        logged (its beds then show no live waveforms at the hub, as before)."""
        self._subscriptions = await follow_sites(
            self._connections, "waveform", self.take, "live waveforms", new_only=True
        )

    async def stop(self) -> None:
        await unsubscribe_all(self._subscriptions, "live waveforms")

    def take(self, site: str, subject: str, payload: bytes) -> bool:
        """One waveform message of ``site``'s stream: passed on when live. Returns whether it
        was."""
        now_us = self._clock.now_us()
        try:
            bed = bed_of(site, subject, "waveform")
            frame = decode_waveform(bed, payload)
        except PayloadError as exc:
            self.skipped.labels(site=site, reason=exc.reason).inc()
            log.debug("site %s: live waveform not passed on: %s", site, exc)
            return False
        if frame.t0_us > now_us + self._max_ahead_us:
            self.skipped.labels(site=site, reason="clock_ahead").inc()
            return False
        if frame.t0_us < now_us - self._window_us or frame.t0_us <= self._newest.get(bed, -1):
            self.skipped.labels(site=site, reason="backlog").inc()
            return False
        self._newest[bed] = frame.t0_us
        self._forward(live_waveform_topic(bed), payload)
        self.passed.labels(site=site).inc()
        return True
