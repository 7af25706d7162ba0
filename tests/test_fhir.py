"""The FHIR R4 API of ``eicu dashboard`` as its own process, on a real PostgreSQL and Mosquitto:
every resource it serves parsed and validated with ``fhir.resources`` (not the project's own
code), patients across a transfer, vital signs as the vital-signs profile names them, paging,
sites, and the errors a client gets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from dashboards.users import Role, Users
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority, StoredEvent
from eicu.devservices import DashboardProcess, Mosquitto
from eicu.models import (
    INVALID_SAMPLE,
    Batch,
    BedKey,
    NumericsFrame,
    SignalBlock,
    StatusFrame,
    WaveformFrame,
)
from eicu.patients import Patient
from eicu.store import Store
from tests.cheap_argon2 import cheap_hasher

fhir_r4b = pytest.importorskip("fhir.resources.R4B", reason="pip install -e '.[dev]'")

pytestmark = [pytest.mark.broker, pytest.mark.db]

PASSWORDS = {"ada": "ada-password", "nina": "nina-password"}
BED1, BED2, OTHER = BedKey("icu1", "bed1"), BedKey("icu1", "bed_2"), BedKey("icu2", "bed8")
HOUR_US = 3600 * 1_000_000


def valid(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` parsed and validated as its FHIR resource type (R4B models, a superset of R4's
    for these resources), every contained resource too."""
    model = fhir_r4b.get_fhir_model_class(doc["resourceType"])
    model.model_validate(doc)
    for entry in doc.get("entry", []):
        valid(entry["resource"])
    return doc


SYSTEM_TOKEN = "an-ehr-api-token-of-at-least-32-characters"


@pytest.fixture
def dashboard(broker: Mosquitto, db_url: str, tmp_path: Path) -> Iterator[str]:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("ada", Role.INTENSIVIST, PASSWORDS["ada"])
    users.add("nina", Role.NURSE, PASSWORDS["nina"], sites=["icu2"])
    users.add("ehr", Role.SYSTEM, SYSTEM_TOKEN, sites=["icu1"])
    process = DashboardProcess(broker.url, db_url, users.path, tmp_path / "dashboard.log")
    try:
        yield process.wait_ready().url
    finally:
        process.stop()


async def client(base: str, name: str | None) -> httpx.AsyncClient:
    c = httpx.AsyncClient(base_url=base, timeout=10)
    if name is not None:
        r = await c.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
        assert r.status_code == 200, r.text
    return c


