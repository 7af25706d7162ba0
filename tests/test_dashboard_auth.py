"""Who may do what, and for how long: user administration within an admin's sites, role and
site changes reaching open sessions and WebSockets, carts bound to their bed, the login page's
return address, the login limit per name and address, and what /metrics shows. Through a real
uvicorn server (HTTP and WebSockets) over a real Engine and store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from alerting.outbox import Outbox
from alerting.service import AlarmService
from dashboards.app import COOKIE, create_app, safe_next
from dashboards.consult import ConsultHub
from dashboards.server import DashboardServer
from dashboards.users import Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings, Secret, Settings, VideoSettings
from eicu.errors import ConfigError
from eicu.exposition import MetricsServer, exposition
from eicu.models import BedKey
from eicu.video.cart import CartAgent
from ingest.engine import Engine
from tests.cheap_argon2 import cheap_hasher
from tests.dashboard_beds import fed_engine, prompt_policy

PASSWORDS = {
    "root": "admin-password-1",  # admin, every site
    "boss1": "admin-password-2",  # admin of icu1 only
    "ada": "intensivist-pw-1",  # intensivist, every site
    "nina": "nurse-password-1",  # nurse, every site
    "cart1": "cart-password-1",  # the cart of icu1/bed1
    "cart3": "cart-password-3",  # the cart of icu1/bed3
}


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = await fed_engine(tmp_path, seconds=3.0)
    yield engine
    if engine.alarms is not None:
        engine.alarms.outbox.close()
    await engine.store.close()


@pytest.fixture
def users(tmp_path: Path) -> Users:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("root", Role.ADMIN, PASSWORDS["root"])
    users.add("boss1", Role.ADMIN, PASSWORDS["boss1"], sites=frozenset({"icu1"}))
    users.add("ada", Role.INTENSIVIST, PASSWORDS["ada"])
    users.add("nina", Role.NURSE, PASSWORDS["nina"])
    users.add("cart1", Role.CART, PASSWORDS["cart1"], bed="icu1/bed1")
    users.add("cart3", Role.CART, PASSWORDS["cart3"], bed="icu1/bed3")
    return users


def other_process(users: Users) -> Users:
    """The same users file as another process (``eicu users``, a second dashboard) sees it."""
    return Users(users.path, cheap_hasher())


@contextlib.asynccontextmanager
async def serving(
    engine: Engine, users: Users, **settings: Any
) -> AsyncIterator[tuple[DashboardServer, FastAPI]]:
    app = create_app(engine_source(engine), HttpSettings(cookie_secure=False, **settings), users)
    server = DashboardServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        yield server, app
    finally:
        await server.stop()


@pytest.fixture
async def server(engine: Engine, users: Users) -> AsyncIterator[DashboardServer]:
    async with serving(engine, users) as (server, _app):
        yield server


def browser(server: DashboardServer) -> httpx.AsyncClient:
    """A client whose requests carry the dashboard's own Origin, as its pages' do."""
    return httpx.AsyncClient(base_url=server.url, headers={"origin": server.url})


async def login(server: DashboardServer, name: str) -> httpx.AsyncClient:
    """A client logged in as ``name`` (the CSRF token and Origin in its default headers)."""
    client = browser(server)
    r = await client.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
    if r.status_code != 200:
        await client.aclose()
        raise AssertionError(r.text)
    client.headers["x-csrf-token"] = r.json()["csrf"]
    return client


def ws(server: DashboardServer, path: str, client: httpx.AsyncClient) -> Any:
    cookie = {"cookie": f"{COOKIE}={client.cookies[COOKIE]}"}
    return connect(server.url.replace("http://", "ws://") + path, additional_headers=cookie)


async def recv(conn: ClientConnection, timeout_s: float = 5.0) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(conn.recv(), timeout_s))
    assert isinstance(message, dict)
    return message


async def closed(conn: ClientConnection, timeout_s: float = 5.0) -> tuple[int, str]:
    """The close code and reason the server ends the connection with (messages skipped)."""
    with pytest.raises(ConnectionClosed) as ended:
        for _ in range(1000):
            await asyncio.wait_for(conn.recv(), timeout_s)
    assert ended.value.rcvd is not None
    return ended.value.rcvd.code, ended.value.rcvd.reason


# --- user administration within an admin's sites -------------------------------------------------


async def test_a_site_limited_admin_manages_only_users_within_its_sites(
    server: DashboardServer, users: Users
) -> None:
    boss = await login(server, "boss1")
    async with contextlib.aclosing(boss):
        nurse = {"name": "nora", "role": "nurse", "password": "nurse-password-2"}
        # no sites is every site: not for an admin of one site, whatever the role
        for body in (nurse, {**nurse, "role": "admin"}, {**nurse, "sites": ["icu1", "icu2"]}):
            r = await boss.post("/api/users", json=body)
            assert r.status_code == 403 and "your sites (icu1)" in r.text, body
        assert users.get("nora") is None
        cart = {"name": "cart8", "role": "cart", "password": "cart-password-8", "bed": "icu2/bed8"}
        assert (await boss.post("/api/users", json=cart)).status_code == 403
        r = await boss.post("/api/users", json={**nurse, "sites": ["icu1"]})
        assert r.status_code == 201 and r.json()["sites"] == ["icu1"]
        r = await boss.post("/api/users", json={**cart, "bed": "icu1/bed2"})
        assert r.status_code == 201 and r.json()["sites"] == ["icu1"]
        # users of every site are beyond it: not listed, not changed, not removed
        listed = {u["name"] for u in (await boss.get("/api/users")).json()}
        assert listed == {"boss1", "nora", "cart8", "cart1", "cart3"}
        assert (await boss.patch("/api/users/ada", json={"role": "viewer"})).status_code == 403
        assert (await boss.delete("/api/users/root")).status_code == 403
        # nor may it widen one of its own users, or itself, beyond its sites
        for name in ("nora", "boss1"):
            r = await boss.patch(f"/api/users/{name}", json={"sites": None})
            assert r.status_code == 403, name
            r = await boss.patch(f"/api/users/{name}", json={"sites": ["icu1", "icu2"]})
            assert r.status_code == 403, name
        r = await boss.patch("/api/users/nora", json={"role": "viewer"})
        assert r.status_code == 200 and r.json()["role"] == "viewer"
        assert (await boss.delete("/api/users/nora")).status_code == 204
        assert (await boss.delete("/api/users/nora")).status_code == 404
    ada = users.get("ada")
    assert ada is not None and ada.role is Role.INTENSIVIST and ada.sites is None
    assert users.get("nora") is None and users.get("root") is not None
    # an admin of every site still manages everyone
    root = await login(server, "root")
    async with contextlib.aclosing(root):
        r = await root.patch("/api/users/boss1", json={"sites": None})
        assert r.status_code == 200 and r.json()["sites"] is None
        r = await root.patch("/api/users/ada", json={"bed": "icu1/bed1"})
        assert r.status_code == 422 and "only a cart" in r.text
        assert (await root.delete("/api/users/ada")).status_code == 204


def test_a_users_file_replaced_within_one_timestamp_is_read_again(users: Users) -> None:
    """Another process's change is seen even when the new file has the old one's size and
    modification time (a coarse file system clock): its inode and change time differ."""
    before = users.path.stat()
    assert users.get("nina") is not None
    raw = users.path.read_text()
    replaced = raw.replace('"nina"', '"nino"')
    assert len(replaced) == len(raw)
    tmp = users.path.with_suffix(".new")
    tmp.write_text(replaced)
    os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp, users.path)
    after = users.path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert users.get("nina") is None and users.get("nino") is not None


# --- role and site changes reach live sessions ----------------------------------------------------


async def test_a_role_change_reaches_an_open_session_at_once(
    server: DashboardServer, engine: Engine, users: Users, tmp_path: Path
) -> None:
    engine.alarms = AlarmService(engine, Outbox(tmp_path / "alarms.db"), prompt_policy())
    engine.alarms.evaluate(time.time_ns() // 1000)
    nina = await login(server, "nina")
    async with contextlib.aclosing(nina):
        pause = {"duration_s": 30}
        r = await nina.post("/api/beds/icu1/bed2/alarms/pause", json=pause)
        assert r.status_code == 200, r.text
        # downgraded to viewer by another process (eicu users set): her next request knows
        other_process(users).update("nina", role="viewer")
        r = await nina.post("/api/beds/icu1/bed2/alarms/pause", json=pause)
        assert r.status_code == 403 and "viewer" in r.text
        me = (await nina.get("/api/me")).json()
        assert me["role"] == "viewer" and "respond" not in me["permissions"]
        # limited to icu2: icu1 is gone from her census and bed view
        other_process(users).update("nina", sites=frozenset({"icu2"}))
        assert (await nina.get("/api/beds/icu1/bed1")).status_code == 403
        census = (await nina.get("/api/census")).json()
        assert {r["site"] for r in census["beds"]} == {"icu2"}
        # removed: logged out
        other_process(users).remove("nina")
        assert (await nina.get("/api/me")).status_code == 401
    # a new password ends the sessions opened with the old one
    ada = await login(server, "ada")
    async with contextlib.aclosing(ada):
        other_process(users).update("ada", password="another-password-1")
        assert (await ada.get("/api/me")).status_code == 401


async def test_open_websockets_follow_the_users_role_and_sites(
    server: DashboardServer, users: Users
) -> None:
    nina = await login(server, "nina")
    async with (
        contextlib.aclosing(nina),
        ws(server, "/ws/census", nina) as census,
        ws(server, "/ws/beds/icu1/bed1", nina) as bed,
    ):
        first = await recv(census)
        assert first["type"] == "snapshot" and first["sites"] == ["icu1", "icu2"]
        await recv(bed)
        other_process(users).update("nina", sites=frozenset({"icu2"}))
        # the bed view of a site she may no longer see is closed; the census starts again
        # with a snapshot of her sites alone
        assert (await closed(bed))[0] == 1008
        while (message := await recv(census))["type"] != "snapshot":
            pass
        assert message["sites"] == ["icu2"] and {r["site"] for r in message["beds"]} == {"icu2"}
        other_process(users).remove("nina")
        assert (await closed(census))[0] == 1008


# --- carts bound to their bed ---------------------------------------------------------------------


async def test_a_cart_account_cannot_take_another_beds_calls(engine: Engine, users: Users) -> None:
    async with serving(engine, users) as (server, app):
        hub: ConsultHub = app.state.consult
        cart1, cart3 = await login(server, "cart1"), await login(server, "cart3")
        async with (
            contextlib.aclosing(cart1),
            contextlib.aclosing(cart3),
            ws(server, "/ws/cart/icu1/bed1", cart1) as real,
        ):
            assert (await recv(real))["type"] == "registered"
            # the cart of bed3 (or any cart account) asking for bed1: refused, counted
            async with ws(server, "/ws/cart/icu1/bed1", cart3) as impostor:
                code, reason = await closed(impostor)
            assert (code, reason) == (
                4421,
                "the cart account cart3 serves icu1/bed3, not icu1/bed1",
            )
            async with ws(server, "/ws/cart/icu1/bed2", cart1) as elsewhere:
                assert (await closed(elsewhere))[0] == 4421
            # the real cart is undisturbed
            await real.send(json.dumps({"type": "ping"}))
            assert await recv(real) == {"type": "pong"}
            assert hub.carts[BedKey("icu1", "bed1")].peer.user == "cart1"
            refused = engine.metrics.registry.get_sample_value(
                "eicu_consult_cart_refusals_total", {"reason": "wrong_bed"}
            )
            assert refused == 2
            # its account moved to another bed: its registration here ends
            other_process(users).update("cart1", bed="icu1/bed2")
            code, reason = await closed(real)
            assert code == 4421 and "serves icu1/bed2" in reason
        # a cart account that names no bed (an older users file) serves none
        raw = json.loads(users.path.read_text())
        raw["users"]["cart3"] = {**raw["users"]["cart3"], "sites": ["icu1"]}
        del raw["users"]["cart3"]["bed"]
        users.path.write_text(json.dumps(raw))
        old = await login(server, "cart3")
        async with contextlib.aclosing(old), ws(server, "/ws/cart/icu1/bed3", old) as unbound:
            code, reason = await closed(unbound)
        assert code == 4403 and "names no bed" in reason


async def test_a_cart_started_for_another_bed_says_why_and_keeps_trying(
    engine: Engine, users: Users
) -> None:
    """``eicu cart`` run with the wrong ``--bed`` for its account: the engine refuses it with
    4421, the cart counts and logs that, retries, and registers once its account is moved."""
    settings = VideoSettings(camera="none", microphone="none", reconnect_min_s=0.05,
                             reconnect_max_s=0.2)  # fmt: skip
    async with serving(engine, users) as (server, app):
        agent = CartAgent("icu1", "bed2", server=server.url, user="cart3",
                          password=Secret(PASSWORDS["cart3"]), settings=settings)  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.ensure_future(agent.run(stop))
        try:
            deadline = time.monotonic() + 20
            while agent.attempts < 2:
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.05)
            assert agent.last_refusal == (
                4421, "the cart account cart3 serves icu1/bed3, not icu1/bed2"
            )  # fmt: skip
            assert agent.metrics.registry.get_sample_value(
                "eicu_cart_connect_attempts_total",
                {"site": "icu1", "bed": "bed2", "outcome": "wrong_bed"},
            )
            other_process(users).update("cart3", bed="icu1/bed2")
            await asyncio.wait_for(agent.registered.wait(), 10)
            assert BedKey("icu1", "bed2") in app.state.consult.carts
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


# --- the login page's return address --------------------------------------------------------------

UNSAFE_NEXT = [
    "/\\evil.example/phish",
    "/%5Cevil.example/phish",
    "/%5cevil.example",
    "//evil.example",
    "/%2F/evil.example",
    "/%2fevil.example",
    "/%252F%252Fevil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    "census",
    "/\tevil",
    "/%09/evil.example",
    "/%0d%0aSet-Cookie:x",
    " /census",
    "",
]


def test_only_paths_of_this_site_are_safe_next_targets() -> None:
    for target in UNSAFE_NEXT:
        assert safe_next(target) is None, target
    for target in ("/census", "/bed?bed=icu1/bed1", "/consult/icu1/bed1?alarm=a%2Fb", "/"):
        assert safe_next(target) == target


async def test_the_login_page_never_sends_the_browser_elsewhere(server: DashboardServer) -> None:
    async with browser(server) as http:
        for target in UNSAFE_NEXT[:-1]:
            r = await http.get("/login", params={"next": target})
            assert r.status_code == 303 and r.headers["location"] == "/login", target
            login = {"name": "ada", "password": PASSWORDS["ada"], "next": target}
            r = await http.post("/api/login", json=login)
            assert r.status_code == 200 and r.json()["next"] == "/census", target
        r = await http.get("/login", params={"next": "/bed?bed=icu1/bed2"})
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        login = {"name": "ada", "password": PASSWORDS["ada"], "next": "/bed?bed=icu1/bed2"}
        assert (await http.post("/api/login", json=login)).json()["next"] == "/bed?bed=icu1/bed2"
        # the raw, unencoded backslash form of the reported link
        raw = await http.get(server.url + "/login?next=/%5Cevil.example/phish")
        assert raw.status_code == 303 and raw.headers["location"] == "/login"


# --- the login limit ------------------------------------------------------------------------------


async def attempt(
    http: httpx.AsyncClient, name: str, password: str, address: str | None = None
) -> httpx.Response:
    headers = {"x-forwarded-for": address} if address else {}
    return await http.post("/api/login", json={"name": name, "password": password}, headers=headers)


async def test_failures_from_one_address_do_not_lock_a_user_out_of_another(
    engine: Engine, users: Users
) -> None:
    settings = {"trusted_proxies": ("127.0.0.1",), "login_user_delay_max_s": 0.01}
    async with (
        serving(engine, users, **settings) as (server, _app),
        browser(server) as http,
    ):
        for _ in range(5):
            assert (await attempt(http, "ada", "guess-guess", "10.0.0.66")).status_code == 401
        r = await attempt(http, "ada", PASSWORDS["ada"], "10.0.0.66")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        # ada at her own workstation logs in
        assert (await attempt(http, "ada", PASSWORDS["ada"], "10.0.0.7")).status_code == 200
        # and guesses spread over many addresses slow her name down but never lock it
        for i in range(15):
            assert (await attempt(http, "ada", "guess-guess", f"10.0.1.{i}")).status_code == 401
        assert (await attempt(http, "ada", PASSWORDS["ada"], "10.0.0.8")).status_code == 200


async def test_a_client_cannot_choose_its_address_unless_it_is_a_trusted_proxy(
    engine: Engine, users: Users
) -> None:
    # no trusted proxy (the default): X-Forwarded-For from 127.0.0.1 is ignored, so rotating it
    # neither escapes the limit of the peer's address nor is counted against the forged ones
    async with (
        serving(engine, users) as (server, _app),
        browser(server) as http,
    ):
        codes = [
            (await attempt(http, f"name{i}", "guess-guess", f"10.9.{i}.1")).status_code
            for i in range(21)
        ]
        assert codes == [401] * 20 + [429]
        assert (await attempt(http, "ada", PASSWORDS["ada"], "10.0.0.7")).status_code == 429


# --- /metrics -------------------------------------------------------------------------------------


def bed_labelled_metrics(engine: Engine, tmp_path: Path) -> None:
    """Alarms of the fed beds, so that the alarm burden gauges carry site and bed labels."""
    engine.alarms = AlarmService(engine, Outbox(tmp_path / "alarms.db"), prompt_policy())
    now_us = time.time_ns() // 1000
    engine.alarms.evaluate(now_us)
    engine.alarms.update_burden(now_us)
    full = exposition(engine.metrics.registry, bed_labels=True).decode()
    assert 'eicu_alarm_burden_alarms{bed="bed2"' in full


async def test_metrics_carry_no_bed_labels_unless_asked(
    engine: Engine, users: Users, tmp_path: Path
) -> None:
    bed_labelled_metrics(engine, tmp_path)
    async with (
        serving(engine, users) as (server, _app),
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        r = await http.get("/metrics")
    assert r.status_code == 200
    assert "bed=" not in r.text and "bed1" not in r.text and "bed2" not in r.text
    # the alarm counts are kept, summed per site
    assert 'eicu_alarm_burden_alarms{kind="NEWS2_HIGH",priority="high",site="icu1"}' in r.text
    assert 'eicu_ingest_messages_total{kind="waveform"}' in r.text
    async with (
        serving(engine, users, metrics_bed_labels=True) as (server, _app),
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        r = await http.get("/metrics")
    assert 'eicu_alarm_burden_alarms{bed="bed2"' in r.text


async def test_metrics_behind_a_token(engine: Engine, users: Users, tmp_path: Path) -> None:
    bed_labelled_metrics(engine, tmp_path)
    token = "metrics-token-0123456789"
    async with (
        serving(engine, users, metrics_token=token) as (server, _app),
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        for auth in (None, "Bearer wrong-token-0123456789", f"Basic {token}"):
            r = await http.get("/metrics", headers={"authorization": auth} if auth else {})
            assert r.status_code == 401 and "eicu_" not in r.text, auth
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = await http.get("/metrics", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "eicu_alarm_burden_alarms" in r.text
        assert "bed=" not in r.text
    # the EICU_METRICS_PORT server follows the same rules
    port = MetricsServer(0, "127.0.0.1", engine.metrics.registry, token=token)
    try:
        url = f"http://127.0.0.1:{port.port}/metrics"

        def get(headers: dict[str, str]) -> tuple[int, str]:
            request = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        status, text = await asyncio.to_thread(get, {})
        assert status == 401 and "eicu_" not in text
        status, text = await asyncio.to_thread(get, {"Authorization": f"Bearer {token}"})
        assert status == 200 and "eicu_alarm_burden_alarms" in text and "bed=" not in text
    finally:
        port.close()


def test_auth_settings_from_the_environment() -> None:
    http = Settings.from_env(
        {
            "EICU_TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16,::1",
            "EICU_METRICS_TOKEN": "metrics-token-0123456789",
            "EICU_METRICS_BED_LABELS": "1",
        }
    ).http
    assert http.trusted_proxies == ("10.0.0.5", "10.1.0.0/16", "::1")
    assert http.metrics_token == "metrics-token-0123456789" and http.metrics_bed_labels
    assert "0123456789" not in repr(http)
    defaults = Settings.from_env({}).http
    assert defaults.trusted_proxies == () and defaults.metrics_token is None
    assert not defaults.metrics_bed_labels
    for key, value in (
        ("EICU_TRUSTED_PROXIES", "proxy.example"),
        ("EICU_METRICS_TOKEN", "short"),
        ("EICU_METRICS_BED_LABELS", "maybe"),
    ):
        with pytest.raises(ConfigError, match=key):
            Settings.from_env({key: value})
