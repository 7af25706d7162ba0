"""The patients behind the beds through the dashboard's API: admitted, moved and discharged by
the roles that may, within their sites, shown on the census and the bed view, with notes, a
handoff and the log of every change."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from dashboards.app import create_app
from dashboards.users import Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings
from eicu.models import Batch, BedKey, NumericsFrame, SignalBlock, WaveformFrame
from eicu.patients import checked_patient
from ingest.engine import Engine
from tests.cheap_argon2 import cheap_hasher
from tests.dashboard_beds import fed_engine

PASSWORDS = {"nina": "nurse-password-1", "val": "viewer-password", "kim": "icu2-nurse-pw-1"}
ADA = {"mrn": "MRN-0042", "name": "Ada Li", "sex": "F", "birth_date": "1961-03-14",
       "allergies": "penicillin (rash)"}  # fmt: skip


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = await fed_engine(tmp_path)
    yield engine
    await engine.store.close()


@pytest.fixture
async def app(engine: Engine, tmp_path: Path) -> FastAPI:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("nina", Role.NURSE, PASSWORDS["nina"])
    users.add("val", Role.VIEWER, PASSWORDS["val"])
    users.add("kim", Role.NURSE, PASSWORDS["kim"], sites=frozenset({"icu2"}))
    return create_app(engine_source(engine), HttpSettings(cookie_secure=False), users)


async def login(app: FastAPI, name: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    r = await client.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
    assert r.status_code == 200, r.text
    client.headers["x-csrf-token"] = r.json()["csrf"]
    return client


async def test_a_patient_admitted_moved_and_discharged_follows_the_census(app: FastAPI) -> None:
    nina, val, kim = [await login(app, n) for n in ("nina", "val", "kim")]
    try:
        admission = {"patient": ADA, "diagnosis": "septic shock", "code_status": "DNR",
                     "attending": "Dr Wang", "isolation": "contact"}  # fmt: skip
        # a viewer may look but not admit; a nurse of another site may not admit here
        assert (await val.post("/api/beds/icu1/bed2/admit", json=admission)).status_code == 403
        assert (await kim.post("/api/beds/icu1/bed2/admit", json=admission)).status_code == 403
        r = await nina.post("/api/beds/icu1/bed2/admit", json=admission)
        assert r.status_code == 201, r.text
        stay = r.json()
        assert stay["bed"] == "icu1/bed2" and stay["patient"]["age"] is not None
        eid = stay["encounter_id"]
        # the census shows who is in the bed, with the code status and isolation at a glance
        row = next(
            b for b in (await val.get("/api/census")).json()["beds"] if b["bed"] == "icu1/bed2"
        )
        assert row["patient"]["name"] == "Ada Li" and row["patient"]["mrn"] == "MRN-0042"
        assert row["patient"]["code_status"] == "DNR" and row["patient"]["allergies"] is True
        empty = next(
            b for b in (await val.get("/api/census")).json()["beds"] if b["bed"] == "icu1/bed1"
        )
        assert empty["patient"] is None
        detail = (await val.get("/api/beds/icu1/bed2")).json()
        assert detail["patient"]["patient"]["allergies"] == "penicillin (rash)"
        # the bed has a patient; so has the patient a bed
        bob = {"patient": {"mrn": "MRN-7", "name": "Bob Ma"}}
        assert (await nina.post("/api/beds/icu1/bed2/admit", json=bob)).status_code == 409
        twice = await nina.post("/api/beds/icu1/bed3/admit", json={"patient": ADA})
        assert twice.status_code == 409 and "admitted already" in twice.json()["detail"]
        bad = await nina.post("/api/beds/icu1/bed3/admit", json={"patient": {**ADA, "sex": "?"}})
        assert bad.status_code == 422 and "sex" in bad.json()["detail"]
        # code status changed, a handoff written, the patient moved: the stay goes along
        r = await nina.patch(f"/api/encounters/{eid}", json={"code_status": "full"})
        assert r.status_code == 200 and r.json()["code_status"] == "full"
        assert (
            await nina.patch(f"/api/encounters/{eid}", json={"code_status": "maybe"})
        ).status_code == 422
        handoff = {"kind": "handoff", "handoff": {"illness": "watcher", "actions": "lactate 6 h"}}
        assert (await nina.post(f"/api/encounters/{eid}/notes", json=handoff)).status_code == 201
        assert (await val.post(f"/api/encounters/{eid}/notes", json=handoff)).status_code == 403
        moved = await nina.post(f"/api/encounters/{eid}/transfer", json={"bed": "icu1/bed1"})
        assert moved.status_code == 200 and moved.json()["bed"] == "icu1/bed1"
        assert [loc["bed"] for loc in moved.json()["locations"]] == ["icu1/bed2", "icu1/bed1"]
        census = {b["bed"]: b for b in (await val.get("/api/census")).json()["beds"]}
        assert census["icu1/bed1"]["patient"]["name"] == "Ada Li"
        assert census["icu1/bed2"]["patient"] is None
        # another site's nurse sees none of it
        assert (await kim.get(f"/api/encounters/{eid}")).status_code == 403
        assert (await kim.get("/api/patients")).json()["encounters"] == []
        full = (await val.get(f"/api/encounters/{eid}")).json()
        assert [n["kind"] for n in full["notes"]] == ["handoff"]
        assert [e["action"] for e in full["log"]] == ["admit", "update", "handoff", "transfer"]
        assert {e["actor"] for e in full["log"]} == {"nina"}
        done = await nina.post(f"/api/encounters/{eid}/discharge")
        assert done.status_code == 200 and done.json()["bed"] is None
        again = await nina.post(f"/api/encounters/{eid}/discharge")
        assert again.status_code == 409
        census = {b["bed"]: b for b in (await val.get("/api/census")).json()["beds"]}
        assert census["icu1/bed1"]["patient"] is None
        assert (await val.get("/api/encounters/999999")).status_code == 404
        # a state-changing request needs the session's CSRF token
        del nina.headers["x-csrf-token"]
        assert (await nina.post("/api/beds/icu1/bed3/admit", json=bob)).status_code == 403
    finally:
        for c in (nina, val, kim):
            await c.aclose()


async def test_the_trends_follow_the_patient_across_a_transfer(
    app: FastAPI, engine: Engine
) -> None:
    """A bed's trends are its patient's: the bed they came from before the transfer, this bed
    after it, and nothing of this bed from before they came (another patient's)."""
    store = engine.store
    now = time.time_ns() // 1000
    minute = 60_000_000
    bed1, bed2 = BedKey("icu1", "bed1"), BedKey("icu1", "bed2")

    def hr(bed: BedKey, at_us: int, value: float) -> NumericsFrame:
        return NumericsFrame(
            bed, 900_000 + at_us // minute, at_us, {"HR": value}, received_us=at_us
        )

    batch = Batch()
    batch.numerics += [hr(bed1, now - 20 * minute, 55.0), hr(bed2, now - 12 * minute, 111.0),
                       hr(bed1, now - 5 * minute, 99.0)]  # fmt: skip
    # a second of ECG from bed 2 while the patient was there
    ecg = SignalBlock("ECG_II", 250.0, 200.0, 0, np.arange(250, dtype=np.int16))
    t_ecg = now - 12 * minute
    batch.waveforms.append(WaveformFrame(bed2, 900_001, t_ecg, (ecg,), received_us=t_ecg))
    # bed 1 at the same time, another patient's; and a second across the transfer, half in each
    other = SignalBlock("ECG_II", 250.0, 200.0, 0, np.full(250, 1000, dtype=np.int16))
    batch.waveforms.append(WaveformFrame(bed1, 900_002, t_ecg, (other,), received_us=t_ecg))
    t_move = now - 10 * minute
    for bed, seq in ((bed2, 900_003), (bed1, 900_004)):
        frame = WaveformFrame(bed, seq, t_move - 500_000, (ecg,), received_us=t_move)
        batch.waveforms.append(frame)
    await store.write(batch)
    stay = await store.admit(checked_patient(ADA), bed2, now - 15 * minute, "nina", {})
    await store.transfer(stay.encounter_id, bed1, now - 10 * minute, "nina")
    val = await login(app, "val")
    try:
        data = (await val.get("/api/beds/icu1/bed1/trends", params={"minutes": 30})).json()
        means = [p[1] for p in data["series"]["HR"]]
        assert 111.0 in means and 99.0 in means and 55.0 not in means
        assert data["patient"]["encounter_id"] == stay.encounter_id
        assert [b[0] for b in data["patient"]["beds"]] == ["icu1/bed2", "icu1/bed1"]
        # full disclosure of a time before the transfer: from the bed the patient was in
        strip = (
            await val.get(
                "/api/beds/icu1/bed1/waveform",
                params={"signal": "ECG_II", "start_us": t_ecg, "seconds": 1},
            )
        ).json()
        assert strip["bed"] == "icu1/bed2" and len(strip["values"]) == 250
        assert strip["values"][:2] == [0.0, 0.005]  # never bed 1's other patient (5.0 mV)
        # across the transfer: bed 2's half, then bed 1's
        across = (
            await val.get(
                "/api/beds/icu1/bed1/waveform",
                params={"signal": "ECG_II", "start_us": t_move - 500_000, "seconds": 1},
            )
        ).json()
        assert [b[0] for b in across["beds"]] == ["icu1/bed2", "icu1/bed1"]
        assert len(across["values"]) == 250 and across["t_us"] == sorted(across["t_us"])
        # before the admission: not this patient's, so nothing
        before = (
            await val.get(
                "/api/beds/icu1/bed1/waveform",
                params={"signal": "ECG_II", "start_us": now - 20 * minute, "seconds": 60},
            )
        ).json()
        assert before["values"] == [] and before["beds"] == []
        # the bed the patient left shows the bed's own data: nobody is in it now
        left = (await val.get("/api/beds/icu1/bed2/trends", params={"minutes": 30})).json()
        assert "patient" not in left and 111.0 in [p[1] for p in left["series"]["HR"]]
    finally:
        await val.aclose()


async def test_history_without_the_database_is_a_503_and_live_views_go_on(
    app: FastAPI, engine: Engine
) -> None:
    val = await login(app, "val")
    try:
        app.state.sessions._recheck_s = 0.0  # the session checked in the store at every use
        await engine.store.close()  # the database is gone
        r = await val.get("/api/beds/icu1/bed2/trends")
        assert r.status_code == 503 and "database" in r.json()["detail"]
        assert (await val.get("/api/patients")).status_code == 503
        census = await val.get("/api/census")  # live: from the engine, patients as last read
        assert census.status_code == 200 and len(census.json()["beds"]) == 5
    finally:
        await val.aclose()
        await engine.store.open()  # for the fixture's close
