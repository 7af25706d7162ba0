"""End-to-end alarm latency with 1,000 simulated beds running.

Starts its own Mosquitto and PostgreSQL (same box), an engine process (``eicu serve``'s engine
with the alarm stage and an on-call rota whose first level is paged over MQTT, i.e. the bed's own
``eicu/v1/{site}/{bed}/alarms`` topic), and simulator processes publishing ``--beds`` stable beds
(numerics every second and waveforms in ``--frame`` s frames; the engine stores everything but
does not run the per-bed signal pipeline). In this process a small gateway publishes numerics
once a second for ``--probes`` probe beds at site ``probe``. Each probe bed, at a random phase,
repeatedly: sends normal values for a few seconds, then a heart rate of 150/min (above the
default policy's ``HR_HIGH`` limit of 130, whose condition delay is 10 s) until the alarm for it
arrives, then normal values again until the alarm has cleared. A subscriber on
``eicu/v1/+/+/alarms`` timestamps each arrival.

Printed: for every probe alarm, total latency (publish of the first sample beyond the limit to
arrival of the alarm's first message at the subscriber) and the part beyond the condition delay
(total minus ``delay_s``), p50 / p99 / max; the engine-side part (publish to the first attempt
to send the alarm's notification, from the engine's outbox receipts); the engine's own
breakdown (alarm start after the crossing); the engine's input delay as it sees it (sampled five
times a second); the number of beds and probes; the CPU use of the engine, simulators, broker and
PostgreSQL in cores, and of the whole machine.

With ``--delivery bus`` the engine pages nobody itself: it publishes its alarm events on the bus
and an ``eicu alarms deliver`` process pages (the engine-side breakdown then stops at the event).

    python benchmarks/alarm_latency.py [--beds 1000] [--probes 40] [--duration 120] [--frame 1.0]
        [--delivery local|bus]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    cpu_seconds,
    percentile,
    postmaster_pid,
    split,
    start_simulators,
)

PROBE_SITE = "probe"
CONDITION = "HR_HIGH"
NORMAL = {"HR": 80.0, "SPO2": 97.0, "RR": 16.0}
BEYOND = {"HR": 150.0, "SPO2": 97.0, "RR": 16.0}


def _rota() -> dict[str, object]:
    level = {
        "role": "bedside_nurse",
        "ack_timeout_s": {"high": 600, "medium": 600, "low": 600},
        "contacts": [{"name": "station", "channel": "mqtt"}],
    }
    return {"version": 1, "sites": {s: {"levels": [level]} for s in (PROBE_SITE, "bench")}}


# --- the engine, in its own process -----------------------------------------------------------


def engine_child(mqtt_url: str, db_url: str, workdir: str, delivery: str = "local") -> None:
    """Runs the engine until ``workdir/stop`` appears, then prints its receipts and CPU time."""
    from eicu.alarm_model import AlarmState
    from eicu.config import AdmissionSettings, AlertingSettings, IngestSettings, MqttSettings
    from eicu.store import open_store
    from ingest.engine import Engine

    work = Path(workdir)

    async def main() -> None:
        store = open_store(db_url)
        await store.open()
        rota = work / "rota.json"
        engine = Engine(
            MqttSettings.from_url(mqtt_url, client_id="bench-engine"),
            IngestSettings(
                spool_dir=work / "spool",
                analyse_signals=False,
                # every background bed is one site's, all arriving at once
                admission=AdmissionSettings(site_beds_max=100_000, new_beds_burst=100_000),
            ),
            store,
            alerting=AlertingSettings(
                outbox_path=work / "alarms.db", rota_path=rota, delivery=delivery
            ),
            alarm_store=store if delivery == "bus" else None,
        )
        # Publish -> the engine reads the message, for the probes' numerics (their device time is
        # the publish time): the part of the latency spent before the alarm stage.
        received_lag_s: list[float] = []
        handle = engine.ingest.handle

        def timed_handle(topic: str, payload: bytes, received_us: int) -> None:
            if topic.startswith(f"eicu/v1/{PROBE_SITE}/") and topic.endswith("/numerics"):
                ts_ms = json.loads(payload).get("ts_ms", 0)
                received_lag_s.append(received_us / 1e6 - ts_ms / 1e3)
            handle(topic, payload, received_us)

        engine.ingest.handle = timed_handle  # type: ignore[method-assign]
        await engine.start()
        await engine.wait_connected()
        print("READY", flush=True)
        marks: dict[str, float] = {}
        input_delay_s: list[float] = []  # the engine's own view of how late it reads, 5 times a s
        while not (work / "stop").exists():
            if "begin" not in marks and (work / "begin").exists():
                marks["begin"] = time.process_time()
            if "begin" in marks:
                input_delay_s.append(engine.router.input_delay_us(time.time_ns() // 1000) / 1e6)
            await asyncio.sleep(0.2)
        cpu_s = time.process_time() - marks.get("begin", 0.0)
        assert engine.alarms is not None
        outbox = engine.alarms.outbox
        started = {
            s.event.alarm_id: s.event.time_us
            for s in outbox.events()
            if s.event.state == AlarmState.ACTIVE and s.event.reason.startswith("started")
        }
        sent: dict[str, int] = {}
        delivered: dict[str, int] = {}
        for r in outbox.receipts():
            if r.sent_us is not None:
                sent[r.alarm_id] = min(sent.get(r.alarm_id, r.sent_us), r.sent_us)
            if r.delivered_us is not None:
                delivered[r.alarm_id] = min(
                    delivered.get(r.alarm_id, r.delivered_us), r.delivered_us
                )
        stored = engine.writer.stored_frames

        async def watchdog() -> None:  # an engine that does not stop shows where it waits
            await asyncio.sleep(20)
            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)

        dog = asyncio.create_task(watchdog())
        await engine.stop()
        dog.cancel()
        await store.close()
        doc = {
            "cpu_s": cpu_s,
            "started": started,
            "sent": sent,
            "delivered": delivered,
            "stored": stored,
            "beds": len(engine.router.beds),
            "received_lag_s": received_lag_s,
            "input_delay_s": input_delay_s,
        }
        print("RESULT " + json.dumps(doc), flush=True)

    asyncio.run(main())


# --- numerics-only background beds, in their own process -------------------------------------


def numerics_child(mqtt_url: str, site: str, first: int, n_beds: int, seconds: float) -> None:
    """Publishes steady numerics (QoS 1) once a second for ``n_beds`` beds, spread evenly over
    the second, for ``seconds``."""
    import logging

    from eicu import bus, wire
    from eicu.config import MqttSettings
    from eicu.models import BedKey, NumericsFrame

    quiet = logging.getLogger("bench.gateway.mqtt")
    quiet.setLevel(logging.ERROR)  # a window of publishes awaiting PUBACK is on purpose

    async def main() -> None:
        s = MqttSettings.from_url(mqtt_url, client_id=f"bench-numerics-{first}")
        beds = [BedKey(site, f"bed{first + i:04d}") for i in range(n_beds)]
        rng = random.Random(first)
        slots = 50  # publish rounds per second
        async with bus.Client(s, max_inflight_messages=1000, logger=quiet) as client:
            t0 = time.monotonic()
            for second in range(int(seconds)):
                for slot in range(slots):
                    at = t0 + second + slot / slots
                    await asyncio.sleep(max(0.0, at - time.monotonic()))
                    now_us = time.time_ns() // 1000
                    sends = []
                    for i in range(slot, n_beds, slots):
                        values: dict[str, float | None] = {
                            "HR": 72.0 + rng.randint(-3, 3),
                            "SPO2": 97.0 + rng.randint(-1, 1),
                            "RR": 16.0 + rng.randint(-1, 1),
                            "TEMP": 37.0,
                        }
                        frame = NumericsFrame(beds[i], second, now_us, values)
                        payload = wire.encode_numerics(frame)
                        sends.append(client.publish(wire.numerics_topic(beds[i]), payload, qos=1))
                    await asyncio.gather(*sends)

    asyncio.run(main())


# --- probes -----------------------------------------------------------------------------------


@dataclass
class Probe:
    bed: str
    crossings: list[float] = field(default_factory=list)  # wall-clock publish times
    alarms: list[str] = field(default_factory=list)  # alarm id matched to each crossing
    waiting: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Arrivals:
    first: dict[str, float] = field(default_factory=dict)  # alarm id -> first arrival
    by_bed: dict[str, list[str]] = field(default_factory=dict)  # bed -> alarm ids, in order
    other: int = 0  # alarm messages about anything but the probes' condition
    other_kinds: dict[str, int] = field(default_factory=dict)  # kind:type:state -> messages
    messages: int = 0


async def subscribe(client: object, arrivals: Arrivals, probes: dict[str, Probe]) -> None:
    from eicu import bus

    assert isinstance(client, bus.Client)
    async for message in client.messages:
        now = time.time()
        arrivals.messages += 1
        payload = message.payload
        doc = json.loads(payload if isinstance(payload, bytes | str) else bytes(payload))
        if doc.get("site") != PROBE_SITE or doc.get("kind") != CONDITION:
            arrivals.other += 1
            what = f"{doc.get('kind')}:{doc.get('type', 'page')}:{doc.get('state')}"
            arrivals.other_kinds[what] = arrivals.other_kinds.get(what, 0) + 1
            continue
        alarm_id = doc["alarm_id"]
        if alarm_id in arrivals.first or doc.get("kind") != CONDITION:
            continue
        arrivals.first[alarm_id] = now
        arrivals.by_bed.setdefault(doc["bed"], []).append(alarm_id)
        probe = probes.get(doc["bed"])
        if probe is not None:
            probe.waiting.set()


async def run_probe(
    client: object,
    probe: Probe,
    arrivals: Arrivals,
    end: float,
    delay_s: float,
    rng: random.Random,
    cycling: set[str],
) -> None:
    """Numerics once a second; cycles of normal, beyond the limit until the alarm arrives, and
    normal again until the alarm has surely cleared."""
    from eicu import bus, wire
    from eicu.models import BedKey, NumericsFrame

    assert isinstance(client, bus.Client)
    bed = BedKey(PROBE_SITE, probe.bed)
    topic = wire.numerics_topic(bed)
    seq = 0
    await asyncio.sleep(rng.uniform(0.0, 1.0))  # a random phase against the engine's clocks
    next_t = time.monotonic()

    async def send(values: dict[str, float]) -> float:
        nonlocal seq, next_t
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        next_t += 1.0
        t_pub = time.time()
        frame = NumericsFrame(bed, seq, int(t_pub * 1e6), dict(values))
        seq += 1
        await client.publish(topic, wire.encode_numerics(frame), qos=1)
        return t_pub

    while time.monotonic() < end - delay_s - 10:
        for _ in range(rng.randint(3, 6)):
            await send(NORMAL)
        known = len(arrivals.by_bed.get(probe.bed, []))
        probe.waiting.clear()
        t_cross = await send(BEYOND)
        give_up = time.monotonic() + delay_s + 10
        while len(arrivals.by_bed.get(probe.bed, [])) == known and time.monotonic() < give_up:
            try:
                await asyncio.wait_for(probe.waiting.wait(), max(0.0, next_t - time.monotonic()))
            except TimeoutError:
                await send(BEYOND)
        ids = arrivals.by_bed.get(probe.bed, [])
        probe.crossings.append(t_cross)
        probe.alarms.append(ids[known] if len(ids) > known else "")
        for _ in range(5):  # back inside the limit: the alarm clears at once
            await send(NORMAL)
    cycling.discard(probe.bed)
    while cycling:  # normal values until every probe is done, so none goes stale meanwhile
        await send(NORMAL)


async def drive_probes(
    mqtt_url: str, n_probes: int, seconds: float, delay_s: float, seed: int
) -> tuple[list[Probe], Arrivals]:
    from eicu import bus
    from eicu.config import MqttSettings

    s = MqttSettings.from_url(mqtt_url, client_id="bench-probes")
    probes = {f"p{i:03d}": Probe(f"p{i:03d}") for i in range(n_probes)}
    arrivals = Arrivals()
    rng = random.Random(seed)
    async with (
        bus.Client(s, identifier="bench-alarm-listener") as listener,
        bus.Client(s, identifier="bench-probe-gateway") as gateway,
    ):
        await listener.subscribe("eicu/v1/+/+/alarms", qos=1)
        listen = asyncio.create_task(subscribe(listener, arrivals, probes))
        end = time.monotonic() + seconds
        cycling = set(probes)
        async with asyncio.TaskGroup() as tg:
            for probe in probes.values():
                tg.create_task(run_probe(gateway, probe, arrivals, end, delay_s, rng, cycling))
        await asyncio.sleep(2.0)
        listen.cancel()
    return list(probes.values()), arrivals


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, object]:
    import psutil

    from eicu.alarms.policy import load_policy
    from eicu.devservices import DeliveryProcess, Mosquitto, Postgres

    delay_s = load_policy().condition(CONDITION).delay_s
    broker = Mosquitto().start()
    pg = Postgres(durable=True).start()
    work = Path(tempfile.mkdtemp(prefix="eicu-alarm-bench-"))
    engine: subprocess.Popen[str] | None = None
    delivery: DeliveryProcess | None = None
    sims: list[subprocess.Popen[str]] = []
    try:
        db_url = pg.create_database("bench")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        (work / "rota.json").write_text(json.dumps(_rota()))
        if args.delivery == "bus":
            # the pages from a delivery process of its own, fed by the engine's alarm events
            delivery = DeliveryProcess(
                broker.url, db_url, work / "delivery.db", work / "delivery.log",
                env={"EICU_ROTA_FILE": str(work / "rota.json")},
            ).wait_ready()  # fmt: skip
        engine = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--engine-child",
                broker.url,
                db_url,
                str(work),
                args.delivery,
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        assert engine.stdout is not None
        while (line := engine.stdout.readline()) and not line.startswith("READY"):
            pass
        sim_s = args.warmup + args.duration + 300  # stopped after the engine
        if args.load == "numerics":
            first = 1
            for n in split(args.beds, args.sim_procs):
                cmd = [sys.executable, __file__, "--numerics-child", broker.url, "bench"]
                cmd += [str(first), str(n), str(sim_s)]
                sims.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
                )
                first += n
        else:
            sims += start_simulators(
                [broker.url],
                "bench",
                args.beds,
                args.sim_procs,
                sim_s,
                frame_s=args.frame,
                summary=False,
                env=env,
            )
        time.sleep(args.warmup)
        groups = {
            "engine": [engine.pid],
            "simulators": [s.pid for s in sims],
            "broker": [broker.proc.pid] if broker.proc else [],
            "postgres": [postmaster_pid(pg)],
        }
        cpu0 = {name: cpu_seconds(pids, children=True) for name, pids in groups.items()}
        self0 = time.process_time()
        machine0 = psutil.cpu_times()
        wall0 = time.monotonic()
        (work / "begin").touch()
        probes, arrivals = asyncio.run(
            drive_probes(broker.url, args.probes, args.duration, delay_s, args.seed)
        )
        wall_s = time.monotonic() - wall0
        cores = {
            name: (cpu_seconds(pids, children=True) - cpu0[name]) / wall_s
            for name, pids in groups.items()
        }
        cores["probes+listener"] = (time.process_time() - self0) / wall_s
        machine1 = psutil.cpu_times()
        busy = sum(machine1) - sum(machine0) - (machine1.idle - machine0.idle)
        busy -= getattr(machine1, "iowait", 0.0) - getattr(machine0, "iowait", 0.0)
        cores["machine"] = busy / wall_s
        (work / "stop").touch()
        out, _ = engine.communicate(timeout=120)
        result = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT"))[7:])
        cores["engine"] = result["cpu_s"] / wall_s
    finally:
        for s in sims:
            if s.poll() is None:
                s.terminate()
                s.wait()
        if engine is not None and engine.poll() is None:
            engine.kill()
        if delivery is not None:
            delivery.stop()
        broker.cleanup()
        pg.cleanup()
    total, beyond, left, started, missing = [], [], [], [], 0
    for probe in probes:
        for t_cross, alarm_id in zip(probe.crossings, probe.alarms, strict=True):
            if not alarm_id:
                missing += 1
                continue
            total.append(arrivals.first[alarm_id] - t_cross)
            beyond.append(total[-1] - delay_s)
            if alarm_id in result["sent"]:
                left.append(result["sent"][alarm_id] / 1e6 - t_cross - delay_s)
            if alarm_id in result["started"]:
                started.append(result["started"][alarm_id] / 1e6 - t_cross - delay_s)
    return {
        "beds": args.beds,
        "engine_beds": result["beds"],
        "probes": args.probes,
        "load": args.load,
        "frame_s": args.frame,
        "delay_s": delay_s,
        "alarms": len(total),
        "missing": missing,
        "other_alarm_messages": arrivals.other,
        "other_kinds": arrivals.other_kinds,
        "total": total,
        "beyond": beyond,
        "left": left,
        "started": started,
        "received": result["received_lag_s"],
        "input_delay": result["input_delay_s"],
        "cores": cores,
        "wall_s": wall_s,
    }


def report(r: dict[str, object]) -> None:
    def row(name: str, values: object) -> str:
        v = list(values)  # type: ignore[call-overload]
        return (
            f"  {name:<48} p50 {percentile(v, 50):6.3f} s   p99 {percentile(v, 99):6.3f} s   "
            f"max {max(v) if v else float('nan'):6.3f} s"
        )

    cores = r["cores"]
    assert isinstance(cores, dict)
    load = (
        "numerics only, 1/s"
        if r["load"] == "numerics"
        else f"waveform frames of {r['frame_s']} s, numerics 1/s; signal pipeline off"
    )
    print(
        f"beds {r['beds']} simulated ({load}) + {r['probes']} probe beds; "
        f"engine saw {r['engine_beds']} beds"
    )
    print(
        f"condition {CONDITION} (delay {r['delay_s']:g} s): {r['alarms']} probe alarms measured, "
        f"{r['missing']} crossings without an alarm, {r['other_alarm_messages']} alarm messages "
        f"about other conditions; {r['wall_s']:.0f} s measured"
    )
    if r["other_kinds"]:
        print(f"  other alarm messages (kind:type:state): {r['other_kinds']}")
    print(row("publish -> arrival at subscriber (total)", r["total"]))
    print(row("  beyond the condition delay", r["beyond"]))
    print(row("probe numerics: publish -> read by the engine", r["received"]))
    print(row("the engine's input delay (eicu_ingest_input_delay)", r["input_delay"]))
    print(row("publish -> alarm started, beyond the delay", r["started"]))
    if r["left"]:
        print(row("publish -> notification sent, beyond the delay", r["left"]))
    else:
        print("  publish -> notification sent: in the delivery process (its outbox), not read here")
    print("cores: " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--engine-child":
        engine_child(sys.argv[2], sys.argv[3], sys.argv[4], *sys.argv[5:6])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--numerics-child":
        a = sys.argv[2:]
        numerics_child(a[0], a[1], int(a[2]), int(a[3]), float(a[4]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beds", type=int, default=1000, help="simulated background beds")
    parser.add_argument("--probes", type=int, default=40, help="probe beds crossing the limit")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of probing")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before probing")
    parser.add_argument(
        "--load",
        choices=["numerics", "waveforms"],
        default="numerics",
        help="background beds: numerics only (default), or the simulator's standard beds",
    )
    parser.add_argument(
        "--frame", type=float, default=1.0, help="--load waveforms: seconds per waveform message"
    )
    parser.add_argument("--sim-procs", type=int, default=2)
    parser.add_argument(
        "--delivery",
        choices=["local", "bus"],
        default="local",
        help="local: the engine pages; bus: eicu alarms deliver pages, fed over the broker",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print the raw result as JSON")
    args = parser.parse_args()
    r = run(args)
    report(r)
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
