"""The unit's alarm list (/alarms) in a real headless Chromium against a real Engine,
AlarmService and outbox: every live alarm of the user's sites, most urgent first, filtered by
site and priority from the address, acknowledged from the list by a nurse (audited under her
name), and no buttons for a viewer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from alerting.outbox import Outbox
from alerting.service import AlarmService
from dashboards.app import create_app
from dashboards.server import DashboardServer
from dashboards.users import Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings
from ingest.engine import Engine
from tests.chromium import CHROMIUM, playwright_or_skip
from tests.dashboard_beds import fed_engine, prompt_policy

pytestmark = pytest.mark.browser

playwright_api = playwright_or_skip()
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORDS = {"nina": "nurse-password-1", "val": "viewer-password"}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[DashboardServer, Engine]]:
    engine = await fed_engine(tmp_path)
    engine.alarms = AlarmService(engine, Outbox(tmp_path / "alarms.db"), prompt_policy())
    engine.alarms.evaluate(time.time_ns() // 1000)
    users = Users(tmp_path / "users.json")
    users.add("nina", Role.NURSE, PASSWORDS["nina"])
    users.add("val", Role.VIEWER, PASSWORDS["val"])
    server = DashboardServer(
        create_app(engine_source(engine), HttpSettings(cookie_secure=False), users), "127.0.0.1", 0
    )
    await server.start()
    yield server, engine
    await server.stop()
    engine.alarms.outbox.close()
    await engine.store.close()


async def log_in(browser: object, url: str, name: str, target: str) -> object:
    page = await browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    await page.goto(f"{url}/login?next={target}")
    await page.fill("#name", name)
    await page.fill("#password", PASSWORDS[name])
    await page.click("#submit")
    return page


async def test_the_unit_alarm_list(server: tuple[DashboardServer, Engine]) -> None:
    dashboard, engine = server
    assert engine.alarms is not None
    live = engine.alarms.machine.alarms()
    assert any(a.kind == "NEWS2_HIGH" for a in live) and any(a.kind == "BED_OFFLINE" for a in live)
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
        )
        page = await log_in(browser, dashboard.url, "nina", "/alarms")
        rows = page.locator("#live-alarms tbody tr")
        await page.wait_for_selector("#live-alarms[data-count]")
        assert await rows.count() == len(live)
        # most urgent first: the high-priority NEWS2 alarm of the deteriorating bed at the top
        top = rows.first
        assert await top.get_attribute("data-priority") == "high"
        assert "NEWS2_HIGH" in (await top.inner_text())
        assert await top.locator("a").get_attribute("href") == "/bed?bed=icu1%2Fbed2"
        # acknowledged from the list, under the nurse's name
        await top.locator("button.ack").click()
        await page.wait_for_function(
            "() => document.querySelector('#live-alarms tbody tr').dataset.state === 'acknowledged'"
        )
        assert "nina" in (await rows.first.inner_text())
        news2 = next(a for a in engine.alarms.machine.alarms() if a.kind == "NEWS2_HIGH")
        assert (news2.state.value, news2.acknowledged_by) == ("acknowledged", "nina")
        await page.wait_for_selector("#unit-history li:has-text('acknowledged')")
        # filtered by priority, in the address
        await page.click("#priority button[data-priority='medium']")
        assert page.url.endswith("/alarms?priority=medium")
        kinds = {await r.get_attribute("data-priority") for r in await rows.all()}
        assert kinds <= {"medium"}
        # opened from the address: the site filter and the priority taken from it
        await page.goto(dashboard.url + "/alarms?site=icu2&priority=high")
        await page.wait_for_selector("#live-alarms[data-count]")
        assert await page.input_value("#site") == "icu2"
        for r in await rows.all():
            assert (await r.get_attribute("data-priority")) == "high"
            assert "icu2/" in (await r.inner_text())
        # the census header's counts lead here
        await page.goto(dashboard.url + "/census")
        await page.click("#alarm-counts")
        await page.wait_for_url("**/alarms")
        # a viewer sees the list, without buttons
        viewer = await log_in(browser, dashboard.url, "val", "/alarms")
        await viewer.wait_for_selector("#live-alarms[data-count]")  # type: ignore[attr-defined]
        assert await viewer.locator("#live-alarms button").count() == 0  # type: ignore[attr-defined]
        await census_at_768_px(page, dashboard)
        await browser.close()


CELLS_JS = """() => {
  const cut = [];
  for (const td of document.querySelectorAll('#census tbody tr[data-bed] td')) {
    if (td.scrollWidth <= td.clientWidth + 1) continue;
    const bed = td.closest('tr').dataset.bed;
    cut.push(`${bed}: ${td.textContent} (${td.scrollWidth} > ${td.clientWidth})`);
  }
  const header = document.querySelector('header');
  return { cut, page: document.documentElement.scrollWidth, width: innerWidth,
           header: header.scrollWidth - header.clientWidth,
           table: document.querySelector('.census-scroll').scrollWidth };
}"""
# The longest alarm chips the census can show: a physiological alarm latched, a technical one
# with its audio paused (by the longest kinds of the default policy); none may be cut short.
LONGEST_CHIPS_JS = """() => {
  const td = document.querySelector('#census tbody tr[data-bed] td:nth-child(3)');
  const cut = [];
  for (const a of [
    { kind: 'DETERIORATION', priority: 'medium', state: 'latched', sounding: false,
      audio_paused_until_us: null },
    { kind: 'TEMP_UNAVAILABLE', priority: 'medium', state: 'active', sounding: false,
      audio_paused_until_us: 1 },
  ]) {
    td.replaceChildren(eicuAlarms.chip(a));
    if (td.scrollWidth > td.clientWidth + 1) cut.push(`${td.textContent} (${td.scrollWidth})`);
  }
  return cut;
}"""
# A link at the end of a cell too narrow for it, focused as the keyboard would: the cell's
# content must not scroll to show it (the row would then read as another value).
FOCUS_JS = """() => {
  const td = document.querySelector('#census tbody tr[data-bed] td:nth-child(3)');
  const a = document.createElement('a');
  a.href = '#'; a.textContent = 'a link far past the end of the cell';
  td.append(' '.repeat(1), 'x'.repeat(60), a);
  a.focus();
  return td.scrollLeft;
}"""


async def census_at_768_px(page: object, dashboard: DashboardServer) -> None:
    """On a 768 px screen nothing in the census is cut short: the table scrolls sideways in
    its own box (the bed column staying in view), the header wraps, and focusing a link
    inside a cell never scrolls that cell's content."""
    await page.set_viewport_size({"width": 768, "height": 900})  # type: ignore[attr-defined]
    await page.goto(f"{dashboard.url}/census")  # type: ignore[attr-defined]
    await page.wait_for_selector("#census tbody tr[data-bed]")
    # two updates drawn after the first (values and ages settle), whatever the machine's pace
    await page.wait_for_function(  # type: ignore[attr-defined]
        "() => Number(document.getElementById('census').dataset.seq) >= 2"
    )
    got = await page.evaluate(CELLS_JS)
    assert got["cut"] == [], got["cut"]
    assert got["page"] <= got["width"] and got["header"] <= 0
    assert got["table"] > got["width"]  # the table scrolls in its own box
    assert await page.evaluate(LONGEST_CHIPS_JS) == []
    assert await page.evaluate(FOCUS_JS) == 0
    await page.screenshot(path=str(ARTIFACTS / "census-768.png"))
