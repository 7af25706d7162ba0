"""The census stream over a real WebSocket: a snapshot, then deltas of the rows that changed,
which a page applying them turns into exactly the census a new page is sent."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from dashboards import views
from dashboards.app import COOKIE, create_app
from dashboards.census import (
    DELTAS_KEPT,
    INPUT_DELAY_SHOWN_S,
    CensusFeed,
    CensusWindow,
    engine_status,
    wire_row,
)
from dashboards.server import DashboardServer
from dashboards.users import Role, Users
from eicu.commands.serve import engine_source
from eicu.config import HttpSettings
from eicu.models import BedKey, NumericsFrame, StatusFrame
from ingest.engine import Engine
from ingest.live import EngineBeds
from ingest.state import INPUT_DELAY_MIN_BEDS
from tests.dashboard_beds import fed_engine

PASSWORD = "viewer-password"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = await fed_engine(tmp_path)
    yield engine
    await engine.store.close()


@pytest.fixture
async def server(engine: Engine, tmp_path: Path) -> AsyncIterator[DashboardServer]:
    users = Users(tmp_path / "users.json")
    users.add("val", Role.VIEWER, PASSWORD)
    server = DashboardServer(
        create_app(engine_source(engine), HttpSettings(cookie_secure=False), users), "127.0.0.1", 0
    )
    await server.start()
    yield server
    await server.stop()


async def cookie(server: DashboardServer) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post("/api/login", json={"name": "val", "password": PASSWORD})
        return {"cookie": f"{COOKIE}={r.cookies[COOKIE]}"}


def apply(census: dict[str, Any], message: dict[str, Any]) -> None:
    """What census.js does with a delta, written out plainly."""
    assert message["type"] == "delta" and message["seq"] == census["seq"] + 1
    beds = {r["bed"]: r for r in census["beds"]}
    for bed in message["remove"]:
        del beds[bed]
    for bed, change in message["rows"].items():
        row = beds[bed]
        for path in change.get("del", []):
            *parents, last = path.split(".")
            chain = [row]
            for k in parents:
                chain.append(chain[-1][k])
            del chain[-1][last]
            for i in range(len(chain) - 1, 0, -1):  # emptied objects go too
                if chain[i] == {}:
                    del chain[i - 1][parents[i - 1]]
        for path, value in change["set"].items():
            *parents, last = path.split(".")
            target = row
            for k in parents:
                if not isinstance(target.get(k), dict):
                    target[k] = {}
                target = target[k]
            target[last] = value
    beds.update(message["add"])
    order = message.get("order", [r["bed"] for r in census["beds"] if r["bed"] in beds])
    order += [b for b in message["add"] if b not in order]
    census["beds"] = [beds[b] for b in order]
    census["seq"] = message["seq"]
    census["sites"] = message.get("sites", census["sites"])
    census["engine"] = message.get("engine", census["engine"])


async def receive(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))  # type: ignore[no-any-return]


def only_aging(change: dict[str, Any]) -> bool:
    """True when a row's change is only values growing old (the test's fed values reach the
    10 s stale limit when the machine is slow)."""
    paths = [*change.get("set", {}), *change.get("del", [])]
    return all(p.startswith("values.") or p in ("stale", "seen_us") for p in paths)


def without_time(census: dict[str, Any]) -> dict[str, Any]:
    return {"sites": census["sites"], "beds": census["beds"], "engine": census["engine"]}


async def test_snapshot_then_only_what_changed(server: DashboardServer, engine: Engine) -> None:
    headers = await cookie(server)
    base = server.url.replace("http://", "ws://")
    async with connect(base + "/ws/census", additional_headers=headers) as ws:
        census = await receive(ws)
        assert census["type"] == "snapshot" and census["sites"] == ["icu1", "icu2"]
        assert census["beds"][0]["bed"] == "icu1/bed2"  # ranked
        rows = {r["bed"]: r for r in census["beds"]}
        # no ages on the wire: a value sent in the newest frame of its bed has no time of its own
        assert isinstance(rows["icu1/bed1"]["values"]["HR"], str)
        assert rows["icu1/bed1"]["t_us"] > 0
        silent_hr = rows["icu2/bed8"]["values"]["HR"]
        assert silent_hr["stale"] and silent_hr["ts_us"] == rows["icu2/bed8"]["t_us"]
        assert rows["icu1/bed3"]["values"]["SPO2"]["text"] is None  # reported invalid
        # of NEWS2 what the census shows
        assert "components" not in rows["icu1/bed2"]["news2"]
        assert rows["icu1/bed2"]["news2"]["band"] == "high"
        assert rows["icu2/bed8"]["stale"] and rows["icu2/bed8"]["seen_us"] > 0
        assert "seen_us" not in rows["icu1/bed1"]
        # nothing arrives: the deltas are (about) empty
        quiet = await receive(ws)
        assert quiet["type"] == "delta" and quiet["seq"] == census["seq"] + 1
        assert quiet["add"] == {} and quiet["remove"] == [] and "sites" not in quiet
        assert not [bed for bed, change in quiet["rows"].items() if not only_aging(change)]
        assert len(json.dumps(quiet)) < 400 or any(quiet["rows"].values())
        apply(census, quiet)

        # icu1/bed1 gets a new heart rate; a new bed appears at a new site
        now_us = time.time_ns() // 1000
        bed1 = engine.router.beds[BedKey("icu1", "bed1")]
        ts_us = bed1.device_now_us(now_us)
        engine.router.route(
            NumericsFrame(BedKey("icu1", "bed1"), 90_000, ts_us, {"HR": 151.0}, received_us=now_us)
        )
        engine.router.route(
            NumericsFrame(BedKey("icu3", "bed1"), 1, now_us, {"HR": 80.0}, received_us=now_us)
        )
        delta = await receive(ws)
        while not delta["add"]:  # the frames may land just after a computation
            apply(census, delta)
            delta = await receive(ws)
        # beside icu1/bed1, a slow run may see other beds' values turn stale, nothing else
        assert {b for b, c in delta["rows"].items() if not only_aging(c)} == {"icu1/bed1"}
        change = delta["rows"]["icu1/bed1"]
        assert change["set"]["values.HR"] == "151"
        assert change["set"]["t_us"] == ts_us
        assert not [p for p in change["set"] if p.startswith(("engine", "status", "bed"))]
        assert change["set"]["news2.total"] > rows["icu1/bed1"]["news2"]["total"]  # it follows
        # the values of the older frame now carry their own time
        assert change["set"]["values.SPO2"]["ts_us"] < ts_us
        assert set(delta["add"]) == {"icu3/bed1"} and delta["sites"] == ["icu1", "icu2", "icu3"]
        apply(census, delta)
        size = len(json.dumps(delta))

        # the gateway of icu1/bed3 goes offline: its status changes, and its place
        engine.router.route(StatusFrame("icu1", "offline", now_us, bed="bed3", received_us=now_us))
        for _ in range(3):
            apply(census, await receive(ws))

        # applying the deltas gives the census a new page is sent
        async with connect(base + "/ws/census", additional_headers=headers) as fresh_ws:
            fresh = await receive(fresh_ws)
        assert fresh["type"] == "snapshot"
        while census["seq"] < fresh["seq"]:
            apply(census, await receive(ws))
    assert census["seq"] == fresh["seq"]
    assert without_time(fresh) == without_time(census)
    bed3 = next(r for r in census["beds"] if r["bed"] == "icu1/bed3")
    assert bed3["status"] == "offline" and bed3["seen_us"] > 0
    assert size < len(json.dumps({"beds": fresh["beds"]})) / 2


async def test_a_bed_not_yet_confirmed_is_marked_new(
    server: DashboardServer, engine: Engine
) -> None:
    """An auto-registered bed its stream has not confirmed yet (ingest.admission) is marked new
    on the census, so the intensivist knows its no-data conditions raise no alarm; once
    confirmed, the mark goes."""
    headers = await cookie(server)
    base = server.url.replace("http://", "ws://")
    bed8 = engine.router.beds[BedKey("icu2", "bed8")]
    bed8.new = True
    async with connect(base + "/ws/census", additional_headers=headers) as ws:
        census = await receive(ws)
        rows = {r["bed"]: r for r in census["beds"]}
        assert rows["icu2/bed8"]["new"] is True and rows["icu2/bed8"]["stale"]  # still stale
        assert rows["icu1/bed1"]["new"] is False
        bed8.new = False  # confirmed by its stream
        delta = await receive(ws)
        while "icu2/bed8" not in delta["rows"] or "new" not in delta["rows"]["icu2/bed8"]["set"]:
            delta = await receive(ws)
        assert delta["rows"]["icu2/bed8"]["set"]["new"] is False


async def test_site_filter_and_a_page_that_falls_behind(engine: Engine) -> None:
    now = [0.0]

    def rows(site: str | None) -> list[dict[str, Any]]:  # a scope: the site filter alone
        t = time.time_ns() // 1000
        return views.census(EngineBeds(engine).snapshots(t), t, site)

    feed = CensusFeed(rows, lambda _scope: ["icu1", "icu2"], 1.0, clock=lambda: now[0])
    seq, first = feed.messages_after("icu2", None)
    snapshot = json.loads(first[0])
    assert {r["bed"] for r in snapshot["beds"]} == {"icu2/bed8", "icu2/bed9"}
    assert feed.messages_after("icu2", seq) == (seq, [])  # not due yet: nothing new
    assert feed.wait_s("icu2") == pytest.approx(1.0)
    census = copy.deepcopy(snapshot)
    for _ in range(3):
        now[0] += 1.0
        seq, messages = feed.messages_after("icu2", seq)
        assert len(messages) == 1
        apply(census, json.loads(messages[0]))
    assert without_time(census) == without_time(json.loads(feed.current("icu2").snapshot()))
    # a page three deltas behind gets the three; one too far behind, a snapshot
    behind_seq, behind = feed.messages_after("icu2", seq - 3)
    assert behind_seq == seq and [json.loads(m)["type"] for m in behind] == ["delta"] * 3
    for _ in range(DELTAS_KEPT):
        now[0] += 1.0
        seq, _messages = feed.messages_after("icu2", seq)
    _, late = feed.messages_after("icu2", seq - DELTAS_KEPT - 1)
    assert [json.loads(m)["type"] for m in late] == ["snapshot"]
    # each site filter is computed apart, and only when asked for
    _, icu1 = feed.messages_after("icu1", None)
    assert {r["site"] for r in json.loads(icu1[0])["beds"]} == {"icu1"}


async def test_the_engine_reading_late_is_on_every_page(
    server: DashboardServer, engine: Engine
) -> None:
    """Every bed's latest message came through 8 s later than its fastest, at each site: the
    census and the bed view say the engine is 8 s behind; below INPUT_DELAY_SHOWN_S, nothing."""
    headers = await cookie(server)
    base = server.url.replace("http://", "ws://")
    now_us = time.time_ns() // 1000
    beds = [BedKey("icu1", f"bed{b}") for b in (1, 2, 3)]
    beds += [BedKey("icu3", f"bed{b}") for b in range(INPUT_DELAY_MIN_BEDS)]
    for bed in beds:
        fast = NumericsFrame(
            bed, 50_000, now_us - 20_000_000, {"HR": 80.0}, received_us=now_us - 20_000_000
        )
        late = NumericsFrame(bed, 50_001, now_us - 8_000_000, {"HR": 80.0}, received_us=now_us)
        engine.router.route(fast)
        engine.router.route(late)
    async with connect(base + "/ws/census", additional_headers=headers) as ws:
        census = await receive(ws)
        for _ in range(10):  # worked out twice a second: the first message may be just before
            if census.get("engine") == {"input_delay_s": 8}:
                break
            census = await receive(ws)
        assert census.get("engine") == {"input_delay_s": 8}
    async with connect(base + "/ws/beds/icu1/bed1", additional_headers=headers) as ws:
        message = await receive(ws)
        while "engine" not in message:
            message = await receive(ws)
        assert message["engine"] == {"input_delay_s": 8}
    assert engine_status(1_900_000) == {"input_delay_s": 0}
    assert engine_status(int(INPUT_DELAY_SHOWN_S * 1e6)) == {"input_delay_s": 2}


async def test_a_bed_that_cannot_be_shown_costs_the_census_nothing(engine: Engine) -> None:
    """One bed's state trips the census (a value of the wrong type): every other bed is still
    listed as usual, and that bed is listed too, stale, with why it is not shown."""
    now_us = time.time_ns() // 1000
    broken = engine.router.beds[BedKey("icu1", "bed1")]
    broken.latest["HR"] = ("eighty", broken.latest["HR"][1])  # type: ignore[assignment]
    rows = views.census(EngineBeds(engine).snapshots(now_us), now_us)
    assert {r["bed"] for r in rows} == {str(k) for k in engine.router.beds}
    (row,) = (r for r in rows if r["bed"] == "icu1/bed1")
    assert row["stale"] and row["values"] == {} and "not shown" in row["news2"]["invalid"]
    assert row["acuity"] == [-1, -1]
    wired = [wire_row(r) for r in rows]  # and it goes on the wire like any row
    assert next(w for w in wired if w["bed"] == "icu1/bed1")["values"] == {}
    healthy = next(r for r in rows if r["bed"] == "icu1/bed2")
    assert healthy["values"] and not healthy["stale"]


def apply_window(page: dict[str, Any], message: dict[str, Any]) -> None:
    """What census.js does with a window's message, written out plainly."""
    if message["type"] == "window":
        page.clear()
        page.update(message)
        return
    assert message["type"] == "delta" and message["seq"] == page["seq"] + 1
    census = {"seq": page["seq"], "beds": page["beds"], "sites": page["sites"]}
    census["engine"] = page["engine"]
    apply(census, message)
    page.update(census)
    for key in ("first", "total", "held"):
        if key in message:
            page[key] = message[key]


