"""What the dashboard's live updates cost, for a census of many beds: on the server and in the
browser.

Builds an engine (no broker) holding ``--beds`` simulated beds (the simulator's scenarios in
turn, their events ``--seconds``/2 in) with ``--seconds`` of waveforms and numerics each, then
feeds every bed one numerics frame a second (the frames the simulator made for the next
``--live`` seconds; routing every bed's waveforms in real time needs more than this machine has)
and measures, on one core:

* server, before: what each open census page cost when every page was sent the whole ranked
  census every second (ranking + JSON, per page);
* server, after: one shared census computation per second (ranking, the rows that changed,
  JSON) and the bytes of each delta a page is sent;
* one second of live waveforms for one open bed view;
* browser (unless ``--no-browser``): headless Chromium (``--chromium``, Debian's by default)
  shows the census of all the beds from a real dashboard server; the page's own performance
  measures give the time to apply the snapshot and each delta, in script and up to the next
  painted frame; and, for comparison, the time to draw every row of the census anew, which
  is what each update cost the page before.

    python benchmarks/dashboard.py --beds 1000 [--seconds 10] [--live 20] [--no-browser]
    python benchmarks/dashboard.py --trends sqlite:///tmp/trends.sqlite   # or a PostgreSQL URL
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSWORD = "benchmark-password"
WINDOW_ROWS = 46  # what census.js asks for at 900 px: 26 rows in view, 10 above and below
# What each update cost the page before: every row of the census drawn anew (census.js's own
# drawRow), in script and up to the next painted frame.
REDRAW_ALL = """async () => {
  const all = (await (await fetch("/api/census")).json()).beds;  // every row, as the API has it
  return await new Promise((resolve) => {
  const start = performance.now();
  body.replaceChildren(...all.map((bed) => drawRow(bed)));
  const script = performance.now() - start;
  requestAnimationFrame(() => setTimeout(() => resolve([script, performance.now() - start])));
});
}"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beds", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="waveforms routed first")
    parser.add_argument("--live", type=int, default=20, help="seconds of live numerics")
    parser.add_argument("--pages", type=int, default=10, help="open census pages to cost")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument(
        "--trends",
        metavar="STORE_URL",
        help="only time the bed view's trends over a week of 1 Hz values in this store "
        "(sqlite:///PATH or an empty PostgreSQL database)",
    )
    args = parser.parse_args()
    asyncio.run(trend_times(args.trends) if args.trends else run(args))


