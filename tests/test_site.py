"""``eicu site`` at a remote ICU and ``eicu site-feed`` at the hub, each in a process of its own,
on real NATS servers (the site's a leaf node of the hub, its link through a TCP proxy), a
PostgreSQL store at the hub and a SQLite store at the site: while the link is cut the site
judges a high heart rate and pages its own nurse; once the link is back the hub's store holds
every sample the gateway published, once, with its device time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import psycopg
import pytest

from eicu import wire
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority, event_id
from eicu.bus import Client
from eicu.bus.sites import FEED_CONSUMER, ensure_site_stream, source_state
from eicu.codes import BY_KEY
from eicu.config import MqttSettings, SiteFeedSettings, SiteSettings
from eicu.devservices import EicuProcess, free_port
from eicu.errors import ConfigError, PayloadError
from eicu.models import BedKey, NumericsFrame
from eicu.sites import hub_stream
from tests.alarm_servers import HookServer
from tests.site_servers import SiteLink, check_nats_config, site_link, until

pytestmark = [pytest.mark.nats, pytest.mark.db]

SITE = "karamay"
BEDS = ("bed-1", "bed-2")
SICK = "bed-2"  # its heart rate rises to 150 while the link is cut
CUT_MAX_S = 40.0  # the alarm (HR_HIGH: above 130 for 10 s) must come well within it


@pytest.fixture
def link() -> Iterator[SiteLink]:
    yield from site_link(SITE)


@pytest.fixture
async def hook() -> AsyncIterator[HookServer]:
    """The site nurse's pager: a webhook receiver."""
    server = await HookServer().start()
    yield server
    await server.stop()


def rota(hook: HookServer) -> dict[str, object]:
    return {
        "version": 1,
        "delivery_timeout_s": 5,
        "sites": {
            SITE: {
                "levels": [
                    {
                        "role": "bedside_nurse",
                        "ack_timeout_s": {"high": 60, "medium": 120, "low": 600},
                        "contacts": [
                            {"name": "nurse-aygul", "channel": "webhook", "address": hook.url("/n")}
                        ],
                    }
                ]
            }
        },
    }


def hub_samples(db_url: str) -> dict[tuple[str, int], list[int]]:
    """The hub's stored heart rates: (bed, seq) -> the device times stored for it."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT b.bed, n.seq, (extract(epoch FROM n.time) * 1000000)::bigint "
            "FROM numerics n JOIN beds b USING (bed_id) WHERE b.site = %s AND n.code = %s",
            (SITE, BY_KEY["HR"].code),
        ).fetchall()
    out: dict[tuple[str, int], list[int]] = {}
    for bed, seq, ts_us in rows:
        out.setdefault((bed, int(seq)), []).append(int(ts_us))
    return out


COMMON = {"EICU_FLUSH_INTERVAL_S": "0.2", "EICU_ANALYSE_SIGNALS": "false"}


def site_process(link: SiteLink, tmp_path: Path, hook: HookServer) -> EicuProcess:
    """``eicu site`` on the site's NATS, its store in SQLite, its rota paging ``hook``."""
    rota_file = tmp_path / "rota.json"
    rota_file.write_text(json.dumps(rota(hook)))
    port = free_port()
    return EicuProcess(
        ["site"],
        {
            **COMMON,
            "EICU_SITE_ID": SITE,
            "EICU_MQTT_URL": link.site.url,
            "EICU_NATS_URL": link.site.nats_url,
            "EICU_DATABASE_URL": f"sqlite:///{tmp_path / 'site.sqlite'}",
            "EICU_ROTA_FILE": str(rota_file),
            "EICU_SPOOL_DIR": str(tmp_path / "site-spool"),
            "EICU_OUTBOX_PATH": str(tmp_path / "site-alarms.db"),
            "EICU_HTTP_PORT": str(free_port()),
            "EICU_USERS_FILE": str(tmp_path / "users.json"),
            "EICU_METRICS_PORT": str(port),
        },
        tmp_path / "site.log",
        port,
    )


def feed_process(
    link: SiteLink, db_url: str, tmp_path: Path, ack_wait_s: float = 10.0
) -> EicuProcess:
    """``eicu site-feed`` on the hub's NATS, storing into ``db_url``."""
    port = free_port()
    return EicuProcess(
        ["site-feed"],
        {
            **COMMON,
            "EICU_SITES": SITE,
            "EICU_NATS_URL": link.hub.nats_url,
            "EICU_DATABASE_URL": db_url,
            "EICU_SPOOL_DIR": str(tmp_path / "feed-spool"),
            "EICU_METRICS_PORT": str(port),
            "EICU_SITE_ACK_WAIT_S": str(ack_wait_s),
        },
        tmp_path / "feed.log",
        port,
    )


def site_alarm_events(path: Path, alarm_id: str) -> dict[str, tuple[str, str]]:
    """The site store's events of one alarm: event id -> (state, actor)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT event_id, state, actor FROM alarm_events WHERE alarm_id = ?", (alarm_id,)
        ).fetchall()
    return {str(e): (str(state), str(actor)) for e, state, actor in rows}


def hub_alarm_events(db_url: str, alarm_id: str) -> dict[str, tuple[str, str]]:
    """The hub store's events of one alarm: event id -> (state, actor)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT event_id, state, actor FROM alarm_events WHERE alarm_id = %s", (alarm_id,)
        ).fetchall()
    return {str(e): (str(state), str(actor)) for e, state, actor in rows}


def dropped_repeats(metrics_port: int) -> float:
    """What a feed dropped as repeats, from its ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("eicu_ingest_duplicates_total")
    )


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
        gateway = MqttSettings(host="127.0.0.1", port=link.site.mqtt_port, client_id="gw-1")

        async def publish() -> None:
            seq = 0
            async with Client(gateway, timeout=10) as client:
                while not done.is_set():
                    ts_us = time.time_ns() // 1_000_000 * 1000  # the wire carries ms
                    for bed in BEDS:
                        hr = 150.0 if bed == SICK and sick.is_set() else 80.0
                        frame = NumericsFrame(BedKey(SITE, bed), seq, ts_us, {"HR": hr})
                        await client.publish(
                            f"eicu/v1/{SITE}/{bed}/numerics", wire.encode_numerics(frame), qos=1
                        )
                        published.append((bed, seq, ts_us))  # PUBACKed by the site
                    seq += 1
                    await asyncio.sleep(0.5)  # the monitor's pace: real time

        publisher = asyncio.create_task(publish())
        await until(lambda: len(hub_samples(db_url)) >= 4, "the hub stores the site's data")

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
        stored_in_cut = hub_samples(db_url)
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
            stored = hub_samples(db_url)
            return all((bed, seq) in stored for bed, seq, _ in published[:restored])

        drain_s = await until(backlog_stored, "the cut's backlog in the hub's store")
        done.set()
        await publisher

        def all_stored() -> bool:
            return len(hub_samples(db_url)) >= len(published)

        await until(all_stored, "every published sample in the hub's store")
        stored = hub_samples(db_url)
        expected = {(bed, seq): [ts_us] for bed, seq, ts_us in published}
        assert stored == expected  # each sample once, at its device time

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
        await until(lambda: len(hub_samples(db_url)) > 0, "the backlog reaching the hub's store")
        feed.kill()  # mid-drain: what it held unacknowledged comes again to the next feed
        stored_at_kill = len(hub_samples(db_url))
        feed = feed_process(link, db_url, tmp_path, ack_wait_s=2.0)
        feed.wait_ready(90)
        await until(lambda: len(hub_samples(db_url)) >= total, "the whole backlog stored")
        stored = hub_samples(db_url)
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
