"""The census page with hundreds of beds in a real headless Chromium: only the rows in view are
drawn, yet the ranking, a bed that turns acute, stale and offline beds and the site filter stay
right."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dashboards.app import create_app
from dashboards.server import DashboardServer
from dashboards.users import Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings, IngestSettings, MqttSettings
from eicu.models import BedKey, NumericsFrame, StatusFrame
from eicu.store import open_store
from ingest.engine import Engine
from tests.chromium import CHROMIUM, playwright_or_skip

pytestmark = pytest.mark.browser

playwright_api = playwright_or_skip()

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
BEDS = 300
PASSWORD = "viewer-password"
CALM = {"HR": 72.0, "SPO2": 97.0, "RR": 14.0, "ABP_SYS": 125.0, "TEMP": 37.0, "ACVPU": 0.0,
        "O2": 0.0}  # fmt: skip
SICK = {**CALM, "HR": 135.0, "RR": 30.0, "SPO2": 89.0, "ABP_SYS": 85.0}


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    store = open_store(f"sqlite:///{tmp_path / 'eicu.sqlite'}")
    await store.open()
    engine = Engine(MqttSettings(), IngestSettings(spool_dir=tmp_path / "spool"), store)
    yield engine
    await store.close()


def bed(i: int) -> BedKey:
    return BedKey(f"icu{i % 3}", f"bed{i:03d}")


def feed(engine: Engine, seq: int, sick: set[int], late_s: float = 0.0) -> None:
    """One numerics frame for every bed, measured ``late_s`` before it is received."""
    t = now_us()
    for i in range(BEDS):
        if i in (7, 11):
            continue  # silent; offline
        values = SICK if i in sick else {**CALM, "RR": 25.0} if i % 20 == 0 else CALM
        device_t = t - int(late_s * 1e6)
        engine.router.route(NumericsFrame(bed(i), seq, device_t, dict(values), received_us=t))


async def census_api(page: object) -> list[str]:
    """The beds in the server's ranking."""
    body = await page.evaluate(  # type: ignore[attr-defined]
        "async () => (await (await fetch('/api/census')).json())"
    )
    return [r["bed"] for r in body["beds"]]


async def scroll_to(page: object, name: str) -> object:
    """The row of a bed, scrolling down the census a screen at a time until it is drawn."""
    await page.evaluate("() => window.scrollTo(0, 0)")  # type: ignore[attr-defined]
    row = page.locator(f"#census tr[data-bed='{name}']")  # type: ignore[attr-defined]
    for _ in range(40):
        await asyncio.sleep(0.2)
        if await row.count():
            return row
        await page.evaluate("() => window.scrollBy(0, 600)")  # type: ignore[attr-defined]
    raise AssertionError(f"{name} was never drawn")


