"""What the hub's feed of remote sites tells the dashboards (docs/remote-sites.md): each site's
link, and its beds as the hub stores them.

The hub judges no alarm for a site's beds and its workers never hold them, so nothing else at
the hub publishes them: ``eicu site-feed`` publishes their snapshots on ``eicu/state/<site>``
(ingest.live.StatePublisher over the feed's engine, whose beds hold what it stores: each value
with its device time), and :class:`SiteLinkWatch` each site's link on
``eicu/state/<site>/link`` (eicu.site_link), judged from the state of the hub's source of the
site's stream. While a link is down the beds' snapshots go on with their last values, which
age: every view shows them stale, and the census shows one banner for the site.

:func:`seed_beds` gives a feed that starts the beds the store holds, so that a site cut off
before the start is still shown with its last values.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from eicu.bus.partitioned import PartitionConnectionLost
from eicu.bus.sites import SourceState
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.errors import StorageUnavailable
from eicu.site_link import SILENT_AFTER_S, SiteLink, encode_link, judge, link_topic, unknown
from eicu.store import Store
from ingest.state import BedRouter

log = logging.getLogger(__name__)

LINK_PERIOD_S: Final = 2.0  # how often each site's link is read and announced
SEED_WAIT_S: Final = 10.0
_STATE_VALUE: Final = {"up": 1, "down": 0, "unknown": -1}


class SiteLinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "eicu_site_link_state",
            "A remote site's link as the hub's source of its stream says: 1 up, 0 down, "
            "-1 unknown (the source's state could not be read)",
            ["site"],
            registry=registry,
        )
        self.silent = Gauge(
            "eicu_site_link_silent_seconds",
            "Seconds since the hub last heard from the site (NaN: not known)",
            ["site"],
            registry=registry,
        )
        self.unstored = Gauge(
            "eicu_site_link_unstored_messages",
            "Messages of the site the hub holds and has not stored yet",
            ["site"],
            registry=registry,
        )
        self.unread = Counter(
            "eicu_site_link_unread",
            "Times the state of a site's link could not be read or judged",
            ["site"],
            registry=registry,
        )


class SiteLinkWatch:
    """Every ``period_s``, reads each site's source state (``read_state``; it raises
    PartitionConnectionLost when the hub's NATS cannot say), judges the link
    (:func:`eicu.site_link.judge`) and hands the report to ``announce`` (topic, payload: the
    state publisher's retained publish). A change of a link is logged."""

    def __init__(
        self,
        sites: Collection[str],
        read_state: Callable[[str], Awaitable[SourceState]],
        announce: Callable[[str, bytes], None],
        registry: CollectorRegistry,
        *,
        period_s: float = LINK_PERIOD_S,
        silent_after_s: float = SILENT_AFTER_S,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if period_s <= 0 or silent_after_s <= 0:
            raise ValueError(f"need period_s and silent_after_s > 0: {period_s}, {silent_after_s}")
        self.sites = tuple(sites)
        self._read_state = read_state
        self._announce = announce
        self._period_s = period_s
        self._silent_after_s = silent_after_s
        self._clock = clock
        self.metrics = SiteLinkMetrics(registry)
        self.links: dict[str, SiteLink] = {}
        self._seed_contact: dict[str, int] = {}

    def known_contact(self, site: str, contact_us: int) -> None:
        """The newest data the hub holds of ``site`` (e.g. from the store at a start): the last
        contact to show while the source knows none."""
        self._seed_contact[site] = max(self._seed_contact.get(site, 0), contact_us)

    def _previous(self, site: str, now_us: int) -> SiteLink | None:
        previous = self.links.get(site)
        if previous is None and site in self._seed_contact:
            return SiteLink(site, "down", now_us, self._seed_contact[site], period_s=self._period_s)
        return previous

    async def check(self, site: str) -> SiteLink:
        """Reads, judges and announces ``site``'s link once; returns the report."""
        now_us = self._clock.now_us()
        previous = self._previous(site, now_us)
        try:
            state = await self._read_state(site)
        except PartitionConnectionLost as exc:
            self.metrics.unread.labels(site=site).inc()
            link = unknown(site, now_us, f"the hub's feed cannot read the link: {exc}"[:200],
                           previous, self._period_s)  # fmt: skip
        else:
            link = judge(
                site, now_us, state.silent_s, state.lag, state.error, previous,
                silent_after_s=self._silent_after_s, period_s=self._period_s,
                unstored=state.unstored, oldest_unstored_us=state.oldest_unstored_us,
                unstored_behind_s=state.unstored_behind_s,
            )  # fmt: skip
        self._changed(self.links.get(site), link)
        self.links[site] = link
        self.metrics.state.labels(site=site).set(_STATE_VALUE[link.state])
        silent = float("nan")
        if link.last_contact_us is not None:
            silent = max(0.0, (now_us - link.last_contact_us) / 1e6)
        self.metrics.silent.labels(site=site).set(silent)
        self.metrics.unstored.labels(site=site).set(link.unstored)
        self._announce(link_topic(site), encode_link(link))
        return link

    @staticmethod
    def _changed(before: SiteLink | None, after: SiteLink) -> None:
        was_catching_up = before is not None and before.unstored_since_us is not None
        if after.unstored_since_us is not None and not was_catching_up:
            log.info("site %s: catching up, %d messages to store", after.site, after.unstored)
        elif was_catching_up and after.unstored_since_us is None and after.state == "up":
            log.info("site %s: caught up", after.site)
        if before is not None and before.state == after.state:
            return
        if after.state == "up":
            log.info("site %s: link up (%d messages to copy)", after.site, after.lag)
        elif after.state == "down":
            since = "not known"
            if after.last_contact_us is not None:
                when = datetime.fromtimestamp(after.last_contact_us / 1e6, UTC)
                since = when.isoformat(timespec="seconds")
            log.warning("site %s: link down; last contact %s", after.site, since)
        else:
            log.warning("site %s: link state unknown: %s", after.site, after.error)

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            for site in self.sites:
                try:
                    await self.check(site)
                except Exception:  # one site's fault costs the others nothing; tried again
                    self.metrics.unread.labels(site=site).inc()
                    log.exception("site %s: link not checked", site)
            await self._clock.sleep(self._period_s)


async def seed_beds(
    router: BedRouter,
    store: Store,
    sites: Collection[str],
    *,
    max_age_s: float,
    timeout_s: float = SEED_WAIT_S,
) -> dict[str, int]:
    """The beds of ``sites`` whose values the store holds (of the last ``max_age_s``) into
    ``router``: each value at its device time (a newer one already held stays), the bed seen at
    its newest value's time and, having sent data, online. Returns each site's newest value
    time. Best effort: a store that cannot answer in ``timeout_s`` seeds nothing."""
    wanted = set(sites)
    try:
        latest = await asyncio.wait_for(store.latest(max_age_s=max_age_s), timeout_s)
    except (StorageUnavailable, TimeoutError) as exc:
        log.warning("the sites' beds not read from the store (%s): shown once they send", exc)
        return {}
    newest: dict[str, int] = {}
    for bed, values in latest.items():
        if bed.site not in wanted or not values:
            continue
        state = router.bed(bed)
        for key, value in values.items():
            held = state.latest.get(key)
            if held is None or held[1] < value.ts_us:
                state.latest[key] = (value.value, value.ts_us)
        last_us = max(v.ts_us for v in values.values())
        state.last_seen_us = max(state.last_seen_us, last_us)
        if state.status == "unknown":
            state.status = "online"
        newest[bed.site] = max(newest.get(bed.site, 0), last_us)
    log.info("%d beds of %d sites read from the store", sum(1 for b in latest if b.site in wanted),
             len(newest))  # fmt: skip
    return newest
