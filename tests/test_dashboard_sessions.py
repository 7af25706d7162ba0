"""Sessions shared by dashboard processes through the store: logged in at one, the same cookie
works at another; logged out (or idle) at one, it ends at the other too; a changed password
ends it everywhere; the store holds no usable token."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from dashboards.app import COOKIE, create_app
from dashboards.security import Sessions
from dashboards.users import Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings
from ingest.engine import Engine
from tests.cheap_argon2 import cheap_hasher
from tests.dashboard_beds import fed_engine

PASSWORD = "intensivist-pw-1"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = await fed_engine(tmp_path)
    yield engine
    await engine.store.close()


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")  # type: ignore[arg-type]


async def test_a_session_made_at_one_dashboard_is_served_and_ended_at_another(
    engine: Engine, tmp_path: Path
) -> None:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("ada", Role.INTENSIVIST, PASSWORD)
    settings = HttpSettings(cookie_secure=False)
    # two dashboard processes: two apps, one store
    one = create_app(engine_source(engine), settings, users)
    two = create_app(engine_source(engine), settings, users)
    for app in (one, two):
        app.state.sessions._recheck_s = 0.0  # check the store at every use
    a, b = client(one), client(two)
    try:
        r = await a.post("/api/login", json={"name": "ada", "password": PASSWORD})
        assert r.status_code == 200
        token, csrf = r.cookies[COOKIE], r.json()["csrf"]
        b.cookies.set(COOKIE, token)
        assert (await b.get("/api/census")).status_code == 200  # served by the other
        assert (await b.get("/api/me")).json()["csrf"] == csrf  # the same session
        # the store holds the token's digest only
        db = sqlite3.connect(str(tmp_path / "eicu.sqlite"))
        (stored,) = db.execute("SELECT token_hash FROM dashboard_sessions").fetchone()
        assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in stored
        db.close()
        # logged out at the second: the first no longer serves it
        out = await b.post("/api/logout", headers={"x-csrf-token": csrf})
        assert out.status_code == 204
        assert (await a.get("/api/census")).status_code == 401
        # a password changed ends the sessions made with the old one, everywhere
        r = await a.post("/api/login", json={"name": "ada", "password": PASSWORD})
        b.cookies.set(COOKIE, r.cookies[COOKIE])
        users.update("ada", password="a-new-password-2")
        assert (await b.get("/api/census")).status_code == 401
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_session_idle_everywhere_ends(engine: Engine, tmp_path: Path) -> None:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("ada", Role.INTENSIVIST, PASSWORD)
    user = users.get("ada")
    assert user is not None
    one = Sessions(60.0, users.get, shared=engine.store, recheck_s=0.0)
    two = Sessions(60.0, users.get, shared=engine.store, recheck_s=0.0)
    session = await one.acreate(user)
    assert (await two.aget(session.token)) is not None
    # its last use, as the store has it, an hour ago
    db = sqlite3.connect(str(tmp_path / "eicu.sqlite"))
    db.execute("UPDATE dashboard_sessions SET last_used = last_used - 3600000000")
    db.commit()
    db.close()
    two.drop(session.token)  # forgotten here: only the store knows it
    assert await two.aget(session.token) is None
    assert await one.aget(session.token) is None  # idle there too, once checked again


async def test_sessions_go_on_while_the_store_is_down_and_are_shared_once_it_is_back(
    engine: Engine, tmp_path: Path
) -> None:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("ada", Role.INTENSIVIST, PASSWORD)
    user = users.get("ada")
    assert user is not None
    one = Sessions(60.0, users.get, shared=engine.store, recheck_s=0.0)
    two = Sessions(60.0, users.get, shared=engine.store, recheck_s=0.0)
    known = await one.acreate(user)
    await engine.store.close()  # the database goes away
    made = await one.acreate(user)  # logging in still works, here
    assert await one.aget(made.token) is made and await one.aget(known.token) is known
    await one.adrop(known.token)  # a logout while it is down
    await engine.store.open()
    assert await one.aget(made.token) is made  # put in the store now
    assert (await two.aget(made.token)) is not None  # and served by the other process
    assert await two.aget(known.token) is None  # the logout reached the store too
