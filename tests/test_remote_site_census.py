"""The hub's census of a remote site whose link is cut, on real servers: the hub's and the
site's NATS (the site a leaf node of the hub, its link through a TCP proxy), ``eicu site-feed``
storing the site's stream into PostgreSQL and publishing the site's beds and link, and ``eicu
dashboard`` reading them off the hub's MQTT listener, in Chromium too. While the link is cut the
census shows one banner, the site disconnected since its last contact, the site's beds stale
with their last values and no alarm of theirs; once it is back the banner goes and the beds show
current values."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
import psycopg
import pytest

from dashboards.users import Role, Users
from eicu import wire
from eicu.bus import Client
from eicu.bus.sites import ensure_site_stream
from eicu.config import MqttSettings
from eicu.devservices import DashboardProcess, Mosquitto
from eicu.live import decode_batch
from eicu.models import BedKey, NumericsFrame, SignalBlock, WaveformFrame
from eicu.site_link import LINK_FILTER, decode_link, encode_link, link_topic
from eicu.site_link import SiteLink as SiteLink_
from tests.cheap_argon2 import cheap_hasher
from tests.chromium import CHROMIUM
from tests.dashboard_beds import api_login, live_ecg_samples
from tests.site_servers import SiteLink, feed_process, site_link, until

pytestmark = [pytest.mark.nats, pytest.mark.db]

SITE = "karamay"
BEDS = ("bed-1", "bed-2")
PASSWORD = "intensivist-password"
# The feed reads the link every 2 s and takes 5 s without a word from the site as a cut; the
# beds are stale after 10 s without data.
BANNER_WITHIN_S = 20.0


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
def link() -> Iterator[SiteLink]:
    yield from site_link(SITE)


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("ada", Role.INTENSIVIST, PASSWORD)
    return users.path


class Gateway:
    """A site's gateway publishing the heart rate of its beds every half second (QoS 1, to the
    site's MQTT listener); ``published``: (bed, device time) -> the value, PUBACKed."""

    def __init__(self, link: SiteLink) -> None:
        self.settings = MqttSettings(host="127.0.0.1", port=link.site.mqtt_port, client_id="gw-1")
        self.published: dict[tuple[str, int], float] = {}
        self.done = asyncio.Event()

    async def run(self) -> None:
        seq = 0
        async with Client(self.settings, timeout=10) as client:
            while not self.done.is_set():
                ts_us = now_us() // 1000 * 1000  # the wire carries ms
                for i, bed in enumerate(BEDS):
                    hr = 70.0 + 10 * i + seq % 7
                    frame = NumericsFrame(BedKey(SITE, bed), seq, ts_us, {"HR": hr})
                    topic = f"eicu/v1/{SITE}/{bed}/numerics"
                    await client.publish(topic, wire.encode_numerics(frame), qos=1)
                    self.published[(bed, ts_us)] = hr
                    # and half a second of its ECG, coded as a site's gateway sends it
                    ecg = (400 * np.sin(np.arange(125) / 8)).astype(np.int16)
                    block = SignalBlock("ECG_II", 250.0, 200.0, 0, ecg)
                    wave = WaveformFrame(BedKey(SITE, bed), seq, ts_us, (block,))
                    await client.publish(
                        f"eicu/v1/{SITE}/{bed}/waveform",
                        wire.encode_waveform(wave, coded=True),
                        qos=1,
                    )
                seq += 1
                await asyncio.sleep(0.5)


async def login(base: str) -> httpx.AsyncClient:
    return await api_login(base, "ada", PASSWORD)


def site_rows(census: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in census["beds"] if r["site"] == SITE}


def current(census: dict[str, Any]) -> bool:
    """Both beds shown with a heart rate that is not stale, and no banner."""
    rows = site_rows(census)
    return (
        not census["links"]
        and set(rows) == set(BEDS)
        and all(not r["stale"] and "HR" in r["values"] for r in rows.values())
        and all(not r["values"]["HR"]["stale"] for r in rows.values())
    )


def hub_alarm_rows(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM alarm_events WHERE alarm_id LIKE %s", (f"{SITE}/%",)
        ).fetchone()
    return int(row[0]) if row else 0


