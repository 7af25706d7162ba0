"""How many standard beds the hub's workers hold in real time on this machine, full pipeline.

For each configuration (bed count x worker count) it starts, on this box, a NATS server (or with
``--nodes 3`` a 3-node cluster) with ``--partitions`` partitions, a PostgreSQL database, and
``eicu worker`` processes sharing the partitions through the ownership buckets, each reading its
partitions over MQTT persistent sessions and acknowledging after persist. Only when the workers'
logs say every partition is read (``subscribed to eicu/p/<k>/#``, the partitions shared fairly)
do simulator processes (a gateway connection per 16 beds, spread over the nodes) publish
``--beds`` standard beds in real time for ``--duration`` seconds: ECG II and V at 250 Hz, PLETH
and ABP at 125 Hz, RESP at 62.5 Hz in frames of ``--frame`` seconds (0.25 by default) and
numerics every second, QoS 1. In the default ``--mode full`` the workers run every bed's
signal pipeline, the scores and the alarm stage, and store everything (``--mode ingest``: no
signal pipeline; alarms from the numerics).
``--event-beds`` of the beds are scripted: their patient goes into ventricular tachycardia
(heart rate about 155-195/min) ``--events-at`` seconds after their simulator started. The
simulators publish for ``--warmup`` + ``--duration`` seconds; the measured window starts
``--warmup`` seconds after the first message is stored (every bed met, the kernels loaded) and
ends when everything is stored.

Printed per configuration (``split``: the partitions each worker read when publishing began;
``load``: the machine's load average at the end; a note when the workers logged partitions
changing hands while the beds published):

- ``msg/s``: messages published per second (all beds), as the broker acknowledged them;
- ``once``: every bed's stored messages and samples (``store.stats()``) equal what its gateway
  had acknowledged: nothing lost, nothing twice;
- ``drain s``: from the last publish until everything is stored (a bed's last waveform frames
  wait a few seconds for their 2 s storage segment before they are written on their own); when
  the counts never match, until the store last changed (and the row says how far it got);
- ``dev->db p50/p99 ms``: numerics from the device's measurement time to stored, the worst
  worker's percentiles (includes the broker and any backlog in front of the worker);
  ``rx->db``: the same from the worker's receipt (the worker's own part);
- ``cores``: the workers' CPU (``/proc/<pid>/stat`` user + system, summed over the workers) over
  the measured window, divided by its length; ``ms/bed-s``: the same CPU per bed-second
  published in the window (beds x seconds from its start to the last publish): the cost of
  holding one bed, fixed costs of the workers included;
- ``RSS MB``: the workers' resident memory, summed, at the end;
- ``brk s/1k``: the NATS servers' CPU seconds per 1,000 messages published in the window
  (comparable with benchmarks/bus.py), ``pg cores``: PostgreSQL's CPU in the window (all its
  processes), ``rows/s``: numerics and waveform rows written per second of data (whole run),
  ``MB/bed-h``: the database's growth per bed-hour of data (whole run, indexes included);
- ``dups``: messages the workers received a second time (whole run): dropped as duplicates
  (``eicu_ingest_duplicates``) or passed over unread, still held from the first time
  (``eicu_ingest_redelivered_held``). With no worker lost, each is one NATS sent again because
  its ``ack_wait`` (5 s) passed while a worker still held it unacknowledged: the workers were
  further behind than the acknowledgement window allows (``--max-ack-pending``, docs/bus.md);
- alarm latency beyond the condition delay: for each event bed, the first ``HR_HIGH`` alarm
  (delay from the policy, 10 s by default) and, in full mode, the first ``VTACH``: when the
  worker recorded it (``alarm_events.recorded``, read back from the store) minus the event's
  data time minus the condition's delay, p50/p99/max over the event beds. For ``HR_HIGH`` the
  event's data time is that of the first heart rate beyond the limit in the store (the monitor's
  heart rate follows the rhythm by a few beats): what is left is the bus, the worker's queue and
  the alarm stage. For ``VTACH`` it is the VT's onset, and the figure includes the beats the
  rhythm detector needs; alarms started on the stable beds while they published are counted.

Last, the bus's own anchor in the same run: benchmarks/bus.py's measurement on a fresh NATS of
the same shape (gateway-shaped 400 B QoS 1 messages at ``--bus-rate`` per second, one persistent
session per partition): acknowledged rate, loss, latency, the broker's CPU seconds per 1,000
messages and the rate that implies per broker core.

    python benchmarks/scale.py --beds 50 100 --workers 1 2 --duration 30 [--mode full|ingest]
        [--nodes 1|3] [--partitions 8] [--warmup 10] [--event-beds 5] [--events-at 15]
        [--bus-rate 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Published,
    collect_simulators,
    cpu_seconds,
    percentile,
    postmaster_pid,
    rss_mb,
    start_simulators,
)

SITE = "bench"
EVENT_SITE = "bench-events"
EVENT_SCENARIO = "vt"
# The alarms an event bed's VT starts at the event: the heart rate beyond its limit (a numerics
# rule with the policy's delay) and, from the ECG, the rhythm (the signal pipeline: full mode).
EVENT_ALARMS = ("HR_HIGH", "VTACH")
# A partition changing hands while the beds publish (a worker's lease lapsed: its loop was
# starved beyond the ownership TTL), as the workers log it.
MOVED = re.compile(r"lost partition|handed over|claimed partition")
READY_WAIT_S = 120.0


# --- a worker, in its own process ------------------------------------------------------------


def worker_child() -> None:
    """``eicu worker`` with its settings from the environment, until SIGTERM; then prints its
    engine's latencies as ``RESULT {json}``."""
    from eicu import heap
    from eicu.commands.serve import load_settings
    from eicu.commands.worker import check, work
    from eicu.metrics import IngestMetrics, LatencyRecorder

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = load_settings(None)
    check(settings)
    metrics = IngestMetrics()

    def restart_latencies() -> None:  # the end of the warm-up
        metrics.latency = LatencyRecorder()
        metrics.device_latency = LatencyRecorder()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, restart_latencies)
        await work(settings, stop, metrics)

    heap.settle()  # as the command does
    asyncio.run(main())
    dev = metrics.device_latency.percentiles((50.0, 99.0))
    rx = metrics.latency.percentiles((50.0, 99.0))

    def counted(counter: Any) -> int:
        return int(
            sum(
                sample.value
                for family in counter.collect()
                for sample in family.samples
                if sample.name.endswith("_total")
            )
        )

    doc = {
        # messages the broker sent again (ack_wait passed while the worker held them)
        "duplicates": counted(metrics.duplicates) + counted(metrics.redelivered_held),
        "dev_p50_s": dev[50.0],
        "dev_p99_s": dev[99.0],
        "rx_p50_s": rx[50.0],
        "rx_p99_s": rx[99.0],
    }
    print("RESULT " + json.dumps(doc), flush=True)


