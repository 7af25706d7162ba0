"""Video consult signaling across two ``eicu dashboard`` processes on a real Mosquitto and a real
PostgreSQL: the cart registered with one process, the intensivist's browser on the other (as a
load balancer would place them). The offer, the answer, the call-quality figures and the hangup
cross the bus; the call is audited once; the cart is busy for every process meanwhile; and when
the cart's process dies the call ends on the caller's."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from dashboards.users import Role, Users
from eicu.devservices import DashboardProcess, Mosquitto
from eicu.models import BedKey
from eicu.store import Store
from tests.cheap_argon2 import cheap_hasher

pytestmark = [pytest.mark.broker, pytest.mark.db]

BED = BedKey("icu1", "bed1")
PASSWORDS = {"ada": "ada-password", "nina": "nina-password", "cart1": "cart-password"}
SDP_OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=offer\r\n"
SDP_ANSWER = "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=answer\r\n"
COOKIE = "eicu_session"


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    users = Users(tmp_path / "users.json", cheap_hasher())
    users.add("ada", Role.INTENSIVIST, PASSWORDS["ada"])
    users.add("nina", Role.INTENSIVIST, PASSWORDS["nina"])
    users.add("cart1", Role.CART, PASSWORDS["cart1"], bed=str(BED))
    return users.path


@pytest.fixture
def dashboards(
    broker: Mosquitto, db_url: str, users_file: Path, tmp_path: Path
) -> Iterator[list[DashboardProcess]]:
    """Two dashboard processes on one bus and one store, ready."""
    started: list[DashboardProcess] = []
    try:
        for name in ("a", "b"):
            env = {"EICU_MQTT_CLIENT_ID": f"eicu-dashboard-{name}"}
            process = DashboardProcess(
                broker.url, db_url, users_file, tmp_path / f"dashboard-{name}.log", env=env
            )
            started.append(process)
        for process in started:
            process.wait_ready()
        yield started
    finally:
        for process in started:
            process.stop()


async def login(base: str, name: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        r = await client.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
        assert r.status_code == 200, r.text
        return {"cookie": f"{COOKIE}={r.cookies[COOKIE]}"}


def ws(base: str, path: str, headers: dict[str, str]) -> Any:
    return connect(base.replace("http://", "ws://") + path, additional_headers=headers)


async def recv(conn: ClientConnection, kind: str | None = None, timeout_s: float = 15.0) -> Any:
    """The next message (of type ``kind``, skipping others such as pongs)."""
    async with asyncio.timeout(timeout_s):
        while True:
            message = json.loads(await conn.recv())
            if kind is None or message.get("type") == kind:
                return message


async def until_known(base: str, headers: dict[str, str], bed: BedKey) -> None:
    """Wait until ``base`` knows the bed's cart (registered with another process): until a
    call there is not refused for want of a cart (each refusal is audited as ``no_cart``)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        async with ws(base, f"/ws/consult/{bed.site}/{bed.bed}", headers) as probe:
            first = await recv(probe)
            if first["type"] == "ready":
                await probe.send(json.dumps({"type": "hangup", "reason": "probe"}))
                return
            assert "no cart" in first["reason"], first
        await asyncio.sleep(0.2)
    raise AssertionError(f"{base} never knew the cart of {bed}")