async def retained_link(link: SiteLink) -> tuple[bool, Any]:
    """What a reader that subscribes now gets first on the site's link topic: (retained, the
    report)."""
    settings = MqttSettings(host="127.0.0.1", port=link.hub.mqtt_port, client_id="late-reader")
    async with Client(settings, timeout=10, clean_session=True) as client:
        await client.subscribe(LINK_FILTER, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                return bool(message.retain), decode_link(message.topic.value, payload)
    raise AssertionError("no report")


async def test_a_cut_off_site_is_one_banner_and_stale_beds_until_its_link_is_back(
    link: SiteLink, db_url: str, users_file: Path, tmp_path: Path
) -> None:
    site_nc = await nats.connect(link.site.nats_url)
    feed = feed_process(link, db_url, tmp_path, None, state_period_s=0.5)
    dashboard = DashboardProcess(link.hub.url, db_url, users_file, tmp_path / "dashboard.log")
    gateway = Gateway(link)
    publisher: asyncio.Task[None] | None = None
    browsers = contextlib.AsyncExitStack()
    try:
        await ensure_site_stream(site_nc)
        feed.wait_ready(90)
        dashboard.wait_ready()
        await until(link.leaf_up, "the site's leaf link is up")
        publisher = asyncio.create_task(gateway.run())
        client = await login(dashboard.url)
        async with contextlib.aclosing(client):

            async def census() -> dict[str, Any]:
                r = await client.get("/api/census")
                assert r.status_code == 200, r.text
                return r.json()  # type: ignore[no-any-return]

            async def shows_current() -> bool:
                return current(await census())

            await until(shows_current, "the site's beds current at the hub", timeout_s=60)
            # A remote bed's view draws its live ECG (the feed passes the frames on).
            samples = await live_ecg_samples(client, dashboard.url, BedKey(SITE, "bed-1"), 250, 15)
            assert samples >= 250, f"{samples} ECG samples of a remote bed in 15 s"
            page = None
            if CHROMIUM.exists():
                from playwright.async_api import async_playwright

                playwright = await browsers.enter_async_context(async_playwright())
                browser = await playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
                )
                browsers.push_async_callback(browser.close)
                context = await browser.new_context(viewport={"width": 1600, "height": 900})
                page = await context.new_page()
                await page.goto(f"{dashboard.url}/login?next=/census")
                await page.fill("#name", "ada")
                await page.fill("#password", PASSWORD)
                await page.click("#submit")
                await page.wait_for_selector(f"#census tr[data-bed='{SITE}/bed-1']")
                assert await page.locator("#site-links").is_hidden()

            # The link cut: the hub hears nothing more from the site.
            link.proxy.stop()
            cut_us = now_us()
            await until(lambda: not link.leaf_up(), "the hub sees the site's leaf gone")

            async def banner() -> bool:
                return SITE in (await census())["links"]

            async def stale() -> bool:
                return all(r["stale"] for r in site_rows(await census()).values())

            banner_s = await until(banner, "the site's banner", timeout_s=BANNER_WITHIN_S)
            stale_s = banner_s + await until(stale, "the site's beds stale", timeout_s=15)
            body = await census()
            shown = body["links"]
            assert list(shown) == [SITE]
            since_us = shown[SITE]["since_us"]
            assert shown[SITE]["state"] == "down"
            # since its last contact: NATS's last word from the site before the cut (its
            # heartbeats are about a second apart)
            assert cut_us - 3_000_000 <= since_us <= cut_us + 500_000, (since_us - cut_us) / 1e6
            for name, row in site_rows(body).items():
                hr = row["values"]["HR"]
                # the last value the hub stored, at its device time, marked stale
                assert hr["stale"] and hr["ts_us"] <= cut_us + 500_000
                assert hr["text"] == f"{gateway.published[(name, hr['ts_us'])]:.0f}"
                assert row["status"] == "online" and row["stale"]
                # no alarm of the hub's for the site's beds: those are the site's
                assert row["alarm"] is None and row["remote"] and not row["alarms_available"]
            # a census of another site has no banner of this one
            other = await client.get("/api/census", params={"site": "hotan"})
            assert other.json()["links"] == {} and other.json()["beds"] == []
            alarms = (await client.get("/api/alarms")).json()
            assert not [a for a in alarms["alarms"] if a["bed"].startswith(f"{SITE}/")]
            assert hub_alarm_rows(db_url) == 0
            # a reader that comes later learns the cut at once from the retained report
            retained, report = await retained_link(link)
            assert retained and report.state == "down" and report.last_contact_us == since_us
            if page is not None:
                one = page.locator(f"#site-links p[data-site='{SITE}']")
                await one.wait_for(timeout=10_000)
                text = await one.inner_text()
                assert f"Site {SITE}: disconnected since" in text, text
                assert await page.locator("#site-links p").count() == 1
                await page.wait_for_function(
                    "() => document.querySelectorAll(\"#census tr[data-bed^='karamay/'].stale\")"
                    ".length === 2",
                    timeout=10_000,
                )
                for name in BEDS:
                    row = page.locator(f"#census tr[data-bed='{SITE}/{name}']")
                    assert "at site" in await row.inner_text()
                shot = Path(__file__).resolve().parent.parent / "test-artifacts"
                shot.mkdir(exist_ok=True)
                await page.screenshot(path=str(shot / "census-site-disconnected.png"))
                # the bed view of one of the site's beds has the same banner
                bed_page = await page.context.new_page()  # logged in
                await bed_page.goto(f"{dashboard.url}/bed?bed={SITE}/bed-1")
                on_bed = bed_page.locator(f"#site-links p[data-site='{SITE}']")
                await on_bed.wait_for(timeout=10_000)
                assert f"Site {SITE}: disconnected since" in await on_bed.inner_text()
                await bed_page.close()

            # The link back: the banner goes, the beds show current values.
            link.proxy.start()
            restored_us = now_us()

            async def back() -> bool:
                body = await census()
                rows = site_rows(body)
                return current(body) and all(
                    r["values"]["HR"]["ts_us"] >= restored_us for r in rows.values()
                )

            back_s = await until(back, "the site's beds current again, no banner", timeout_s=60)
            if page is not None:
                await page.wait_for_function(
                    "() => document.getElementById('site-links').hidden"
                    " && !document.querySelector(\"#census tr[data-bed^='karamay/'].stale\")",
                    timeout=10_000,
                )
            assert hub_alarm_rows(db_url) == 0
            retained, report = await retained_link(link)
            assert retained and report.state == "up"
            print(
                f"banner {banner_s:.1f} s and beds stale {stale_s:.1f} s after the hub saw the "
                f"leaf gone (last contact {(cut_us - since_us) / 1e6:.1f} s before the cut); "
                f"banner gone and the beds current {back_s:.1f} s after the link was back"
            )
    finally:
        await browsers.aclose()
        gateway.done.set()
        if publisher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(publisher, 10)
        await site_nc.close()
        for process in (dashboard, feed):
            process.stop()


