"""The patient behind a bed in Chromium: a nurse admits a patient from the bed view, the census
shows who is where with their code status, a handoff is written, the patient moves bed and is
discharged; a viewer sees the patient and none of the buttons."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dashboards.app import create_app
from dashboards.server import DashboardServer
from dashboards.users import Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings
from tests.cheap_argon2 import cheap_hasher
from tests.chromium import CHROMIUM, playwright_or_skip
from tests.dashboard_beds import fed_engine

playwright_api = playwright_or_skip()
pytestmark = pytest.mark.browser
PASSWORDS = {"nina": "nurse-password-1", "val": "viewer-password"}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DashboardServer]:
    engine = await fed_engine(tmp_path)
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("nina", Role.NURSE, PASSWORDS["nina"])
    users.add("val", Role.VIEWER, PASSWORDS["val"])
    app = create_app(engine_source(engine), HttpSettings(cookie_secure=False), users)
    server = DashboardServer(app, "127.0.0.1", 0)
    await server.start()
    yield server
    await server.stop()
    await engine.store.close()


async def log_in(browser: object, url: str, name: str, target: str) -> object:
    page = await browser.new_page(viewport={"width": 1600, "height": 1000})  # type: ignore[attr-defined]
    await page.goto(f"{url}/login?next={target}")
    await page.fill("#name", name)
    await page.fill("#password", PASSWORDS[name])
    await page.click("#submit")
    return page


async def test_a_patient_admitted_moved_and_discharged_in_the_browser(
    server: DashboardServer,
) -> None:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
        )
        page = await log_in(browser, server.url, "nina", "/bed?bed=icu1%2Fbed2")
        await page.wait_for_selector("#patient .pt-none")
        await page.click("#admit-open")
        form = page.locator("#admit-form")
        await form.locator("[name=mrn]").fill("MRN-0042")
        await form.locator("[name=name]").fill("Ada Li")
        await form.locator("[name=sex]").select_option("F")
        await form.locator("[name=birth_date]").fill("1961-03-14")
        await form.locator("[name=allergies]").fill("penicillin (rash)")
        await form.locator("[name=diagnosis]").fill("septic shock")
        await form.locator("[name=code_status]").select_option("DNR")
        await form.locator("button[type=submit]").click()
        # the header names the patient and what must not be missed
        head = page.locator("#patient-head")
        await head.locator(".pt-name", has_text="Ada Li").wait_for()
        assert await head.locator(".pt-tag.code").inner_text() == "DNR"
        assert await head.locator(".pt-tag.allergy").count() == 1
        card = page.locator("#patient .pt-card")
        assert await card.locator("dd[data-field='Diagnosis']").inner_text() == "septic shock"
        # a handoff, shown newest first with its author
        handoff = page.locator("#handoff-form")
        await handoff.locator("[name=illness]").fill("watcher")
        await handoff.locator("[name=actions]").fill("lactate again at 14:00")
        await handoff.locator("button[type=submit]").click()
        note = page.locator("#notes li[data-kind=handoff]")
        await note.wait_for()
        assert "nina" in await note.inner_text() and "lactate again" in await note.inner_text()
        # the census shows who is in which bed
        viewer = await log_in(browser, server.url, "val", "/census")
        row = viewer.locator("#census tbody tr[data-bed='icu1/bed2']")
        await row.locator(".pt-name", has_text="Ada Li").wait_for(timeout=10_000)
        assert await row.locator(".pt-tag.code").inner_text() == "DNR"
        empty = viewer.locator("#census tbody tr[data-bed='icu1/bed1'] .pt-none")
        assert await empty.inner_text() == "no patient admitted"
        # a viewer sees the patient, not the buttons
        await viewer.goto(f"{server.url}/bed?bed=icu1%2Fbed2")
        await viewer.locator("#patient .pt-card").wait_for()
        assert await viewer.locator("#discharge, #edit-open, #handoff-form").count() == 0
        # moved to another bed: the page follows the patient there
        await page.fill("#transfer-to", "icu1/bed1")
        await page.click("#transfer")
        await page.wait_for_url("**/bed?bed=icu1%2Fbed1")
        await page.locator("#patient-head .pt-name", has_text="Ada Li").wait_for()
        assert "icu1/bed2 from" in await page.locator("#patient .pt-moves").inner_text()
        await viewer.goto(f"{server.url}/census")  # the old bed is empty, the new one hers
        await row.locator(".pt-none").wait_for(timeout=10_000)
        moved_row = viewer.locator("#census tbody tr[data-bed='icu1/bed1']")
        await moved_row.locator(".pt-name", has_text="Ada Li").wait_for(timeout=10_000)
        # discharged after a confirmation
        page.on("dialog", lambda dialog: dialog.accept())
        await page.click("#discharge")
        await page.locator("#patient .pt-none").wait_for()
        assert await page.locator("#patient-head .pt-none").inner_text() == "no patient admitted"
        # a refused change says why
        await page.click("#admit-open")
        form = page.locator("#admit-form")
        await form.locator("[name=mrn]").fill("MRN-0042")
        await form.locator("[name=name]").fill("Ada Li")
        await form.locator("[name=birth_date]").fill("14/03/1961")
        await form.locator("button[type=submit]").click()
        await page.locator("#patient-error", has_text="birth_date").wait_for()
        await browser.close()


async def test_dates_and_times_follow_the_chosen_locale_on_the_24_hour_clock(
    server: DashboardServer,
) -> None:
    t_us = 1_796_313_420_000_000  # 2026-12-03 15:57:00 UTC
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
        )
        context = await browser.new_context(timezone_id="UTC", locale="en-US")
        page = await context.new_page()
        await page.goto(f"{server.url}/login?next=/census")
        await page.fill("#name", "val")
        await page.fill("#password", PASSWORDS["val"])
        await page.click("#submit")
        await page.wait_for_selector("#census tbody tr[data-bed]")
        text = "(us) => [eicu.dateTimeText(us), eicu.timeText(us)]"
        # the browser's own (en-US here), never on a 12-hour clock
        assert await page.evaluate(text, t_us) == ["12/03/2026, 15:57:00", "15:57:00"]
        async with page.expect_navigation():  # the page draws itself again in the new locale
            await page.select_option("#locale", "de-DE")
        await page.wait_for_selector("#census tbody tr[data-bed]")
        assert await page.locator("#locale").input_value() == "de-DE"  # kept across the reload
        assert await page.evaluate(text, t_us) == ["03.12.2026, 15:57:00", "15:57:00"]
        updated = await page.locator("#updated").inner_text()
        assert re.fullmatch(r"updated \d\d:\d\d:\d\d", updated), updated
        # and on the other pages, which share the setting
        await page.goto(f"{server.url}/alarms")
        assert await page.locator("#locale").input_value() == "de-DE"
        async with page.expect_navigation():
            await page.select_option("#locale", "zh-CN")
        assert await page.evaluate(text, t_us) == ["2026/12/03 15:57:00", "15:57:00"]
        await browser.close()