async def trend_times(url: str) -> None:
    """Write a week of one bed's heart rate, SpO2 and RR at 1 Hz and time one trend query of
    each span the bed view offers (one parameter; the view asks for six)."""
    from dashboards.app import trend_bucket_s
    from eicu.models import Batch, BedKey, NumericsFrame
    from eicu.store import open_store

    store = open_store(url)
    await store.open()
    bed = BedKey("bench", "bed1")
    end_us = time.time_ns() // 1000
    start_us = end_us - 7 * 86_400_000_000
    t0 = time.perf_counter()
    for day in range(7):
        await store.write(
            Batch(
                numerics=[
                    NumericsFrame(
                        bed, day * 86_400 + i, start_us + (day * 86_400 + i) * 1_000_000,
                        {"HR": 70.0 + i % 7, "SPO2": 97.0, "RR": 14.0},
                    )
                    for i in range(86_400)
                ]
            )
        )  # fmt: skip
    written_s = time.perf_counter() - t0
    print(f"{store.backend}: a week of 3 parameters at 1 Hz written in {written_s:.1f} s")
    for minutes in (60, 1440, 10080):
        bucket_s = trend_bucket_s(minutes)
        times_ms = []
        for _ in range(3):
            t = time.perf_counter()
            points = await store.trend(bed, "HR", end_us - minutes * 60_000_000, end_us, bucket_s)
            times_ms.append((time.perf_counter() - t) * 1000)
        print(
            f"  trend of {minutes} min in {bucket_s} s buckets: {len(points)} points, "
            f"{statistics.median(times_ms):.0f} ms per parameter (median of 3)"
        )
    await store.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> None:
    from dashboards import views
    from dashboards.census import CensusFeed, CensusWindow
    from eicu.config import IngestSettings, MqttSettings
    from eicu.models import BedKey, NumericsFrame
    from eicu.store.sqlite import SqliteStore
    from ingest.engine import Engine
    from ingest.live import EngineBeds
    from simulators.beds import SynthGroup
    from simulators.synth import SCENARIOS

    tmp = Path(tempfile.mkdtemp(prefix="eicu-bench-dash-"))
    engine = Engine(
        MqttSettings(), IngestSettings(spool_dir=tmp / "spool"), SqliteStore(tmp / "x.sqlite")
    )
    start_us = time.time_ns() // 1000 - int(args.seconds * 1e6)
    beds = [BedKey(f"site{i % 4}", f"bed{i:04d}") for i in range(args.beds)]
    live: list[list[NumericsFrame]] = [[] for _ in range(args.live)]
    t0 = time.perf_counter()
    for g in range(0, len(beds), 64):
        chunk = beds[g : g + 64]
        scenarios = [SCENARIOS[i % len(SCENARIOS)] for i in range(g, g + len(chunk))]
        group = SynthGroup(
            chunk, scenarios, list(range(g, g + len(chunk))), start_us, 30.0, args.seconds / 2
        )
        t_s = 0.0
        while t_s < args.seconds + args.live:
            rx = start_us + int((t_s + 0.25) * 1e6)
            for _bed, wave, numerics, _on in group.tick(0.25):
                if t_s >= args.seconds:
                    if numerics is not None:
                        live[int(t_s - args.seconds)].append(numerics)
                    continue
                for f in (numerics, wave):
                    if f is not None:
                        engine.router.route(dataclasses.replace(f, received_us=rx))
            t_s += 0.25
    print(
        f"{args.beds} beds x {args.seconds:g} s routed through the engine, and {args.live} s of "
        f"numerics made, in {time.perf_counter() - t0:.1f} s"
    )

    def feed_second(k: int) -> None:
        """The numerics of live second ``k``, as if they arrived now."""
        now_us = time.time_ns() // 1000
        for f in live[k % args.live]:
            skew = int(engine.router.beds[f.bed].clock_offset_us)
            engine.router.route(
                dataclasses.replace(f, seq=1_000_000 + k, ts_us=now_us + skew, received_us=now_us)
            )

    def census_rows(site: str | None) -> list[dict[str, Any]]:
        t = time.time_ns() // 1000
        return views.census(EngineBeds(engine).snapshots(t), t, site)

    def sites(_scope: str | None) -> list[str]:
        return sorted({k.site for k in engine.router.beds})

    # --- server: the whole census per page per second (before) and shared deltas (after) -----
    clock = [0.0]
    feed = CensusFeed(census_rows, sites, 1.0, clock=lambda: clock[0])
    seq, first = feed.messages_after(None, None)
    snapshot_kb = len(first[0].encode()) / 1e3
    # a page that shows a window of the ranks: a screen of 26 rows and 10 above and below
    window = CensusWindow(0, WINDOW_ROWS)
    compact = CensusWindow(0, WINDOW_ROWS, compact=True)  # what census.js asks for
    window_first_kb = sum(len(m.encode()) for m in window.messages(feed.current(None))) / 1e3
    compact.messages(feed.current(None))
    window_kb: list[float] = []
    compact_kb: list[float] = []
    before_ms, before_kb, after_ms, after_kb = [], [], [], []
    for k in range(args.live):
        feed_second(k)
        t = time.process_time()
        full = json.dumps({"sites": sites(None), "beds": census_rows(None)})
        before_ms.append((time.process_time() - t) * 1000)
        before_kb.append(len(full.encode()) / 1e3)
        clock[0] += 1.0
        t = time.process_time()
        seq, messages = feed.messages_after(None, seq)
        after_ms.append((time.process_time() - t) * 1000)
        after_kb.append(sum(len(m.encode()) for m in messages) / 1e3)
        window_kb.append(sum(len(m.encode()) for m in window.messages(feed.current(None))) / 1e3)
        compact_kb.append(sum(len(m.encode()) for m in compact.messages(feed.current(None))) / 1e3)
    b_ms, a_ms = statistics.median(before_ms), statistics.median(after_ms)
    b_kb, a_kb = statistics.median(before_kb), statistics.median(after_kb)
    print(f"census of {args.beds} beds, 1 update/s, medians over {args.live} s of live numerics:")
    print(
        f"  before: whole census to every page: {b_kb:.0f} kB/s per page, "
        f"{b_ms:.1f} ms server time per page per update"
    )
    print(
        f"  after:  snapshot {snapshot_kb:.0f} kB once, then {a_kb:.1f} kB/s per page "
        f"(p95 {pct(after_kb, 0.95):.1f}); {a_ms:.1f} ms server time per update, shared by "
        f"all pages (p95 {pct(after_ms, 0.95):.1f})"
    )
    w_kb = statistics.median(window_kb)
    print(
        f"  a page showing {WINDOW_ROWS} ranks (a screen and a margin): {window_first_kb:.1f} kB "
        f"once, then {w_kb:.1f} kB/s (p95 {pct(window_kb, 0.95):.1f}); in the compact form "
        f"census.js asks for, {statistics.median(compact_kb):.1f} kB/s "
        f"(p95 {pct(compact_kb, 0.95):.1f})"
    )
    print(
        f"  {args.pages} open census pages: before {b_ms * args.pages / 10:.1f} % of a core and "
        f"{b_kb * args.pages / 1e3:.1f} MB/s, after {a_ms / 10:.1f} % and "
        f"{a_kb * args.pages / 1e3:.2f} MB/s"
    )

    # --- server: one open bed view ------------------------------------------------------------
    state = engine.router.beds[beds[0]]
    derived = engine.signals.derived[beds[0]]
    sent: dict[str, int] = {}
    views.live_chunks(state.signals, sent, initial_s=5.0)
    t = time.process_time()
    n = 0
    for _ in range(200):
        for sig in state.signals.values():  # pretend a quarter second arrived
            sig.ring.total += int(sig.fs_hz / 4)
        chunks = views.live_chunks(state.signals, sent, initial_s=5.0)
        after = derived.marks_total - 1  # a beat a period
        marks = [views.mark_view(m) for m in derived.marks if m.seq > after]
        json.dumps({"waves": chunks, "marks": marks})
        n += 1
    bed_ms_per_s = (time.process_time() - t) / n * 4 * 1000
    print(
        f"one open bed view (ECG, PLETH, ABP live, with beat marks): {bed_ms_per_s:.2f} ms per "
        f"second = {bed_ms_per_s / 10:.2f} % of a core"
    )

    if not args.no_browser:
        await browser_update_time(args, engine, feed_second)


