"""The dashboard's HTTP API and WebSockets against a real Engine fed with simulated frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from dashboards.app import COOKIE, create_app
from dashboards.server import DashboardServer
from dashboards.users import Permission, Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings
from eicu.models import Batch, BedKey, NumericsFrame
from ingest.engine import Engine
from tests.cheap_argon2 import cheap_hasher
from tests.dashboard_beds import fed_engine

ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {"ada": "intensivist-pw-1", "val": "viewer-password", "root": "admin-password-1"}


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = await fed_engine(tmp_path)
    yield engine
    await engine.store.close()


@pytest.fixture
def users(tmp_path: Path) -> Users:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("ada", Role.INTENSIVIST, PASSWORDS["ada"])
    users.add("val", Role.VIEWER, PASSWORDS["val"])
    users.add("root", Role.ADMIN, PASSWORDS["root"])
    return users


@pytest.fixture
def app(engine: Engine, users: Users) -> FastAPI:
    return create_app(engine_source(engine), HttpSettings(cookie_secure=False), users)


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def login(app: FastAPI, name: str) -> tuple[httpx.AsyncClient, str]:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    r = await client.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
    assert r.status_code == 200, r.text
    return client, r.json()["csrf"]


def _concrete(path: str) -> str:
    return path.replace("{site}", "icu1").replace("{bed}", "bed1")


async def test_anonymous_requests_get_no_patient_data(
    app: FastAPI, anon: httpx.AsyncClient
) -> None:
    api = [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/api/")]
    assert len(api) >= 8
    for route in api:
        if route.path == "/api/login":
            continue
        for method in route.methods:
            r = await anon.request(
                method, _concrete(route.path), params={"signal": "ECG_II", "start_us": 0}
            )
            assert r.status_code == 401, (method, route.path, r.status_code)
            assert "icu1" not in r.text and "bed1" not in r.text
    for page in ("/census", "/bed?bed=icu1/bed1", "/admin"):
        r = await anon.get(page)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert (await anon.get("/login")).status_code == 200
    # metrics are for Prometheus: counts only, no bed names
    metrics = await anon.get("/metrics")
    assert metrics.status_code == 200
    assert 'eicu_ingest_messages_total{kind="waveform"}' in metrics.text
    assert "icu1" not in metrics.text and "bed1" not in metrics.text


async def test_login_sets_a_hardened_session_cookie(engine: Engine, users: Users) -> None:
    app = create_app(engine_source(engine), HttpSettings(cookie_secure=True), users)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://testserver"
    ) as client:
        bad = await client.post("/api/login", json={"name": "ada", "password": "wrong-password"})
        assert bad.status_code == 401 and "set-cookie" not in bad.headers
        unknown = await client.post("/api/login", json={"name": "nobody", "password": "x" * 12})
        assert unknown.status_code == 401 and unknown.json() == bad.json()
        r = await client.post("/api/login", json={"name": "ada", "password": PASSWORDS["ada"]})
        assert r.status_code == 200 and r.json()["role"] == "intensivist"
        cookie = r.headers["set-cookie"].lower()
        for flag in ("httponly", "secure", "samesite=strict", "path=/"):
            assert flag in cookie
        assert PASSWORDS["ada"] not in r.text
        assert "content-security-policy" in r.headers
        census = await client.get("/api/census")
        assert census.status_code == 200 and census.json()["beds"]


async def test_census_ranks_by_acuity_and_shows_freshness(app: FastAPI) -> None:
    client, _ = await login(app, "val")
    async with contextlib.aclosing(client):
        body = (await client.get("/api/census")).json()
    assert body["sites"] == ["icu1", "icu2"]
    rows = {r["bed"]: r for r in body["beds"]}
    assert set(rows) == {"icu1/bed1", "icu1/bed2", "icu1/bed3", "icu2/bed8", "icu2/bed9"}
    order = [r["bed"] for r in body["beds"]]
    ranks = [tuple(r["acuity"]) for r in body["beds"]]
    assert ranks == sorted(ranks, reverse=True)
    sick = rows["icu1/bed2"]
    assert order[0] == "icu1/bed2" and sick["news2"]["complete"]
    assert sick["news2"]["band"] == "high" and sick["news2"]["total"] >= 7
    assert sick["values"]["RR"]["text"] == "31" and not sick["values"]["RR"]["stale"]
    # the monitor said "no valid SpO2": shown as no value, and the score says it is incomplete
    spo2 = rows["icu1/bed3"]["values"]["SPO2"]
    assert spo2["value"] is None and spo2["text"] is None
    assert not rows["icu1/bed3"]["news2"]["complete"]
    # missing parameters are absent, never a number
    assert "NIBP_SYS" not in rows["icu1/bed1"]["values"]
    assert rows["icu2/bed9"]["status"] == "offline"
    silent = rows["icu2/bed8"]
    assert silent["stale"] and silent["seen_age_s"] >= 59
    assert silent["values"]["HR"]["stale"] and silent["values"]["HR"]["age_s"] >= 59
    fresh = rows["icu1/bed1"]["values"]["HR"]
    assert not fresh["stale"] and fresh["age_s"] < 5
    # the engine's own reading of the ECG
    assert 50 < rows["icu1/bed1"]["engine"]["hr_bpm"] < 110


async def test_a_score_from_values_gone_stale_is_never_shown_as_current(
    app: FastAPI, engine: Engine
) -> None:
    # Every NEWS2 input, last measured 60 s ago: within the assembly policy's 5 min for
    # continuous vitals, so the score is complete, but the screen shows those values as stale
    # (eicu.freshness: a continuous value older than 10 s), and so the score built from them.
    old_us = time.time_ns() // 1000 - 60_000_000
    values = {"RR": 14.0, "SPO2": 97.0, "O2": 0.0, "NIBP_SYS": 125.0, "HR": 72.0,
              "ACVPU": 0.0, "TEMP": 37.0}  # fmt: skip
    engine.router.route(
        NumericsFrame(BedKey("icu2", "bed7"), 1, old_us, values, received_us=old_us)
    )
    client, _ = await login(app, "val")
    async with contextlib.aclosing(client):
        rows = {r["bed"]: r for r in (await client.get("/api/census")).json()["beds"]}
        detail = (await client.get("/api/beds/icu2/bed7")).json()
    for news2 in (rows["icu2/bed7"]["news2"], detail["news2"]):
        assert news2["complete"] and news2["band"] == "low"  # what was assembled, then
        assert news2["current"] is False
        assert set(news2["stale_inputs"]) == {"rr", "spo2", "hr"}  # cuff, temp, ACVPU: fresh
        assert news2["age_s"] >= 59
    fresh = rows["icu1/bed1"]["news2"]
    assert fresh["current"] is True and fresh["stale_inputs"] == [] and fresh["age_s"] < 5


async def test_census_filters_by_site(app: FastAPI) -> None:
    client, _ = await login(app, "ada")
    async with contextlib.aclosing(client):
        body = (await client.get("/api/census", params={"site": "icu2"})).json()
    assert {r["bed"] for r in body["beds"]} == {"icu2/bed8", "icu2/bed9"}


async def test_bed_detail_trends_and_full_disclosure(app: FastAPI, engine: Engine) -> None:
    client, _ = await login(app, "val")
    async with contextlib.aclosing(client):
        bed = (await client.get("/api/beds/icu1/bed2")).json()
        assert bed["signals"]["ECG_II"]["fs_hz"] == 250.0
        assert bed["signals"]["PLETH"]["fs_hz"] == 125.0
        assert set(bed["news2"]["components"]) >= {"rr", "spo2", "hr", "sbp"}
        assert bed["news2"]["components"]["rr"] == 3
        assert (await client.get("/api/beds/icu1/nosuchbed")).status_code == 404
        assert (await client.get("/api/beds/bad%20site/x")).status_code == 404

        trends = (await client.get("/api/beds/icu1/bed1/trends", params={"minutes": 60})).json()
        hr = trends["series"]["HR"]
        assert hr and all(trends["start_us"] <= p[0] <= trends["end_us"] for p in hr)
        assert all(40 < p[1] < 140 for p in hr)

        state = engine.router.beds[BedKey("icu1", "bed1")]
        end_us = state.signals["ECG_II"].last_t_us
        start_us = end_us - 4_000_000
        r = await client.get(
            "/api/beds/icu1/bed1/waveform",
            params={"signal": "ECG_II", "start_us": start_us, "seconds": 4},
        )
        assert r.status_code == 200
        w = r.json()
    assert w["fs_hz"] == 250.0 and len(w["values"]) == len(w["t_us"]) == 1000
    assert np.all(np.diff(w["t_us"]) == 4000)
    stored = np.array(w["values"], dtype=float)
    live = state.signals["ECG_II"].ring.last(1001)[:-1]  # the same 4 s, from the live ring
    np.testing.assert_allclose(stored, live, atol=1e-3)
    # the review finds the beats the engine found live in the same samples
    found = [m["t_us"] for m in w["marks"] if m["kind"] == "beat"]
    engine_beats = [
        m.t_us
        for m in engine.signals.derived[BedKey("icu1", "bed1")].marks
        if m.signal == "ECG_II" and start_us <= m.t_us < end_us - 1_000_000
    ]
    assert len(engine_beats) >= 2 and set(engine_beats) <= set(found)
    assert w["alarms"] is None  # this engine runs no alarm service


async def test_trends_over_a_day_and_a_week_are_bucketed(app: FastAPI, engine: Engine) -> None:
    """A week of stored heart rate (one value every 10 minutes, one spike) comes back as
    5-minute buckets over 24 h and 30-minute buckets over 7 d, never more than 360 points,
    the spike kept as a bucket's maximum."""
    bed = BedKey("icu1", "bed1")
    now_us = time.time_ns() // 1000
    frames = [
        NumericsFrame(bed, 100 + i, now_us - i * 600_000_000, {"HR": 70.0})
        for i in range(1, 7 * 144)
    ]
    spike_us = now_us - 2 * 86_400_000_000
    frames.append(NumericsFrame(bed, 99, spike_us, {"HR": 190.0}))
    await engine.store.write(Batch(numerics=frames))
    client, _ = await login(app, "val")
    async with contextlib.aclosing(client):
        hour = (await client.get("/api/beds/icu1/bed1/trends", params={"minutes": 60})).json()
        day = (await client.get("/api/beds/icu1/bed1/trends", params={"minutes": 1440})).json()
        week = (await client.get("/api/beds/icu1/bed1/trends", params={"minutes": 10080})).json()
        too_long = await client.get("/api/beds/icu1/bed1/trends", params={"minutes": 10081})
    assert too_long.status_code == 422
    assert (hour["bucket_s"], day["bucket_s"], week["bucket_s"]) == (60, 300, 1800)
    for doc in (hour, day, week):
        hr = doc["series"]["HR"]
        bucket_us = doc["bucket_s"] * 1_000_000
        assert 0 < len(hr) <= 360
        assert all(p[0] % bucket_us == 0 for p in hr)
        assert all(doc["start_us"] - bucket_us < p[0] <= doc["end_us"] for p in hr)
    assert len(day["series"]["HR"]) >= 144  # a value every 10 minutes, plus the live minutes
    assert len(week["series"]["HR"]) >= 7 * 48 - 1
    peak = max(week["series"]["HR"], key=lambda p: p[3])
    assert peak[3] == 190.0 and peak[0] <= spike_us < peak[0] + 1_800_000_000
    assert peak[2] == 70.0 and 70.0 < peak[1] < 190.0  # the bucket's mean is not the spike
    assert max(p[3] for p in day["series"]["HR"]) < 190.0  # two days ago: outside the day


