"""What a SIGKILLed engine loses: acknowledged on receipt versus after persist.

Starts its own Mosquitto and PostgreSQL, an engine process, and simulated gateways (in this
process) publishing the default signal set of ``--beds`` beds at QoS 1 for ``--duration``
seconds. ``--kill-at`` seconds in, the engine process is SIGKILLed and a new engine (same client
id, so the same broker session) takes over. Once the gateways are done and the store has stopped
changing, it prints, per acknowledgement mode, the samples the broker acknowledged to the
gateways (published), the samples stored, those lost and those stored twice (bed by bed), and
the waveform segments that overlap one another (a frame stored twice).

    python benchmarks/crash.py --beds 50 --duration 20 --kill-at 8 [--mode receipt persist]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTLE_S = 3.0  # the store unchanged this long after the gateways are done: everything is in


def _settings(mqtt_url: str, ack: str, spool: str) -> tuple[object, object]:
    from eicu.config import AdmissionSettings, IngestSettings, MqttSettings

    mqtt = MqttSettings.from_url(mqtt_url, client_id=f"bench-crash-{ack}", ack=ack)
    ingest = IngestSettings(
        spool_dir=Path(spool),
        analyse_signals=False,
        # every simulated bed is one site's, all arriving at once
        admission=AdmissionSettings(site_beds_max=100_000, new_beds_burst=100_000),
    )
    return mqtt, ingest


def engine_child(mqtt_url: str, db_url: str, ack: str, spool: str) -> None:
    """Runs in its own process until killed."""
    from eicu.store import open_store
    from ingest.engine import Engine

    async def main() -> None:
        store = open_store(db_url)
        await store.open()
        mqtt, ingest = _settings(mqtt_url, ack, spool)
        engine = Engine(mqtt, ingest, store)  # type: ignore[arg-type]
        await engine.start()
        await engine.wait_connected()
        print("READY", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _stats(store: object, site: str) -> dict[str, dict[str, int]]:
    beds = (await store.stats())["beds"]  # type: ignore[attr-defined]
    return {k: v for k, v in beds.items() if k.startswith(site + "/")}


async def run_mode(
    ack: str, mqtt_url: str, db_url: str, beds: int, duration_s: float, kill_at_s: float
) -> dict[str, int]:
    import psycopg

    from eicu.config import MqttSettings
    from eicu.store import open_store
    from ingest.engine import Engine
    from simulators.run import SimulationPlan, simulate

    site = f"crash-{ack}"
    spool = tempfile.mkdtemp(prefix="eicu-bench-crash-")
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", mqtt_url, db_url, ack, spool],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None
    line = await asyncio.to_thread(child.stdout.readline)
    if line.strip() != "READY":
        raise SystemExit(f"the engine process did not start ({line!r})")
    store = open_store(db_url)
    await store.open()
    plan = SimulationPlan(site=site, beds=beds, duration_s=duration_s)
    publishing = asyncio.create_task(simulate(MqttSettings.from_url(mqtt_url), plan))
    await asyncio.sleep(kill_at_s)
    child.kill()
    child.wait()
    child.stdout.close()
    mqtt, ingest = _settings(mqtt_url, ack, spool)
    engine = Engine(mqtt, ingest, store)  # type: ignore[arg-type]
    await engine.start()
    await engine.wait_connected(60.0)
    summary = await publishing
    published: dict[str, dict[str, int]] = summary["beds"]  # type: ignore[assignment]
    last, since = await _stats(store, site), time.monotonic()
    while time.monotonic() - since < SETTLE_S:
        await asyncio.sleep(0.5)
        now = await _stats(store, site)
        if now != last:
            last, since = now, time.monotonic()
    await engine.stop()  # writes the last held waveform segments
    stored = await _stats(store, site)
    await store.close()
    lost = dup = 0
    for bed, counts in published.items():
        diff = counts["samples"] - stored.get(bed, {}).get("samples", 0)
        lost += max(0, diff)
        dup += max(0, -diff)
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            """SELECT count(*) FROM waveforms a JOIN waveforms b ON a.bed_id = b.bed_id
               AND (a.time, a.seq) < (b.time, b.seq)
               AND a.seq < b.seq + b.n_frames AND b.seq < a.seq + a.n_frames
               JOIN beds d ON d.bed_id = a.bed_id WHERE d.site = %s""",
            (site,),
        ).fetchone()
    return {
        "published": sum(c["samples"] for c in published.values()),
        "stored": sum(c["samples"] for c in stored.values()),
        "lost": lost,
        "duplicated": dup,
        "overlapping_segments": int(row[0]) if row else 0,
    }


async def run(args: argparse.Namespace) -> None:
    from eicu.devservices import Mosquitto, Postgres

    broker = Mosquitto().start()
    pg = Postgres(durable=True).start()
    try:
        for ack in args.mode:
            r = await run_mode(ack, broker.url, pg.url, args.beds, args.duration, args.kill_at)
            share = 100.0 * r["lost"] / max(1, r["published"])
            print(
                f"ack={ack:8s} beds={args.beds} SIGKILL at {args.kill_at:.0f} s: samples "
                f"published={r['published']} stored={r['stored']} lost={r['lost']} "
                f"({share:.2f} %) duplicated={r['duplicated']} "
                f"overlapping_segments={r['overlapping_segments']}",
                flush=True,
            )
    finally:
        broker.cleanup()
        pg.cleanup()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        engine_child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beds", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--kill-at", type=float, default=8.0)
    parser.add_argument(
        "--mode", nargs="+", choices=["receipt", "persist"], default=["receipt", "persist"]
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