async def test_patients_stays_and_vital_signs_as_fhir(dashboard: str, store: Store) -> None:
    now = (time.time_ns() // 1_000_000) * 1000
    t0 = now - 2 * HOUR_US
    stay = await store.admit(Patient("4711", "Ada Li", "F", "1961-03-14", ""), BED1, t0, "t", {})
    await store.transfer(stay.encounter_id, BED2, t0 + HOUR_US, "t")
    await store.admit(Patient("99", "Bob Ma", "M", None, ""), OTHER, t0, "t", {})
    frames = []
    for i, bed in enumerate((BED1, BED2)):
        ts = t0 + i * HOUR_US + 60_000_000
        values = {"HR": 88.0 + i, "SPO2": 95.0, "TEMP": None, "NIBP_SYS": 118.0, "NIBP_DIA": 64.0}
        frames.append(NumericsFrame(bed, 1, ts, values))
    frames.append(NumericsFrame(OTHER, 1, t0 + 60_000_000, {"HR": 70.0}))
    # the rest of NEWS2's inputs, 30 s later: RR 24 (2), SpO2 95 (1), air, SBP 118, HR 89,
    # alert, 38.2 C (1): NEWS2 4, low
    scored = {"RR": 24.0, "TEMP": 38.2, "ACVPU": 0.0, "O2": 0.0}
    frames.append(NumericsFrame(BED2, 2, t0 + HOUR_US + 90_000_000, scored))
    # BED2's monitor, as its gateway's status named it (an HL7 feed's OBX-18)
    monitor = StatusFrame(BED2.site, "online", t0, bed=BED2.bed, received_us=t0 + HOUR_US,
                          device=("0123456789ABCDEF", "EUI-64"))  # fmt: skip
    await store.write(Batch(numerics=frames, statuses=[monitor]))
    raw = np.full(12 * 250, 20, dtype=np.int16)  # 0.1 mV at 200 per mV
    raw[3] = INVALID_SAMPLE
    waves = [
        WaveformFrame(BED2, i + 1, t0 + HOUR_US + 120_000_000 + i * 1_000_000,
                      (SignalBlock("ECG_II", 250.0, 200.0, 0, raw[i * 250 : (i + 1) * 250]),))
        for i in range(12)
    ]  # fmt: skip
    await store.write(Batch(waveforms=waves))
    vt = f"{BED1}/VTACH/{t0 + 600_000_000}"
    desat = f"{BED2}/SPO2_LOW/{t0 + HOUR_US + 600_000_000}"
    changes = [
        (vt, BED1, "VTACH", AlarmState.ACTIVE, t0 + 605_000_000),
        (vt, BED1, "VTACH", AlarmState.CLEARED, t0 + 900_000_000),
        (desat, BED2, "SPO2_LOW", AlarmState.ACTIVE, t0 + HOUR_US + 610_000_000),
    ]
    await store.write_alarms(
        [
            StoredEvent(
                f"e{i}",
                AlarmEvent(aid, bed, kind, Priority.HIGH, Category.PHYSIOLOGICAL, state, at),
                at,
            )
            for i, (aid, bed, kind, state, at) in enumerate(changes)
        ],
        [],
    )

    anonymous = await client(dashboard, None)
    ada = await client(dashboard, "ada")
    nina = await client(dashboard, "nina")
    try:
        meta = valid((await anonymous.get("/fhir/metadata")).json())
        assert meta["fhirVersion"] == "4.0.1"
        assert {r["type"] for r in meta["rest"][0]["resource"]} >= {"Patient", "Observation"}
        r = await anonymous.get("/fhir/Patient", params={"identifier": "4711"})
        assert r.status_code == 401 and valid(r.json())["resourceType"] == "OperationOutcome"
        assert r.headers["content-type"].startswith("application/fhir+json")

        found = valid((await ada.get("/fhir/Patient?identifier=urn:eicu:mrn|4711")).json())
        assert found["total"] == 1
        patient = found["entry"][0]["resource"]
        assert patient["name"][0]["family"] == "Li" and patient["gender"] == "female"
        assert patient["identifier"][0]["value"] == "4711"
        again = valid((await ada.get(f"/fhir/Patient/{patient['id']}")).json())
        assert again == patient

        stays = valid((await ada.get("/fhir/Encounter", params={"patient": "Patient/4711"})).json())
        (encounter,) = [e["resource"] for e in stays["entry"]]
        assert encounter["status"] == "in-progress"
        beds = [loc["location"]["display"] for loc in encounter["location"]]
        assert beds == ["icu1/bed1", "icu1/bed_2"]
        assert [loc["status"] for loc in encounter["location"]] == ["completed", "active"]
        valid((await ada.get(f"/fhir/Encounter/{encounter['id']}")).json())
        ref = encounter["location"][1]["location"]["reference"]
        assert valid((await ada.get(f"/fhir/{ref}")).json())["name"] == "icu1/bed_2"

        device = valid((await ada.get(f"/fhir/Device?location={ref}")).json())["entry"][0]
        assert device["resource"]["location"]["reference"] == ref
        assert device["resource"]["type"]["coding"][0]["code"] == "69965"
        (identifier,) = device["resource"]["identifier"]
        assert identifier["value"] == "0123456789ABCDEF" and identifier["use"] == "official"
        assert identifier["type"]["text"] == "EUI-64"
        monitors = valid((await ada.get("/fhir/Device")).json())
        assert monitors["total"] == 2  # the beds with a patient now, in both sites
        valid((await ada.get(f"/fhir/{device['fullUrl'].split('/fhir/')[1]}")).json())

        # vital signs across the transfer, as the vital-signs profile codes them
        since = f"ge{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime((t0 - 1) / 1e6))}"
        obs = valid(
            (await ada.get("/fhir/Observation", params={"patient": "4711", "date": since})).json()
        )
        resources = [e["resource"] for e in obs["entry"]]
        by_code: dict[str, list[dict[str, Any]]] = {}
        for o in resources:
            by_code.setdefault(o["code"]["coding"][0]["code"], []).append(o)
        assert [o["valueQuantity"]["value"] for o in by_code["8867-4"]] == [88.0, 89.0]
        hr = by_code["8867-4"][0]
        assert (
            hr["valueQuantity"]["code"] == "/min"
            and hr["category"][0]["coding"][0]["code"] == "vital-signs"
        )
        assert {"system": "urn:iso:std:iso:11073:10101", "code": "147842",
                "display": "MDC_ECG_HEART_RATE"} in hr["code"]["coding"]  # fmt: skip
        spo2 = by_code["59408-5"][0]["code"]["coding"]
        assert {c["code"] for c in spo2} >= {"59408-5", "2708-6"}
        temp = by_code["8310-5"][0]
        assert "valueQuantity" not in temp and temp["dataAbsentReason"]["coding"][0]["code"]
        bp = by_code["85354-9"][0]
        assert [c["valueQuantity"]["value"] for c in bp["component"]] == [118.0, 64.0]
        assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["8480-6", "8462-4"]
        assert obs["total"] == len(resources) == 10
        assert all(o["encounter"]["reference"] == f"Encounter/{encounter['id']}" for o in resources)

        # one code, and pages of two followed to the end
        hr_only = valid(
            (await ada.get("/fhir/Observation",
                           params={"patient": "4711", "date": since, "code": "8867-4"})).json()
        )  # fmt: skip
        assert hr_only["total"] == 2
        url: str | None = f"/fhir/Observation?patient=4711&date={since}&_count=3"
        pages = []
        while url is not None:
            page = valid((await ada.get(url)).json())
            pages.append(len(page["entry"]))
            url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        assert pages == [3, 3, 3, 1]

        # a stretch of ECG as SampledData, on asking for it by its MDC code
        t_wave = t0 + HOUR_US + 120_000_000

        def at(t_s: float) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_s))

        window = f"ge{at(t_wave / 1e6 - 5)}&date=lt{at(t_wave / 1e6 + 30)}"
        url_ecg = f"/fhir/Observation?patient=4711&code=131330&date={window}"
        ecg = valid((await ada.get(url_ecg)).json())
        segments = [e["resource"] for e in ecg["entry"]]
        assert len(segments) == 2  # 12 s of signal: 10 s, then 2 s
        data = " ".join(r["valueSampledData"]["data"] for r in segments).split()
        assert len(data) == 12 * 250 and data[3] == "E"
        assert float(data[0]) == pytest.approx(0.1, abs=0.005)
        assert segments[0]["valueSampledData"]["period"] == 4.0
        assert segments[0]["code"]["coding"][0]["code"] == "131330"
        r = await ada.get(f"/fhir/Observation?patient=4711&code=131330&date={since}")
        assert r.status_code == 400  # hours of waveform at once: narrow it

        # NEWS2 a minute apart, once all its inputs are there
        t_score = (t0 + HOUR_US) / 1e6
        score_window = f"ge{at(t_score)}&date=lt{at(t_score + 240)}"
        risks = valid(
            (await ada.get(f"/fhir/RiskAssessment?patient=4711&date={score_window}")).json()
        )
        texts = [e["resource"]["prediction"][0]["qualitativeRisk"]["text"] for e in risks["entry"]]
        assert texts and set(texts) == {"NEWS2 4: low"}
        first = risks["entry"][0]["resource"]
        assert first["occurrenceDateTime"] >= at(t_score + 90)[:-1]
        assert first["prediction"][0]["qualitativeRisk"]["coding"][0]["code"] == "low"
        r = await ada.get("/fhir/RiskAssessment?patient=4711&code=APACHE")
        assert r.status_code == 400

        # the patient's alarms in both beds, as Flags
        flags = valid((await ada.get(f"/fhir/Flag?patient=4711&date={since}")).json())
        assert [f["resource"]["status"] for f in flags["entry"]] == ["inactive", "active"]
        vt_flag = flags["entry"][0]["resource"]
        assert vt_flag["code"]["coding"][0]["code"] == "199874"  # MDC_EVT_ECG_ARRHY
        assert vt_flag["code"]["coding"][1]["code"] == "VTACH"
        assert vt_flag["encounter"]["reference"] == f"Encounter/{encounter['id']}"
        assert "end" in vt_flag["period"]
        active = valid(
            (await ada.get(f"/fhir/Flag?patient=4711&status=active&date={since}")).json()
        )
        assert [f["resource"]["identifier"][0]["value"] for f in active["entry"]] == [desat]

        # another site's user sees nothing of this patient
        r = await nina.get("/fhir/Patient/4711")
        assert r.status_code == 404 and valid(r.json())["resourceType"] == "OperationOutcome"
        assert valid((await nina.get("/fhir/Observation?patient=4711")).json())["total"] == 0
        assert valid((await nina.get("/fhir/Patient?identifier=99")).json())["total"] == 1

        # a bulk export of everything ada may see, as ndjson
        r = await ada.get("/fhir/$export")
        assert r.status_code == 400  # without Prefer: respond-async
        r = await ada.get(
            "/fhir/$export", params={"_since": at(t0 / 1e6 - 60)},
            headers={"prefer": "respond-async"},
        )  # fmt: skip
        assert r.status_code == 202
        status_url = r.headers["content-location"]
        assert (await nina.get(status_url)).status_code == 404  # not hers
        deadline = time.monotonic() + 30
        while (r := await ada.get(status_url)).status_code == 202:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert r.status_code == 200, r.text
        manifest = r.json()
        counts = {o["type"]: o["count"] for o in manifest["output"]}
        assert counts == {"Patient": 2, "Encounter": 2, "Observation": 11, "Flag": 2}
        for out in manifest["output"]:
            body = (await ada.get(out["url"])).text
            lines = body.splitlines()
            assert len(lines) == out["count"]
            for line in lines:
                assert valid(json.loads(line))["resourceType"] == out["type"]

        # a system client presents the session's token as a bearer token, no cookie
        token = ada.cookies.get("eicu_session")
        assert token
        async with httpx.AsyncClient(base_url=dashboard, timeout=10) as system:
            system.headers["authorization"] = f"Bearer {token}"
            found = valid((await system.get("/fhir/Patient?identifier=4711")).json())
            assert found["total"] == 1
            system.headers["authorization"] = "Bearer not-a-session"
            assert (await system.get("/fhir/Patient?identifier=4711")).status_code == 401
            # a system account presents its own API token; it has no password login
            system.headers["authorization"] = f"Bearer {SYSTEM_TOKEN}"
            found = valid((await system.get("/fhir/Patient?identifier=4711")).json())
            assert found["total"] == 1
            assert valid((await system.get("/fhir/Observation?patient=4711")).json())["total"]
            del system.headers["authorization"]
            r = await system.post("/api/login", json={"name": "ehr", "password": SYSTEM_TOKEN})
            assert r.status_code == 401

        # searches that cannot be read are refused, saying why
        bad_searches = (
            "/fhir/Observation?date=ge2026",
            "/fhir/Observation?patient=4711&date=x",
            "/fhir/Observation?patient=4711&_count=0",
            "/fhir/Patient?birthdate=1",
        )
        for bad in bad_searches:
            r = await ada.get(bad)
            assert r.status_code == 400, bad
            assert valid(r.json())["issue"][0]["diagnostics"]
        assert (await ada.get("/fhir/Encounter/nope")).status_code == 404
    finally:
        for c in (anonymous, ada, nina):
            await c.aclose()