async def test_a_page_is_sent_only_the_ranks_it_shows(
    server: DashboardServer, engine: Engine
) -> None:
    """A page that says which ranks it shows is sent those rows, kept up to date, and the
    census's size; scrolled, it gets the rows of its new view at once; holding, its rows keep
    their order while the ranking moves."""
    headers = await cookie(server)
    base = server.url.replace("http://", "ws://")
    for i in range(30):  # 35 beds in all
        now_us = time.time_ns() // 1000
        frame = NumericsFrame(BedKey("icu3", f"w{i:02d}"), 1, now_us, {"HR": 70.0 + i})
        engine.router.route(dataclasses.replace(frame, received_us=now_us))

    async def ranked() -> list[str]:
        async with connect(base + "/ws/census", additional_headers=headers) as full:
            return [r["bed"] for r in (await receive(full))["beds"]]

    async with connect(base + "/ws/census", additional_headers=headers) as ws:
        assert (await receive(ws))["type"] == "snapshot"  # before it says what it shows
        await ws.send(json.dumps({"view": [10, 8]}))
        page = await receive(ws)
        while page["type"] != "window":
            page = await receive(ws)
        assert page["seq"] == 0 and page["first"] == 10 and page["total"] == 35
        assert [r["bed"] for r in page["beds"]] == (await ranked())[10:18]
        for _ in range(2):  # kept up to date: the rows of ranks 10-17, nothing else
            apply_window(page, await receive(ws))
        assert (
            len(page["beds"]) == 8 and [r["bed"] for r in page["beds"]] == (await ranked())[10:18]
        )
        quiet = await receive(ws)
        assert len(json.dumps(quiet)) < 2_000
        apply_window(page, quiet)

        # scrolled to the end: the new rows come at once, not at the next period
        await ws.send(json.dumps({"view": [30, 8]}))
        moved = await receive(ws)
        apply_window(page, moved)
        assert page["first"] == 27  # the window stays inside the census
        assert [r["bed"] for r in page["beds"]] == (await ranked())[27:35]

        # held: a bed far down the ranking turns acute; the page's rows keep their order
        await ws.send(json.dumps({"view": [0, 8]}))
        apply_window(page, await receive(ws))
        before = [r["bed"] for r in page["beds"]]
        await ws.send(json.dumps({"hold": True}))
        apply_window(page, await receive(ws))
        now_us = time.time_ns() // 1000
        sick = NumericsFrame(BedKey("icu3", "w29"), 2, now_us, {"RR": 35.0, "SPO2": 85.0})
        engine.router.route(dataclasses.replace(sick, received_us=now_us))
        deadline = time.monotonic() + 10
        while not page.get("held"):
            assert time.monotonic() < deadline, "the ranking never moved"
            apply_window(page, await receive(ws))
        assert [r["bed"] for r in page["beds"]] == before
        await ws.send(json.dumps({"hold": False}))
        apply_window(page, await receive(ws))
        assert page["held"] is False
        shown = [r["bed"] for r in page["beds"]]
        assert "icu3/w29" in shown and shown == (await ranked())[:8]

        # a page that says its view when it connects is never sent the whole census
        async with connect(base + "/ws/census?view=2,5", additional_headers=headers) as direct:
            opened = await receive(direct)
            assert opened["type"] == "window" and opened["first"] == 2 and len(opened["beds"]) == 5

        # what is not a view is ignored (and logged); the stream goes on
        await ws.send("not json")
        await ws.send(json.dumps({"view": [-1, 5]}))
        apply_window(page, await receive(ws))


