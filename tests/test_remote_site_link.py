"""A remote site's link as the hub's feed judges it and the dashboards show it: the judgement
from the state of the hub's source (eicu.site_link.judge), its report on the bus and what a
dashboard makes of good and bad reports, the feed's watch on an injected clock, the census's
banners, and the beds a starting feed reads from the store."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dashboards import views
from dashboards.bus import BusBeds
from dashboards.census import CensusFeed, CensusWindow
from eicu.bus.partitioned import PartitionConnectionLost
from eicu.bus.sites import SourceState
from eicu.clock import ManualClock
from eicu.config import IngestSettings, MqttSettings
from eicu.errors import PayloadError
from eicu.live import BedSnapshot
from eicu.metrics import IngestMetrics
from eicu.models import Batch, BedKey, NumericsFrame
from eicu.site_link import (
    SiteLink,
    decode_link,
    encode_link,
    judge,
    link_topic,
    site_of_link_topic,
)
from eicu.store import open_store
from ingest.site_link import SiteLinkWatch, seed_beds
from ingest.state import BedRouter

SITE = "karamay"
T0 = 1_800_000_000_000_000


def test_the_link_is_up_while_the_source_hears_from_the_site_and_down_after() -> None:
    up = judge(SITE, T0, 0.8, 0, None, None)
    assert (up.state, up.last_contact_us, up.checked_us) == ("up", T0 - 800_000, T0)
    # within the silence NATS's heartbeats leave (about a second apart), still up
    assert judge(SITE, T0, 5.0, 0, None, None).state == "up"
    down = judge(SITE, T0 + 30_000_000, 30.5, 12, None, up)
    assert down.state == "down" and down.last_contact_us == T0 - 500_000 and down.lag == 12
    # a source being set up again knows no contact: the last one known stands
    again = judge(SITE, T0 + 40_000_000, None, 0, "no source", down)
    assert (again.state, again.last_contact_us, again.error) == ("down", T0 - 500_000, "no source")
    assert judge(SITE, T0, None, 0, None, None).last_contact_us is None
    # a contact never goes back (a source set up again reports from its new start)
    assert judge(SITE, T0, 20.0, 0, None, down).last_contact_us == T0 - 500_000
    with pytest.raises(ValueError, match="silent_s"):
        judge(SITE, T0, -1.0, 0, None, None)
    with pytest.raises(ValueError, match="silent_s"):
        judge(SITE, T0, float("nan"), 0, None, None)


def test_a_report_is_read_back_as_sent_and_a_bad_one_is_refused_naming_why() -> None:
    link = SiteLink(SITE, "down", T0, T0 - 9_000_000, 40, None, 2.0)
    topic = link_topic(SITE)
    assert topic == "eicu/state/karamay/link" and site_of_link_topic(topic) == SITE
    assert site_of_link_topic("eicu/state/karamay") is None
    assert decode_link(topic, encode_link(link)) == link
    never = SiteLink(SITE, "unknown", T0, None, 0, "the hub's NATS does not answer", 2.0)
    assert decode_link(topic, encode_link(never)) == never
    doc = json.loads(encode_link(link))
    with pytest.raises(PayloadError, match="unsupported_version"):
        decode_link(topic, json.dumps({**doc, "v": 9}).encode())
    for body in (
        {**doc, "state": "sideways"},
        {**doc, "site": "hotan"},  # a report of another site
        {**doc, "t": "yesterday"},
        {**doc, "contact": 1.5},
        {**doc, "lag": True},
        {**doc, "period_s": 0},
        {**doc, "error": 7},
    ):
        with pytest.raises(PayloadError, match="malformed"):
            decode_link(topic, json.dumps(body).encode())
    with pytest.raises(PayloadError, match="malformed"):
        decode_link(topic, b"{not json")
    with pytest.raises(PayloadError, match="wrong_topic"):
        decode_link("eicu/state/karamay", encode_link(link))
    with pytest.raises(PayloadError, match="too_large"):
        decode_link(topic, b" " * 5000)


def test_a_report_expires_after_three_of_its_periods_and_at_least_ten_seconds() -> None:
    link = SiteLink(SITE, "up", T0, T0, period_s=2.0)
    assert not link.expired(T0 + 10_000_000) and link.expired(T0 + 10_000_001)
    slow = SiteLink(SITE, "up", T0, T0, period_s=5.0)
    assert not slow.expired(T0 + 15_000_000) and slow.expired(T0 + 15_000_001)


def test_the_census_shows_one_banner_per_site_whose_link_is_not_up() -> None:
    links = {
        "karamay": SiteLink("karamay", "down", T0, T0 - 60_000_000),
        "hotan": SiteLink("hotan", "up", T0, T0),
        "aksu": SiteLink("aksu", "unknown", T0, T0 - 5_000_000, error="no answer"),
    }
    shown = views.site_links_view(links, T0 + 1_000_000, None)
    assert shown == {
        "aksu": {"state": "unknown", "since_us": T0 - 5_000_000,
                 "last_contact_us": T0 - 5_000_000, "why": "unread"},
        "karamay": {"state": "down", "since_us": T0 - 60_000_000,
                    "last_contact_us": T0 - 60_000_000},
    }  # fmt: skip
    assert set(views.site_links_view(links, T0, {"karamay", "hotan"})) == {"karamay"}
    # a feed that stopped reporting: the link is no longer known, since its last report
    later = views.site_links_view(links, T0 + 60_000_000, {"hotan"})
    assert later == {
        "hotan": {"state": "unknown", "since_us": T0, "last_contact_us": T0, "why": "feed_silent"}
    }


def test_a_link_back_with_a_backlog_still_to_store_is_catching_up_until_it_is_stored() -> None:
    # The oldest message the hub has not stored lies 90 s behind the newest of its subject:
    # the link is up, catching up, since that message's device time.
    back = judge(SITE, T0, 0.5, 0, None, None, unstored=12_345,
                 oldest_unstored_us=T0 - 100_000_000, unstored_behind_s=90.0)  # fmt: skip
    assert (back.state, back.unstored, back.unstored_since_us) == ("up", 12_345, T0 - 100_000_000)
    assert decode_link(link_topic(SITE), encode_link(back)) == back
    assert views.site_links_view({SITE: back}, T0, None) == {
        SITE: {"state": "catching_up", "since_us": T0 - 100_000_000, "unstored": 12_345,
               "last_contact_us": T0 - 500_000},
    }  # fmt: skip
    # What the feed holds in its batches in normal running (a few seconds behind) is no
    # backlog, and neither is data that is old only by a monitor's wrong clock (behind 0 s).
    for behind_s in (2.0, 29.9, 0.0):
        steady = judge(SITE, T0, 0.5, 3, None, None, unstored=400,
                       oldest_unstored_us=T0 - 3600_000_000,
                       unstored_behind_s=behind_s)  # fmt: skip
        assert steady.unstored_since_us is None
        assert views.site_links_view({SITE: steady}, T0, None) == {}
    # Not known how far behind: no claim either way.
    assert judge(SITE, T0, 0.5, 0, None, None, unstored=9, oldest_unstored_us=T0,
                 unstored_behind_s=None).unstored_since_us is None  # fmt: skip
    # Cut off, the banner says so, whatever the hub has yet to store.
    down = judge(SITE, T0, 60.0, 0, None, None, unstored=500,
                 oldest_unstored_us=T0 - 100_000_000, unstored_behind_s=90.0)  # fmt: skip
    assert (down.state, down.unstored_since_us) == ("down", None)
    # A report of a feed that knows nothing of backlogs reads as none; a bad count is refused.
    doc = json.loads(encode_link(back))
    older = {k: v for k, v in doc.items() if k not in ("unstored", "unstored_since")}
    assert decode_link(link_topic(SITE), json.dumps(older).encode()).unstored_since_us is None
    for body in ({**doc, "unstored": "many"}, {**doc, "unstored": -1},
                 {**doc, "unstored_since": 1.5}):  # fmt: skip
        with pytest.raises(PayloadError, match="malformed"):
            decode_link(link_topic(SITE), json.dumps(body).encode())


def snapshot(bed: BedKey, *, alarms: bool) -> BedSnapshot:
    return BedSnapshot(
        bed, T0, status="online", last_seen_us=T0, latest={"HR": (80.0, T0)},
        alarms=() if alarms else None,
    )  # fmt: skip


def test_a_remote_sites_beds_say_their_alarms_are_judged_at_the_site() -> None:
    hub_bed, site_bed = BedKey("icu1", "bed1"), BedKey(SITE, "bed1")
    rows = views.census(
        [snapshot(hub_bed, alarms=True), snapshot(site_bed, alarms=False)],
        T0,
        remote_sites={SITE},
    )
    by_bed = {r["bed"]: r for r in rows}
    assert by_bed[str(hub_bed)]["alarms_available"] and "remote" not in by_bed[str(hub_bed)]
    assert not by_bed[str(site_bed)]["alarms_available"] and by_bed[str(site_bed)]["remote"]
    assert by_bed[str(site_bed)]["alarm"] is None


def test_the_census_stream_sends_the_banners_first_and_then_only_when_they_change() -> None:
    links: dict[str, Any] = {}
    now = [0.0]
    feed: CensusFeed[str] = CensusFeed(
        lambda _: [], lambda _: [], 1.0, clock=lambda: now[0], links=lambda _: dict(links)
    )
    seq, (first,) = feed.messages_after("all", None)
    assert json.loads(first)["links"] == {}
    window = CensusWindow(0, 10)
    assert json.loads(window.messages(feed.current("all"))[0])["links"] == {}
    links[SITE] = {"state": "down", "since_us": T0, "last_contact_us": T0}
    now[0] += 1.0
    seq, (delta,) = feed.messages_after("all", seq)
    assert json.loads(delta)["links"] == links
    assert json.loads(window.messages(feed.current("all"))[0])["links"] == links
    now[0] += 1.0
    seq, (same,) = feed.messages_after("all", seq)
    assert "links" not in json.loads(same)
    assert "links" not in json.loads(window.messages(feed.current("all"))[0])
    links.clear()
    now[0] += 1.0
    seq, (back,) = feed.messages_after("all", seq)
    assert json.loads(back)["links"] == {}


def test_a_dashboard_keeps_each_sites_newest_report_and_counts_what_it_cannot_read() -> None:
    registry = CollectorRegistry()
    beds = BusBeds(MqttSettings(client_id="dash-test"), registry)
    topic = link_topic(SITE)
    down = SiteLink(SITE, "down", T0, T0 - 9_000_000)
    beds.handle(topic, encode_link(down), T0)
    assert beds.site_links() == {SITE: down}
    beds.handle(topic, encode_link(SiteLink(SITE, "up", T0 - 1, T0 - 1)), T0)  # older: ignored
    assert beds.site_links()[SITE] == down
    beds.handle(topic, b'{"v":1,"site":"hotan"}', T0)
    beds.handle("eicu/state/karamay/link", b"\xff", T0)
    rejected = registry.get_sample_value(
        "eicu_dashboard_bus_rejected_total", {"reason": "malformed"}
    )
    assert rejected == 2
    assert registry.get_sample_value("eicu_dashboard_bus_messages_total", {"kind": "link"}) == 2
    assert beds.site_links()[SITE] == down
    beds.handle(topic, b"", T0)  # the retained report cleared: the site is no longer shown
    assert beds.site_links() == {}
    # beds whose owner judges no alarm (a remote site's) leave the others' alarms shown
    assert beds.alarms_available


class Source:
    """The hub's source of a site's stream as a sequence of answers (a SourceState, or an
    exception to raise), one per read."""

    def __init__(self, answers: list[SourceState | Exception]) -> None:
        self.answers = answers

    async def __call__(self, site: str) -> SourceState:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def state(silent_s: float | None, lag: int = 0) -> SourceState:
    return SourceState(SITE, silent_s, lag, None, 100)


async def test_the_feeds_watch_reports_each_check_retained_and_says_when_it_is_not_known() -> None:
    clock = ManualClock(T0)
    sent: list[tuple[str, bytes]] = []
    registry = CollectorRegistry()
    source = Source([
        state(0.5), state(7.0, 3),
        PartitionConnectionLost("the hub's NATS does not answer"), state(None), state(0.2),
    ])  # fmt: skip
    watch = SiteLinkWatch([SITE], source, lambda t, p: sent.append((t, p)), registry, clock=clock)

    def gauge(name: str) -> float | None:
        return registry.get_sample_value(name, {"site": SITE})

    assert (await watch.check(SITE)).state == "up"
    assert gauge("eicu_site_link_state") == 1
    clock.advance(8.0)
    down = await watch.check(SITE)
    assert (down.state, down.last_contact_us, down.lag) == ("down", T0 + 1_000_000, 3)
    assert gauge("eicu_site_link_state") == 0 and gauge("eicu_site_link_silent_seconds") == 7.0
    clock.advance(2.0)
    unread = await watch.check(SITE)
    assert unread.state == "unknown" and "does not answer" in (unread.error or "")
    assert unread.last_contact_us == down.last_contact_us
    assert gauge("eicu_site_link_state") == -1 and gauge("eicu_site_link_unread_total") == 1
    clock.advance(2.0)
    assert (await watch.check(SITE)).last_contact_us == down.last_contact_us
    clock.advance(2.0)
    assert (await watch.check(SITE)).state == "up"
    # every check is announced on the site's link topic, readable by a dashboard
    assert [t for t, _ in sent] == [link_topic(SITE)] * 5
    assert [decode_link(t, p).state for t, p in sent] == ["up", "down", "unknown", "down", "up"]


async def test_a_feed_started_during_a_cut_shows_the_newest_data_as_the_last_contact() -> None:
    clock = ManualClock(T0)
    sent: list[tuple[str, bytes]] = []
    watch = SiteLinkWatch(
        [SITE], Source([state(None)]), lambda t, p: sent.append((t, p)), CollectorRegistry(),
        clock=clock,
    )  # fmt: skip
    watch.known_contact(SITE, T0 - 300_000_000)
    link = await watch.check(SITE)
    assert (link.state, link.last_contact_us) == ("down", T0 - 300_000_000)


async def test_the_watch_runs_on_its_clock_and_one_sites_fault_costs_the_others_nothing() -> None:
    clock = ManualClock(T0)
    sent: list[str] = []
    calls = {"hotan": 0, SITE: 0}

    async def read(site: str) -> SourceState:
        calls[site] += 1
        if site == "hotan":
            raise RuntimeError("a fault of one site")
        return state(0.1)

    registry = CollectorRegistry()
    watch = SiteLinkWatch(
        ["hotan", SITE], read, lambda t, p: sent.append(t), registry, period_s=2.0, clock=clock
    )
    task = asyncio.create_task(watch.run())
    try:
        await clock.until_waiting()
        assert calls == {"hotan": 1, SITE: 1} and sent == [link_topic(SITE)]
        clock.advance(1.9)
        await asyncio.sleep(0)
        assert calls[SITE] == 1
        clock.advance(0.1)
        await clock.until_waiting()
        assert calls == {"hotan": 2, SITE: 2}
        unread = registry.get_sample_value("eicu_site_link_unread_total", {"site": "hotan"})
        assert unread == 2
    finally:
        task.cancel()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'hub.sqlite'}"


async def test_a_starting_feed_reads_the_sites_beds_from_the_store(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    await store.open()
    try:
        now = time.time_ns() // 1000
        frames = [
            NumericsFrame(BedKey(SITE, "bed-1"), 1, now - 120_000_000, {"HR": 80.0, "SPO2": 97.0}),
            NumericsFrame(BedKey(SITE, "bed-1"), 2, now - 60_000_000, {"HR": 82.0}),
            NumericsFrame(BedKey(SITE, "bed-2"), 1, now - 60_000_000, {"HR": 60.0}),
            NumericsFrame(BedKey("hotan", "bed-1"), 1, now - 60_000_000, {"HR": 90.0}),
        ]
        await store.write(Batch(numerics=frames))
        router = BedRouter(IngestMetrics(), IngestSettings())
        # a newer value already held stays
        router.bed(BedKey(SITE, "bed-2")).latest["HR"] = (70.0, now)
        newest = await seed_beds(router, store, [SITE, "aksu"], max_age_s=3600.0)
        assert newest == {SITE: now - 60_000_000}
        bed = router.beds[BedKey(SITE, "bed-1")]
        assert bed.latest == {"HR": (82.0, now - 60_000_000), "SPO2": (97.0, now - 120_000_000)}
        assert bed.status == "online" and bed.last_seen_us == now - 60_000_000
        assert BedKey("hotan", "bed-1") not in router.beds  # not a site of this feed
        assert router.beds[BedKey(SITE, "bed-2")].latest["HR"] == (70.0, now)
    finally:
        await store.close()
    # a store that cannot answer seeds nothing and says so
    closed = open_store(sqlite_url)
    assert await seed_beds(BedRouter(IngestMetrics()), closed, [SITE], max_age_s=60.0) == {}
