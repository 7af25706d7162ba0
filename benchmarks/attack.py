"""A hostile gateway against a real ``eicu serve``: how far real beds' stored data and alarms
fall behind.

Starts its own Mosquitto and PostgreSQL on free loopback ports and runs ``eicu serve`` (from
``--repo``, default this checkout) as a child process. Real beds publish numerics every second
at site ``icu``; a probe bed raises a temperature alarm (no delay in the policy) every few
seconds and the time from its publish to the alarm on its alarms topic is measured. Phases:

0. ``eicu serve`` started while PostgreSQL is down (then PostgreSQL started);
1. a flood of ``--flood`` one-value numerics for new bed ids at the real beds' site;
2. PostgreSQL stopped, ``--junk`` one-megabyte junk messages on a real bed's topic, PostgreSQL
   started again.

Each phase prints the worst lag of the real beds' newest stored value, the alarm latencies,
the engine's input delay, queue bytes and RSS. Loopback only; bounded in count and time::

    python benchmarks/attack.py [--flood 50000] [--junk 600] [--repo /path/to/eicu]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiomqtt
import psycopg

from eicu import wire
from eicu.devservices import Mosquitto, Postgres, free_port, wait_port
from eicu.models import BedKey, NumericsFrame

SITE = "icu"
REAL_BEDS = [BedKey(SITE, f"real{i:02d}") for i in range(20)]
PROBE = BedKey(SITE, "probe")
PROBE_EVERY_S = 4.0


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


class Probe:
    """The real beds and the probe bed; records alarm latencies and stored lags."""

    def __init__(self, port: int, db_url: str) -> None:
        self.port = port
        self.db_url = db_url
        self.alarm_latency_s: list[float] = []
        self.stored_lag_s: list[float] = []
        self._pending: list[float] = []  # when the probe's temperature went up, not yet alarmed
        self._seq = 0

    async def beds(self, stop: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="attack-real-beds") as c:
            next_probe = time.time() + 2.0
            high = False
            while not stop.is_set():
                self._seq += 1
                now = time.time()
                ts = int(now * 1e6)
                for bed in REAL_BEDS:
                    frame = NumericsFrame(bed, self._seq, ts, {"HR": 80.0, "SPO2": 97.0})
                    await c.publish(wire.numerics_topic(bed), wire.encode_numerics(frame), qos=1)
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
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="attack-site") as c:
            await c.subscribe(wire.alarms_topic(PROBE), qos=1)
            async for message in c.messages:
                doc = json.loads(bytes(message.payload))
                if doc.get("kind") == "TEMP_HIGH" and doc.get("state") == "active":
                    # time_us: the device time of the data that showed the condition
                    sent_s = float(doc["time_us"]) / 1e6
                    self.alarm_latency_s.append(time.time() - sent_s)
                    self._pending = [t for t in self._pending if t > sent_s + 0.5]

    async def stored(self, stop: asyncio.Event) -> None:
        """Every second: how old the newest stored value of the real beds is."""
        while not stop.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(self.db_url, connect_timeout=2)
                async with conn:
                    cur = await conn.execute(
                        """SELECT extract(epoch FROM now() - max(n.time)) FROM numerics n
                           JOIN beds b USING (bed_id) WHERE b.site = %s AND b.bed LIKE 'real%%'""",
                        (SITE,),
                    )
                    row = await cur.fetchone()
                    if row and row[0] is not None:
                        self.stored_lag_s.append(float(row[0]))
            except psycopg.Error:
                pass  # the database is down: nothing to measure
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    def take(self) -> tuple[list[float], list[float], int]:
        """The alarm latencies and stored lags since the last call, and how many alarms are
        more than 30 s overdue."""
        overdue = sum(1 for t in self._pending if time.time() - t > 30.0)
        out = (self.alarm_latency_s, self.stored_lag_s, overdue)
        self.alarm_latency_s, self.stored_lag_s = [], []
        return out


async def flood(port: int, n: int) -> float:
    t0 = time.monotonic()
    async with aiomqtt.Client("127.0.0.1", port, identifier="attack-flood") as c:
        for i in range(n):
            bed = BedKey(SITE, f"x{i:06d}")
            frame = NumericsFrame(bed, 1, time.time_ns() // 1000, {"HR": 70.0})
            await c.publish(wire.numerics_topic(bed), wire.encode_numerics(frame), qos=0)
            if i % 500 == 0:
                await asyncio.sleep(0)
    return time.monotonic() - t0


async def junk(port: int, n: int) -> float:
    t0 = time.monotonic()
    payload = b"\x00" * 2**20
    async with aiomqtt.Client("127.0.0.1", port, identifier="attack-junk") as c:
        for _ in range(n):
            await c.publish(wire.numerics_topic(REAL_BEDS[0]), payload, qos=1)
    return time.monotonic() - t0


async def in_child(kind: str, port: int, n: int) -> float:
    """Run an attack in a process of its own (the real beds' publisher must not wait on it)."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", kind, "--port", str(port), "--count", str(n)
    )
    await proc.wait()
    return time.monotonic() - t0


def report(phase: str, probe: Probe, engine: subprocess.Popen[bytes], mport: int) -> None:
    alarms, lags, missed = probe.take()
    m = _metrics(mport)
    refused = sum(v for k, v in m.items() if k.startswith("eicu_ingest_refused_total"))
    stale = m.get('eicu_alarm_events_total{state="active"}', float("nan"))

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


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="eicu-attack-"))
    broker = Mosquitto().start()
    pg = Postgres().start()
    db_url = pg.create_database("attack")
    mport, hport = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EICU_")},
        "EICU_MQTT_URL": broker.url,
        "EICU_MQTT_CLIENT_ID": "attack-engine",
        "EICU_DATABASE_URL": db_url,
        "EICU_SPOOL_DIR": str(work / "spool"),
        "EICU_OUTBOX_PATH": str(work / "alarms.db"),
        "EICU_USERS_FILE": str(work / "users.json"),
        "EICU_HTTP_PORT": str(hport),
        "EICU_METRICS_PORT": str(mport),
        "EICU_ANALYSE_SIGNALS": "0",
        "EICU_LOG_LEVEL": "WARNING",
    }
    log = (work / "serve.log").open("wb")
    engine: subprocess.Popen[bytes] | None = None
    probe = Probe(broker.port, db_url)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

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
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, identifier="attack-engine", clean_session=False
        ) as previous:
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
        took = await in_child("flood", broker.port, args.flood)
        print(f"flood: {args.flood} new bed ids in {took:.1f} s", flush=True)
        for second in range(0, args.after, 10):
            await asyncio.sleep(10)
            report(f"1 flood +{second + 10} s", probe, engine, mport)
        # phase 2: megabyte junk with the database down
        pg.stop()
        await asyncio.sleep(3)
        took = await in_child("junk", broker.port, args.junk)
        print(f"junk: {args.junk} x 1 MB in {took:.1f} s, database down", flush=True)
        await asyncio.sleep(args.settle)
        report("2 junk, database down", probe, engine, mport)
        pg.start()
        for second in range(0, args.after, 10):
            await asyncio.sleep(10)
            report(f"2 database back +{second + 10} s", probe, engine, mport)
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
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--child", choices=("flood", "junk"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    a = parser.parse_args()
    a.flood = min(a.flood, 200_000)
    a.junk = min(a.junk, 2000)
    a.after = min(a.after, 600)
    if a.child == "flood":
        asyncio.run(flood(a.port, min(a.count, 200_000)))
    elif a.child == "junk":
        asyncio.run(junk(a.port, min(a.count, 2000)))
    else:
        asyncio.run(main(a))
