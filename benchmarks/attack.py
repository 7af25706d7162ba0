"""A hostile gateway, user and network against a real ``eicu serve``: how far real beds' stored
data and alarms fall behind, in one run.

Starts its own Mosquitto (configured as ``eicu broker-auth config`` prints it: accounts, ACL,
client ids bound to user names, the broker-wide limits) and PostgreSQL on free loopback ports,
writes a dashboard users file (argon2id with the smallest parameters, so logins are cheap), and
runs ``eicu serve`` (from ``--repo``, default this checkout) as a child process with its
dashboard on. Real beds publish numerics every second at site ``icu`` through their gateway's
account; a probe bed raises a temperature alarm (no delay in the policy) every few seconds and
the time from its publish to the alarm on its alarms topic is measured. Phases:

0. ``eicu serve`` started while PostgreSQL is down (then PostgreSQL started);
1. a flood of ``--flood`` one-value numerics for new bed ids at the real beds' site, from a
   hostile account of that site (and the technical alarms the flood's beds raise);
2. PostgreSQL stopped, ``--junk`` one-megabyte junk messages on a real bed's topic (the broker
   drops each and closes the sender's connection) and as many of 500 kB (under the broker's
   limit: they reach the engine), PostgreSQL started again;
3. a real bed's numerics dated 2099, then its real heart rate of 180: HR_HIGH must start;
4. a retained standby status (no time) for a real bed: BED_STANDBY shown, HR 180 in standby
   still alarms, and once the bed falls silent DATA_STALE starts when the standby's lifetime
   (``--standby``) is over;
5. another account connecting with the engine's client id, again and again: the engine must
   stay connected;
6. a cart account registering for another bed than its own: refused (4421); for its own bed:
   registered;
7. ``/login?next=`` pointing elsewhere (and a login asking for such a ``next``): never followed;
8. wrong passwords for a user from an attacker's address until it is locked, then the real
   user logs in from another address.

Each phase prints a pass/fail line with its figure, then the worst real bed's newest stored
value, the probe's alarm latencies, the engine's input delay, queue bytes and RSS. Loopback
only; bounded in count and time::

    python benchmarks/attack.py [--flood 50000] [--junk 600] [--repo /path/to/eicu]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eicu import wire
from eicu.brokerauth import SESSION_LIMITS, BrokerAuth, listener_settings
from eicu.devservices import Mosquitto, Postgres, free_port, wait_port
from eicu.models import BedKey, NumericsFrame

SITE = "icu"
REAL_BEDS = [BedKey(SITE, f"real{i:02d}") for i in range(20)]
PROBE = BedKey(SITE, "probe")
PROBE_EVERY_S = 4.0
YEAR_2099_US = 4_070_908_800_000_000
DATA_STALE_AFTER_S = 10.0  # the default policy's
HR_HIGH_DELAY_S = 10.0  # the default policy's
ENGINE = "hub"  # the engine's broker account (and so its client id)
ATTACKER_ADDRESS = "127.0.0.2"  # loopback: the dashboard sees another client address
USER_ADDRESS = "127.0.0.1"
ALARM_STARTS = 'eicu_alarm_events_total{state="active"}'


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _metrics(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


@dataclass
class Accounts:
    """The broker accounts of the run and their passwords."""

    folder: Path
    passwords: dict[str, str] = field(default_factory=dict)

    def make(self) -> BrokerAuth:
        auth = BrokerAuth(self.folder)
        self.passwords[ENGINE] = auth.add(ENGINE, "engine")
        for name in ("gw-icu", "gw-icu-alarms", "gw-hostile"):  # gateways of site icu
            self.passwords[name] = auth.add(name, "gateway", SITE)
        self.passwords["gw-other"] = auth.add("gw-other", "gateway", "other")
        return auth

    def client(self, port: int, user: str, **kw: object) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            port,
            username=user,
            password=self.passwords[user],
            identifier=str(kw.pop("identifier", user)),
            **kw,  # type: ignore[arg-type]
        )


class Probe:
    """The real beds and the probe bed; records alarm latencies, stored lags, and every alarm
    event of the site."""

    def __init__(self, port: int, db_url: str, accounts: Accounts) -> None:
        self.port = port
        self.db_url = db_url
        self.accounts = accounts
        self.alarm_latency_s: list[float] = []
        self.stored_lag_s: list[float] = []
        self._pending: list[float] = []  # when the probe's temperature went up, not yet alarmed
        self._seq = 0
        self.hr: dict[BedKey, float] = {}  # a bed's heart rate other than 80
        self.silent: set[BedKey] = set()  # beds not sending
        self._unmeasured_until: dict[BedKey, float] = {}  # beds just resumed, not yet stored
        self.future: set[BedKey] = set()  # beds whose next message is dated 2099
        self.events: list[tuple[float, str, str, str]] = []  # (received, bed, kind, state)
        self.client: aiomqtt.Client | None = None
        self.ready = asyncio.Event()
        self.sent = 0  # real beds' messages acknowledged by the broker

    async def beds(self, stop: asyncio.Event) -> None:
        async with self.accounts.client(self.port, "gw-icu") as c:
            self.client = c
            self.ready.set()
            next_probe = time.time() + 2.0
            high = False
            while not stop.is_set():
                self._seq += 1
                now = time.time()
                ts = int(now * 1e6)
                for bed in REAL_BEDS:
                    if bed in self.silent:
                        continue
                    hr = self.hr.get(bed, 80.0)
                    at = ts
                    if bed in self.future:
                        self.future.discard(bed)
                        at, hr = YEAR_2099_US, 70.0
                    frame = NumericsFrame(bed, self._seq, at, {"HR": hr, "SPO2": 97.0})
                    await c.publish(wire.numerics_topic(bed), wire.encode_numerics(frame), qos=1)
                    self.sent += 1
                if now >= next_probe:
                    high = not high
                    next_probe = now + PROBE_EVERY_S
                    if high:
                        self._pending.append(now)
                values: dict[str, float | None] = {"HR": 80.0, "TEMP": 39.0 if high else 37.0}
                frame = NumericsFrame(PROBE, self._seq, ts, values)
                await c.publish(wire.numerics_topic(PROBE), wire.encode_numerics(frame), qos=1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - (time.time() - now)))

    async def alarms(self) -> None:
        async with self.accounts.client(self.port, "gw-icu-alarms") as c:
            await c.subscribe(f"eicu/v1/{SITE}/+/alarms", qos=1)
            async for message in c.messages:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    doc = json.loads(bytes(message.payload))
                    bed = message.topic.value.split("/")[3]
                    self.events.append((time.time(), bed, doc["kind"], doc["state"]))
                    if bed == PROBE.bed and doc["kind"] == "TEMP_HIGH" and doc["state"] == "active":
                        # time_us: the device time of the data that showed the condition
                        sent_s = float(doc["time_us"]) / 1e6
                        self.alarm_latency_s.append(time.time() - sent_s)
                        self._pending = [t for t in self._pending if t > sent_s + 0.5]

    def silence(self, bed: BedKey) -> None:
        self.silent.add(bed)

    def resume(self, bed: BedKey) -> None:
        """``bed`` sends again; its stored lag counts again once its data can be stored."""
        self._unmeasured_until[bed] = time.time() + 3.0
        self.silent.discard(bed)

    async def wait_alarm(self, bed: BedKey, kind: str, since: float, timeout_s: float) -> float:
        """Seconds from ``since`` to ``bed``'s ``kind`` starting (NaN when it did not within
        ``timeout_s``)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for t, b, k, state in self.events:
                if t >= since and b == bed.bed and k == kind and state == "active":
                    return t - since
            await asyncio.sleep(0.1)
        return float("nan")

    def starts(self, prefix: str, since: float = 0.0) -> dict[str, int]:
        """Alarm starts since ``since`` of the beds whose id starts with ``prefix``, by kind."""
        out: dict[str, int] = {}
        for t, bed, kind, state in self.events:
            if t >= since and state == "active" and bed.startswith(prefix):
                out[kind] = out.get(kind, 0) + 1
        return out

    async def stored(self, stop: asyncio.Event) -> None:
        """Every second: how old the worst real bed's newest stored value is (beds silenced
        on purpose left out)."""
        while not stop.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(self.db_url, connect_timeout=2)
                async with conn:
                    cur = await conn.execute(
                        """SELECT b.bed, extract(epoch FROM now() - max(n.time)) FROM numerics n
                           JOIN beds b USING (bed_id) WHERE b.site = %s AND b.bed LIKE 'real%%'
                           AND n.time > now() - interval '15 minutes' GROUP BY b.bed""",
                        (SITE,),
                    )
                    now = time.time()
                    silent = {b.bed for b in self.silent} | {
                        b.bed for b, until in self._unmeasured_until.items() if until > now
                    }
                    lags = [float(lag) for bed, lag in await cur.fetchall() if bed not in silent]
                    if lags:
                        self.stored_lag_s.append(max(lags))
            except psycopg.Error:
                pass  # the database is down: nothing to measure
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def stored_messages(self) -> int:
        """The real beds' messages the engine has stored."""
        async with await psycopg.AsyncConnection.connect(self.db_url) as conn:
            cur = await conn.execute(
                """SELECT coalesce(sum(c.messages), 0) FROM beds b JOIN bed_counters c
                   USING (bed_id) WHERE b.site = %s AND b.bed LIKE 'real%%'""",
                (SITE,),
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    def take(self) -> tuple[list[float], list[float], int]:
        """The alarm latencies and stored lags since the last call, and how many alarms are
        more than 30 s overdue."""
        overdue = sum(1 for t in self._pending if time.time() - t > 30.0)
        out = (self.alarm_latency_s, self.stored_lag_s, overdue)
        self.alarm_latency_s, self.stored_lag_s = [], []
        return out


# --- attacks in a process of their own ------------------------------------------------------------


def _child_client(port: int, user: str) -> aiomqtt.Client:
    password = os.environ["EICU_ATTACK_PASSWORD"]
    return aiomqtt.Client("127.0.0.1", port, username=user, password=password, identifier=user)


async def flood(port: int, n: int, user: str) -> float:
    t0 = time.monotonic()
    async with _child_client(port, user) as c:
        for i in range(n):
            bed = BedKey(SITE, f"x{i:06d}")
            frame = NumericsFrame(bed, 1, time.time_ns() // 1000, {"HR": 70.0})
            await c.publish(wire.numerics_topic(bed), wire.encode_numerics(frame), qos=0)
            if i % 500 == 0:
                await asyncio.sleep(0)
    return time.monotonic() - t0


def _mqtt_string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _mqtt_packet(kind: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:  # the remaining length, 7 bits a byte
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([kind, *length]) + body


def oversized(port: int, user: str, topic: str, payload: bytes) -> bool:
    """One connection that publishes ``payload`` (QoS 0), written by hand so that the broker's
    disconnection costs nothing; True when the broker accepted the connection."""
    password = os.environ["EICU_ATTACK_PASSWORD"]
    connect = _mqtt_packet(
        0x10,
        _mqtt_string("MQTT")
        + bytes([4, 0xC2, 0, 60])  # MQTT 3.1.1; user name, password, clean session; keepalive
        + _mqtt_string(user)
        + _mqtt_string(user)
        + _mqtt_string(password),
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(connect)
        if sock.recv(4)[:1] != b"\x20":
            return False
        with contextlib.suppress(OSError):  # the broker closes the connection as it reads
            sock.sendall(_mqtt_packet(0x30, _mqtt_string(topic) + payload))
            sock.recv(1)
    return True


async def junk(port: int, n: int, user: str) -> None:
    """``n`` messages of 1 MB (over the broker's max_packet_size: it drops each and closes the
    sender's connection), then ``n`` of 500 kB (under it: they reach the engine)."""
    logging.getLogger("mqtt").disabled = True  # the disconnections are counted, not logged
    topic = wire.numerics_topic(REAL_BEDS[0])
    accepted = sum(oversized(port, user, topic, b"\x00" * 2**20) for _ in range(n))
    acknowledged = 0
    async with _child_client(port, user) as c:
        for _ in range(n):
            await c.publish(topic, b"\x00" * 500_000, qos=1)
            acknowledged += 1
    print(
        f"junk: {accepted} connections sent 1 MB each (and were closed by the broker); "
        f"{acknowledged} x 500 kB acknowledged",
        flush=True,
    )


async def in_child(kind: str, port: int, n: int, user: str, password: str) -> float:
    """Run an attack in a process of its own (the real beds' publisher must not wait on it)."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child",
        kind,
        "--port",
        str(port),
        "--count",
        str(n),
        "--user",
        user,
        env={**os.environ, "EICU_ATTACK_PASSWORD": password},
    )
    await proc.wait()
    return time.monotonic() - t0


# --- the dashboard, as a browser or a cart would use it ---------------------------------------


@dataclass
class Http:
    port: int

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, object] | None = None,
        source: str = USER_ADDRESS,
        cookie: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=15, source_address=(source, 0)
        )
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if cookie:
                headers["Cookie"] = cookie
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    async def login(
        self, name: str, password: str, source: str = USER_ADDRESS, next_: str | None = None
    ) -> tuple[int, str | None, dict[str, object]]:
        """(status, session cookie, answer)."""
        body: dict[str, object] = {"name": name, "password": password}
        if next_ is not None:
            body["next"] = next_
        status, headers, data = await asyncio.to_thread(
            self.call, "POST", "/api/login", body, source
        )
        cookie = headers.get("set-cookie", "").split(";", 1)[0] or None
        with contextlib.suppress(ValueError):
            return status, cookie, json.loads(data)
        return status, cookie, {}


async def cart_register(port: int, cookie: str, bed: BedKey) -> str:
    """What the dashboard answers a cart registering for ``bed``: ``registered`` or the close
    code and reason."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    url = f"ws://127.0.0.1:{port}/ws/cart/{bed.site}/{bed.bed}"
    try:
        async with connect(url, additional_headers={"Cookie": cookie}, open_timeout=10) as ws:
            doc = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return str(doc.get("type"))
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return f"closed {rcvd.code} ({rcvd.reason})" if rcvd else "closed"


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def report(phase: str, probe: Probe, engine: subprocess.Popen[bytes], mport: int) -> None:
    alarms, lags, missed = probe.take()
    m = _metrics(mport)
    refused = sum(v for k, v in m.items() if k.startswith("eicu_ingest_refused_total"))
    stale = m.get(ALARM_STARTS, float("nan"))

    def worst(values: list[float]) -> str:
        return f"{max(values):7.1f}" if values else "      -"

    print(
        f"{phase:<26} stored lag max {worst(lags)} s   alarm latency max {worst(alarms)} s "
        f"(n={len(alarms)}, overdue {missed})   input delay "
        f"{m.get('eicu_ingest_input_delay_seconds', float('nan')):5.1f} s   "
        f"queue {m.get('eicu_ingest_queue_bytes', float('nan')) / 2**20:6.1f} MB   "
        f"refused {refused:7.0f}   alarm starts {stale:6.0f}   "
        f"rss {_rss_mb(engine.pid):6.0f} MB",
        flush=True,
    )


# --- the phases after the flood and the junk ----------------------------------------------------


async def future_time(probe: Probe) -> str:
    bed = REAL_BEDS[0]
    probe.future.add(bed)  # one message dated 2099, with a normal heart rate
    while bed in probe.future:
        await asyncio.sleep(0.1)
    t0 = time.time()
    probe.hr[bed] = 180.0
    took = await probe.wait_alarm(bed, "HR_HIGH", t0, HR_HIGH_DELAY_S + 30.0)
    clock = await probe.wait_alarm(bed, "DEVICE_CLOCK", t0 - 5.0, 1.0)
    probe.hr.pop(bed)
    ok = math.isfinite(took) and took <= HR_HIGH_DELAY_S + 5.0
    return (
        f"3 future time: {verdict(ok)}: HR_HIGH {took:.1f} s after HR 180 followed a message "
        f"dated 2099 (policy delay {HR_HIGH_DELAY_S:g} s); DEVICE_CLOCK "
        f"{'raised' if math.isfinite(clock) else 'not raised'}"
    )


async def standby(probe: Probe, lifetime_s: float) -> str:
    bed = REAL_BEDS[1]
    assert probe.client is not None
    t0 = time.time()
    await probe.client.publish(
        wire.status_topic(bed), b'{"v":1,"state":"standby"}', qos=1, retain=True
    )
    shown = await probe.wait_alarm(bed, "BED_STANDBY", t0, 15.0)
    t1 = time.time()
    probe.hr[bed] = 180.0
    hr = await probe.wait_alarm(bed, "HR_HIGH", t1, HR_HIGH_DELAY_S + 30.0)
    t2 = time.time()
    probe.silence(bed)
    due = max(t0 + lifetime_s, t2 + DATA_STALE_AFTER_S)
    stale = await probe.wait_alarm(bed, "DATA_STALE", t2, due - t2 + 30.0)
    late = t2 + stale - due
    await probe.client.publish(wire.status_topic(bed), b"", qos=1, retain=True)
    probe.resume(bed)
    probe.hr.pop(bed)
    ok = math.isfinite(shown) and math.isfinite(hr) and late <= 5.0
    return (
        f"4 retained standby: {verdict(ok)}: BED_STANDBY shown in {shown:.1f} s; HR 180 in "
        f"standby alarmed in {hr:.1f} s; silent bed's DATA_STALE {late:+.1f} s from when due "
        f"(standby lifetime {lifetime_s:g} s, stale after {DATA_STALE_AFTER_S:g} s)"
    )


async def takeover(accounts: Accounts, port: int, mport: int, seconds: float) -> str:
    before = _metrics(mport).get("eicu_mqtt_reconnects_total", float("nan"))
    attempts = connected = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        attempts += 1
        with contextlib.suppress(aiomqtt.MqttError):
            async with accounts.client(port, "gw-other", identifier=ENGINE, timeout=5):
                connected += 1
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    await asyncio.sleep(2.0)
    m = _metrics(mport)
    after = m.get("eicu_mqtt_reconnects_total", float("nan"))
    ok = after == before and m.get("eicu_mqtt_connected") == 1
    return (
        f"5 session takeover: {verdict(ok)}: {attempts} connections of another account asking "
        f"for the engine's client id ({connected} accepted under their own id); the engine's "
        f"reconnections {before:.0f} -> {after:.0f}"
    )


async def cart(web: Http, password: str, hold_s: float) -> str:
    status, cookie, _ = await web.login("cart-real02", password)
    if status != 200 or cookie is None:
        return f"6 cart impersonation: FAIL: the cart's login answered {status}"
    answers: dict[str, int] = {}
    end = time.monotonic() + hold_s
    while time.monotonic() < end:
        other = await cart_register(web.port, cookie, REAL_BEDS[3])
        code = other.split(" (")[0]
        answers[code] = answers.get(code, 0) + 1
        await asyncio.sleep(0.25)
    own = await cart_register(web.port, cookie, REAL_BEDS[2])
    ok = set(answers) == {"closed 4421"} and own == "registered"
    spread = ", ".join(f"{n} x {a}" for a, n in answers.items())
    return (
        f"6 cart impersonation: {verdict(ok)}: the cart account of {REAL_BEDS[2]} registering "
        f"for {REAL_BEDS[3]}: {spread}; for its own bed: {own}"
    )


REDIRECTS = (
    "https://evil.example/",
    "//evil.example/census",
    "/\\evil.example",
    "%2F%2Fevil.example",
    "/%2F%2Fevil.example",
    "javascript:alert(1)",
)


async def open_redirect(web: Http, password: str, hold_s: float) -> str:
    asked = 0
    followed: list[str] = []
    end = time.monotonic() + hold_s
    while time.monotonic() < end:
        for target in REDIRECTS:
            path = "/login?next=" + urllib.parse.quote(target, safe="")
            status, headers, _ = await asyncio.to_thread(web.call, "GET", path)
            asked += 1
            if not (status == 303 and headers.get("location") == "/login"):
                followed.append(f"{target} ({status} {headers.get('location')})")
        await asyncio.sleep(0.25)
    status, _, answer = await web.login("nurse1", password, next_="//evil.example/census")
    if status != 200 or answer.get("next") != "/census":
        followed.append(f"login next -> {answer.get('next')!r} ({status})")
    ok = not followed
    return (
        f"7 open redirect: {verdict(ok)}: {asked} login links to {len(REDIRECTS)} other "
        f"origins, {asked - len(followed)} answered with /login and no target; a login asking "
        f"for //evil.example goes to {answer.get('next')!r}"
        + ("" if ok else f"; followed: {', '.join(sorted(set(followed)))}")
    )


async def lockout(web: Http, password: str, attempts: int, hold_s: float) -> str:
    codes: dict[int, int] = {}
    for i in range(attempts):
        status, _, _ = await web.login("nurse1", f"wrong-password-{i}", source=ATTACKER_ADDRESS)
        codes[status] = codes.get(status, 0) + 1
        await asyncio.sleep(hold_s / attempts)
    t0 = time.monotonic()
    status, cookie, _ = await web.login("nurse1", password, source=USER_ADDRESS)
    took = time.monotonic() - t0
    ok = status == 200 and cookie is not None and codes.get(429, 0) > 0
    spread = ", ".join(f"{n} x {code}" for code, n in sorted(codes.items()))
    return (
        f"8 lockout: {verdict(ok)}: {attempts} wrong passwords for nurse1 from "
        f"{ATTACKER_ADDRESS} over {hold_s:g} s ({spread}); nurse1 from {USER_ADDRESS}: "
        f"{status} in {took:.2f} s"
    )


async def main(args: argparse.Namespace) -> None:
    from argon2 import PasswordHasher

    from dashboards.users import Users

    work = Path(tempfile.mkdtemp(prefix="eicu-attack-"))
    accounts = Accounts(work / "broker")
    auth = accounts.make()
    # The configuration `eicu broker-auth config` prints (persistence is the test broker's own).
    limits = [line for line in SESSION_LIMITS if not line.startswith("persistence ")]
    broker = Mosquitto(
        auth=[*auth.mosquitto_config(), *limits], listener=listener_settings()
    ).start()
    pg = Postgres().start()
    db_url = pg.create_database("attack")
    mport, hport = free_port(), free_port()
    # argon2id at its smallest: the login phases measure the limiter, not the hash
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    users = Users(work / "users.json", hasher=cheap)
    user_password, cart_password = "nurse-password-1", "cart-password-1"
    users.add("nurse1", "nurse", user_password)
    users.add("cart-real02", "cart", cart_password, bed=str(REAL_BEDS[2]))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EICU_")},
        "EICU_MQTT_URL": f"mqtt://{ENGINE}:{accounts.passwords[ENGINE]}@127.0.0.1:{broker.port}",
        "EICU_DATABASE_URL": db_url,
        "EICU_SPOOL_DIR": str(work / "spool"),
        "EICU_OUTBOX_PATH": str(work / "alarms.db"),
        "EICU_USERS_FILE": str(work / "users.json"),
        "EICU_HTTP_HOST": "127.0.0.1",
        "EICU_HTTP_PORT": str(hport),
        "EICU_METRICS_PORT": str(mport),
        "EICU_ANALYSE_SIGNALS": "0",
        "EICU_STANDBY_MAX_S": str(args.standby),
        "EICU_LOG_LEVEL": "WARNING",
    }
    log = (work / "serve.log").open("wb")
    engine: subprocess.Popen[bytes] | None = None
    probe = Probe(broker.port, db_url, accounts)
    web = Http(hport)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    hostile = ("gw-hostile", accounts.passwords["gw-hostile"])

    def start_engine() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "eicu.cli", "serve"],
            cwd=args.repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    try:
        # The engine's persistent session exists, as for an engine restarted during an outage.
        async with accounts.client(broker.port, ENGINE, clean_session=False) as previous:
            await previous.subscribe("eicu/v1/#", qos=1)
        # phase 0: started with the database down
        pg.stop()
        engine = start_engine()
        try:
            wait_port(mport, 60.0)
            started_down = "running"
        except Exception:
            started_down = f"exited ({engine.poll()})"
        tasks = [
            asyncio.create_task(probe.alarms()),
            asyncio.create_task(probe.beds(stop)),
            asyncio.create_task(probe.stored(stop)),
        ]
        await asyncio.sleep(args.settle)
        print(f"eicu serve started with the database down: {started_down}", flush=True)
        report("0 database down at start", probe, engine, mport)
        pg.start()
        if engine.poll() is not None:
            engine = start_engine()
            wait_port(mport, 60.0)
        await asyncio.sleep(args.settle)
        report("0 database back", probe, engine, mport)
        # phase 1: the bed-id flood
        flood_t0 = time.time()
        took = await in_child("flood", broker.port, args.flood, *hostile)
        print(f"flood: {args.flood} new bed ids in {took:.1f} s", flush=True)
        for second in range(0, args.after, 10):
            await asyncio.sleep(10)
            report(f"1 flood +{second + 10} s", probe, engine, mport)
        starts = probe.starts("x", flood_t0)
        m = _metrics(mport)
        print(
            f"1 flood: {verdict(starts.get('DATA_STALE', 0) <= 2)}: "
            f"{m.get('eicu_beds_auto_registered_total', float('nan')):.0f} beds auto-registered "
            f"in all; alarm starts of the flood's beds: {starts or 'none'}",
            flush=True,
        )
        # phase 2: megabyte junk with the database down
        pg.stop()
        await asyncio.sleep(3)
        took = await in_child("junk", broker.port, args.junk, *hostile)
        print(f"junk: {args.junk} x 1 MB and 500 kB in {took:.1f} s, database down", flush=True)
        await asyncio.sleep(args.settle)
        report("2 junk, database down", probe, engine, mport)
        pg.start()
        for second in range(0, args.after, 10):
            await asyncio.sleep(10)
            report(f"2 database back +{second + 10} s", probe, engine, mport)
        # phases 3-8
        print(await future_time(probe), flush=True)
        report("3 future time", probe, engine, mport)
        print(await standby(probe, args.standby), flush=True)
        report("4 retained standby", probe, engine, mport)
        print(await takeover(accounts, broker.port, mport, args.takeover), flush=True)
        report("5 session takeover", probe, engine, mport)
        print(await cart(web, cart_password, args.hold), flush=True)
        report("6 cart impersonation", probe, engine, mport)
        print(await open_redirect(web, user_password, args.hold), flush=True)
        report("7 open redirect", probe, engine, mport)
        print(await lockout(web, user_password, args.logins, args.hold), flush=True)
        report("8 lockout", probe, engine, mport)
        sent = probe.sent
        stored = await probe.stored_messages()
        deadline = time.monotonic() + 20.0
        while stored < sent and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            stored = await probe.stored_messages()
        print(
            f"real beds: {verdict(stored >= sent)}: {sent} messages acknowledged by the broker, "
            f"{stored} stored",
            flush=True,
        )
        m = _metrics(mport)
        refused = {
            k.split('"')[1]: v for k, v in m.items() if k.startswith("eicu_ingest_refused_total{")
        }
        print(f"refused by reason: {refused}", flush=True)
        started = m.get(ALARM_STARTS, float("nan"))
        print(
            f"in all: engine reconnections {m.get('eicu_mqtt_reconnects_total', float('nan')):.0f}"
            f", alarm starts {started:.0f}"
            f" (flood's beds {sum(probe.starts('x').values())}, real beds "
            f"{sum(probe.starts('real').values())}, probe {sum(probe.starts('probe').values())})",
            flush=True,
        )
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if engine is not None and engine.poll() is None:
            engine.terminate()
            try:
                engine.wait(30)
            except subprocess.TimeoutExpired:
                engine.kill()
                engine.wait()
        log.close()
        broker.cleanup()
        pg.cleanup()
        print(f"engine log: {work / 'serve.log'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=50_000, help="new bed ids (max 200000)")
    parser.add_argument("--junk", type=int, default=600, help="1 MB junk messages (max 2000)")
    parser.add_argument("--after", type=int, default=60, help="seconds watched after each attack")
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--standby", type=float, default=20.0, help="EICU_STANDBY_MAX_S (>= 10)")
    parser.add_argument("--takeover", type=float, default=15.0, help="seconds of takeovers")
    parser.add_argument("--logins", type=int, default=30, help="wrong passwords (max 1000)")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds of each web attack")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--child", choices=("flood", "junk"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    a = parser.parse_args()
    a.flood = min(a.flood, 200_000)
    a.junk = min(a.junk, 2000)
    a.after = min(a.after, 600)
    a.standby = min(max(a.standby, 10.0), 600.0)
    a.takeover = min(a.takeover, 300.0)
    a.logins = min(a.logins, 1000)
    a.hold = min(a.hold, 120.0)
    if a.child == "flood":
        asyncio.run(flood(a.port, min(a.count, 200_000), a.user))
    elif a.child == "junk":
        asyncio.run(junk(a.port, min(a.count, 2000), a.user))
    else:
        asyncio.run(main(a))
