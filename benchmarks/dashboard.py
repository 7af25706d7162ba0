"""What the dashboard's live updates cost the server, for a census of many beds.

Builds an engine (no broker) holding ``--beds`` simulated beds with ``--seconds`` of data each,
then measures, on one core: one census update (ranking every bed, as the census WebSocket sends
each second) and its JSON encoding, and one second of live waveforms for one open bed view.
Prints milliseconds per update and the share of a core that a given number of open census
pages and bed views would take.

    python benchmarks/dashboard.py --beds 1000 [--seconds 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from dashboards import views
    from eicu.config import IngestSettings, MqttSettings
    from eicu.models import BedKey
    from eicu.store.sqlite import SqliteStore
    from ingest.engine import Engine
    from simulators.beds import SynthGroup

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beds", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="eicu-bench-dash-"))
    engine = Engine(
        MqttSettings(), IngestSettings(spool_dir=tmp / "spool"), SqliteStore(tmp / "x.sqlite")
    )
    now_us = time.time_ns() // 1000
    start_us = now_us - int(args.seconds * 1e6)
    beds = [BedKey(f"site{i % 4}", f"bed{i:04d}") for i in range(args.beds)]
    t0 = time.perf_counter()
    for g in range(0, len(beds), 64):
        chunk = beds[g : g + 64]
        group = SynthGroup(chunk, ["stable"] * len(chunk), list(range(g, g + len(chunk))), start_us)
        t_s = 0.0
        while t_s < args.seconds:
            rx = start_us + int((t_s + 0.25) * 1e6)
            for _bed, wave, numerics, _on in group.tick(0.25):
                for f in (numerics, wave):
                    if f is not None:
                        engine.router.route(dataclasses.replace(f, received_us=rx))
            t_s += 0.25
    elapsed_s = time.perf_counter() - t0
    print(f"{args.beds} beds x {args.seconds:g} s routed through the engine in {elapsed_s:.1f} s")

    def census() -> list[dict[str, object]]:
        return views.census(
            engine.router.beds, engine.scores.beds, engine.signals.derived, time.time_ns() // 1000
        )

    census()
    t = time.process_time()
    for _ in range(args.repeats):
        rows = census()
    census_ms = (time.process_time() - t) / args.repeats * 1000
    t = time.process_time()
    for _ in range(args.repeats):
        payload = json.dumps({"beds": rows})
    json_ms = (time.process_time() - t) / args.repeats * 1000

    state = engine.router.beds[beds[0]]
    sent: dict[str, int] = {}
    views.live_chunks(state, sent, initial_s=5.0)
    t = time.process_time()
    n = 0
    for _ in range(args.repeats * 10):
        for sig in state.signals.values():  # pretend a quarter second arrived
            sig.ring.total += int(sig.fs_hz / 4)
        chunks = views.live_chunks(state, sent, initial_s=5.0)
        json.dumps(chunks)
        n += 1
    bed_ms_per_s = (time.process_time() - t) / n * 4 * 1000

    per_census_s = census_ms + json_ms
    print(
        f"census update ({args.beds} beds, {len(payload) / 1e3:.0f} kB JSON): "
        f"{census_ms:.1f} ms ranking + {json_ms:.1f} ms JSON = {per_census_s:.1f} ms"
    )
    print(f"one open census page (1 update/s): {per_census_s / 10:.1f} % of a core")
    print(
        f"one open bed view (ECG, PLETH, ABP live): {bed_ms_per_s:.2f} ms per second = "
        f"{bed_ms_per_s / 10:.2f} % of a core"
    )


if __name__ == "__main__":
    main()