async def first_state(link: SiteLink) -> dict[str, Any]:
    """The first state message of the site's beds a reader of the hub's bus gets now: bed ->
    its snapshot."""
    settings = MqttSettings(host="127.0.0.1", port=link.hub.mqtt_port, client_id="state-reader")
    async with Client(settings, timeout=10, clean_session=True) as client:
        await client.subscribe(f"eicu/state/{SITE}", qos=0)
        async with asyncio.timeout(10):
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                return {s.bed.bed: s for s in decode_batch(payload)}
    raise AssertionError("no state")


async def test_a_feed_stopped_and_started_again_during_a_cut(
    link: SiteLink, db_url: str, users_file: Path, tmp_path: Path
) -> None:
    """The feed stopped: the census says the link is no longer known, since the feed's last
    report. Started again, still during the cut: it reads the site's beds from the store and
    the census shows the site disconnected since the same last contact."""
    site_nc = await nats.connect(link.site.nats_url)
    feed = feed_process(link, db_url, tmp_path, None, state_period_s=0.5)
    dashboard = DashboardProcess(link.hub.url, db_url, users_file, tmp_path / "dashboard.log")
    gateway = Gateway(link)
    publisher: asyncio.Task[None] | None = None
    try:
        await ensure_site_stream(site_nc)
        feed.wait_ready(90)
        dashboard.wait_ready()
        await until(link.leaf_up, "the site's leaf link is up")
        publisher = asyncio.create_task(gateway.run())
        client = await login(dashboard.url)
        async with contextlib.aclosing(client):

            async def census() -> dict[str, Any]:
                return (await client.get("/api/census")).json()  # type: ignore[no-any-return]

            async def shows_current() -> bool:
                return current(await census())

            await until(shows_current, "the site's beds current at the hub", timeout_s=60)
            link.proxy.stop()

            async def down() -> bool:
                return (await census())["links"].get(SITE, {}).get("state") == "down"

            await until(down, "the site's banner", timeout_s=BANNER_WITHIN_S)
            since_us = (await census())["links"][SITE]["since_us"]
            last_shown = {n: r["values"]["HR"] for n, r in site_rows(await census()).items()}

            feed.stop()
            stopped_us = now_us()

            async def feed_silent() -> bool:
                return (await census())["links"].get(SITE, {}).get("why") == "feed_silent"

            await until(feed_silent, "the link no longer known", timeout_s=20)
            shown = (await census())["links"][SITE]
            assert shown["state"] == "unknown" and shown["last_contact_us"] == since_us
            assert stopped_us - 3_000_000 <= shown["since_us"] <= stopped_us

            feed = feed_process(link, db_url, tmp_path, None, state_period_s=0.5)
            feed.wait_ready(90)
            # the new feed's beds come from the store: the last values, at their device times
            snaps = await first_state(link)
            assert set(snaps) == set(BEDS)
            for name, snap in snaps.items():
                value, ts_us = snap.latest["HR"]
                assert ts_us == last_shown[name]["ts_us"]
                assert value == gateway.published[(name, ts_us)]
                assert snap.status == "online" and snap.alarms is None

            async def down_again() -> bool:
                return (await census())["links"].get(SITE, {}).get("state") == "down"

            await until(down_again, "the site disconnected again", timeout_s=20)
            again = (await census())["links"][SITE]["since_us"]
            assert abs(again - since_us) <= 1_000_000, (again - since_us) / 1e6
            assert all(r["stale"] for r in site_rows(await census()).values())
    finally:
        gateway.done.set()
        if publisher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(publisher, 10)
        await site_nc.close()
        for process in (dashboard, feed):
            process.stop()