async def test_roles_csrf_and_origin_on_state_changes(app: FastAPI, users: Users) -> None:
    new = {"name": "nina", "role": "nurse", "password": "nurse-password"}
    viewer, viewer_csrf = await login(app, "val")
    doctor, doctor_csrf = await login(app, "ada")
    admin, admin_csrf = await login(app, "root")
    async with (
        contextlib.aclosing(viewer),
        contextlib.aclosing(doctor),
        contextlib.aclosing(admin),
    ):
        r = await viewer.post("/api/users", json=new, headers={"x-csrf-token": viewer_csrf})
        assert r.status_code == 403
        r = await doctor.post("/api/users", json=new, headers={"x-csrf-token": doctor_csrf})
        assert r.status_code == 403
        assert (await viewer.get("/api/users")).status_code == 403
        assert users.get("nina") is None
        # the admin still needs the CSRF token, and a same-origin request
        assert (await admin.post("/api/users", json=new)).status_code == 403
        r = await admin.post("/api/users", json=new, headers={"x-csrf-token": viewer_csrf})
        assert r.status_code == 403
        r = await admin.post(
            "/api/users",
            json=new,
            headers={"x-csrf-token": admin_csrf, "origin": "https://evil.example"},
        )
        assert r.status_code == 403 and users.get("nina") is None
        r = await admin.post(
            "/api/users",
            json=new,
            headers={"x-csrf-token": admin_csrf, "origin": "http://testserver"},
        )
        assert r.status_code == 201
        assert users.get("nina") is not None and users.get("nina").role == Role.NURSE  # type: ignore[union-attr]
        listed = (await admin.get("/api/users")).json()
        assert {"name": "nina", "role": "nurse", "sites": None, "bed": None} in listed
        # logging out needs the token too, and ends the session
        assert (await viewer.post("/api/logout")).status_code == 403
        r = await viewer.post("/api/logout", headers={"x-csrf-token": viewer_csrf})
        assert r.status_code == 204
        viewer.cookies.clear()
        assert (await viewer.get("/api/census")).status_code == 401


