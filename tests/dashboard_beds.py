"""Beds for dashboard tests: simulated frames routed straight into a real Engine and its store."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import httpx

from eicu.alarms.policy import DEFAULT_PATH, AlarmPolicy, parse_policy
from eicu.config import IngestSettings, MqttSettings
from eicu.models import Batch, BedKey, NumericsFrame, StatusFrame
from eicu.store import open_store
from ingest.engine import Engine
from simulators.beds import SynthGroup


async def fed_engine(tmp_path: Path, seconds: float = 12.0) -> Engine:
    """An engine (not subscribed to any broker) holding ``seconds`` of three simulated beds at
    site ``icu1``, one bed at ``icu2`` whose gateway went offline, and one silent bed at
    ``icu2`` last heard from a minute ago; every frame is also in the SQLite store."""
    store = open_store(f"sqlite:///{tmp_path / 'eicu.sqlite'}")
    await store.open()
    engine = Engine(
        MqttSettings(), IngestSettings(spool_dir=tmp_path / "spool"), store
    )  # fmt: skip
    now_us = time.time_ns() // 1000
    start_us = now_us - int(seconds * 1e6)
    beds = [BedKey("icu1", f"bed{i}") for i in (1, 2, 3)]
    group = SynthGroup(beds, ["stable", "sepsis", "stable"], [1, 2, 3], start_us, time_scale=40)
    batch = Batch()
    t_s = 0.0
    while t_s < seconds:
        for _bed, wave, numerics, _connected in group.tick(0.25):
            received = start_us + int((t_s + 0.25) * 1e6)
            if wave is not None:
                wave = dataclasses.replace(wave, received_us=received)
                engine.router.route(wave)
                batch.waveforms.append(wave)
            if numerics is not None:
                numerics = dataclasses.replace(numerics, received_us=received)
                engine.router.route(numerics)
                batch.numerics.append(numerics)
        t_s += 0.25
    # icu1/bed2 deteriorates: tachypnoea, desaturation, tachycardia, low pressure
    sick = NumericsFrame(
        beds[1], 10_000, now_us,
        {"RR": 31.0, "SPO2": 89.0, "HR": 134.0, "ABP_SYS": 88.0, "NIBP_SYS": 88.0},
        received_us=now_us,
    )  # fmt: skip
    engine.router.route(sick)
    batch.numerics.append(sick)
    # icu1/bed3: the oximeter reports no valid SpO2 now
    invalid = NumericsFrame(beds[2], 10_000, now_us, {"SPO2": None}, received_us=now_us)
    engine.router.route(invalid)
    batch.numerics.append(invalid)
    # icu2/bed9: a gateway that said it went offline; icu2/bed8: silent for a minute
    old_us = now_us - 60_000_000
    engine.router.route(
        NumericsFrame(BedKey("icu2", "bed8"), 1, old_us, {"HR": 88.0}, received_us=old_us)
    )
    engine.router.route(
        NumericsFrame(BedKey("icu2", "bed9"), 1, now_us, {"HR": 90.0}, received_us=now_us)
    )
    engine.router.route(StatusFrame("icu2", "offline", now_us, bed="bed9", received_us=now_us))
    await store.write(batch)
    return engine


def prompt_policy() -> AlarmPolicy:
    """The default alarm policy with no condition delay on the NEWS2 bands, so that the sick
    bed's NEWS2_HIGH alarm starts at the first evaluation of these few seconds of data."""
    raw = json.loads(DEFAULT_PATH.read_text())
    for kind in ("NEWS2_MEDIUM", "NEWS2_HIGH"):
        raw["conditions"][kind]["delay_s"] = 0
    return parse_policy(raw)


async def api_login(base: str, name: str, password: str) -> httpx.AsyncClient:
    """An HTTP client of a running dashboard at ``base``, logged in as ``name``, carrying the
    session's CSRF token (the caller closes it)."""
    client = httpx.AsyncClient(base_url=base, timeout=10)
    r = await client.post("/api/login", json={"name": name, "password": password})
    assert r.status_code == 200, r.text
    client.headers["x-csrf-token"] = r.json()["csrf"]
    return client


async def live_ecg_samples(
    client: httpx.AsyncClient,
    base: str,
    bed: BedKey,
    want: int,
    within_s: float,
    *,
    fs_hz: float | None = None,
) -> int:
    """The ECG II samples a bed's live view (``/ws/beds/<site>/<bed>``, with ``client``'s
    session) sends, read until there are ``want`` of them or ``within_s`` seconds have passed;
    with ``fs_hz``, every ECG II chunk must come at that rate."""
    from websockets.asyncio.client import connect

    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    host = base.removeprefix("http://")
    samples = 0
    async with connect(
        f"ws://{host}/ws/beds/{bed.site}/{bed.bed}",
        additional_headers={"Cookie": cookie, "Origin": base},
    ) as ws:
        deadline = time.monotonic() + within_s
        while samples < want and time.monotonic() < deadline:
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            for chunk in message.get("waves", []):
                if chunk["signal"] == "ECG_II":
                    if fs_hz is not None:
                        assert chunk["fs_hz"] == fs_hz, chunk["fs_hz"]
                    samples += len(chunk["values"])
    return samples