async def test_a_site_back_but_still_storing_its_backlog_is_one_banner_saying_since_when(
    broker: Mosquitto, db_url: str, users_file: Path, tmp_path: Path
) -> None:
    """The dashboard's side of a site that is catching up (the feed's side:
    tests/test_site_live.py): a report of the link up with a backlog still to store, as the
    feed publishes it, is one banner on the census and the bed view, saying since when the
    site's data is still being stored; the next report without a backlog takes it away."""
    dashboard = DashboardProcess(broker.url, db_url, users_file, tmp_path / "dashboard.log")
    since_us = now_us() - 95_000_000
    catching_up = SiteLink_(SITE, "up", now_us(), now_us() - 400_000, lag=0, period_s=2.0,
                            unstored=12_345, unstored_since_us=since_us)  # fmt: skip
    bus = MqttSettings(host="127.0.0.1", port=broker.port, client_id="site-feed")
    browsers = contextlib.AsyncExitStack()
    try:
        dashboard.wait_ready()
        async with Client(bus, timeout=10) as client:
            await client.publish(link_topic(SITE), encode_link(catching_up), qos=1, retain=True)
        api = await login(dashboard.url)
        async with contextlib.aclosing(api):

            async def links() -> dict[str, Any]:
                r = await api.get("/api/census")
                assert r.status_code == 200, r.text
                return r.json()["links"]  # type: ignore[no-any-return]

            async def shown() -> bool:
                return SITE in await links()

            await until(shown, "the site's banner", timeout_s=20)
            assert (await links())[SITE] == {
                "state": "catching_up", "since_us": since_us, "unstored": 12_345,
                "last_contact_us": catching_up.last_contact_us,
            }  # fmt: skip
            if CHROMIUM.exists():
                from playwright.async_api import async_playwright

                playwright = await browsers.enter_async_context(async_playwright())
                browser = await playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
                )
                browsers.push_async_callback(browser.close)
                page = await browser.new_page()
                await page.goto(f"{dashboard.url}/login?next=/census")
                await page.fill("#name", "ada")
                await page.fill("#password", PASSWORD)
                await page.click("#submit")
                banner = page.locator(f"#site-links p[data-site='{SITE}']")
                await banner.wait_for(timeout=10_000)
                text = await banner.inner_text()
                assert text.startswith(f"Site {SITE}: link back, catching up: its data from "), text
                assert "(12,345 messages)" in text and "Trends and full disclosure" in text, text
                assert await banner.get_attribute("data-state") == "catching_up"
            # the backlog stored: the feed's next report has none, and the banner goes
            done = SiteLink_(SITE, "up", now_us(), now_us(), period_s=2.0)
            async with Client(bus, timeout=10) as client:
                await client.publish(link_topic(SITE), encode_link(done), qos=1, retain=True)

            async def gone() -> bool:
                return SITE not in await links()

            await until(gone, "the banner gone", timeout_s=20)
            if CHROMIUM.exists():
                await page.locator("#site-links").wait_for(state="hidden", timeout=10_000)
    finally:
        await browsers.aclose()
        dashboard.stop()
