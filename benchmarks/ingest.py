"""How many standard beds one engine process holds in real time on this machine.

Starts its own Mosquitto and PostgreSQL (same box), an engine process (``eicu serve``'s engine,
instrumented), and simulator processes publishing the default signal set (ECG II and V at
250 Hz, PLETH and ABP at 125 Hz, RESP at 62.5 Hz, numerics every second) in 0.25 s frames at
QoS 1. For each bed count and mode it prints: messages/s, whether everything published was
stored exactly once, how long after the last publish the engine had stored everything (drain),
numerics latency from the device's measurement time to stored (dev->db: includes the broker
and any queue in front of the engine) and from receipt to stored (rx->db), waveform receipt to
stored (wf: frames wait on purpose to fill a 2 s storage segment; the live pipeline sees each
frame on arrival), the engine's CPU in cores and per bed-second, its memory, and the share of
its CPU that garbage collections took (``--collector default`` runs the engine with CPython's
collector settings instead of the commands' ``eicu.heap.settle``; ``EICU_ANALYSIS_CHUNK_S`` in
the environment sets how much of a bed's frames its signal pipeline takes at once, as it does
for the commands). The engine holds
a bed count in real time when everything is stored once, drain is a few seconds and dev->db
stays well under a second.

    python benchmarks/ingest.py --beds 500 1000 --duration 30 [--mode ingest|full|both]

A bed's AF analysis starts after 64 beats, about a minute in: a run shorter than about 90 s
measures a bed before it is settled and costs less than one that is (docs/capacity.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import collect_simulators, start_simulators  # noqa: E402


def engine_child(
    mqtt_url: str,
    db_url: str,
    expected_path: str,
    deadline_s: float,
    analyse: bool,
    settle: bool = True,
) -> None:
    """Runs in its own process: the engine until it has stored what the simulators reported.
    ``settle``: the garbage collector set as the commands set it (eicu.heap), else CPython's
    default; the time its collections take is measured either way (``gc.callbacks``)."""
    import gc

    from eicu import heap
    from eicu.config import AdmissionSettings, IngestSettings, MqttSettings
    from eicu.store import open_store
    from ingest.engine import Engine

    async def main() -> None:
        store = open_store(db_url)
        await store.open()
        engine = Engine(
            MqttSettings.from_url(mqtt_url, client_id="bench-engine"),
            IngestSettings(
                spool_dir=Path(tempfile.mkdtemp(prefix="eicu-bench-spool-")),
                analyse_signals=analyse,
                analysis_chunk_s=float(
                    os.environ.get("EICU_ANALYSIS_CHUNK_S", IngestSettings().analysis_chunk_s)
                ),
                # every simulated bed is one site's, all arriving at once
                admission=AdmissionSettings(site_beds_max=100_000, new_beds_burst=100_000),
            ),
            store,
        )
        await engine.start()
        await engine.wait_connected()
        print("READY", flush=True)
        collecting = {"started": 0.0, "total": 0.0}

        def timed(phase: str, _info: dict[str, int]) -> None:
            if phase == "start":
                collecting["started"] = time.process_time()
            else:
                collecting["total"] += time.process_time() - collecting["started"]

        gc.callbacks.append(timed)
        t_start = time.monotonic()
        cpu0 = time.process_time()
        expected = None
        while time.monotonic() - t_start < deadline_s:
            await asyncio.sleep(0.5)
            if expected is None and os.path.exists(expected_path):
                expected = json.loads(Path(expected_path).read_text())
            if (
                expected is not None
                and engine.writer.stored_data_frames >= expected
                and not engine.writer.pending_frames
            ):
                break
        busy_s = time.process_time() - cpu0
        gc_s = collecting["total"]
        gc.callbacks.remove(timed)
        wall_s = time.monotonic() - t_start
        lag_s = engine.metrics.store_lag._value.get()
        await engine.stop()
        stats = await store.stats()
        await store.close()
        p = engine.metrics.latency.percentiles((50.0, 99.0))
        pw = engine.metrics.waveform_latency.percentiles((50.0, 99.0))
        pd = engine.metrics.device_latency.percentiles((50.0, 99.0))
        print(
            "RESULT "
            + json.dumps(
                {
                    "stored": engine.writer.stored_frames,
                    "p50_s": p[50.0],
                    "p99_s": p[99.0],
                    "dev_p50_s": pd[50.0],
                    "dev_p99_s": pd[99.0],
                    "wf_p50_s": pw[50.0],
                    "wf_p99_s": pw[99.0],
                    "cpu_s": busy_s,
                    "gc_s": gc_s,
                    "wall_s": wall_s,
                    "lag_s": lag_s,
                    "stats": stats,
                    "duplicates": engine.router
                    and sum(b.duplicates for b in engine.router.beds.values()),
                    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            ),
            flush=True,
        )

    if settle:
        heap.settle()  # as the command does
    asyncio.run(main())


def run_step(
    beds: int,
    duration_s: float,
    sim_procs: int,
    analyse: bool,
    frame_s: float = 0.25,
    settle: bool = True,
) -> dict[str, object]:
    from eicu.devservices import Mosquitto, Postgres

    broker = Mosquitto().start()
    pg = Postgres(durable=True).start()
    engine: subprocess.Popen[str] | None = None
    try:
        db_url = pg.create_database("bench")
        expected_path = tempfile.mktemp(prefix="eicu-bench-expected-")
        engine = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--engine-child",
                broker.url,
                db_url,
                expected_path,
                str(duration_s + 120),
                "1" if analyse else "0",
                "1" if settle else "0",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert engine.stdout is not None
        while (line := engine.stdout.readline()) and not line.startswith("READY"):
            pass
        t0 = time.monotonic()
        sims = start_simulators([broker.url], "bench", beds, sim_procs, duration_s, frame_s=frame_s)
        pub = collect_simulators(sims)
        published, behind = pub.beds, pub.behind
        sim_wall_s = time.monotonic() - t0
        total_msgs = sum(b["messages"] for b in published.values())
        Path(expected_path).write_text(json.dumps(total_msgs))
        out, _ = engine.communicate()
        result = json.loads(
            next(line for line in out.splitlines() if line.startswith("RESULT"))[7:]
        )
        exact = result["stats"]["beds"] == published
        # The engine keeps up when it has stored everything within seconds of the last publish
        # and the oldest numerics waited little from measurement to database.
        drain_s = result["wall_s"] - sim_wall_s
        return {
            "beds": beds,
            "mode": "full" if analyse else "ingest",
            "msgs_per_s": total_msgs / duration_s,
            "samples_per_s": sum(b["samples"] for b in published.values()) / duration_s,
            "exactly_once": exact,
            "sim_behind": not (sim_wall_s < duration_s * 1.05 + 5 and not behind),
            "drain_s": drain_s,
            "dev_p50_ms": result["dev_p50_s"] * 1000,
            "dev_p99_ms": result["dev_p99_s"] * 1000,
            "p50_ms": result["p50_s"] * 1000,
            "p99_ms": result["p99_s"] * 1000,
            "wf_p50_ms": result["wf_p50_s"] * 1000,
            "wf_p99_ms": result["wf_p99_s"] * 1000,
            "cores": result["cpu_s"] / duration_s,
            "gc_share": result["gc_s"] / max(result["cpu_s"], 1e-9),
            "ms_per_bed_s": 1000 * result["cpu_s"] / beds / duration_s,
            "rss_mb": result["maxrss_mb"],
        }
    finally:
        if engine is not None and engine.poll() is None:
            engine.kill()
        broker.cleanup()
        pg.cleanup()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--engine-child":
        engine_child(
            sys.argv[2],
            sys.argv[3],
            sys.argv[4],
            float(sys.argv[5]),
            sys.argv[6] == "1",
            sys.argv[7] == "1",
        )
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beds", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--sim-procs", type=int, default=2)
    parser.add_argument("--frame", type=float, default=0.25, help="seconds per waveform message")
    parser.add_argument(
        "--mode",
        choices=["ingest", "full", "both"],
        default="both",
        help="ingest: decode, state, store; full: also every bed's signal pipeline (default: both)",
    )
    parser.add_argument(
        "--collector",
        choices=["settled", "default"],
        default="settled",
        help="the engine's garbage collector: as the commands set it (eicu.heap, the default) "
        "or CPython's default, for comparison",
    )
    args = parser.parse_args()
    modes = ["ingest", "full"] if args.mode == "both" else [args.mode]
    print(
        f"{'beds':>5} {'mode':>6} {'msg/s':>6} {'samples/s':>9} {'once':>5} {'drain s':>7} "
        f"{'dev->db p50/p99 ms':>19} {'rx->db p50/p99 ms':>18} {'wf p50/p99 ms':>14} "
        f"{'cores':>5} {'ms/bed-s':>8} {'RSS MB':>6} {'gc %':>5}"
    )
    for beds in args.beds:
        for mode in modes:
            try:
                r = run_step(
                    beds,
                    args.duration,
                    args.sim_procs,
                    mode == "full",
                    args.frame,
                    args.collector == "settled",
                )
            except RuntimeError as exc:
                print(f"{beds:>5} {mode:>6} failed: {exc}", flush=True)
                continue
            flag = " (simulators fell behind)" if r["sim_behind"] else ""
            print(
                f"{beds:>5} {mode:>6} {r['msgs_per_s']:>6.0f} {r['samples_per_s']:>9.0f} "
                f"{'yes' if r['exactly_once'] else 'NO':>5} {r['drain_s']:>7.1f} "
                f"{r['dev_p50_ms']:>9.0f}/{r['dev_p99_ms']:<9.0f} "
                f"{r['p50_ms']:>8.0f}/{r['p99_ms']:<9.0f} "
                f"{r['wf_p50_ms']:>6.0f}/{r['wf_p99_ms']:<7.0f} "
                f"{r['cores']:>5.2f} {r['ms_per_bed_s']:>8.3f} {r['rss_mb']:>6.0f} "
                f"{100 * r['gc_share']:>5.1f}{flag}",
                flush=True,
            )


if __name__ == "__main__":
    main()