async def test_a_call_crosses_two_dashboard_processes_and_is_audited_once(
    dashboards: list[DashboardProcess], store: Store
) -> None:
    a, b = (d.url for d in dashboards)
    cart_cookie = await login(a, "cart1")
    ada = await login(b, "ada")  # sessions live in the store: any process knows them
    async with ws(a, f"/ws/cart/{BED.site}/{BED.bed}", cart_cookie) as cart:
        assert (await recv(cart))["type"] == "registered"
        await until_known(b, ada, BED)
        assert (await recv(cart, "hangup"))["reason"] == "probe"
        async with ws(b, f"/ws/consult/{BED.site}/{BED.bed}?alarm=a1", ada) as browser:
            ready = await recv(browser)
            assert ready["type"] == "ready", ready
            call_id = ready["call_id"]
            await browser.send(json.dumps({"type": "offer", "sdp": SDP_OFFER}))
            offer = await recv(cart, "offer")
            assert offer == {"type": "offer", "call_id": call_id, "sdp": SDP_OFFER, "caller": "ada"}
            await cart.send(json.dumps({"type": "answer", "call_id": call_id, "sdp": SDP_ANSWER}))
            assert await recv(browser, "answer") == {"type": "answer", "sdp": SDP_ANSWER}
            stats = {"width": 640, "height": 480, "fps": 24.0, "rtt_s": 0.12}
            await cart.send(json.dumps({"type": "stats", "call_id": call_id, "stats": stats}))
            figures = (await recv(browser, "cart_stats"))["stats"]
            assert figures["width"] == 640 and figures["rtt_s"] == pytest.approx(0.12)

            # The cart is busy for every process: on its own, and on the caller's.
            nina_a = await login(a, "nina")
            async with ws(a, f"/ws/consult/{BED.site}/{BED.bed}", nina_a) as other:
                assert (await recv(other))["reason"] == f"the cart of {BED} is in another call"
            async with ws(b, f"/ws/consult/{BED.site}/{BED.bed}", nina_a) as other:
                assert (await recv(other))["reason"] == f"the cart of {BED} is in another call"

            await browser.send(json.dumps({"type": "hangup", "reason": "done"}))
            hangup = await recv(cart, "hangup")
            assert hangup["call_id"] == call_id and hangup["reason"] == "done"

        async def ended() -> list[Any]:
            now = time.time_ns() // 1000
            return [c for c in await store.calls(now - 600_000_000, now + 1) if c.ended_us]

        async with asyncio.timeout(15):
            while not [c for c in await ended() if c.call_id == call_id]:
                await asyncio.sleep(0.2)
        now = time.time_ns() // 1000
        calls = await store.calls(now - 600_000_000, now + 1)
        mine = [c for c in calls if c.call_id == call_id]
        # None: an end still being written
        expected = ("completed", "unanswered", "busy", "no_cart", None)
        assert not [c for c in calls if c.outcome not in expected]
        assert len(mine) == 1, "audited once, by the caller's process"
        row = mine[0]
        assert (row.caller, row.cart, row.bed, row.outcome) == ("ada", "cart1", BED, "completed")
        assert row.answered_us is not None and row.alarm_id == "a1"
        refused = [c for c in calls if c.outcome == "busy"]
        assert len(refused) == 2  # each process audited the refusal it made

        # The cart is free again: a second call through the other process reaches it.
        async with ws(b, f"/ws/consult/{BED.site}/{BED.bed}", ada) as browser:
            assert (await recv(browser))["type"] == "ready"


async def test_when_the_cart_s_dashboard_dies_the_call_ends_on_the_caller_s(
    dashboards: list[DashboardProcess], store: Store
) -> None:
    first, second = dashboards
    cart_cookie = await login(first.url, "cart1")
    ada = await login(second.url, "ada")
    async with ws(first.url, f"/ws/cart/{BED.site}/{BED.bed}", cart_cookie) as cart:
        assert (await recv(cart))["type"] == "registered"
        await until_known(second.url, ada, BED)
        await recv(cart, "hangup")
        async with ws(second.url, f"/ws/consult/{BED.site}/{BED.bed}", ada) as browser:
            call_id = (await recv(browser))["call_id"]
            await browser.send(json.dumps({"type": "offer", "sdp": SDP_OFFER}))
            await recv(cart, "offer")
            first.process.kill()  # a crash: it never says it is gone
            first.process.wait()
            hangup = await recv(browser, "hangup", timeout_s=20)
            assert hangup["outcome"] == "failed"
            assert hangup["reason"] == "the cart's dashboard is gone"
    # the end is written after the hangup is sent
    async with asyncio.timeout(15):
        while True:
            now = time.time_ns() // 1000
            rows = await store.calls(now - 600_000_000, now + 1)
            [row] = [c for c in rows if c.call_id == call_id]
            if row.ended_us is not None:
                break
            await asyncio.sleep(0.1)
    assert row.outcome == "failed"