# --- one configuration -----------------------------------------------------------------------


@dataclass
class Config:
    beds: int
    workers: int
    full: bool

    @property
    def mode(self) -> str:
        return "full" if self.full else "ingest"


@dataclass
class Result:
    config: Config
    msgs_per_s: float = 0.0
    exactly_once: bool = False
    stored_messages: int = 0
    published_messages: int = 0
    sim_behind: bool = False
    drain_s: float = float("nan")
    dev_p50_ms: float = float("nan")
    dev_p99_ms: float = float("nan")
    rx_p50_ms: float = float("nan")
    rx_p99_ms: float = float("nan")
    cores: float = 0.0
    ms_per_bed_s: float = 0.0
    rss_mb: float = 0.0
    broker_s_per_1k: float = 0.0
    pg_cores: float = 0.0
    rows_per_s: float = 0.0
    mb_per_bed_h: float = 0.0
    split: list[int] = field(default_factory=list)  # partitions per worker at the start
    alarm_beyond_s: dict[str, list[float]] = field(default_factory=dict)  # kind -> per event bed
    event_beds: int = 0
    stable_alarms: dict[str, int] = field(default_factory=dict)  # kind -> started on stable beds
    behind: int = 0  # messages the simulators did not publish or saw unacknowledged
    load: float = 0.0  # the machine's load average (1 min) at the end of the window
    duplicates: int = 0  # messages the workers received again (dropped or passed over), whole run
    moves: int = 0  # partitions lost, handed over or claimed while the beds published


def _start_bus(nodes: int, partitions: int, max_ack_pending: int) -> Any:
    from eicu.devservices import NatsCluster, NatsServer

    if nodes == 1:
        server = NatsServer(partitions=partitions, mqtt_max_ack_pending=max_ack_pending).start()
        server.nodes = [server]  # type: ignore[attr-defined]
        return server
    return NatsCluster(
        nodes=nodes, partitions=partitions, mqtt_max_ack_pending=max_ack_pending
    ).start()