async def test_census_of_hundreds_of_beds(engine: Engine, tmp_path: Path) -> None:
    """300 beds at 3 sites, numerics only, every 20th breathing fast (NEWS2 low-medium: a
    single 3); one silent for a minute (stale), one whose gateway went offline."""
    old = now_us() - 60_000_000
    engine.router.route(NumericsFrame(bed(7), 1, old, dict(CALM), received_us=old))
    feed(engine, 1, set())
    engine.router.route(
        StatusFrame("icu2", "offline", now_us(), bed="bed011", received_us=now_us())
    )
    users = Users(tmp_path / "users.json")
    users.add("val", Role.VIEWER, PASSWORD)
    server = DashboardServer(
        create_app(engine_source(engine), HttpSettings(cookie_secure=False), users), "127.0.0.1", 0
    )
    await server.start()
    sick: set[int] = set()
    late_s = [0.0]
    stop = asyncio.Event()

    async def feeding() -> None:
        seq = 2
        while not stop.is_set():
            feed(engine, seq, sick, late_s[0])
            seq += 1
            await asyncio.sleep(1.0)

    feeder = asyncio.create_task(feeding())
    try:
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(server.url + "/login?next=/census")
            await page.fill("#name", "val")
            await page.fill("#password", PASSWORD)
            await page.click("#submit")
            await page.wait_for_selector(f"#census[data-beds='{BEDS}']", timeout=20_000)
            drawn = page.locator("#census tbody tr[data-bed]")
            n_drawn = await drawn.count()
            assert 20 < n_drawn < 80  # a screen and a margin, not 300 rows

            # ranked as the API ranks them: the fast breathers first
            api = await page.evaluate("async () => (await (await fetch('/api/census')).json())")
            ranked = [r["bed"] for r in api["beds"]]
            shown = [await drawn.nth(i).get_attribute("data-bed") for i in range(n_drawn)]
            assert shown == ranked[:n_drawn]
            assert api["beds"][0]["news2"]["band"] == "low-medium"

            # the bottom of the census, once scrolled to: the last ranked beds, in order
            await page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
            last = page.locator(f"#census tbody tr[data-bed='{ranked[-1]}']")
            await last.wait_for(timeout=5_000)
            tail = await page.evaluate(
                "() => [...document.querySelectorAll('#census tbody tr[data-bed]')]"
                ".map((tr) => tr.dataset.bed)"
            )
            assert tail == ranked[-len(tail) :]
            await page.evaluate("() => window.scrollTo(0, 0)")

            # a bed far down the list turns acute while the keyboard focus is on the first
            # row: the rows hold still (the page says so) until the focus leaves the table
            top = page.locator("#census tbody tr[data-bed]").first
            first_bed = (await census_api(page))[0]
            await page.wait_for_function(  # the top of the census drawn again after the scroll
                "(bed) => document.querySelector('#census tbody tr[data-bed]').dataset.bed === bed",
                arg=first_bed,
            )
            await top.locator("a").first.focus()
            sick.add(BEDS - 1)
            deadline = time.monotonic() + 10
            while (await census_api(page))[0] != str(bed(BEDS - 1)):
                assert time.monotonic() < deadline, "the server never ranked the acute bed first"
                await asyncio.sleep(0.25)
            seq = int(await page.get_attribute("#census", "data-seq") or 0)
            await page.wait_for_function(
                f"() => Number(document.querySelector('#census').dataset.seq) >= {seq + 2}"
            )
            assert await top.get_attribute("data-bed") == first_bed
            assert await page.get_attribute("#census", "data-order-held") == "true"
            assert await page.is_visible("#order-held")
            await page.keyboard.press("Escape")
            # then it comes to the top, red
            deadline = time.monotonic() + 10
            while await top.get_attribute("data-bed") != str(bed(BEDS - 1)):
                assert time.monotonic() < deadline, "the acute bed did not come to the top"
                await asyncio.sleep(0.25)
            assert "acute" in (await top.get_attribute("class") or "")

            # stale and offline beds, filtered by their site
            await page.select_option("#site", "icu1")
            await page.wait_for_selector("#census[data-beds='100']", timeout=10_000)
            row7 = await scroll_to(page, "icu1/bed007")
            assert (await row7.locator(".status.stale").text_content() or "").startswith("stale ")
            # its NEWS2 (complete by the assembly policy) is built from stale values: shown
            # as stale, not as a number in the green of its band
            chip = row7.locator(".band")
            assert await chip.get_attribute("class") == "band band-stale"
            assert (await chip.text_content() or "") == "0 low · stale"
            sites = {
                (await r.get_attribute("data-bed") or "").split("/")[0]
                for r in await page.locator("#census tbody tr[data-bed]").all()
            }
            assert sites == {"icu1"}
            await page.select_option("#site", "icu2")
            await page.wait_for_selector("#census[data-beds='100']", timeout=10_000)
            row11 = await scroll_to(page, "icu2/bed011")
            assert await row11.locator(".status.offline").count() == 1
            # the filter is in the address: the view can be bookmarked and opened again
            assert page.url.endswith("/census?site=icu2")
            await page.goto(server.url + "/census?site=icu1")  # opened again from the address
            await page.wait_for_selector("#census[data-beds='100']", timeout=10_000)
            assert await page.input_value("#site") == "icu1"

            # filters and sort, in the address: the fast breathers (NEWS2 low-medium or
            # higher), the stale or offline beds, every bed by name
            await page.goto(server.url + "/census?band=low-medium")
            api = await page.evaluate(
                "async () => (await (await fetch('/api/census?band=low-medium')).json()).beds"
            )
            assert len(api) == BEDS // 20 + 1  # every 20th bed, and the one that turned acute
            await page.wait_for_selector(f"#census[data-beds='{len(api)}']", timeout=10_000)
            assert await page.input_value("#f-band") == "low-medium"
            await page.select_option("#f-band", "")
            await page.check("#f-stale")
            await page.wait_for_selector("#census[data-beds='2']", timeout=10_000)
            assert page.url.endswith("/census?stale=1")
            stale = sorted([await r.get_attribute("data-bed") for r in await drawn.all()])
            assert stale == [str(bed(7)), str(bed(11))]
            await page.uncheck("#f-stale")
            await page.select_option("#f-sort", "bed")
            await page.wait_for_selector(f"#census[data-beds='{BEDS}']", timeout=10_000)
            await page.wait_for_function(
                "(bed) => document.querySelector('#census tbody tr[data-bed]').dataset.bed === bed",
                arg=min(str(bed(i)) for i in range(BEDS)),
            )
            await page.check("#f-stale")
            await page.select_option("#f-rhythm", "VTACH")
            await page.wait_for_selector("#census[data-beds='0']", timeout=10_000)
            assert await page.inner_text("#empty") == "No beds match these filters."
            await page.goto(server.url + "/census?site=icu1")
            await page.wait_for_selector("#census[data-beds='100']", timeout=10_000)

            # every bed's numerics now come through 6 s late: the engine reads its input late
            banner = page.locator("#input-delay")
            assert await banner.is_hidden()
            late_s[0] = 6.0
            await banner.wait_for(state="visible", timeout=10_000)
            assert "6s behind" in (await banner.text_content() or "")
            # scrolled down the census, the banner is still in view
            box = await banner.bounding_box()
            assert box is not None and 0 <= box["y"] < 100
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "census-input-delay.png"))
            await browser.close()
    finally:
        stop.set()
        await feeder
        await server.stop()
