"""``eicu site`` at a remote ICU and ``eicu site-feed`` at the hub, each in a process of its own,
on real NATS servers (the site's a leaf node of the hub, its link through a TCP proxy), a
PostgreSQL store at the hub and a SQLite store at the site: while the link is cut the site
judges a high heart rate and pages its own nurse; once the link is back the hub's store holds
every sample the gateway published, once, with its device time."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from eicu import wire
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority, event_id
from eicu.bus import Client
from eicu.bus.sites import FEED_CONSUMER, ensure_site_stream, source_state
from eicu.config import MqttSettings, SiteFeedSettings, SiteSettings
from eicu.errors import ConfigError, PayloadError
from eicu.models import BedKey, NumericsFrame
from eicu.sites import hub_stream
from eicu.store import open_store
from eicu.store.base import TrendPoint
from tests.alarm_servers import HookServer
from tests.site_servers import (
    SiteLink,
    check_nats_config,
    dropped_repeats,
    feed_process,
    hub_alarm_events,
    hub_samples,
    publish_heart_rates,
    site_alarm_events,
    site_link,
    site_process,
    until,
)

pytestmark = [pytest.mark.nats, pytest.mark.db]

SITE = "karamay"
BEDS = ("bed-1", "bed-2")
SICK = "bed-2"  # its heart rate rises to 150 while the link is cut
CUT_MAX_S = 40.0  # the alarm (HR_HIGH: above 130 for 10 s) must come well within it


@pytest.fixture
def link() -> Iterator[SiteLink]:
    yield from site_link(SITE)


def test_a_sites_alarm_change_is_read_back_as_the_site_recorded_it() -> None:
    topic = f"eicu/v1/{SITE}/bed-2/alarms"
    event = AlarmEvent(
        f"{SITE}/bed-2/HR_HIGH/1700000000000000", BedKey(SITE, "bed-2"), "HR_HIGH",
        Priority.MEDIUM, Category.PHYSIOLOGICAL, AlarmState.ACTIVE, 1_700_000_010_000_000,
    )  # fmt: skip
    doc = {"v": 1, "type": "state", "key": "k", "recipient": "bed", "site": SITE, "bed": "bed-2"}
    doc.update({k: v for k, v in wire.event_doc(event).items() if k != "bed"})
    decoded = wire.decode_alarm_state(topic, json.dumps(doc).encode())
    assert decoded == event and event_id(decoded) == event_id(event)
    assert wire.decode_alarm_state(topic, json.dumps({**doc, "type": "page"}).encode()) is None
    bad = {
        "another bed's alarm": {**doc, "alarm_id": f"{SITE}/bed-1/HR_HIGH/1"},
        "another site in the body": {**doc, "site": "hotan"},
        "an unknown state": {**doc, "state": "exploded"},
        "no time": {**doc, "time_us": 0},
    }
    for what, body in bad.items():
        with pytest.raises(PayloadError, match="malformed"):
            wire.decode_alarm_state(topic, json.dumps(body).encode())
            pytest.fail(what)
    with pytest.raises(PayloadError, match="wrong_topic"):
        wire.decode_alarm_state(f"eicu/v1/{SITE}/bed-2/alarms/ack", json.dumps(doc).encode())


def test_site_settings_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EICU_SITE_ID"):
        SiteSettings.from_env({})
    with pytest.raises(ConfigError, match="EICU_SITE_ID"):
        SiteSettings.from_env({"EICU_SITE_ID": "Kara May"})
    with pytest.raises(ConfigError, match="EICU_SITE_HUB_URL"):
        SiteSettings.from_env({"EICU_SITE_ID": SITE, "EICU_SITE_HUB_URL": "http://hub:7422"})
    with pytest.raises(ConfigError, match="EICU_SITE_HUB_CA_FILE"):
        SiteSettings.from_env(
            {"EICU_SITE_ID": SITE, "EICU_SITE_HUB_CA_FILE": str(tmp_path / "none.crt")}
        )
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    with pytest.raises(ConfigError, match="EICU_SITE_HUB_CERT_FILE"):
        SiteSettings.from_env({"EICU_SITE_ID": SITE, "EICU_SITE_HUB_CA_FILE": str(ca)})
    passwords = tmp_path / "feed.json"
    passwords.write_text(json.dumps({"a": "pw"}))
    feed_env = {"EICU_SITES": "a,b", "EICU_NATS_URL": "nats://hub:4222"}
    with pytest.raises(ConfigError, match=r"EICU_SITE_FEED_PASSWORDS_FILE.*'b'"):
        SiteFeedSettings.from_env({**feed_env, "EICU_SITE_FEED_PASSWORDS_FILE": str(passwords)})
    with pytest.raises(ConfigError, match="EICU_SITE_MAX_BYTES"):
        SiteSettings.from_env({"EICU_SITE_ID": SITE, "EICU_SITE_MAX_BYTES": "12"})
    site = SiteSettings.from_env(
        {"EICU_SITE_ID": SITE, "EICU_SITE_HUB_URL": "nats-leaf://hub:7422,tls://hub2:7422"}
    )
    assert site.hub_leaf_urls == ("nats-leaf://hub:7422", "tls://hub2:7422")
    assert site.nats_urls == ("nats://127.0.0.1:4222",)
    with pytest.raises(ConfigError, match="EICU_SITES"):
        SiteFeedSettings.from_env({"EICU_NATS_URL": "nats://hub:4222"})
    with pytest.raises(ConfigError, match="EICU_SITES"):
        SiteFeedSettings.from_env({"EICU_SITES": "a,a", "EICU_NATS_URL": "nats://hub:4222"})
    with pytest.raises(ConfigError, match="EICU_NATS_URL"):
        SiteFeedSettings.from_env({"EICU_SITES": "a"})


def test_print_nats_config_is_a_valid_leaf_node(tmp_path: Path) -> None:
    env = {"EICU_SITE_ID": SITE, "EICU_SITE_HUB_URL": "nats-leaf://hub.example:7422"}
    out = subprocess.run(
        [sys.executable, "-m", "eicu.cli", "site", "--print-nats-config"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("EICU_")}, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 'domain: "site-karamay"' in out and 'deny_exports: ["eicu.>"]' in out
    check_nats_config(out, tmp_path)


async def hub_trend(db_url: str, bed: str, start_us: int, end_us: int) -> list[TrendPoint]:
    """The hub's 1-minute heart-rate trend of one of the site's beds, as the dashboard reads it."""
    store = open_store(db_url)
    await store.open()
    try:
        return await store.trend(BedKey(SITE, bed), "HR", start_us, end_us)
    finally:
        await store.close()


async def test_the_site_pages_its_nurse_during_a_cut_and_the_hub_stores_everything_once(
    link: SiteLink, hook: HookServer, db_url: str, tmp_path: Path
) -> None:
    site = site_process(link, tmp_path, hook)
    feed = feed_process(link, db_url, tmp_path)
    hub_nc = await nats.connect(link.hub.nats_url)
    try:
        site.wait_ready(90)
        feed.wait_ready(90)
        await until(link.leaf_up, "the site's leaf link is up")

        published: list[tuple[str, int, int]] = []
        sick = asyncio.Event()
        done = asyncio.Event()
        publisher = asyncio.create_task(
            publish_heart_rates(link, BEDS, SICK, sick, published, done)
        )
        await until(lambda: len(hub_samples(db_url, SITE)) >= 4, "the hub stores the site's data")

        link.proxy.stop()
        await until(lambda: not link.leaf_up(), "the hub sees the site's leaf gone")
        cut_at = len(published)
        sick.set()

        def paged() -> bool:
            return any(
                r.status == 200 and r.body.get("kind") == "HR_HIGH" and SICK in r.body["alarm_id"]
                for r in hook.requests
            )

        # The site judges and pages on its own, the link cut.
        cut_s = await until(paged, "the site's nurse paged for HR_HIGH", timeout_s=CUT_MAX_S)
        assert not link.leaf_up()
        stored_in_cut = hub_samples(db_url, SITE)
        assert len(stored_in_cut) <= cut_at  # nothing crossed the cut
        state = await source_state(hub_nc, SITE)
        assert state.silent_s is not None and state.silent_s >= cut_s / 2, state
        page = next(r for r in hook.requests if r.body.get("kind") == "HR_HIGH")
        alarm_id = page.body["alarm_id"]
        assert alarm_id.startswith(f"{SITE}/{SICK}/HR_HIGH/")

        link.proxy.start()
        restored = len(published)
        await until(link.leaf_up, "the leaf link is back")

        def backlog_stored() -> bool:
            stored = hub_samples(db_url, SITE)
            return all((bed, seq) in stored for bed, seq, _ in published[:restored])

        drain_s = await until(backlog_stored, "the cut's backlog in the hub's store")
        done.set()
        await publisher

        def all_stored() -> bool:
            return len(hub_samples(db_url, SITE)) >= len(published)

        await until(all_stored, "every published sample in the hub's store")
        stored = hub_samples(db_url, SITE)
        expected = {(bed, seq): [ts_us] for bed, seq, ts_us in published}
        assert stored == expected  # each sample once, at its device time

        # The sick bed's trend at the hub holds the minutes of the cut, each heart rate of the
        # backlog counted at its device time (the trend the dashboard draws).
        minute = 60_000_000
        first, last = published[0][2] // minute * minute, published[-1][2] // minute * minute
        trend = await hub_trend(db_url, SICK, first, last + minute)
        sick_sent = [(ts_us, seq) for bed, seq, ts_us in published if bed == SICK]
        assert sum(p.n for p in trend) == len(sick_sent)
        during_cut = [ts for bed, _, ts in published[cut_at:restored] if bed == SICK]
        cut_minutes = {ts // minute * minute for ts in during_cut}
        assert cut_minutes <= {p.bucket_us for p in trend if p.max == 150.0}

        # The feed acknowledged everything once it was stored, and nothing had to come again.
        js = hub_nc.jetstream()

        async def all_acknowledged() -> bool:
            info = await js.consumer_info(hub_stream(SITE), FEED_CONSUMER)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await until(all_acknowledged, "the feed's acknowledgements")
        info = await js.consumer_info(hub_stream(SITE), FEED_CONSUMER)
        assert info.num_redelivered == 0
        assert info.delivered.stream_seq == (await source_state(hub_nc, SITE)).messages

        # The site's alarm reached the hub through the same stream, with the site's alarm id.
        msg = await js.get_last_msg(hub_stream(SITE), f"eicu.v1.{SITE}.{SICK}.alarms")
        assert alarm_id in msg.data.decode()
        # The hub's alarm history has the site's changes of that alarm under the site's own
        # event ids, marked as raised at the site.
        site_db = tmp_path / "site.sqlite"

        def same_history() -> bool:
            site_rows = site_alarm_events(site_db, alarm_id)
            return bool(site_rows) and set(site_rows) == set(hub_alarm_events(db_url, alarm_id))

        await until(same_history, "the site's alarm history at the hub")
        site_rows, hub_rows = (
            site_alarm_events(site_db, alarm_id),
            hub_alarm_events(db_url, alarm_id),
        )
        assert "active" in {state for state, _ in site_rows.values()}
        for key, (state, actor) in site_rows.items():
            assert hub_rows[key] == (state, f"site:{SITE}/{actor}")
        # The hub pages nobody: one page for the alarm, from the site.
        assert len({r.key for r in hook.requests if alarm_id in r.body["alarm_id"]}) == 1
        print(
            f"paged {cut_s:.1f} s into the cut; backlog of {restored - cut_at} messages "
            f"stored at the hub {drain_s:.2f} s after the link was back"
        )
    finally:
        await hub_nc.close()
        for process in (site, feed):
            process.stop()


async def test_a_feed_killed_while_draining_a_backlog_leaves_nothing_out_and_nothing_twice(
    link: SiteLink, db_url: str, tmp_path: Path
) -> None:
    site_nc = await nats.connect(link.site.nats_url)
    hub_nc = await nats.connect(link.hub.nats_url)
    feed = feed_process(link, db_url, tmp_path, ack_wait_s=2.0)
    try:
        await ensure_site_stream(site_nc)
        feed.wait_ready(90)
        await until(link.leaf_up, "the site's leaf link is up")
        link.proxy.stop()
        await until(lambda: not link.leaf_up(), "the hub sees the site's leaf gone")
        # A backlog at the site, as fast as the site takes it: more beds than the hub's
        # admission would let a site bring at once (128), all of them stored.
        beds = [f"bed-{i}" for i in range(150)]
        n_per_bed = 18
        end_us = time.time_ns() // 1_000_000 * 1000
        published = []
        gateway = MqttSettings(host="127.0.0.1", port=link.site.mqtt_port, client_id="gw-1")
        async with Client(gateway, timeout=10, max_inflight_messages=100) as client:
            sends = []
            for seq in range(n_per_bed):
                ts_us = end_us - (n_per_bed - seq) * 1_000_000
                for bed in beds:
                    frame = NumericsFrame(BedKey(SITE, bed), seq, ts_us, {"HR": 70.0 + seq % 9})
                    topic = f"eicu/v1/{SITE}/{bed}/numerics"
                    sends.append(client.publish(topic, wire.encode_numerics(frame), qos=1))
                    published.append((bed, seq, ts_us))
            await asyncio.gather(*sends)
        total = len(published)
        link.proxy.start()
        await until(
            lambda: len(hub_samples(db_url, SITE)) > 0, "the backlog reaching the hub's store"
        )
        feed.kill()  # mid-drain: what it held unacknowledged comes again to the next feed
        stored_at_kill = len(hub_samples(db_url, SITE))
        feed = feed_process(link, db_url, tmp_path, ack_wait_s=2.0)
        feed.wait_ready(90)
        await until(lambda: len(hub_samples(db_url, SITE)) >= total, "the whole backlog stored")
        stored = hub_samples(db_url, SITE)
        assert stored == {(bed, seq): [ts_us] for bed, seq, ts_us in published}
        js = hub_nc.jetstream()

        async def all_acknowledged() -> bool:
            info = await js.consumer_info(hub_stream(SITE), FEED_CONSUMER)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await until(all_acknowledged, "the second feed's acknowledgements")
        duplicates = dropped_repeats(feed.ready_port)
        print(
            f"{total} messages; {stored_at_kill} stored when the feed was killed; "
            f"{duplicates:.0f} of them came again to the next feed and were dropped as repeats"
        )
        assert stored_at_kill < total, "the kill came after the drain: nothing was tested"
    finally:
        feed.stop()
        await site_nc.close()
        await hub_nc.close()
