"""The dashboard's alarm API against a real Engine, AlarmService and outbox."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from alerting.outbox import Outbox
from alerting.service import AlarmService
from dashboards import views
from dashboards.app import create_app
from dashboards.users import Role, Users
from eicu.alarm_model import AlarmCondition, AlarmEvent, AlarmState, Category, Priority
from eicu.alarms.state import Alarm
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings
from eicu.models import BedKey
from ingest.engine import Engine
from ingest.live import EngineBeds
from tests.dashboard_beds import fed_engine, prompt_policy

PASSWORDS = {"ada": "intensivist-pw-1", "nina": "nurse-password-1", "val": "viewer-password"}
SICK = BedKey("icu1", "bed2")  # fed_engine's deteriorating bed: NEWS2 high


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = await fed_engine(tmp_path)
    yield engine
    if engine.alarms is not None:
        engine.alarms.outbox.close()
    await engine.store.close()


@pytest.fixture
def service(engine: Engine, tmp_path: Path) -> AlarmService:
    engine.alarms = AlarmService(engine, Outbox(tmp_path / "alarms.db"), prompt_policy())
    engine.alarms.evaluate(now_us())
    return engine.alarms


@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> FastAPI:
    users = Users(tmp_path / "users.json")
    users.add("ada", Role.INTENSIVIST, PASSWORDS["ada"])
    users.add("nina", Role.NURSE, PASSWORDS["nina"])
    users.add("val", Role.VIEWER, PASSWORDS["val"])
    return create_app(engine_source(engine), HttpSettings(cookie_secure=False), users)


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def login(app: FastAPI, name: str) -> tuple[httpx.AsyncClient, dict[str, str]]:
    c = client(app)
    r = await c.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
    assert r.status_code == 200, r.text
    return c, {"X-CSRF-Token": r.json()["csrf"]}


def high_alarm(alarms: list[dict[str, object]]) -> dict[str, object]:
    return next(a for a in alarms if a["bed"] == str(SICK) and a["kind"] == "NEWS2_HIGH")


async def test_live_alarms_highest_priority_first_and_per_bed(
    service: AlarmService, app: FastAPI
) -> None:
    c, _ = await login(app, "val")
    async with aclosing(c):
        r = await c.get("/api/alarms")
        assert r.status_code == 200, r.text
        alarms = r.json()["alarms"]
        ranks = [views.PRIORITY_RANK[str(a["priority"])] for a in alarms]
        assert ranks == sorted(ranks, reverse=True) and ranks[0] == 3
        top = alarms[0]
        assert (top["bed"], top["kind"], top["state"]) == (str(SICK), "NEWS2_HIGH", "active")
        assert top["sounding"] is True and top["acknowledged_by"] is None
        assert top["audio_paused_until_us"] is None and top["started_us"] > 0
        one = (await c.get("/api/alarms", params={"bed": "icu2/bed9"})).json()
        assert [a["kind"] for a in one["alarms"]] == ["BED_OFFLINE"]
        assert one["history"][0]["state"] == "active" and one["history"][0]["actor"] == "engine"
        assert (await c.get("/api/alarms", params={"bed": "nonsense"})).status_code == 404
        census = (await c.get("/api/census")).json()["beds"]
        assert census[0]["bed"] == str(SICK) and census[0]["alarm"]["kind"] == "NEWS2_HIGH"
        assert all(row["alarms_available"] for row in census)


async def test_viewer_may_not_acknowledge_and_a_nurse_is_audited(
    service: AlarmService, app: FastAPI
) -> None:
    alarm_id = next(
        a.alarm_id for a in service.machine.alarms() if a.bed == SICK and a.kind == "NEWS2_HIGH"
    )
    viewer, viewer_csrf = await login(app, "val")
    nurse, nurse_csrf = await login(app, "nina")
    async with aclosing(viewer), aclosing(nurse):
        denied = await viewer.post(f"/api/alarms/{alarm_id}/ack", headers=viewer_csrf)
        assert denied.status_code == 403
        assert service.machine.alarm(alarm_id).state == AlarmState.ACTIVE
        no_csrf = await nurse.post(f"/api/alarms/{alarm_id}/ack")
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
        ack = await nurse.post(f"/api/alarms/{alarm_id}/ack", headers=nurse_csrf)
        assert ack.status_code == 200, ack.text
        assert ack.json()["events"][-1]["actor"] == "nina"
        audited = service.outbox.events(alarm_id)[-1].event
        assert (audited.state, audited.actor) == (AlarmState.ACKNOWLEDGED, "nina")
        again = await nurse.post(f"/api/alarms/{alarm_id}/ack", headers=nurse_csrf)
        assert again.status_code == 409
        unknown = await nurse.post("/api/alarms/icu1/bed2/VTACH/1/ack", headers=nurse_csrf)
        assert unknown.status_code == 404
        view = high_alarm((await nurse.get("/api/alarms")).json()["alarms"])
        assert view["state"] == "acknowledged" and view["acknowledged_by"] == "nina"
        assert view["sounding"] is False
        census = (await nurse.get("/api/census")).json()["beds"]
        assert census[0]["alarm"]["state"] == "acknowledged"


async def test_pause_is_cut_to_the_policy_limit_and_audited(
    service: AlarmService, app: FastAPI
) -> None:
    limit_s = service.machine.policy_for(SICK).audio_pause_max_s
    alarm_id = next(
        a.alarm_id for a in service.machine.alarms() if a.bed == SICK and a.kind == "NEWS2_HIGH"
    )
    viewer, viewer_csrf = await login(app, "val")
    doctor, csrf = await login(app, "ada")
    async with aclosing(viewer), aclosing(doctor):
        path = f"/api/alarms/{alarm_id}/pause"
        denied = await viewer.post(path, headers=viewer_csrf, json={"duration_s": 60})
        assert denied.status_code == 403
        too_long = await doctor.post(path, headers=csrf, json={"duration_s": 86_400})
        assert too_long.status_code == 422
        before = now_us()
        r = await doctor.post(path, headers=csrf, json={"duration_s": limit_s * 10})
        assert r.status_code == 200, r.text
        assert r.json()["paused_s"] == limit_s
        view = high_alarm((await doctor.get("/api/alarms")).json()["alarms"])
        until = view["audio_paused_until_us"]
        assert isinstance(until, int)
        assert before + limit_s * 1e6 <= until <= now_us() + limit_s * 1e6
        assert view["sounding"] is False and view["state"] == "active"
        audited = service.outbox.events(alarm_id)[-1].event
        assert audited.actor == "ada" and audited.audio_paused_until_us == until
        # the whole bed: every live alarm of it paused, each audited with the user
        bed = await doctor.post(
            "/api/beds/icu2/bed9/alarms/pause", headers=csrf, json={"duration_s": 30}
        )
        assert bed.status_code == 200, bed.text
        assert [e["kind"] for e in bed.json()["events"]] == ["BED_OFFLINE"]
        assert all(e["actor"] == "ada" for e in bed.json()["events"])
        quiet = await doctor.post(
            "/api/beds/icu1/bed1/alarms/pause", headers=csrf, json={"duration_s": 30}
        )
        assert quiet.status_code == 409


async def test_anonymous_gets_401_and_no_alarm_service_is_503(app: FastAPI, engine: Engine) -> None:
    async with client(app) as anon:
        assert (await anon.get("/api/alarms")).status_code == 401
        r = await anon.post("/api/alarms/icu1/bed2/NEWS2_HIGH/1/ack")
        assert r.status_code == 401 and "bed2" not in r.text.replace("/api", "")
        pause = await anon.post("/api/beds/icu1/bed2/alarms/pause", json={"duration_s": 5})
        assert pause.status_code == 401
    assert engine.alarms is None
    c, csrf = await login(app, "nina")
    async with aclosing(c):
        r = await c.get("/api/alarms")
        assert r.status_code == 503 and "no alarm service" in r.json()["detail"]
        ack = await c.post("/api/alarms/icu1/bed2/NEWS2_HIGH/1/ack", headers=csrf)
        assert ack.status_code == 503
        census = (await c.get("/api/census")).json()["beds"]
        assert census and not any(row["alarms_available"] for row in census)


def _alarm(bed: BedKey, priority: Priority, state: AlarmState) -> Alarm:
    return Alarm(
        alarm_id=f"{bed}/X/1", bed=bed, kind="X", category=Category.PHYSIOLOGICAL,
        priority=priority, state=state, started_us=1, condition_present=True, value=None,
        detail="", acknowledged_by=None, acknowledged_us=None, audio_paused_until_us=None,
    )  # fmt: skip


async def test_census_puts_high_priority_alarms_before_acuity(engine: Engine) -> None:
    calm, stale, offline = BedKey("icu1", "bed1"), BedKey("icu2", "bed8"), BedKey("icu2", "bed9")
    alarms = [
        _alarm(calm, Priority.HIGH, AlarmState.ACKNOWLEDGED),
        _alarm(stale, Priority.HIGH, AlarmState.LATCHED),
        _alarm(offline, Priority.MEDIUM, AlarmState.ACTIVE),
        _alarm(SICK, Priority.LOW, AlarmState.CLEARED),
    ]
    t = now_us()
    by_bed: dict[BedKey, tuple[Alarm, ...]] = {}
    for alarm in alarms:
        by_bed[alarm.bed] = (*by_bed.get(alarm.bed, ()), alarm)
    snaps = [replace(s, alarms=by_bed.get(s.bed, ())) for s in EngineBeds(engine).snapshots(t)]
    rows = views.census(snaps, t)
    order = [r["bed"] for r in rows]
    # latched high, then acknowledged high, then NEWS2 acuity (the sick bed first)
    assert order[:3] == [str(stale), str(calm), str(SICK)]
    assert rows[2]["alarm"] is None  # a cleared alarm is not shown
    assert next(r for r in rows if r["bed"] == str(offline))["alarm"]["priority"] == "medium"


async def test_a_clock_that_went_back_is_refused_not_recorded(
    service: AlarmService, app: FastAPI
) -> None:
    alarm_id = next(
        a.alarm_id for a in service.machine.alarms() if a.bed == SICK and a.kind == "NEWS2_HIGH"
    )
    service.evaluate(now_us() + 60_000_000)  # the engine's last step is a minute ahead
    before = len(service.outbox.events(alarm_id))
    c, csrf = await login(app, "nina")
    async with aclosing(c):
        r = await c.post(f"/api/alarms/{alarm_id}/ack", headers=csrf)
        assert r.status_code == 503 and "clock went back" in r.json()["detail"]
        p = await c.post(f"/api/alarms/{alarm_id}/pause", headers=csrf, json={"duration_s": 5})
        assert p.status_code == 503
    assert len(service.outbox.events(alarm_id)) == before
    assert service.machine.alarm(alarm_id).state == AlarmState.ACTIVE


async def test_review_window_shows_the_bed_alarms_from_the_audit_trail(
    engine: Engine, service: AlarmService, app: FastAPI
) -> None:
    live = views.live_alarms(service.machine.alarms(), now_us(), SICK)
    assert live
    start_us = now_us() - 8_000_000
    async with aclosing(client(app)) as viewer:
        r = await viewer.post("/api/login", json={"name": "val", "password": PASSWORDS["val"]})
        assert r.status_code == 200
        w = (
            await viewer.get(
                "/api/beds/icu1/bed2/waveform",
                params={"signal": "ECG_II", "start_us": start_us, "seconds": 20},
            )
        ).json()
        before = (
            await viewer.get(
                "/api/beds/icu1/bed2/waveform",
                params={"signal": "ECG_II", "start_us": start_us - 60_000_000, "seconds": 20},
            )
        ).json()
        other = (
            await viewer.get(
                "/api/beds/icu1/bed1/waveform",
                params={"signal": "ECG_II", "start_us": start_us, "seconds": 20},
            )
        ).json()
    spans = {s["alarm_id"]: s for s in w["alarms"]}
    assert set(spans) == {a["alarm_id"] for a in live}
    for a in live:
        assert spans[a["alarm_id"]]["kind"] == a["kind"]
        assert spans[a["alarm_id"]]["end_us"] is None  # still present
    assert before["alarms"] == [] and other["alarms"] == []


def _rhythm(bed: BedKey, kind: str, t_us: int, *, present: bool = True) -> AlarmCondition:
    return AlarmCondition(bed, kind, Category.PHYSIOLOGICAL, Priority.HIGH, t_us, present=present)


async def test_census_headline_is_the_most_severe_condition(
    service: AlarmService, app: FastAPI
) -> None:
    """An asystole bed whose escalated low heart rate started after the asystole, and a VT bed
    whose heart-rate alarm started after the VT, both latched: the census headlines ASYSTOLE
    and VTACH, ranks those beds above the NEWS2_HIGH bed, and the bed view lists them first."""
    asystole, vt = BedKey("icu1", "bed1"), BedKey("icu1", "bed3")
    t0 = now_us()
    service.machine.observe([_rhythm(asystole, "ASYSTOLE", t0), _rhythm(vt, "VTACH", t0)], t0)
    t1 = t0 + 1_000_000
    service.machine.observe(
        [
            _rhythm(asystole, "ASYSTOLE", t1, present=False),  # latched
            _rhythm(vt, "VTACH", t1, present=False),
            _rhythm(asystole, "HR_LOW", t1),
            _rhythm(vt, "HR_HIGH", t1),
        ],
        t1,
    )
    t2 = t1 + 11_000_000  # past the heart-rate alarms' 10 s delay: they start, newest
    service.machine.observe([_rhythm(asystole, "HR_LOW", t2), _rhythm(vt, "HR_HIGH", t2)], t2)
    c, _ = await login(app, "val")
    async with aclosing(c):
        census = (await c.get("/api/census")).json()["beds"]
        head = {row["bed"]: row["alarm"] for row in census}
        assert (head[str(asystole)]["kind"], head[str(asystole)]["state"]) == (
            "ASYSTOLE",
            "latched",
        )
        assert (head[str(vt)]["kind"], head[str(vt)]["state"]) == ("VTACH", "latched")
        assert head[str(SICK)]["kind"] == "NEWS2_HIGH"
        assert [row["bed"] for row in census[:3]] == [str(asystole), str(vt), str(SICK)]
        listed = (await c.get("/api/alarms", params={"bed": str(vt)})).json()["alarms"]
        assert [a["kind"] for a in listed] == ["VTACH", "HR_HIGH"]
        every = (await c.get("/api/alarms")).json()["alarms"]
        assert [a["kind"] for a in every[:3]] == ["ASYSTOLE", "VTACH", "HR_LOW"]


async def test_the_alarm_service_hands_on_the_most_severe_alarm_first(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The low heart rate's 10 s delay ends in the pass in which asystole begins, and the rules
    report the low heart rate first: the service records and hands on the asystole first (its
    page is the first sent)."""
    from alerting import service as service_module
    from eicu.alarms.rules import RuleOutput

    bed = BedKey("icu1", "bed1")
    t0 = now_us()
    t1 = t0 + 10_000_000

    def rules(b: BedKey, _policy: object, now: int, **_: object) -> RuleOutput:
        if b != bed:
            return RuleOutput(())
        hr_low = _rhythm(bed, "HR_LOW", now)
        asystole = _rhythm(bed, "ASYSTOLE", now, present=now >= t1)
        return RuleOutput((hr_low, asystole))

    monkeypatch.setattr(service_module, "evaluate_bed", rules)
    handed: list[AlarmEvent] = []
    service = AlarmService(
        engine, Outbox(tmp_path / "ranked.db"), prompt_policy(), on_events=handed.extend
    )
    assert service.evaluate(t0, [bed]) == []  # HR_LOW pending
    events = service.evaluate(t1, [bed])
    assert [(e.kind, e.state) for e in events] == [
        ("ASYSTOLE", AlarmState.ACTIVE),
        ("HR_LOW", AlarmState.ACTIVE),
    ]
    assert handed == events
    stored = [s.event.kind for s in service.outbox.events(started_since_us=t0)]
    assert stored == ["ASYSTOLE", "HR_LOW"]
    service.outbox.close()