def _fair(readings: list[set[int]], partitions: int) -> bool:
    """Every partition read by exactly one worker, each worker with its fair share."""
    covered = set().union(*readings)
    disjoint = sum(len(r) for r in readings) == len(covered)
    share = partitions // len(readings)
    return covered == set(range(partitions)) and disjoint and all(len(r) >= share for r in readings)


async def _db_size(db_url: str) -> tuple[int, int]:
    """Numerics and waveform rows, and the database's bytes on disk."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM numerics) + (SELECT count(*) FROM waveforms), "
            "pg_database_size(current_database())"
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def run_config(cfg: Config, args: argparse.Namespace, pg: Any, index: int) -> Result:
    from eicu.config import WorkerSettings
    from eicu.devservices import WorkerProcess
    from eicu.store import open_store

    result = Result(cfg)
    db_url = pg.create_database(f"scale{index}")
    store = open_store(db_url)
    await store.open()  # the schema, before the workers
    rows0, bytes0 = await _db_size(db_url)
    bus = _start_bus(args.nodes, args.partitions, args.max_ack_pending)
    work = Path(tempfile.mkdtemp(prefix="eicu-scale-"))
    mqtt = [n.url for n in bus.nodes]
    env = {
        "EICU_ANALYSE_SIGNALS": "true" if cfg.full else "false",
        # every simulated bed is one of two sites', all arriving at once
        "EICU_SITE_BEDS_MAX": "100000",
        "EICU_NEW_BEDS_BURST": "100000",
        "EICU_SITE_MESSAGES_PER_S": "1000000",
    }
    workers = [
        WorkerProcess(
            f"w{i}",
            mqtt_urls=mqtt[i % len(mqtt) :] + mqtt[: i % len(mqtt)],
            nats_urls=[n.nats_url for n in bus.nodes],
            db_url=db_url,
            workdir=work,
            partitions=args.partitions,
            ownership_ttl_s=args.ownership_ttl or WorkerSettings().ownership_ttl_s,
            env=env,
            command=[sys.executable, __file__, "--worker-child"],
            pythonpath=ROOT,
        )
        for i in range(cfg.workers)
    ]
    sims: list[Any] = []
    try:
        deadline = time.monotonic() + READY_WAIT_S
        while not _fair([w.reading for w in workers], args.partitions):
            if time.monotonic() > deadline or any(w.process.poll() is not None for w in workers):
                tails = "\n".join(f"{w.name}: {sorted(w.reading)}\n{w.tail(10)}" for w in workers)
                raise RuntimeError(f"the partitions are not all read:\n{tails}")
            await asyncio.sleep(0.1)
        result.split = [len(w.reading) for w in workers]
        logged = [len(w.log) for w in workers]
        pids = [w.pid for w in workers]
        broker_pids = [n.pid for n in bus.nodes if n.pid is not None]
        pg_pid = postmaster_pid(pg)
        seconds = args.warmup + args.duration  # of data, per bed
        events = min(args.event_beds, cfg.beds)
        result.event_beds = events
        t0 = time.monotonic()
        sims = start_simulators(
            mqtt, SITE, cfg.beds - events, args.sim_procs, seconds, frame_s=args.frame
        )
        if events:
            sims += start_simulators(
                mqtt[1:] + mqtt[:1],
                EVENT_SITE,
                events,
                1,
                seconds,
                frame_s=args.frame,
                scenario=EVENT_SCENARIO,
                events_at_s=args.events_at,
            )
        collecting = asyncio.create_task(asyncio.to_thread(collect_simulators, sims))
        # The measured window starts --warmup s after the first message is stored (the workers
        # have met every bed and loaded their kernels by then); the workers' latencies restart.
        while not (await store.stats())["beds"]:
            if time.monotonic() - t0 > READY_WAIT_S or collecting.done():
                raise RuntimeError("nothing stored after the simulators started")
            await asyncio.sleep(0.2)
        await asyncio.sleep(args.warmup)
        for w in workers:
            w.process.send_signal(signal.SIGUSR1)
        t_mark = time.monotonic()
        cpu0 = cpu_seconds(pids)
        broker0 = cpu_seconds(broker_pids)
        pg0 = cpu_seconds([pg_pid], children=True)
        published = await collecting
        t_published = time.monotonic()
        result.published_messages = published.messages
        result.msgs_per_s = published.messages / seconds
        result.behind = published.behind
        result.sim_behind = bool(published.behind) or t_published - t0 > seconds * 1.05 + 8
        stored: dict[str, dict[str, int]] = {}
        drain_deadline = t_published + args.drain_timeout
        # what was used until the store last changed (an incomplete run idles after it)
        last = (t_published, cpu_seconds(pids), cpu_seconds(broker_pids), pg0)
        while time.monotonic() < drain_deadline:
            now = (await store.stats())["beds"]
            if now != stored:
                stored = now
                pg_now = cpu_seconds([pg_pid], children=True)
                last = (time.monotonic(), cpu_seconds(pids), cpu_seconds(broker_pids), pg_now)
            if stored == published.beds:
                break
            await asyncio.sleep(0.25)
        t_done, cpu1, broker1, pg1 = last
        result.exactly_once = stored == published.beds
        result.stored_messages = sum(b["messages"] for b in stored.values())
        result.drain_s = t_done - t_published
        cpu_s = cpu1 - cpu0
        window_s = t_done - t_mark
        result.cores = cpu_s / window_s
        result.ms_per_bed_s = 1000 * cpu_s / (cfg.beds * (t_published - t_mark))
        result.rss_mb = sum(rss_mb(pid) for pid in pids)
        window_messages = result.msgs_per_s * (t_published - t_mark)
        result.broker_s_per_1k = (broker1 - broker0) / window_messages * 1000
        result.pg_cores = (pg1 - pg0) / window_s
        result.load = os.getloadavg()[0]
        result.moves = sum(
            1 for w, n in zip(workers, logged, strict=True) for x in w.log[n:] if MOVED.search(x)
        )
        rows1, bytes1 = await _db_size(db_url)
        result.rows_per_s = (rows1 - rows0) / seconds
        result.mb_per_bed_h = (bytes1 - bytes0) / 2**20 / (cfg.beds * seconds / 3600)
        # The alarm rows reach the store from each worker's outbox a little after the alarm.
        expected = len(EVENT_ALARMS if cfg.full else EVENT_ALARMS[:1]) * events
        alarm_deadline = time.monotonic() + args.alarm_wait
        while True:
            await _alarm_latency(result, store, db_url, published, args.events_at, seconds)
            found = sum(len(v) for v in result.alarm_beyond_s.values())
            if found >= expected or time.monotonic() > alarm_deadline:
                break
            await asyncio.sleep(1.0)
    finally:
        for s in sims:
            if s.poll() is None:
                s.kill()
                s.wait()
        for w in workers:
            if w.process.poll() is None:
                w.stop(timeout_s=60.0)
        await store.close()
        bus.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    for w in workers:
        lines = [x for x in w.output if x.startswith("RESULT ")]
        if not lines:
            continue
        doc = json.loads(lines[-1][7:])
        result.dev_p50_ms = _worst(result.dev_p50_ms, doc["dev_p50_s"] * 1000)
        result.dev_p99_ms = _worst(result.dev_p99_ms, doc["dev_p99_s"] * 1000)
        result.rx_p50_ms = _worst(result.rx_p50_ms, doc["rx_p50_s"] * 1000)
        result.rx_p99_ms = _worst(result.rx_p99_ms, doc["rx_p99_s"] * 1000)
        result.duplicates += int(doc.get("duplicates", 0))
    return result


async def _alarm_latency(
    result: Result,
    store: Any,
    db_url: str,
    published: Published,
    events_at_s: float,
    seconds: float,
) -> None:
    """Each event bed's first alarm of each of :data:`EVENT_ALARMS`: when the worker recorded
    it, after the event's data time and the condition's delay; and the alarms started on the
    stable beds while they were publishing (``seconds`` of data). The event's data time is that of
    the first value beyond the limit for a vital-sign condition (its numerics are the monitor's
    averages, which follow the rhythm by a few beats), else the scripted onset."""
    import psycopg

    from eicu.alarm_model import AlarmState
    from eicu.alarms.policy import load_policy
    from eicu.codes import BY_KEY

    result.alarm_beyond_s, result.stable_alarms = {}, {}
    policy = load_policy()
    onset_us = published.starts_us[-1] + int(events_at_s * 1e6)  # the event beds' simulator
    first: dict[tuple[str, str], int] = {}
    begin_us, end_us = min(published.starts_us), max(published.starts_us) + int(seconds * 1e6)
    for stored_event in await store.alarm_events(begin_us, end_us):
        ev = stored_event.event
        if ev.state != AlarmState.ACTIVE or not ev.reason.startswith("started"):
            continue
        if ev.bed.site != EVENT_SITE:
            result.stable_alarms[ev.kind] = result.stable_alarms.get(ev.kind, 0) + 1
        elif result.event_beds and ev.kind in EVENT_ALARMS and (ev.bed.bed, ev.kind) not in first:
            first[(ev.bed.bed, ev.kind)] = stored_event.recorded_us
    for (bed, kind), recorded_us in sorted(first.items()):
        condition = policy.condition(kind)
        event_us = onset_us
        if condition.params and condition.limit is not None:
            async with await psycopg.AsyncConnection.connect(db_url) as conn:
                cur = await conn.execute(
                    """SELECT (extract(epoch FROM n.time) * 1e6)::bigint, n.value
                       FROM numerics n JOIN beds b USING (bed_id)
                       WHERE b.site = %s AND b.bed = %s AND n.code = %s
                         AND n.time >= to_timestamp(%s) ORDER BY n.time""",
                    (EVENT_SITE, bed, BY_KEY[condition.params[0]].code, onset_us / 1e6),
                )
                rows = await cur.fetchall()
            beyond = [t for t, v in rows if v is not None and condition.beyond(v, condition.limit)]
            if not beyond:
                continue
            event_us = beyond[0]
        latency_s = (recorded_us - event_us) / 1e6 - condition.delay_s
        result.alarm_beyond_s.setdefault(kind, []).append(latency_s)


def _worst(a: float, b: float) -> float:
    return b if a != a else max(a, b)  # NaN: none yet


# --- the bus alone, in the same run ----------------------------------------------------------


def run_bus(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bus as bus_bench

    bus = _start_bus(args.nodes, args.partitions, 1024)
    try:
        return bus_bench.run(
            f"nats x{args.nodes} ({args.partitions} partitions)",
            [n.url for n in bus.nodes],
            bus.nodes[-1].url,
            [n.pid for n in bus.nodes if n.pid is not None],
            args.partitions,
            None,
            argparse.Namespace(rate=args.bus_rate, duration=args.bus_duration, beds=300),
        )
    finally:
        bus.cleanup()


# --- the report ------------------------------------------------------------------------------


def print_header() -> None:
    print(
        f"{'beds':>5} {'wkrs':>4} {'mode':>6} {'split':>7} {'msg/s':>6} {'once':>5} "
        f"{'drain s':>7} {'dev->db p50/p99 ms':>19} {'rx->db p50/p99 ms':>18} {'cores':>5} "
        f"{'ms/bed-s':>8} {'RSS MB':>6} "
        f"{'brk s/1k':>8} {'pg cores':>8} {'rows/s':>7} {'MB/bed-h':>8} {'dups':>6} "
        f"{'load':>5}",
        flush=True,
    )


def print_result(r: Result) -> None:
    c = r.config
    flags = []
    if r.sim_behind:
        flags.append(f"simulators fell behind, {r.behind} messages unacknowledged")
    if not r.exactly_once:
        flags.append(f"stored {r.stored_messages} of {r.published_messages} acknowledged messages")
    if r.moves:
        flags.append(
            f"{r.moves} ownership changes (lost, handed over, claimed) logged while publishing"
        )
    print(
        f"{c.beds:>5} {c.workers:>4} {c.mode:>6} {'/'.join(map(str, r.split)):>7} "
        f"{r.msgs_per_s:>6.0f} {'yes' if r.exactly_once else 'NO':>5} {r.drain_s:>7.1f} "
        f"{r.dev_p50_ms:>9.0f}/{r.dev_p99_ms:<9.0f} {r.rx_p50_ms:>8.0f}/{r.rx_p99_ms:<9.0f} "
        f"{r.cores:>5.2f} {r.ms_per_bed_s:>8.2f} "
        f"{r.rss_mb:>6.0f} {r.broker_s_per_1k:>8.3f} {r.pg_cores:>8.2f} {r.rows_per_s:>7.0f} "
        f"{r.mb_per_bed_h:>8.1f} {r.duplicates:>6d} {r.load:>5.1f}"
        + (f"  ({'; '.join(flags)})" if flags else ""),
        flush=True,
    )
    if r.event_beds:
        parts = [f"{r.event_beds} event beds"]
        for kind in EVENT_ALARMS:
            v = r.alarm_beyond_s.get(kind, [])
            if v:
                parts.append(
                    f"{kind} n={len(v)} p50 {percentile(v, 50):.2f} s p99 "
                    f"{percentile(v, 99):.2f} s max {max(v):.2f} s"
                )
            else:
                parts.append(f"{kind} none")
        stable = ", ".join(f"{k} {n}" for k, n in sorted(r.stable_alarms.items())) or "none"
        parts.append(f"alarms on the stable beds: {stable}")
        print("      alarm latency beyond the condition delay: " + "; ".join(parts), flush=True)


def print_bus(b: dict[str, Any]) -> None:
    per_core = 1000 / b["broker_cpu_s_per_1000"] if b["broker_cpu_s_per_1000"] else float("nan")
    print(
        f"bus alone ({b['broker']}, benchmarks/bus.py): {b['acked_per_s']:.0f} msg/s "
        f"acknowledged, {b['received']} of {b['sent']} received, {b['lost']} lost, "
        f"{b['duplicates']} twice, p50/p99 {b['p50_ms']:.1f}/{b['p99_ms']:.1f} ms, broker "
        f"{b['broker_cpu_s_per_1000']:.3f} CPU s per 1,000 messages (~{per_core:.0f} msg/s per "
        f"broker core)",
        flush=True,
    )


async def run_all(args: argparse.Namespace) -> None:
    from eicu.devservices import Postgres

    load_before = os.getloadavg()[0]
    modes = {"full": [True], "ingest": [False], "both": [False, True]}[args.mode]
    print(
        f"{args.duration:g} s of publishing per configuration in {args.frame:g} s frames; "
        f"NATS x{args.nodes}, "
        f"{args.partitions} partitions; {os.cpu_count()} CPUs, load average {load_before:.1f}",
        flush=True,
    )
    print_header()
    pg = Postgres(durable=True).start()
    try:
        index = 0
        for beds in args.beds:
            for n in args.workers:
                for full in modes:
                    index += 1
                    cfg = Config(beds, n, full)
                    try:
                        print_result(await run_config(cfg, args, pg, index))
                    except RuntimeError as exc:
                        print(f"{beds:>5} {n:>4} {cfg.mode:>6} failed: {exc}", flush=True)
    finally:
        pg.cleanup()
    if args.bus_rate > 0:
        print_bus(await asyncio.to_thread(run_bus, args))
    print(f"load average after: {os.getloadavg()[0]:.1f} (others' work included)", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker-child":
        worker_child()
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beds", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of publishing")
    parser.add_argument(
        "--mode",
        choices=["full", "ingest", "both"],
        default="full",
        help="full: signals, scores, alarms, store (default); ingest: without the signal pipeline",
    )
    parser.add_argument("--nodes", type=int, choices=[1, 3], default=1, help="NATS nodes")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--max-ack-pending",
        type=int,
        default=1024,
        help="per partition session (nats_config's default; docs/bus.md says how to size it)",
    )
    parser.add_argument(
        "--ownership-ttl", type=float, help="EICU_OWNERSHIP_TTL_S (default: the worker's, 10 s)"
    )
    parser.add_argument("--sim-procs", type=int, default=2)
    parser.add_argument(
        "--frame", type=float, default=0.25, help="seconds of waveform in a gateway's message"
    )
    parser.add_argument("--event-beds", type=int, default=5, help="beds that go into VT")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument(
        "--events-at", type=float, help="seconds after their start (default: --warmup + 5)"
    )
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument(
        "--alarm-wait", type=float, default=30.0, help="seconds to wait for the alarm rows"
    )
    parser.add_argument("--bus-rate", type=float, default=3000.0, help="0: no bus-only run")
    parser.add_argument("--bus-duration", type=float, default=10.0)
    args = parser.parse_args()
    if min(args.beds) < 1 or min(args.workers) < 1 or args.partitions < max(args.workers):
        parser.error("--beds and --workers >= 1, --partitions >= the largest --workers")
    if args.events_at is None:
        args.events_at = args.warmup + 5.0
    if args.event_beds and args.warmup + args.duration < args.events_at + 15:
        parser.error("--warmup + --duration must leave 15 s after --events-at for the alarms")
    asyncio.run(run_all(args))


if __name__ == "__main__":
    main()
