"""Bedside to dashboard through a real Mosquitto and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from dashboards.app import create_app
from dashboards.users import Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings, IngestSettings, MqttSettings
from eicu.devservices import Mosquitto
from eicu.models import BedKey
from eicu.store import Store
from ingest.engine import Engine
from simulators.run import SimulationPlan, simulate

pytestmark = [pytest.mark.broker, pytest.mark.db]


async def test_simulated_beds_reach_the_dashboard(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    mqtt = MqttSettings.from_url(broker.url, client_id="eicu-test-dashboard")
    # half-second waveform segments: a bed's last frames are written 2 s after its stream ends
    settings = IngestSettings(
        spool_dir=tmp_path / "spool", flush_interval_s=0.1, waveform_segment_s=0.5
    )
    engine = Engine(mqtt, settings, store)
    users = Users(tmp_path / "users.json")
    users.add("ada", Role.INTENSIVIST, "intensivist-password")
    app = create_app(engine_source(engine), HttpSettings(cookie_secure=False), users)
    await engine.start()
    try:
        await engine.wait_connected()
        plan = SimulationPlan(site="e2e", beds=2, duration_s=6.0, scenario="stable", speed=2.0)
        summary = await simulate(mqtt, plan, asyncio.Event())
        sent = sum(b["messages"] for b in summary["beds"].values())  # type: ignore[union-attr]
        for _ in range(100):  # until everything is stored
            if engine.writer.stored_frames >= sent - 2 and engine.writer.pending_frames == 0:
                break
            await asyncio.sleep(0.2)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client:
            assert (await client.get("/api/census")).status_code == 401
            r = await client.post(
                "/api/login", json={"name": "ada", "password": "intensivist-password"}
            )
            assert r.status_code == 200
            census = (await client.get("/api/census")).json()
            assert {b["bed"] for b in census["beds"]} == {"e2e/bed001", "e2e/bed002"}
            row = census["beds"][0]
            assert row["values"]["HR"]["text"] is not None and row["news2"] is not None
            trends = (await client.get("/api/beds/e2e/bed001/trends")).json()
            assert trends["series"]["HR"], "no 1-minute HR aggregate from PostgreSQL"
            ecg = engine.router.beds[BedKey("e2e", "bed001")].signals["ECG_II"]
            start_us = ecg.last_t_us - 3_000_000
            w = (
                await client.get(
                    "/api/beds/e2e/bed001/waveform",
                    params={"signal": "ECG_II", "start_us": start_us, "seconds": 2},
                )
            ).json()
            assert w["fs_hz"] == 250.0 and len(w["values"]) == 500
            assert all(v is not None for v in w["values"])
    finally:
        await engine.stop()
