"""A remote site's backlog after a cut of its link to the hub: how fast it drains.

A hub and a site's NATS servers (the site a leaf node of the hub; docs/remote-sites.md) on this
machine, the leaf link either through a TCP proxy on the loopback that is stopped for the cut,
or, with ``--netns`` (root), across an emulated WAN (tests/netns.py): the two servers in network
namespaces of their own joined by a veth pair whose site end is set down for the cut, and with
``--rate-mbit`` both ends capped by a token bucket (``tc ... tbf``), with ``--delay-ms``,
``--jitter-ms`` and ``--loss-pct`` each frame delayed or dropped on its way by a bridge in
between (tests/wan_bridge.py). With the link cut, the site takes the backlog of ``--beds`` beds
for ``--minutes`` minutes of outage over MQTT QoS 1, as fast as it takes them: each bed a
numerics message a second and a waveform message every 0.25 s (noise: ECG_II and ECG_V at
250 Hz, PLETH and ABP at 125 Hz; ``--synth``: the gateway simulator's synthetic beds, which add
RESP at 62.5 Hz). The wire protocol carries waveform samples as int16, or with ``--coded``
compressed by the project's codec (``wire.FLAG_CODED``, as a site's gateways send them with
``eicu simulate --coded`` or ``EICU_HL7_CODED_WAVEFORMS=1``); NATS compresses a leaf link
with S2 when its round trip is 10 ms or more (``compression: s2_auto``, its default; below,
uncompressed). Then
the link is restored and the benchmark times the drain: until the hub's stream ``SITE_<id>``
holds the whole backlog (the JetStream source alone) and, with ``--feed``, until ``eicu
site-feed`` has stored every message in a PostgreSQL it starts (the hub's whole path). It prints
the backlog's messages and bytes (the payloads as the gateways sent them, and per bed-hour),
when the hub's source resumed after the link was back (with ``--feed``, the feed sets a waiting
source up again itself; without, NATS retries on its own back-off), the drain times and rates
from then, and how much faster than real time each drained (the outage's length over the
drain's). With ``--netns`` it also prints the bytes that crossed the WAN while the backlog
drained, each way, counted on the site's end of the link (Ethernet, IP and TCP headers, NATS's
framing and retransmissions included), and per bed-hour. ``--mid-path`` (with a delay or
loss: the bridge) cuts the link in the middle instead, where neither end sees it: the bridge
drops every frame, both ends' interfaces up. ``--cut-s``: how long, at least, the
link stays cut in real time (NATS's source back-off grows with it). The hub stream's count is
polled every 50 ms, which bounds the resolution of a short drain. From the link's return until
the backlog is at the hub, one more bed sends in real time (a numerics message a second, a
waveform message every 0.25 s): the delays of its messages to the hub's stream, numerics and
waveforms apart, show what live data waits for while the backlog drains.

    python benchmarks/wan.py --beds 50 --minutes 2 --cut-s 125 [--feed] [--verbose]
    python benchmarks/wan.py --beds 200 --minutes 2 --cut-s 125 --rate-mbit 10 --synth --feed
    python benchmarks/wan.py --beds 50 --minutes 2 --cut-s 125 --rate-mbit 10 --synth --coded --feed
    python benchmarks/wan.py --beds 50 --minutes 2 --cut-s 125 --rate-mbit 10 --delay-ms 100 \
        --jitter-ms 20 --loss-pct 1 --feed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SITE = "bench"
FRAME_S = 0.25


def backlog(beds: int, minutes: float, end_us: int, coded: bool = False) -> list[tuple[str, bytes]]:
    """The outage's messages, oldest first: (topic, payload)."""
    import numpy as np

    from eicu import wire
    from eicu.models import BedKey, NumericsFrame, SignalBlock, WaveformFrame

    rng = np.random.default_rng(1)
    frames_per_s = round(1 / FRAME_S)
    seconds = int(minutes * 60)
    blocks = [
        ("ECG_II", 250.0, 200.0),
        ("ECG_V", 250.0, 200.0),
        ("PLETH", 125.0, 100.0),
        ("ABP", 125.0, 10.0),
    ]
    messages = []
    start_us = end_us - seconds * 1_000_000
    for second in range(seconds):
        for bed_no in range(beds):
            bed = BedKey(SITE, f"bed{bed_no:03d}")
            ts_us = start_us + second * 1_000_000
            values = {"HR": 70.0 + second % 5, "SPO2": 97.0, "RR": 16.0}
            numerics = NumericsFrame(bed, second, ts_us, values)
            messages.append((f"eicu/v1/{SITE}/{bed.bed}/numerics", wire.encode_numerics(numerics)))
            for k in range(frames_per_s):
                seq = second * frames_per_s + k
                t0_us = ts_us + int(k * FRAME_S * 1e6)
                signal_blocks = tuple(
                    SignalBlock(
                        name,
                        fs,
                        gain,
                        0,
                        rng.integers(-300, 300, int(fs * FRAME_S)).astype(np.int16),
                    )
                    for name, fs, gain in blocks
                )
                frame = WaveformFrame(bed, seq, t0_us, signal_blocks)
                messages.append(
                    (
                        f"eicu/v1/{SITE}/{bed.bed}/waveform",
                        wire.encode_waveform(frame, coded=coded),
                    )
                )
    return messages


