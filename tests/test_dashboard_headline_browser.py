"""Lethal rhythms first, with 48 of the demo's beds in a real engine and a real headless
Chromium: every asystole, VF and VT bed shows that rhythm as its census headline while it lasts
and once latched (red, at the top, asystole before VF before VT), the bed view lists it first and
the tone sounds for the most severe.

The beds are the demo's (``eicu demo --beds 48 --events-at 8``: its 12 scenarios in turn, four
beds each, its seeds), so every other scenario's alarms (AF, artefact, probe off, disconnection,
ectopy, pacing, sepsis) compete with the lethal ones on the census. They are routed into the
engine in simulated time as fast as the engine takes them, with the alarm stage evaluated every
simulated second, so the test costs the engine's work and no wait.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import pytest

from dashboards import views
from dashboards.app import create_app
from dashboards.server import DashboardServer
from dashboards.users import Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings, IngestSettings, MqttSettings
from eicu.store import open_store
from ingest.engine import Engine
from ingest.live import EngineBeds
from simulators.run import SimulationPlan, make_groups
from simulators.synth import SCENARIOS
from tests.chromium import CHROMIUM, playwright_or_skip

pytestmark = [pytest.mark.browser, pytest.mark.slow]

playwright_api = playwright_or_skip()

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
BEDS = 48  # four of each of the demo's 12 scenarios
EVENTS_AT_S = 8.0
FEED_S = 27.0  # VT (8-38 s) and VF (8-28 s) still on; asystole (8-16 s) over, latched
CHECK_AT_S = (16.0, 22.0, FEED_S)
FRAME_S = 0.5
PASSWORD = "viewer-password"
LETHAL = {"asystole": "ASYSTOLE", "vf": "VFIB", "vt": "VTACH"}
RANK = {"ASYSTOLE": 0, "VFIB": 1, "VTACH": 2}

HEADLINES = """() => Object.fromEntries([...document.querySelectorAll('#census tr[data-bed]')]
  .map((tr) => [tr.dataset.bed, [tr.dataset.alarmKind || '', tr.className]]))"""
ORDER = """() => [...document.querySelectorAll('#census tbody tr[data-bed]')]
  .map((tr) => tr.dataset.bed)"""


def lethal_beds() -> dict[str, str]:
    """The demo's asystole, VF and VT beds and their rhythm."""
    return {
        f"demo/bed{i + 1:03d}": LETHAL[SCENARIOS[i % len(SCENARIOS)]]
        for i in range(BEDS)
        if SCENARIOS[i % len(SCENARIOS)] in LETHAL
    }


def feed(engine: Engine, want: dict[str, str]) -> dict[float, dict[str, Any]]:
    """Route the demo's beds into the engine from ``FEED_S`` seconds ago up to now, evaluating
    the alarm stage every simulated second; the census headlines at each of ``CHECK_AT_S``."""
    service = engine.alarms
    assert service is not None
    start_us = time.time_ns() // 1000 - int(FEED_S * 1e6)
    plan = SimulationPlan(
        site="demo", beds=BEDS, scenario="mix", time_scale=30.0, events_at_s=EVENTS_AT_S
    )
    groups = make_groups(plan, start_us)
    seen: dict[float, dict[str, Any]] = {}
    steps = round(FEED_S / FRAME_S)
    for k in range(1, steps + 1):
        t_s = k * FRAME_S
        at_us = start_us + int(t_s * 1e6)
        for group in groups:
            for _bed, wave, numerics, connected in group.tick(FRAME_S):  # type: ignore[attr-defined]
                if not connected:
                    continue  # the disconnect scenario's gateway is offline
                for frame in (wave, numerics):
                    if frame is not None:
                        engine.router.route(dataclasses.replace(frame, received_us=at_us))
        if k % round(1.0 / FRAME_S) == 0:
            service.evaluate(at_us)
        if t_s in CHECK_AT_S:
            rows = views.census(
                EngineBeds(engine).snapshots(at_us), at_us, policy_for=service.machine.policy_for
            )
            seen[t_s] = {r["bed"]: (r["alarm"] or {}).get("kind") for r in rows if r["bed"] in want}
    return seen


async def test_every_lethal_rhythm_bed_headlines_its_rhythm(tmp_path: Path) -> None:
    want = lethal_beds()
    assert sorted(want.values()) == sorted(["ASYSTOLE", "VFIB", "VTACH"] * 4)
    store = open_store(f"sqlite:///{tmp_path / 'eicu.sqlite'}")
    await store.open()
    engine = Engine(
        MqttSettings(), IngestSettings(spool_dir=tmp_path / "spool"), store,
        alarms_outbox=tmp_path / "alarms.db",
    )  # fmt: skip
    users = Users(tmp_path / "users.json")
    users.add("val", Role.VIEWER, PASSWORD)
    server = DashboardServer(
        create_app(engine_source(engine), HttpSettings(cookie_secure=False), users), "127.0.0.1", 0
    )
    try:
        seen = feed(engine, want)
        for t_s, headlines in seen.items():
            wrong = {bed: (headlines.get(bed), kind) for bed, kind in want.items()
                     if headlines.get(bed) != kind}  # fmt: skip
            assert not wrong, f"at {t_s} s, (headline, rhythm): {wrong}"
        await server.start()
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
            )
            try:
                await _check_pages(browser, server.url, want)
            finally:
                await browser.close()
    finally:
        await server.stop()
        if engine.alarms is not None:
            engine.alarms.outbox.close()
        await store.close()


async def _check_pages(browser: Any, url: str, want: dict[str, str]) -> None:
    # tall enough that every lethal bed's row is drawn at the top of the census
    page = await browser.new_page(viewport={"width": 1400, "height": 4000})
    await page.goto(url + "/login?next=/census")
    await page.fill("#name", "val")
    await page.fill("#password", PASSWORD)
    await page.click("#submit")
    await page.wait_for_selector(f"#census[data-beds='{BEDS}']", timeout=20_000)
    shown = await page.evaluate(HEADLINES)
    wrong = {bed: (shown.get(bed, ["(not drawn)"])[0], kind) for bed, kind in want.items()
             if shown.get(bed, [""])[0] != kind}  # fmt: skip
    assert not wrong, f"census page, (headline, rhythm): {wrong}"
    for bed in want:
        assert re.search(r"\bacute\b", shown[bed][1]), bed  # red
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "census-lethal-first.png"))
    # at the top: asystole, then VF, then VT
    top = (await page.evaluate(ORDER))[: len(want)]
    assert set(top) == set(want), sorted(set(top) ^ set(want))
    ranks = [RANK[want[bed]] for bed in top]
    assert ranks == sorted(ranks)
    # the tone (silent until sound is turned on) is for the most severe sounding alarm
    await page.wait_for_function(
        "() => (window.eicuAlarmTone.alarm || {}).kind === 'ASYSTOLE'", timeout=10_000
    )
    # a VT bed's view lists VTACH first
    vt_bed = next(bed for bed, kind in want.items() if kind == "VTACH")
    await page.goto(url + "/bed?bed=" + vt_bed.replace("/", "%2F"))
    first = page.locator("#alarm-list li").first
    await playwright_api.expect(first).to_contain_text("VTACH", timeout=10_000)
    await page.close()