def expand_compact(
    message: dict[str, Any], names: dict[int, str], page: dict[str, Any], gone: dict[str, Any]
) -> dict[str, Any]:
    """What census.js does with a compact delta: numbered paths back to ``rows``, beds that come
    back (from the rows of those that left, ``gone``) to whole rows in ``add``, places in the
    page's order back to names."""
    out = {k: v for k, v in message.items() if k not in ("c", "cd", "keys", "back")}
    names.update({int(k): v for k, v in message.get("keys", {}).items()})
    rows: dict[str, Any] = {}
    for bed, flat in message["c"].items():
        pairs = zip(flat[0::2], flat[1::2], strict=True)
        rows[bed] = {
            "set": {
                names[k]: (message["now_us"] - v if names[k] == "t_us" else v) for k, v in pairs
            }
        }
    for bed, keys in message.get("cd", {}).items():
        rows.setdefault(bed, {"set": {}})["del"] = [names[k] for k in keys]
    had = {r["bed"]: r for r in page["beds"]}
    for bed in message["remove"]:
        gone[bed] = had[bed]
    add = dict(message["add"])
    for bed in message.get("back", []):
        row = copy.deepcopy(gone.pop(bed))
        census = {"seq": 0, "beds": [row], "sites": [], "engine": {}}
        apply(census, {"type": "delta", "seq": 1, "remove": [], "add": {},
                       "rows": {bed: rows.pop(bed)}})  # fmt: skip
        add[bed] = census["beds"][0]
    out["add"] = add
    out["rows"] = rows
    if "order" in message:
        before = [r["bed"] for r in page["beds"]]
        out["order"] = [before[b] if isinstance(b, int) else b for b in message["order"]]
    return out