def synthetic_backlog(
    beds: int, minutes: float, end_us: int, coded: bool = False
) -> list[tuple[str, bytes]]:
    """As :func:`backlog`, from the gateway simulator's stable synthetic beds
    (simulators.synth: ECG_II and ECG_V at 250 Hz, PLETH and ABP at 125 Hz, RESP at 62.5 Hz,
    numerics every second): waveforms with a patient's structure, as a gateway sends them."""
    from eicu import wire
    from eicu.models import BedKey
    from simulators.beds import SynthGroup

    seconds = int(minutes * 60)
    keys = [BedKey(SITE, f"bed{i:03d}") for i in range(beds)]
    group = SynthGroup(keys, ["stable"] * beds, list(range(beds)), end_us - seconds * 1_000_000)
    messages = []
    for _ in range(round(seconds / FRAME_S)):
        for bed, wave, numerics, _on in group.tick(FRAME_S):
            if numerics is not None:
                messages.append(
                    (f"eicu/v1/{SITE}/{bed.bed}/numerics", wire.encode_numerics(numerics))
                )
            if wave is not None:
                payload = wire.encode_waveform(wave, coded=coded)
                messages.append((f"eicu/v1/{SITE}/{bed.bed}/waveform", payload))
    return messages


async def publish(mqtt_port: int, messages: list[tuple[str, bytes]]) -> float:
    """Publishes QoS 1 with up to 500 in flight; the seconds it took."""
    from eicu.bus import Client
    from eicu.config import MqttSettings

    logging.getLogger("mqtt").setLevel(logging.ERROR)
    settings = MqttSettings(host="127.0.0.1", port=mqtt_port, client_id="bench-gateway")
    start = time.monotonic()
    inflight = asyncio.Semaphore(500)
    async with Client(
        settings, timeout=60, max_inflight_messages=500, max_queued_outgoing_messages=0
    ) as client:

        async def one(topic: str, payload: bytes) -> None:
            try:
                await client.publish(topic, payload, qos=1, timeout=60)
            finally:
                inflight.release()

        tasks = []
        for topic, payload in messages:
            await inflight.acquire()
            tasks.append(asyncio.create_task(one(topic, payload)))
        await asyncio.gather(*tasks)
    return time.monotonic() - start