async def test_failed_logins_are_rate_limited(app: FastAPI, anon: httpx.AsyncClient) -> None:
    for _ in range(5):
        r = await anon.post("/api/login", json={"name": "ada", "password": "guess-guess"})
        assert r.status_code == 401
    r = await anon.post("/api/login", json={"name": "ada", "password": PASSWORDS["ada"]})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "set-cookie" not in r.headers


async def test_websockets_need_a_session_and_stream_live_data(app: FastAPI, engine: Engine) -> None:
    server = DashboardServer(app, "127.0.0.1", 0)
    await server.start()
    base = server.url.replace("http://", "ws://")
    try:
        for path in ("/ws/census", "/ws/beds/icu1/bed1"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(base + path):
                    pass
            assert refused.value.response.status_code == 403
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/api/login", json={"name": "val", "password": PASSWORDS["val"]})
            token, csrf = r.cookies[COOKIE], r.json()["csrf"]
            cookie = {"cookie": f"{COOKIE}={token}"}
            # a page of another origin cannot open the stream with the user's cookie
            with pytest.raises(InvalidStatus):
                async with connect(
                    base + "/ws/census", additional_headers=cookie, origin="https://evil.example"
                ):
                    pass
            async with connect(base + "/ws/census", additional_headers=cookie) as ws:
                census = json.loads(await ws.recv())
            assert census["beds"][0]["bed"] == "icu1/bed2"
            async with connect(base + "/ws/beds/icu1/bed1", additional_headers=cookie) as ws:
                first = json.loads(await ws.recv())
                chunks = {c["signal"]: c for c in first["waves"]}
                assert set(chunks) == {"ECG_II", "PLETH", "ABP"}
                assert chunks["ECG_II"]["fs_hz"] == 250.0 and chunks["PLETH"]["fs_hz"] == 125.0
                assert len(chunks["ECG_II"]["values"]) == 8 * 250  # the last 8 s of the ring
                assert len(chunks["ABP"]["values"]) == 8 * 125
                assert first["bed"]["bed"] == "icu1/bed1"
                # the engine's beats on the ECG, at the rate it reports, within the ring
                t_last = chunks["ECG_II"]["t_last_us"]
                beats = [
                    m["t_us"] for m in first["marks"]
                    if m["signal"] == "ECG_II" and m["kind"] == "beat"
                ]  # fmt: skip
                assert len(beats) >= 8
                assert all(t_last - 13_000_000 < t <= t_last for t in beats)
                assert {m["label"] for m in first["marks"] if m["signal"] == "ECG_II"} <= {"N", "V"}
                rr_s = float(np.median(np.diff(beats))) / 1e6
                hr = first["bed"]["engine"]["hr_bpm"]
                assert 60.0 / rr_s == pytest.approx(hr, rel=0.1)
                assert {m["label"] for m in first["marks"] if m["signal"] == "PLETH"} == {"P"}
                # new samples arriving in the engine are streamed once, in order
                ring = engine.router.beds[BedKey("icu1", "bed1")].signals["ECG_II"].ring
                ring.extend(np.linspace(0.0, 1.0, 50))
                waves: dict[str, dict[str, object]] = {}
                for _ in range(20):
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    waves = {c["signal"]: c for c in msg.get("waves", [])}
                    assert "marks" not in msg  # each mark is sent once
                    if "ECG_II" in waves:
                        break
                assert waves["ECG_II"]["values"] == pytest.approx(
                    list(np.linspace(0, 1, 50)), abs=1e-4
                )
                # logging out ends the open stream too
                r = await http.post("/api/logout", headers={"x-csrf-token": csrf})
                assert r.status_code == 204
                with pytest.raises(ConnectionClosed):
                    for _ in range(30):
                        await asyncio.wait_for(ws.recv(), 5)
            with pytest.raises(InvalidStatus):
                async with connect(base + "/ws/census", additional_headers=cookie):
                    pass
    finally:
        await server.stop()


def test_users_file_hashes_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    users = Users(path)
    users.add("ada", "intensivist", "a-long-password")
    text = path.read_text()
    assert "a-long-password" not in text and "$argon2id$" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert users.verify("ada", "a-long-password") == users.get("ada")
    assert users.verify("ada", "wrong-password") is None
    with pytest.raises(ValueError, match="exists"):
        users.add("ada", "viewer", "another-password")
    with pytest.raises(ValueError, match="role"):
        users.add("bob", "surgeon", "another-password")
    with pytest.raises(ValueError, match="password"):
        users.add("bob", "viewer", "short")
    # `eicu users add` from another process; the running server's Users sees it at once
    time.sleep(0.01)
    out = subprocess.run(
        [sys.executable, "-m", "eicu.cli", "users", "add", "val", "--role", "viewer"],
        input="viewer-password\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "EICU_USERS_FILE": str(path)},
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "viewer-password" not in out.stdout + out.stderr
    assert users.verify("val", "viewer-password") is not None
    assert users.get("val").role == Role.VIEWER  # type: ignore[union-attr]


def test_a_system_account_has_an_api_token_and_no_password(tmp_path: Path) -> None:
    from dashboards.users import new_token

    path = tmp_path / "users.json"
    users = Users(path, cheap_hasher())
    # `eicu users add ... --role system` makes the token and prints it once
    out = subprocess.run(
        [sys.executable, "-m", "eicu.cli", "users", "add", "ehr", "--role", "system",
         "--sites", "icu1"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        env={**os.environ, "EICU_USERS_FILE": str(path)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert len(token) >= 32 and token not in path.read_text()
    ehr = users.by_token(token)
    assert ehr is not None and ehr.role == Role.SYSTEM and ehr.sites == {"icu1"}
    assert ehr.can(Permission.VIEW) and not ehr.can(Permission.RESPOND)
    assert users.verify("ehr", token) is None  # no password login for a system
    assert users.by_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert users.by_token("short") is None
    # a new token replaces the old one at once
    fresh = new_token()
    users.update("ehr", password=fresh)
    assert users.by_token(token) is None and users.by_token(fresh) is not None
    # a person's password is no token, and a system's token no password
    users.add("ada", "intensivist", "a-long-password")
    with pytest.raises(ValueError, match="token"):
        users.update("ada", role="system")
    with pytest.raises(ValueError, match="password"):
        users.update("ehr", role="viewer")
    with pytest.raises(ValueError, match="token"):
        users.add("feed", "system", "only-twenty-characters")
    assert users.by_token("a-long-password" * 3) is None
    users.remove("ehr")
    assert users.by_token(fresh) is None