async def test_a_compact_window_says_the_same_in_fewer_bytes(engine: Engine) -> None:
    now = [0.0]

    def rows(site: str | None) -> list[dict[str, Any]]:
        t = time.time_ns() // 1000
        return views.census(EngineBeds(engine).snapshots(t), t, site)

    feed = CensusFeed(rows, lambda _scope: ["icu1", "icu2"], 1.0, clock=lambda: now[0])
    plain, compact = CensusWindow(0, 3), CensusWindow(0, 3, compact=True)
    names = {0: "t_us"}
    page_plain: dict[str, Any] = {}
    page_compact: dict[str, Any] = {}
    gone: dict[str, Any] = {}
    plain_bytes = compact_bytes = 0
    seq = 100
    views_asked = [(0, 3), (0, 3), (2, 3), (0, 3), (1, 3), (0, 3), (0, 3)]  # scrolled and back
    for second, (first, count) in enumerate(views_asked):
        t_us = time.time_ns() // 1000
        for i, key in enumerate(sorted(engine.router.beds)):  # every bed's values change
            frame = NumericsFrame(key, seq, t_us, {"HR": 60.0 + i + second, "SPO2": 90.0 + second})
            engine.router.route(dataclasses.replace(frame, received_us=t_us))
            seq += 1
        now[0] += 1.0
        for window in (plain, compact):
            window.set_view(first, count)
        tick = feed.current(None)
        (a,), (b,) = plain.messages(tick), compact.messages(tick)
        message_a, message_b = json.loads(a), json.loads(b)
        if second:
            plain_bytes, compact_bytes = plain_bytes + len(a), compact_bytes + len(b)
            message_b = expand_compact(message_b, names, page_compact, gone)
        apply_window(page_plain, message_a)
        apply_window(page_compact, message_b)
        assert page_compact == page_plain
    assert gone, "no bed left the window and came back"
    assert compact_bytes < 0.6 * plain_bytes, (compact_bytes, plain_bytes)


async def test_an_empty_census_says_the_engine_is_starting(tmp_path: Path) -> None:
    from eicu.config import IngestSettings, MqttSettings
    from eicu.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    await store.open()
    try:
        engine = Engine(MqttSettings(), IngestSettings(spool_dir=tmp_path / "spool"), store)
        live = EngineBeds(engine)
        assert "starting" in (live.starting() or "")  # not warmed, no bed yet
        engine.warmed = True
        assert live.starting() is None
    finally:
        await store.close()
