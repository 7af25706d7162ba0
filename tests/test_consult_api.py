"""Video consult signaling, site scoping and the cart role, against a real Engine and store,
through a real uvicorn server, with Python WebSocket clients standing in for browser and cart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from alerting.outbox import Outbox
from alerting.service import AlarmService
from dashboards.app import COOKIE, create_app
from dashboards.consult import ConsultHub, quality_figures
from dashboards.server import DashboardServer
from dashboards.users import Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings, parse_ice_servers
from eicu.errors import StorageUnavailable
from eicu.models import BedKey
from eicu.store import Store
from eicu.store.base import CallRecord
from ingest.engine import Engine
from tests.cheap_argon2 import cheap_hasher
from tests.dashboard_beds import fed_engine, prompt_policy

ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {
    "ada": "intensivist-pw-1",  # intensivist, every site
    "iris": "intensivist-pw-2",  # intensivist, icu2 only
    "nina": "nurse-password-1",  # nurse, every site
    "val": "viewer-password",  # viewer, every site
    "root": "admin-password-1",  # admin, every site
    "cart1": "cart-password-1",  # cart of icu1/bed1
    "cart2": "cart-password-2",  # cart of icu2/bed8
}
ICE = [{"urls": ["stun:stun.example.org:3478"]},
       {"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "c"}]  # fmt: skip
BED = BedKey("icu1", "bed1")
SDP_OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=offer\r\n"
SDP_ANSWER = "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=answer\r\n"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = await fed_engine(tmp_path)
    yield engine
    await engine.store.close()


@pytest.fixture
def users(tmp_path: Path) -> Users:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("ada", Role.INTENSIVIST, PASSWORDS["ada"])
    users.add("iris", Role.INTENSIVIST, PASSWORDS["iris"], sites=frozenset({"icu2"}))
    users.add("nina", Role.NURSE, PASSWORDS["nina"])
    users.add("val", Role.VIEWER, PASSWORDS["val"])
    users.add("root", Role.ADMIN, PASSWORDS["root"])
    users.add("cart1", Role.CART, PASSWORDS["cart1"], bed="icu1/bed1")
    users.add("cart2", Role.CART, PASSWORDS["cart2"], bed="icu2/bed8")
    return users


@pytest.fixture
def app(engine: Engine, users: Users) -> FastAPI:
    ice = parse_ice_servers(ICE, "EICU_ICE_SERVERS")
    return create_app(
        engine_source(engine), HttpSettings(cookie_secure=False), users, ice_servers=ice
    )


@pytest.fixture
async def server(app: FastAPI) -> AsyncIterator[DashboardServer]:
    server = DashboardServer(app, "127.0.0.1", 0)
    await server.start()
    yield server
    await server.stop()


class Site:
    """The running server: log in over HTTP, open WebSockets with the session cookie."""

    def __init__(self, server: DashboardServer, http: httpx.AsyncClient) -> None:
        self.ws_base = server.url.replace("http://", "ws://")
        self.http = http
        self.tokens: dict[str, tuple[str, str]] = {}

    async def login(self, name: str) -> dict[str, str]:
        http = httpx.AsyncClient(base_url=str(self.http.base_url))
        async with http:
            r = await http.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
        assert r.status_code == 200, r.text
        self.tokens[name] = (r.cookies[COOKIE], r.json()["csrf"])
        return {"cookie": f"{COOKIE}={r.cookies[COOKIE]}"}

    def ws(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return connect(self.ws_base + path, additional_headers=headers or {}, **kw)


@pytest.fixture
async def site(server: DashboardServer) -> AsyncIterator[Site]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        yield Site(server, http)


async def recv(ws: ClientConnection, timeout_s: float = 5.0) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    assert isinstance(message, dict)
    return message


async def recv_type(ws: ClientConnection, kind: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The next message of type ``kind`` (pongs and stats in between are skipped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        message = await recv(ws, max(0.1, deadline - time.monotonic()))
        if message["type"] == kind:
            return message


async def closed(ws: ClientConnection, timeout_s: float = 5.0) -> tuple[int, str]:
    """The close code and reason the server ended the connection with."""
    with pytest.raises(ConnectionClosed) as ended:
        for _ in range(100):
            await asyncio.wait_for(ws.recv(), timeout_s)
    assert ended.value.rcvd is not None
    return ended.value.rcvd.code, ended.value.rcvd.reason


async def audited(store: Store, call_id: str | None = None) -> list[CallRecord]:
    now = time.time_ns() // 1000
    calls = await store.calls(now - 3_600_000_000, now + 1_000_000)
    return [c for c in calls if call_id is None or c.call_id == call_id]


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def metrics_text(engine: Engine) -> str:
    from prometheus_client import generate_latest

    return generate_latest(engine.metrics.registry).decode()


# --- site scoping and the cart role over HTTP ----------------------------------------------------


async def login_client(app: FastAPI, name: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    r = await client.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
    assert r.status_code == 200, r.text
    return client


async def test_a_user_limited_to_a_site_sees_only_its_beds(app: FastAPI) -> None:
    client = await login_client(app, "iris")
    async with contextlib.aclosing(client):
        me = (await client.get("/api/me")).json()
        assert me["sites"] == ["icu2"] and "consult" in me["permissions"]
        census = (await client.get("/api/census")).json()
        assert census["sites"] == ["icu2"]
        assert {r["bed"] for r in census["beds"]} == {"icu2/bed8", "icu2/bed9"}
        assert (await client.get("/api/census", params={"site": "icu1"})).json()["beds"] == []
        assert (await client.get("/api/beds/icu2/bed8")).status_code == 200
        for path in ("/api/beds/icu1/bed1", "/api/beds/icu1/bed1/trends"):
            r = await client.get(path)
            assert r.status_code == 403 and "bed1" not in r.text.replace("icu1/bed1", ""), path
        r = await client.get(
            "/api/beds/icu1/bed1/waveform", params={"signal": "ECG_II", "start_us": 0}
        )
        assert r.status_code == 403
    # a user of every site still sees every bed
    client = await login_client(app, "ada")
    async with contextlib.aclosing(client):
        assert (await client.get("/api/me")).json()["sites"] is None
        assert len((await client.get("/api/census")).json()["beds"]) == 5


async def test_alarms_of_other_sites_are_invisible(
    app: FastAPI, engine: Engine, tmp_path: Path
) -> None:
    engine.alarms = AlarmService(engine, Outbox(tmp_path / "alarms.db"), prompt_policy())
    try:
        engine.alarms.evaluate(time.time_ns() // 1000)
        every = await login_client(app, "ada")
        async with contextlib.aclosing(every):
            alarms = (await every.get("/api/alarms")).json()["alarms"]
        assert {a["bed"].split("/")[0] for a in alarms} == {"icu1", "icu2"}
        icu1_alarm = next(a["alarm_id"] for a in alarms if a["bed"].startswith("icu1/"))
        client = await login_client(app, "iris")
        async with contextlib.aclosing(client):
            mine = (await client.get("/api/alarms")).json()["alarms"]
            assert mine and {a["bed"].split("/")[0] for a in mine} == {"icu2"}
            assert (await client.get("/api/alarms", params={"bed": "icu1/bed2"})).status_code == 403
            csrf = (await client.get("/api/me")).json()["csrf"]
            r = await client.post(f"/api/alarms/{icu1_alarm}/ack", headers={"x-csrf-token": csrf})
            assert r.status_code == 403
            r = await client.post(
                "/api/beds/icu1/bed2/alarms/pause",
                json={"duration_s": 60},
                headers={"x-csrf-token": csrf},
            )
            assert r.status_code == 403
    finally:
        engine.alarms.outbox.close()
        engine.alarms = None


async def test_an_admin_adds_users_with_sites(app: FastAPI, users: Users) -> None:
    client = await login_client(app, "root")
    async with contextlib.aclosing(client):
        csrf = {"x-csrf-token": (await client.get("/api/me")).json()["csrf"]}
        new = {"name": "nora", "role": "nurse", "password": "nurse-password-2", "sites": ["icu1"]}
        r = await client.post("/api/users", json=new, headers=csrf)
        assert r.status_code == 201 and r.json() == {"name": "nora", "role": "nurse",
                                                     "sites": ["icu1"], "bed": None}  # fmt: skip
        bad = {**new, "name": "nell", "sites": ["icu 1"]}
        assert (await client.post("/api/users", json=bad, headers=csrf)).status_code == 422
        empty = {**new, "name": "nell", "sites": []}
        assert (await client.post("/api/users", json=empty, headers=csrf)).status_code == 422
        cart = {"name": "cart-9", "role": "cart", "password": "cart-password-9", "sites": ["icu2"]}
        r = await client.post("/api/users", json=cart, headers=csrf)
        assert r.status_code == 422 and "SITE/BED" in r.text  # a cart names its bed
        r = await client.post("/api/users", json={**cart, "bed": "icu2/bed9"}, headers=csrf)
        assert r.status_code == 201 and r.json()["bed"] == "icu2/bed9"
        listed = {u["name"]: u["sites"] for u in (await client.get("/api/users")).json()}
    assert listed["nora"] == ["icu1"] and listed["cart-9"] == ["icu2"] and listed["ada"] is None
    nora = users.get("nora")
    assert nora is not None and nora.sites == frozenset({"icu1"}) and users.get("nell") is None


async def test_the_cart_role_sees_no_patient_data(app: FastAPI) -> None:
    client = await login_client(app, "cart1")
    async with contextlib.aclosing(client):
        routes = [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/api/")]
        for route in routes:
            if route.path in ("/api/login", "/api/logout") or "GET" not in route.methods:
                continue
            path = route.path.replace("{site}", "icu1").replace("{bed}", "bed1")
            r = await client.get(path, params={"signal": "ECG_II", "start_us": 0})
            assert r.status_code == 403, (route.path, r.status_code)
            assert "bed2" not in r.text and "HR" not in r.text


async def test_site_scoping_and_the_cart_role_on_the_live_websockets(
    site: Site, server: DashboardServer
) -> None:
    iris = await site.login("iris")
    with pytest.raises(InvalidStatus) as refused:
        async with site.ws("/ws/beds/icu1/bed1", iris):
            pass
    assert refused.value.response.status_code == 403
    async with site.ws("/ws/census", iris) as ws:
        census = await recv(ws)
    assert {r["site"] for r in census["beds"]} == {"icu2"} and census["sites"] == ["icu2"]
    cart = await site.login("cart1")
    for path in ("/ws/census", "/ws/beds/icu1/bed1"):
        with pytest.raises(InvalidStatus):
            async with site.ws(path, cart):
                pass


# --- who may call, who may register as a cart ----------------------------------------------------


async def test_anonymous_forbidden_and_cross_origin_calls_are_refused(
    site: Site, engine: Engine
) -> None:
    for path in ("/ws/consult/icu1/bed1", "/ws/cart/icu1/bed1"):
        async with site.ws(path) as ws:
            assert await closed(ws) == (4401, "log in first")
    ada = await site.login("ada")
    with pytest.raises(InvalidStatus) as refused:  # another site's page, with ada's cookie
        async with site.ws("/ws/consult/icu1/bed1", ada, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    async with site.ws("/ws/consult/icu1/bed1", await site.login("val")) as ws:
        assert await closed(ws) == (4403, "the viewer role may not call a bed")
    async with site.ws("/ws/consult/icu1/bed1?alarm=A7", await site.login("iris")) as ws:
        assert await closed(ws) == (4403, "this bed is not in your sites")
    # registering as a cart: only the cart role, only for its own sites
    async with site.ws("/ws/cart/icu1/bed1", ada) as ws:
        code, reason = await closed(ws)
        assert code == 4403 and "intensivist" in reason
    async with site.ws("/ws/cart/icu1/bed1", await site.login("cart2")) as ws:
        assert await closed(ws) == (4421, "the cart account cart2 serves icu2/bed8, not icu1/bed1")
    async with site.ws("/ws/cart/icu1/bed1", await site.login("root")) as ws:
        assert (await closed(ws))[0] == 4403
    # no cart, so no call
    async with site.ws("/ws/consult/icu1/bed1", ada) as ws:
        assert await recv(ws) == {"type": "error", "reason": "no cart is registered for icu1/bed1"}
        assert (await closed(ws))[0] == 1000
    # the refused attempts of logged-in users are audited, with who and which bed
    rows = await audited(engine.store)
    assert [(r.caller, str(r.bed), r.outcome) for r in rows] == [
        ("val", "icu1/bed1", "refused"),
        ("iris", "icu1/bed1", "refused"),
        ("ada", "icu1/bed1", "no_cart"),
    ]
    assert rows[1].alarm_id == "A7" and rows[1].end_reason == "this bed is not in your sites"
    assert 'eicu_consult_calls_total{outcome="refused"} 3.0' in metrics_text(engine)


async def test_a_call_is_relayed_measured_and_audited(
    site: Site, engine: Engine, app: FastAPI
) -> None:
    hub: ConsultHub = app.state.consult
    ada, cart_cookie = await site.login("ada"), await site.login("cart1")
    async with site.ws("/ws/cart/icu1/bed1", cart_cookie) as cart:
        assert await recv(cart) == {
            "type": "registered", "site": "icu1", "bed": "bed1", "ice_servers": ICE,
        }  # fmt: skip
        async with site.ws("/ws/consult/icu1/bed1?alarm=icu1/bed1/HR_HIGH/1", ada) as browser:
            ready = await recv(browser)
            assert ready["type"] == "ready" and ready["ice_servers"] == ICE
            call_id = ready["call_id"]
            # audited at the start, before any media
            [row] = await audited(engine.store, call_id)
            assert (row.caller, row.cart, row.bed, row.ended_us) == ("ada", "cart1", BED, None)
            assert row.alarm_id == "icu1/bed1/HR_HIGH/1"
            assert "eicu_consult_active_calls 1.0" in metrics_text(engine)

            # garbage from either side is counted and ignored; the call goes on
            await browser.send("not json")
            await browser.send(json.dumps({"type": "teleport"}))
            await browser.send(b"\x00\x01")
            await cart.send(json.dumps({"type": "answer", "call_id": "nope", "sdp": "x"}))
            await cart.send(json.dumps([1, 2]))
            await browser.send(json.dumps({"type": "ping"}))
            assert await recv(browser) == {"type": "pong"}

            await browser.send(json.dumps({"type": "offer", "sdp": SDP_OFFER}))
            offer = await recv_type(cart, "offer")
            assert offer == {"type": "offer", "call_id": call_id, "sdp": SDP_OFFER, "caller": "ada"}
            await cart.send(json.dumps({"type": "answer", "call_id": call_id, "sdp": SDP_ANSWER}))
            assert await recv_type(browser, "answer") == {"type": "answer", "sdp": SDP_ANSWER}

            # the cart is busy for everyone else meanwhile
            async with site.ws("/ws/consult/icu1/bed1", await site.login("nina")) as other:
                assert await recv(other) == {
                    "type": "error", "reason": "the cart of icu1/bed1 is in another call",
                }  # fmt: skip

            # quality from both sides, as metrics; the cart's also shown to the browser
            cart_stats = {  # the cart's call summary: inbound is the video it receives
                "inbound": {"video": {"frames": 310, "fps": 15.0, "width": 640, "height": 480,
                                      "packets_received": 198, "packets_lost": 2},
                            "audio": {"frames": 1000, "packets_received": 900}},
                "outbound": {"video": {"frames": 300, "round_trip_time_s": 0.004}},
                "round_trip_time_s": 0.004,
            }  # fmt: skip
            await cart.send(json.dumps({"type": "stats", "call_id": call_id, "stats": cart_stats}))
            shown = await recv_type(browser, "cart_stats")
            assert shown["stats"]["width"] == 640 and shown["stats"]["loss"] == pytest.approx(0.01)
            await browser.send(json.dumps({"type": "stats", "stats": {
                "width": 640, "height": 480, "fps": 14.5, "rtt_s": 0.003, "loss": 0.0,
                "frames_decoded": 120, "junk": "x", "fps_bad": float("nan")}}))  # fmt: skip

            def gauge(name: str, side: str) -> str:
                return f'{name}{{bed="bed1",side="{side}",site="icu1"}}'

            async def both_reported() -> bool:
                text = metrics_text(engine)
                return gauge("eicu_consult_video_frames_per_second", "browser") + " 14.5" in text

            await until(both_reported)
            text = metrics_text(engine)
            assert gauge("eicu_consult_video_width_pixels", "cart") + " 640.0" in text
            assert gauge("eicu_consult_round_trip_seconds", "browser") + " 0.003" in text
            assert gauge("eicu_consult_packet_loss_ratio", "cart") + " 0.01" in text
            assert gauge("eicu_consult_frames_decoded", "cart") + " 310.0" in text
            assert gauge("eicu_consult_round_trip_seconds", "cart") + " 0.004" in text
            assert gauge("eicu_consult_frames_decoded", "browser") + " 120.0" in text
            rejected = 'eicu_consult_messages_rejected_total{reason="%s",side="%s"} 1.0'
            for reason, side in (("not_json", "browser"), ("unknown_type", "browser"),
                                 ("binary", "browser"), ("no_such_call", "cart"),
                                 ("no_type", "cart")):  # fmt: skip
                assert rejected % (reason, side) in text

            await browser.send(json.dumps({"type": "hangup", "call_id": call_id}))
            hangup = await recv_type(cart, "hangup")
            assert hangup["call_id"] == call_id and hangup["reason"] == "the caller hung up"
            assert (await closed(browser))[0] == 1000
        # the cart stays registered for the next call
        assert BED in hub.carts and hub.carts[BED].call is None
        await cart.send(json.dumps({"type": "ping"}))
        assert await recv_type(cart, "pong") == {"type": "pong"}

    [row] = await audited(engine.store, call_id)
    assert row.outcome == "completed" and row.ended_by == "ada"
    assert row.end_reason == "the caller hung up"
    assert row.answered_us is not None and row.ended_us is not None
    assert row.started_us <= row.answered_us <= row.ended_us
    text = metrics_text(engine)
    assert "eicu_consult_active_calls 0.0" in text
    assert 'eicu_consult_calls_total{outcome="completed"} 1.0' in text
    assert 'bed="bed1"' not in text  # a call's quality series go when it ends


async def test_the_call_ends_when_either_side_goes_away(site: Site, engine: Engine) -> None:
    ada, cart_cookie = await site.login("ada"), await site.login("cart1")
    async with site.ws("/ws/cart/icu1/bed1", cart_cookie) as cart:
        await recv_type(cart, "registered")
        # the browser's page closes: the cart is told to hang up
        async with site.ws("/ws/consult/icu1/bed1", ada) as browser:
            first = (await recv_type(browser, "ready"))["call_id"]
            await browser.send(json.dumps({"type": "offer", "sdp": SDP_OFFER}))
            await recv_type(cart, "offer")
            await cart.send(json.dumps({"type": "answer", "call_id": first, "sdp": SDP_ANSWER}))
            await recv_type(browser, "answer")
        hangup = await recv_type(cart, "hangup")
        assert hangup == {"type": "hangup", "call_id": first,
                          "reason": "the browser closed the connection"}  # fmt: skip
        # the cart says it is busy
        async with site.ws("/ws/consult/icu1/bed1", ada) as browser:
            busy = (await recv_type(browser, "ready"))["call_id"]
            await browser.send(json.dumps({"type": "offer", "sdp": SDP_OFFER}))
            await recv_type(cart, "offer")
            await cart.send(json.dumps({"type": "busy", "call_id": busy}))
            assert (await recv_type(browser, "hangup"))["outcome"] == "busy"
        # the cart's connection drops mid-call: the browser is told
        async with site.ws("/ws/consult/icu1/bed1", ada) as browser:
            dropped = (await recv_type(browser, "ready"))["call_id"]
            await cart.close()
            ended = await recv_type(browser, "hangup")
            assert ended == {"type": "hangup", "reason": "the cart disconnected",
                             "outcome": "failed"}  # fmt: skip
    rows = {r.call_id: r for r in await audited(engine.store)}
    assert rows[first].outcome == "completed" and rows[first].ended_by == "ada"
    assert rows[busy].outcome == "busy" and rows[busy].ended_by == "cart1"
    assert rows[dropped].outcome == "failed" and rows[dropped].ended_by == "cart1"
    assert rows[dropped].answered_us is None


async def test_a_newer_cart_replaces_the_older(site: Site, app: FastAPI) -> None:
    hub: ConsultHub = app.state.consult
    cookie = await site.login("cart1")
    async with site.ws("/ws/cart/icu1/bed1", cookie) as old:
        await recv_type(old, "registered")
        async with site.ws("/ws/cart/icu1/bed1", cookie) as new:
            await recv_type(new, "registered")
            code, reason = await closed(old)
            assert code == 4409 and "newer registration" in reason
            await new.send(json.dumps({"type": "ping"}))
            assert await recv(new) == {"type": "pong"}
            assert len(hub.carts) == 1 and hub.carts[BED].peer.user == "cart1"
    await until(lambda: _true(not hub.carts))


async def test_video_is_offered_only_for_a_bed_with_a_registered_cart(
    site: Site, app: FastAPI
) -> None:
    ada = await site.login("ada")

    async def offered() -> tuple[bool, bool]:
        census = (await site.http.get("/api/census", headers=ada)).json()
        row = next(r for r in census["beds"] if r["bed"] == str(BED))
        detail = (await site.http.get(f"/api/beds/{BED.site}/{BED.bed}", headers=ada)).json()
        return row["cart"], detail["cart"]

    assert await offered() == (False, False)
    async with site.ws("/ws/cart/icu1/bed1", await site.login("cart1")) as cart:
        await recv_type(cart, "registered")
        assert await offered() == (True, True)
        await cart.close()
    hub: ConsultHub = app.state.consult
    await until(lambda: _true(not hub.carts))
    assert await offered() == (False, False)


async def _true(value: bool) -> bool:
    return value


async def test_logging_out_ends_the_call(site: Site, engine: Engine) -> None:
    ada, cart_cookie = await site.login("ada"), await site.login("cart1")
    async with site.ws("/ws/cart/icu1/bed1", cart_cookie) as cart:
        await recv_type(cart, "registered")
        async with site.ws("/ws/consult/icu1/bed1", ada) as browser:
            call_id = (await recv_type(browser, "ready"))["call_id"]
            token, csrf = site.tokens["ada"]
            r = await site.http.post(
                "/api/logout", headers={"x-csrf-token": csrf, "cookie": f"{COOKIE}={token}"}
            )
            assert r.status_code == 204
            assert (await recv_type(browser, "hangup"))["reason"] == "the caller's session ended"
            assert (await recv_type(cart, "hangup"))["call_id"] == call_id
    [row] = await audited(engine.store, call_id)
    assert row.outcome == "unanswered" and row.ended_by == "engine"


async def test_a_call_that_cannot_be_audited_does_not_start(site: Site, engine: Engine) -> None:
    ada, cart_cookie = await site.login("ada"), await site.login("cart1")
    async with site.ws("/ws/cart/icu1/bed1", cart_cookie) as cart:
        await recv_type(cart, "registered")
        await engine.store.close()  # the store is away
        async with site.ws("/ws/consult/icu1/bed1", ada) as browser:
            error = await recv(browser)
            assert error["type"] == "error" and "cannot be recorded" in error["reason"]
        # nothing reached the cart
        await cart.send(json.dumps({"type": "ping"}))
        assert await recv(cart) == {"type": "pong"}
    assert "eicu_consult_audit_failures_total 1.0" in metrics_text(engine)


async def test_the_cart_leaving_while_a_call_is_recorded(
    site: Site, engine: Engine, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub: ConsultHub = app.state.consult
    record, gate = engine.store.call_started, asyncio.Event()

    async def slow_start(call: CallRecord) -> None:
        await gate.wait()
        await record(call)

    monkeypatch.setattr(engine.store, "call_started", slow_start)
    ada, cart_cookie = await site.login("ada"), await site.login("cart1")
    async with site.ws("/ws/cart/icu1/bed1", cart_cookie) as cart:
        await recv_type(cart, "registered")
        async with site.ws("/ws/consult/icu1/bed1", ada) as browser:
            await until(lambda: _true(hub.carts[BED].call is not None))
            await cart.close()
            await until(lambda: _true(not hub.carts))
            gate.set()  # the start is written after the end was
            ended = await recv_type(browser, "hangup")
            assert ended["outcome"] == "failed"

    async def recorded() -> bool:
        rows = await audited(engine.store)
        return bool(rows) and rows[0].ended_us is not None

    await until(recorded)
    [row] = await audited(engine.store)
    assert (row.outcome, row.end_reason, row.ended_by) == (
        "failed", "the cart disconnected", "cart1",
    )  # fmt: skip
    assert row.ended_us is not None
    assert 'eicu_consult_calls_total{outcome="failed"} 1.0' in metrics_text(engine)


async def test_the_end_of_a_call_is_written_once_the_store_is_back(
    site: Site, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, failures = engine.store.call_ended, []

    async def flaky_end(*args: Any, **kw: Any) -> None:
        if not failures:
            failures.append(args)
            raise StorageUnavailable("the store is away")
        await record(*args, **kw)

    monkeypatch.setattr(engine.store, "call_ended", flaky_end)
    ada, cart_cookie = await site.login("ada"), await site.login("cart1")
    async with site.ws("/ws/cart/icu1/bed1", cart_cookie) as cart:
        await recv_type(cart, "registered")
        async with site.ws("/ws/consult/icu1/bed1", ada) as browser:
            call_id = (await recv_type(browser, "ready"))["call_id"]
            await browser.send(json.dumps({"type": "hangup", "call_id": call_id}))
            await recv_type(cart, "hangup")

    async def recorded() -> bool:
        return (await audited(engine.store, call_id))[0].ended_us is not None

    await until(recorded, timeout_s=10)  # the first retry comes a second later
    [row] = await audited(engine.store, call_id)
    assert failures and row.outcome == "unanswered" and row.ended_by == "ada"
    assert "eicu_consult_audit_failures_total 1.0" in metrics_text(engine)


def test_quality_figures_take_only_finite_known_values() -> None:
    assert quality_figures({"width": 640, "fps": float("inf"), "rtt_s": -1, "x": 3}) == {
        "width": 640.0
    }
    assert quality_figures({"packets_lost": 5, "packets_received": 15}) == {
        "packets_lost": 5.0, "loss": 0.25,
    }  # fmt: skip
    assert quality_figures({"loss": 7, "width": True}) == {"loss": 1.0}
    summary = {"inbound": {"audio": {"frames": 9}}, "round_trip_time_s": None}
    assert quality_figures(summary) == {}


# --- the audit in both stores ------------------------------------------------------------------


async def test_calls_are_audited_in_both_stores(store_of_each_kind: Store) -> None:
    store = store_of_each_kind
    t0 = time.time_ns() // 1000
    call = CallRecord("c1", BED, "ada", t0, cart="cart1", alarm_id="icu1/bed1/VTACH/3")
    await store.call_started(call)
    await store.call_started(call)  # idempotent
    refused = CallRecord("c0", BED, "iris", t0 - 5, ended_us=t0 - 5, outcome="refused",
                         end_reason="this bed is not in your sites", ended_by="engine")  # fmt: skip
    await store.call_started(refused)
    [first, second] = await store.calls(t0 - 1_000_000, t0 + 1_000_000)
    assert first == refused and second == call
    await store.call_ended("c1", t0 + 9_000_000, "completed", "the caller hung up", "ada",
                           answered_us=t0 + 2_000_000)  # fmt: skip
    await store.call_ended("c1", t0 + 20_000_000, "failed", "late", "engine")  # the first stands
    [_, ended] = await store.calls(t0 - 1_000_000, t0 + 1_000_000)
    assert (ended.answered_us, ended.ended_us) == (t0 + 2_000_000, t0 + 9_000_000)
    assert (ended.outcome, ended.end_reason, ended.ended_by) == (
        "completed", "the caller hung up", "ada",
    )  # fmt: skip
    assert await store.calls(t0 + 1, t0 + 2) == []


# --- users with sites ---------------------------------------------------------------------------


def test_eicu_users_add_with_sites(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    env = {**os.environ, "EICU_USERS_FILE": str(path)}

    def users(*args: str, password: str = "a-long-password") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eicu.cli", "users", *args], input=password + "\n",
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=False,
        )  # fmt: skip

    added = users("add", "cart-icu1", "--role", "cart", "--bed", "icu1/bed1")
    assert added.returncode == 0, added.stderr
    assert "sites icu1, bed icu1/bed1" in added.stderr
    unbound = users("add", "cart-x", "--role", "cart", "--sites", "icu1")
    assert unbound.returncode == 2 and "SITE/BED" in unbound.stderr  # a cart names its bed
    assert users("add", "nina", "--role", "nurse", "--sites", "icu1,icu1b").returncode == 0
    stored = Users(path)
    cart = stored.get("cart-icu1")
    assert cart is not None and cart.sites == frozenset({"icu1"}) and cart.bed == BED
    assert stored.verify("cart-icu1", "a-long-password") == cart
    # set: the role and sites, a cart's bed, every site again with a new password
    changed = users("set", "nina", "--role", "viewer", "--sites", "icu1b")
    assert changed.returncode == 0 and "nina (viewer, sites icu1b)" in changed.stderr
    bad = users("set", "nina", "--sites", "icu1,no/such")
    assert bad.returncode == 2 and "sites" in bad.stderr
    assert users("set", "cart-icu1", "--bed", "icu1/bed3").returncode == 0
    moved = stored.get("cart-icu1")
    assert moved is not None and moved.bed == BedKey("icu1", "bed3")
    renewed = users("set", "nina", "--all-sites", "--password", password="a-new-long-password")
    assert renewed.returncode == 0, renewed.stderr
    nina = stored.get("nina")
    assert nina is not None and (nina.role, nina.sites) == ("viewer", None)
    assert stored.verify("nina", "a-new-long-password") == nina
    # remove
    removed = users("remove", "cart-icu1")
    assert removed.returncode == 0 and "removed cart-icu1" in removed.stderr
    assert users("list").stdout.splitlines() == ["nina\tviewer\t*"]
    assert stored.get("cart-icu1") is None