class LiveBed:
    """A bed that goes on sending in real time while the backlog drains: a numerics message a
    second and a waveform message every 0.25 s (as :func:`backlog`'s beds), QoS 1 to the site.
    Its messages' delays to the hub's stream (``arrived``, from a consumer there) show whether
    live data waits behind the backlog: a numerics message and a waveform message each have a
    source of their own at the hub (docs/remote-sites.md, "Why two sources")."""

    BED = "live"

    def __init__(self, mqtt_port: int, coded: bool = False) -> None:
        self.mqtt_port = mqtt_port
        self.coded = coded
        self.sent: dict[tuple[str, int], float] = {}  # (kind, seq) -> when it was PUBACKed
        self.arrived: dict[tuple[str, int], float] = {}  # (kind, seq) -> in the hub's stream
        self.stop = asyncio.Event()

    async def run(self) -> None:
        import numpy as np

        from eicu import wire
        from eicu.bus import Client
        from eicu.config import MqttSettings
        from eicu.models import BedKey, NumericsFrame, SignalBlock, WaveformFrame

        bed = BedKey(SITE, self.BED)
        rng = np.random.default_rng(2)
        settings = MqttSettings(host="127.0.0.1", port=self.mqtt_port, client_id="live-gateway")
        start = time.monotonic()
        async with Client(settings, timeout=60) as client:
            k = 0
            while not self.stop.is_set():
                now_us = time.time_ns() // 1000
                if k % round(1 / FRAME_S) == 0:
                    seq = k // round(1 / FRAME_S)
                    frame = NumericsFrame(bed, seq, now_us // 1000 * 1000, {"HR": 80.0})
                    await client.publish(
                        f"eicu/v1/{SITE}/{bed.bed}/numerics", wire.encode_numerics(frame), qos=1
                    )
                    self.sent[("numerics", seq)] = time.monotonic()
                blocks = (
                    SignalBlock(
                        "ECG_II", 250.0, 200.0, 0, rng.integers(-300, 300, 62).astype(np.int16)
                    ),
                )
                wave = WaveformFrame(bed, k, now_us, blocks)
                await client.publish(
                    f"eicu/v1/{SITE}/{bed.bed}/waveform",
                    wire.encode_waveform(wave, coded=self.coded),
                    qos=1,
                )
                self.sent[("waveform", k)] = time.monotonic()
                k += 1
                await asyncio.sleep(max(0.0, start + k * FRAME_S - time.monotonic()))

    def on_hub(self, subject: str, payload: bytes) -> None:
        kind = subject.rsplit(".", 1)[-1]
        seq = int(json.loads(payload)["seq"]) if kind == "numerics" else _waveform_seq(payload)
        self.arrived.setdefault((kind, seq), time.monotonic())

    def delays(self, kind: str, since: float = 0.0) -> dict[str, float | int]:
        """The delays of the messages of ``kind`` sent at ``since`` (time.monotonic) or later."""
        import numpy as np

        d = [
            self.arrived[key] - t
            for key, t in self.sent.items()
            if key[0] == kind and key in self.arrived and t >= since
        ]
        if not d:
            return {"messages": 0}
        return {
            "messages": len(d),
            "p50_s": round(float(np.percentile(d, 50)), 2),
            "max_s": round(max(d), 2),
        }


def _waveform_seq(payload: bytes) -> int:
    from eicu import wire
    from eicu.models import BedKey

    return wire.decode_waveform(BedKey(SITE, LiveBed.BED), payload).seq


def one_source_config() -> Any:
    """The hub's copy of the site's stream with one source of every subject (``--one-source``:
    as eicu made it before its sources were split)."""
    from nats.js.api import ExternalStream, StorageType, StreamConfig, StreamSource

    from eicu.sites import SITE_STREAM, hub_stream, site_stream_api

    return StreamConfig(
        name=hub_stream(SITE),
        storage=StorageType.FILE,
        sources=[
            StreamSource(name=SITE_STREAM, external=ExternalStream(api=site_stream_api(SITE)))
        ],
    )


async def keep_one_source_current(hub_nc: Any) -> None:
    """For ``--one-source``: what eicu site-feed did for a hub copy of one source, every 5 s:
    the source silent for over 15 s and the site's stream answering, the source removed and
    added again (NATS sets it up from the message after the newest one the hub holds)."""
    import dataclasses

    from eicu.bus.sites import source_state
    from eicu.sites import SITE_STREAM, site_domain

    while True:
        await asyncio.sleep(5.0)
        try:
            state = await source_state(hub_nc, SITE)
            if state.silent_s is not None and state.silent_s <= 15.0:
                continue
            site_js = hub_nc.jetstream(domain=site_domain(SITE), timeout=2.0)
            await site_js.stream_info(SITE_STREAM)
            js = hub_nc.jetstream()
            config = one_source_config()
            await js.update_stream(dataclasses.replace(config, sources=[]))
            await js.update_stream(config)
        except Exception:  # the link still down: try again
            continue


def leaf_compression(http_port: int) -> str:
    """How the hub's NATS compresses its leaf link now (its ``/leafz``)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/leafz", timeout=5) as response:
        leafs = json.load(response).get("leafs") or [{}]
    return str(leafs[0].get("compression", "?"))


async def wait_for(check, timeout_s: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"not drained in {timeout_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def run(args: argparse.Namespace) -> dict[str, object]:
    import nats

    from eicu.bus.sites import ensure_hub_stream, ensure_site_stream
    from eicu.devservices import EicuProcess, Postgres, free_port, hub_nats, site_nats
    from eicu.sites import hub_stream
    from tests.tcp_proxy import TcpProxy

    folder = Path(tempfile.mkdtemp(prefix="eicu-wan-"))
    wan = proxy = None
    if args.netns:
        from tests.site_servers import WanSiteLink

        wan = WanSiteLink(
            SITE,
            delay_ms=args.delay_ms,
            jitter_ms=args.jitter_ms,
            loss_pct=args.loss_pct,
            congestion=args.congestion,
        )
        hub, site = wan.hub, wan.site
    else:
        hub = hub_nats(partitions=None).start()
        proxy = TcpProxy(hub.leaf_port or 0).start()
        site = site_nats(SITE, [f"nats-leaf://127.0.0.1:{proxy.port}"], reconnect_s=0.25).start()
    pg = Postgres().start() if args.feed else None
    feed = None
    result: dict[str, object] = {"beds": args.beds, "outage_minutes": args.minutes}
    if wan is not None:
        result["link"] = "netns veth" + (f", tbf {args.rate_mbit} Mbit/s" if args.rate_mbit else "")
        if args.delay_ms or args.loss_pct:
            result["link"] += (
                f", {args.delay_ms} +- {args.jitter_ms} ms each way, "
                f"{args.loss_pct} % of frames lost"
            )
        result["tcp_congestion_control"] = wan.wan.congestion()
        if args.rate_mbit:
            wan.wan.cap(args.rate_mbit)
    else:
        result["link"] = "loopback TCP proxy"
    try:
        site_nc = await nats.connect(site.nats_url)
        hub_nc = await nats.connect(hub.nats_url)
        await ensure_site_stream(site_nc)
        if args.one_source:
            await hub_nc.jetstream().add_stream(one_source_config())
            result["hub_sources"] = "one, every subject"
        else:
            await ensure_hub_stream(hub_nc, SITE)
            result["hub_sources"] = "two: waveforms; numerics, statuses and alarms"
        end_us = time.time_ns() // 1_000_000 * 1000
        make = synthetic_backlog if args.synth else backlog
        timeline = make(args.beds, args.minutes + 1 / 60, end_us, args.coded)
        result["waveforms"] = "synthetic beds (simulators.synth)" if args.synth else "noise"
        result["waveform_samples"] = "coded (eicu.kernels.codec)" if args.coded else "int16"
        # The link carries live data first (the timeline's first second), then it is cut.
        per_second = args.beds * (1 + round(1 / FRAME_S))
        live, messages = timeline[:per_second], timeline[per_second:]
        await publish(site.mqtt_port, live)

        async def live_at_hub() -> bool:
            info = await hub_nc.jetstream().stream_info(hub_stream(SITE))
            return info.state.messages >= len(live)

        await wait_for(live_at_hub, 60)
        if wan is not None:
            if args.mid_path:
                wan.wan.cut_mid_path()
            else:
                wan.wan.cut()
        elif proxy is not None:
            proxy.stop()
        cut_at = time.monotonic()
        bed_hours = args.beds * args.minutes / 60
        result["messages"] = len(messages)
        result["bytes"] = sum(len(p) for _, p in messages)
        result["payload_bytes_per_bed_hour"] = round(int(result["bytes"]) / bed_hours)
        result["publish_s"] = round(await publish(site.mqtt_port, messages), 2)
        db_url = None
        if pg is not None:
            db_url = pg.create_database("wan")
            port = free_port()
            feed = EicuProcess(
                ["site-feed"],
                {
                    "EICU_SITES": SITE,
                    "EICU_NATS_URL": hub.nats_url,
                    "EICU_DATABASE_URL": db_url,
                    "EICU_SPOOL_DIR": str(folder / "spool"),
                    "EICU_METRICS_PORT": str(port),
                    "EICU_ANALYSE_SIGNALS": "false",
                },
                folder / "feed.log",
                port,
            ).wait_ready(120)
        total = len(messages) + len(live)
        # The link stays cut for at least --cut-s of real time: NATS retries a source that
        # failed less and less often (every 10 s more, up to 2 minutes).
        await asyncio.sleep(max(0.0, args.cut_s - (time.monotonic() - cut_at)))
        result["cut_s"] = round(time.monotonic() - cut_at, 1)
        crossed_before = wan.wan.wan_bytes() if wan is not None else None
        from eicu.bus.sites import follow_newest, keep_sources_current

        resuming = None
        if feed is None:
            # what eicu site-feed does (it sets a waiting source up again once the link is back):
            # without it NATS retries a failed source on a back-off of up to 2 minutes
            resuming = asyncio.create_task(
                keep_one_source_current(hub_nc) if args.one_source
                else keep_sources_current(hub_nc, SITE)
            )  # fmt: skip
        live_bed = LiveBed(site.mqtt_port, args.coded)
        following = await follow_newest(
            hub_nc, SITE, f"eicu.v1.{SITE}.{LiveBed.BED}.*", live_bed.on_hub
        )
        live_task = asyncio.create_task(live_bed.run())
        restored = time.monotonic()
        if wan is not None:
            if args.mid_path:
                wan.wan.restore_mid_path()
            else:
                wan.wan.restore()
        elif proxy is not None:
            proxy.start()

        progress: list[tuple[float, int]] = []

        async def at_hub() -> bool:
            info = await hub_nc.jetstream().stream_info(hub_stream(SITE))
            if not progress or progress[-1][1] != info.state.messages:
                progress.append((round(time.monotonic() - restored, 2), info.state.messages))
            return info.state.messages >= total + len(live_bed.sent)

        hub_s = await wait_for(at_hub, 600)
        crossed_after = wan.wan.wan_bytes() if wan is not None else None
        if resuming is not None:
            resuming.cancel()
        live_bed.stop.set()
        await live_task
        await asyncio.sleep(1.0)  # the live bed's last messages on their way
        await following.unsubscribe()
        # what the live bed sent while the backlog drained, and how long each took to the hub
        result["live_numerics_to_hub_while_draining"] = live_bed.delays("numerics")
        result["live_waveforms_to_hub_while_draining"] = live_bed.delays("waveform")
        outage_s = args.minutes * 60
        # When the first of the backlog came (the source's retry after the link was back), and
        # how long the rest took from then.
        resumed_s = next(t for t, n in progress if n > len(live))
        drain_s = max(hub_s - resumed_s, 1e-3)
        result["source_resumed_after_restore_s"] = resumed_s
        # the live bed's messages sent once the copy had resumed: what live data waits for
        # behind the backlog itself
        for kind in ("numerics", "waveform"):
            result[f"live_{kind}_to_hub_once_resumed"] = live_bed.delays(kind, restored + resumed_s)
        result["hub_stream_drain_s"] = round(drain_s, 2)
        if args.verbose:
            result["hub_stream_progress"] = progress[:: max(1, len(progress) // 20)]
        result["hub_stream_msgs_per_s"] = round(len(messages) / drain_s)
        result["hub_stream_x_real_time"] = round(outage_s / drain_s, 1)
        if wan is not None and crossed_before is not None and crossed_after is not None:
            crossed = crossed_after
            up = crossed["up"] - crossed_before["up"]
            result["wan_bytes_up"] = up
            result["wan_bytes_down"] = crossed["down"] - crossed_before["down"]
            result["wan_bytes_up_per_bed_hour"] = round(up / bed_hours)
            # over the whole time from the link's return until the backlog was at the hub (the
            # bytes counted from the return: the source's resumption and the live bed included)
            result["wan_up_mbit_per_s_while_draining"] = round(up * 8 / max(hub_s, 1e-3) / 1e6, 2)
            result["leaf_compression"] = leaf_compression(hub.http_port)
        if db_url is not None:
            import psycopg

            async def stored() -> bool:
                with psycopg.connect(db_url) as conn:
                    row = conn.execute(
                        "SELECT (SELECT count(DISTINCT (n.bed_id, n.seq)) FROM numerics n"
                        " JOIN beds b USING (bed_id) WHERE b.bed <> %(live)s)"
                        " + (SELECT coalesce(sum(w.n_frames), 0) FROM waveforms w"
                        " JOIN beds b USING (bed_id) WHERE b.bed <> %(live)s)",
                        {"live": LiveBed.BED},
                    ).fetchone()
                return row is not None and int(row[0]) >= len(timeline)

            await wait_for(stored, 900)
            store_s = max(time.monotonic() - restored - resumed_s, 1e-3)
            result["hub_store_drain_s"] = round(store_s, 2)
            result["hub_store_msgs_per_s"] = round(len(messages) / store_s)
            result["hub_store_x_real_time"] = round(outage_s / store_s, 1)
        await site_nc.close()
        await hub_nc.close()
    finally:
        if feed is not None:
            feed.stop()
        if wan is not None:
            counts = wan.wan.stop_bridge()
            if counts:
                result["wan_frames_dropped"] = {k: v["dropped"] for k, v in counts.items()}
                result["wan_frames_carried"] = {k: v["frames"] for k, v in counts.items()}
            wan.cleanup()
        else:
            site.cleanup()
            if proxy is not None:
                proxy.stop()
            hub.cleanup()
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beds", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=2.0, help="the outage's length")
    parser.add_argument("--feed", action="store_true", help="also time eicu site-feed's store")
    parser.add_argument("--verbose", action="store_true", help="the hub stream's progress too")
    parser.add_argument(
        "--cut-s", type=float, default=0.0, help="real seconds the link stays cut, at least"
    )
    parser.add_argument(
        "--netns",
        action="store_true",
        help="the link across network namespaces joined by a veth pair (root), cut by setting "
        "the site's end down",
    )
    parser.add_argument(
        "--rate-mbit",
        type=float,
        default=None,
        help="cap the link's bandwidth each way (tc tbf; implies --netns)",
    )
    parser.add_argument(
        "--synth",
        action="store_true",
        help="waveforms of the gateway simulator's synthetic beds instead of noise",
    )
    parser.add_argument(
        "--coded",
        action="store_true",
        help="the gateways send their waveform samples compressed by the project's codec "
        "(wire.FLAG_CODED), as `eicu simulate --coded` does",
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="each way (implies --netns)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="+- on --delay-ms")
    parser.add_argument(
        "--loss-pct", type=float, default=0.0, help="frames lost each way (implies --netns)"
    )
    parser.add_argument(
        "--congestion",
        default=None,
        help="TCP congestion control in both namespaces (cubic, bbr; default: the host's; "
        "implies --netns)",
    )
    parser.add_argument(
        "--mid-path",
        action="store_true",
        help="cut the link in the middle of the path, where neither end sees it (needs "
        "--delay-ms or --loss-pct: the bridge in the middle)",
    )
    parser.add_argument(
        "--one-source",
        action="store_true",
        help="the hub's copy with one source of every subject, as eicu made it before its "
        "sources were split (to compare; not with --feed, whose start splits it)",
    )
    args = parser.parse_args()
    if args.one_source and args.feed:
        parser.error("--one-source cannot go with --feed (the feed splits the source)")
    if args.congestion is not None:
        args.netns = True
    if args.delay_ms or args.jitter_ms or args.loss_pct:
        if not 0 <= args.jitter_ms <= args.delay_ms or not 0 <= args.loss_pct < 100:
            parser.error("need 0 <= --jitter-ms <= --delay-ms and 0 <= --loss-pct < 100")
        args.netns = True
    if args.mid_path and not (args.delay_ms or args.loss_pct):
        parser.error("--mid-path needs --delay-ms or --loss-pct (the bridge in the middle)")
    if args.beds < 1 or args.minutes <= 0:
        parser.error("--beds must be >= 1 and --minutes > 0")
    if args.rate_mbit is not None:
        if args.rate_mbit <= 0:
            parser.error("--rate-mbit must be > 0")
        args.netns = True
    if args.netns:
        from tests.netns import unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            parser.error(f"--netns: {reason}")
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
