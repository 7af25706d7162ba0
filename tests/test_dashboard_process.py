"""``eicu dashboard`` in a process of its own, fed by an engine over a real Mosquitto and a real
PostgreSQL: the census, a bed's values and live waveforms, alarms acknowledged and paused as
commands to the bed's owner, the history from the store, and an owner that does not answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from dashboards.users import Role, Users
from eicu import bus, wire
from eicu.alarm_model import AlarmState
from eicu.config import IngestSettings, MqttSettings
from eicu.devservices import DashboardProcess, Mosquitto
from eicu.models import BedKey, NumericsFrame
from eicu.store import Store
from ingest.engine import Engine
from simulators.run import SimulationPlan, simulate
from tests.cheap_argon2 import cheap_hasher
from tests.chromium import CHROMIUM, playwright_or_skip
from tests.dashboard_beds import api_login, live_ecg_samples, prompt_policy

pytestmark = [pytest.mark.broker, pytest.mark.db]
playwright_api = playwright_or_skip()

SICK = BedKey("hub", "bed009")
PASSWORD = "intensivist-password"


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("ada", Role.INTENSIVIST, PASSWORD)
    return users.path


@pytest.fixture
def dashboard(broker: Mosquitto, db_url: str, users_file: Path, tmp_path: Path) -> Iterator[str]:
    """``eicu dashboard`` as a new process; its base URL once it is ready."""
    process = DashboardProcess(broker.url, db_url, users_file, tmp_path / "dashboard.log")
    try:
        yield process.wait_ready().url
    finally:
        process.stop()


@pytest.fixture
async def engine(broker: Mosquitto, store: Store, tmp_path: Path) -> AsyncIterator[Engine]:
    """The beds' owner: judges alarms and publishes the beds' state twice a second."""
    mqtt = MqttSettings.from_url(broker.url, client_id="eicu-test-owner")
    settings = IngestSettings(spool_dir=tmp_path / "spool", flush_interval_s=0.1)
    engine = Engine(
        mqtt,
        settings,
        store,
        alarms_outbox=tmp_path / "alarms.db",
        alarm_store=store,
        alarm_policy=prompt_policy(),
        state_period_s=0.5,
    )
    await engine.start()
    await engine.wait_connected()
    try:
        yield engine
    finally:
        await engine.stop()


async def login(base: str) -> httpx.AsyncClient:
    return await api_login(base, "ada", PASSWORD)


async def until(check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {getattr(check, '__name__', check)}")


async def publish_sick(broker: Mosquitto) -> None:
    """A bed whose NEWS2 is high (tachypnoea, desaturation, tachycardia, low pressure)."""
    values: dict[str, float | None] = {
        "RR": 31.0, "SPO2": 89.0, "HR": 134.0, "NIBP_SYS": 88.0, "TEMP": 38.9,
    }  # fmt: skip
    async with bus.Client(MqttSettings.from_url(broker.url, client_id="eicu-test-sick")) as c:
        for seq in range(1, 4):
            frame = NumericsFrame(SICK, seq, now_us(), values)
            await c.publish(wire.numerics_topic(SICK), wire.encode_numerics(frame), qos=1)
            await asyncio.sleep(0.3)


async def test_a_dashboard_of_its_own_reads_the_bus_and_commands_the_owner(
    broker: Mosquitto, engine: Engine, dashboard: str
) -> None:
    mqtt = MqttSettings.from_url(broker.url, client_id="eicu-test-gateway")
    plan = SimulationPlan(site="hub", beds=2, duration_s=8.0, scenario="stable", speed=1.0)
    gateway = asyncio.create_task(simulate(mqtt, plan, asyncio.Event()))
    await publish_sick(broker)
    client = await login(dashboard)
    async with contextlib.aclosing(client):

        async def census_has_beds() -> bool:
            beds = (await client.get("/api/census")).json()["beds"]
            return {"hub/bed001", "hub/bed002", str(SICK)} <= {b["bed"] for b in beds}

        await until(census_has_beds)
        census = (await client.get("/api/census")).json()
        assert census["sites"] == ["hub"]
        first = census["beds"][0]
        # the sick bed's NEWS2 alarm puts it first, from the owner's snapshot
        assert first["bed"] == str(SICK) and first["alarm"]["kind"] == "NEWS2_HIGH"
        assert first["values"]["RR"]["text"] == "31" and not first["values"]["RR"]["stale"]
        assert first["acuity"][0] == 3  # NEWS2 high (proven by the partial score)
        detail = (await client.get("/api/beds/hub/bed001")).json()
        assert detail["values"]["HR"]["value"] is not None and "ECG_II" in detail["signals"]

        # the live waveforms of a bed a page shows come off the bus
        samples = await live_ecg_samples(
            client, dashboard, BedKey("hub", "bed001"), 500, 15, fs_hz=250.0
        )
        assert samples >= 500, f"{samples} ECG samples in 15 s"

        # in a browser: the census drawn by the dashboard process, the sick bed first, and its
        # alarm acknowledged from the unit's alarm list, a command to the bed's owner
        alarms = (await client.get("/api/alarms", params={"bed": str(SICK)})).json()["alarms"]
        (alarm,) = (a for a in alarms if a["kind"] == "NEWS2_HIGH")
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
            )
            page = await browser.new_page(viewport={"width": 1600, "height": 900})
            await page.goto(f"{dashboard}/login?next=/census")
            await page.fill("#name", "ada")
            await page.fill("#password", PASSWORD)
            await page.click("#submit")
            await page.wait_for_selector("#census tbody tr[data-bed]", timeout=20_000)
            top = page.locator("#census tbody tr[data-bed]").first
            assert await top.get_attribute("data-bed") == str(SICK)
            assert "NEWS2" in (await top.inner_text())
            await page.goto(f"{dashboard}/alarms")
            await page.wait_for_selector("#live-alarms[data-count]")
            row = page.locator(f"#live-alarms tbody tr[data-alarm='{alarm['alarm_id']}']")
            await row.locator("button.ack").click()
            await page.wait_for_function(
                "id => document.querySelector(`#live-alarms tr[data-alarm='${id}']`)"
                "?.dataset.state === 'acknowledged'",
                arg=alarm["alarm_id"],
                timeout=10_000,
            )
            await browser.close()
        owned = engine.alarms.machine.alarm(alarm["alarm_id"])  # type: ignore[union-attr]
        # made by the owner in the user's name
        assert owned.state is AlarmState.ACKNOWLEDGED and owned.acknowledged_by == "ada"

        # acknowledged twice: nothing left to acknowledge, from the owner's snapshot
        async def shows_acknowledged() -> bool:
            live = (await client.get("/api/alarms", params={"bed": str(SICK)})).json()["alarms"]
            return any(a["state"] == "acknowledged" for a in live)

        await until(shows_acknowledged, 5)
        again = await client.post(f"/api/alarms/{alarm['alarm_id']}/ack")
        assert again.status_code == 409

        # and the history comes from the store, where the owner copies every event
        async def history_has_it() -> bool:
            history = (await client.get("/api/alarms", params={"bed": str(SICK)})).json()["history"]
            return any(e["actor"] == "ada" and e["state"] == "acknowledged" for e in history)

        await until(history_has_it, 10)
        # an unknown alarm of a known bed
        missing = await client.post(f"/api/alarms/{SICK}/NOPE/1/ack")
        assert missing.status_code == 404
        await gateway

        # the owner stops: a command gets no answer, and says so
        await engine.stop()
        pause = {"duration_s": 60}
        r = await client.post(f"/api/beds/{SICK.site}/{SICK.bed}/alarms/pause", json=pause)
        assert r.status_code == 504, r.text