async def bed_view_latency(page: Any, url: str, engine: Any, seconds: float) -> list[float]:
    """Open the bed view of the engine's first bed and feed that bed's waveforms in real time
    for ``seconds``; the page's seconds from each chunk's last sample to its pixel."""
    from simulators.beds import SynthGroup

    bed = next(iter(engine.router.beds))
    now_us = time.time_ns() // 1000
    skew = int(engine.router.beds[bed].clock_offset_us)
    group = SynthGroup([bed], ["stable"], [0], now_us + skew, 1.0, None)
    await page.goto(f"{url}/bed?bed={bed.site}%2F{bed.bed}")
    stop_at = time.monotonic() + seconds
    k = 0
    while time.monotonic() < stop_at:
        for _bed, wave, _numerics, _on in group.tick(0.25):
            if wave is not None:  # its last sample measured now (the loop may run late)
                rx = time.time_ns() // 1000
                frame = dataclasses.replace(
                    wave, seq=2_000_000 + k, t0_us=rx + skew - 250_000, received_us=rx
                )
                engine.router.route(frame)
        k += 1
        await asyncio.sleep(0.25)
    await page.wait_for_timeout(1500)
    got: list[float] = await page.evaluate("() => window.eicuWaveToPixel.slice()")
    return got


async def browser_update_time(args: argparse.Namespace, engine: Any, feed_second: Any) -> None:
    from playwright.async_api import async_playwright

    from dashboards.app import create_app
    from dashboards.server import DashboardServer
    from dashboards.users import Role, Users
    from eicu.commands.serve import engine_source
    from eicu.config import HttpSettings

    users = Users(Path(tempfile.mkdtemp(prefix="eicu-bench-users-")) / "users.json")
    users.add("bench", Role.VIEWER, PASSWORD)
    server = DashboardServer(
        create_app(engine_source(engine), HttpSettings(cookie_secure=False), users), "127.0.0.1", 0
    )
    await server.start()
    stop = asyncio.Event()

    async def feeder() -> None:
        k = 0
        while not stop.is_set():
            feed_second(k)
            k += 1
            await asyncio.sleep(1.0)

    feeding = asyncio.create_task(feeder(), name="numerics")
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=args.chromium, args=["--headless", "--no-sandbox"]
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(server.url + "/login?next=/census")
            await page.fill("#name", "bench")
            await page.fill("#password", PASSWORD)
            await page.click("#submit")
            await page.wait_for_url("**/census")
            await page.wait_for_selector(f"#census[data-beds='{args.beds}']", timeout=60_000)
            # before: the page redrew every row of the census at every update
            redraw_all: list[list[float]] = []
            for _ in range(3):
                redraw_all.append(await page.evaluate(REDRAW_ALL))
                await page.evaluate("() => connect()")  # back to the census in view
                await page.wait_for_timeout(1500)
            await page.wait_for_timeout(args.live * 1000)
            measures = await page.evaluate(
                """() => Object.fromEntries(['census-snapshot', 'census-snapshot-painted',
                    'census-delta', 'census-delta-painted'].map((n) =>
                    [n, performance.getEntriesByName(n).map((e) => e.duration)]))"""
            )
            rows = await page.evaluate(
                "() => [document.getElementById('census').dataset.beds,"
                " document.querySelectorAll('#census tbody tr[data-bed]').length]"
            )
            to_pixel = await page.evaluate("() => window.eicuSampleToPixel.slice()")
            # one bed view, its bed's waveforms fed live (0.25 s frames as they are made)
            wave_to_pixel = await bed_view_latency(page, server.url, engine, args.live)
            await browser.close()
    finally:
        stop.set()
        await feeding
        await server.stop()

    def line(name: str) -> str:
        ms = measures[name]
        if not ms:
            return "none measured"
        return f"median {statistics.median(ms):.1f} ms, p95 {pct(ms, 0.95):.1f}, n={len(ms)}"

    measures["all-script"] = [r[0] for r in redraw_all]
    measures["all-painted"] = [r[1] for r in redraw_all]
    print(f"browser (Chromium, headless), census of {rows[0]} beds ({rows[1]} rows in view):")
    print(f"  before, every row redrawn at each update: script {line('all-script')}")
    print(f"                                           painted {line('all-painted')}")
    print(f"  after, snapshot (rows in view):           script {line('census-snapshot')}")
    print(f"                                           painted {line('census-snapshot-painted')}")
    print(f"  after, each update (delta):               script {line('census-delta')}")
    print(f"                                           painted {line('census-delta-painted')}")
    if wave_to_pixel:
        print(
            f"  a live sample's device time to its pixel on the bed view: median "
            f"{statistics.median(wave_to_pixel):.2f} s, p99 {pct(wave_to_pixel, 0.99):.2f} s "
            f"(n={len(wave_to_pixel)}; each chunk's last sample)"
        )
    if to_pixel:
        print(
            f"  a value's arrival at the server to its pixel on the census: median "
            f"{statistics.median(to_pixel):.2f} s, p99 {pct(to_pixel, 0.99):.2f} s "
            f"(n={len(to_pixel)}; the census is computed once a second)"
        )


if __name__ == "__main__":
    main()
