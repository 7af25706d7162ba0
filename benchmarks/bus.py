"""The hub's bus carrying gateway traffic: a single Mosquitto beside the 3-node NATS cluster.

Gateway-shaped QoS 1 traffic (messages of about 400 bytes on many beds' topics, numerics and
waveforms) is published at a fixed rate for a while by a gateway process (one connection per
broker node), and read by a consumer process through :class:`eicu.bus.partitioned.PartitionConsumer`
(persistent sessions, a PUBACK only after the message is recorded): on Mosquitto one session
reading ``eicu/v1/#``, on NATS one session per partition (``eicu/p/<k>/#``, the server's mappings
putting each bed in one partition). For each broker it prints the rate the gateways were
acknowledged at, what the consumer received (loss: acknowledged to the gateway and never
received), end-to-end latency from publish to receipt (p50/p99), the broker's CPU seconds per
1,000 messages (all three nodes for NATS) and the consumer's CPU microseconds per message.

    python benchmarks/bus.py --rate 3000 --duration 15 [--beds 300] [--partitions 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_seconds  # noqa: E402

PAYLOAD_BYTES = 400
DRAIN_S = 30.0


# --- the gateway process -------------------------------------------------------------------------


def gateway_main(urls: list[str], rate: float, duration_s: float, beds: int) -> None:
    """Publishes ``rate`` messages a second for ``duration_s`` over one connection per URL, each
    bed on one connection; prints a JSON summary: sent, acknowledged, ids not acknowledged."""
    import logging

    from eicu import bus
    from eicu.config import MqttSettings

    # aiomqtt warns at every publish beyond ten under way; thousands are, on purpose.
    logging.getLogger("mqtt").setLevel(logging.ERROR)

    async def main() -> dict[str, Any]:
        failed: list[int] = []
        acked = 0
        inflight = asyncio.Semaphore(2000)
        async with contextlib_stack(urls) as clients:
            print("READY", flush=True)
            sys.stdin.readline()  # go
            tick_s = 0.01
            start = time.monotonic()
            sent = 0
            tasks: set[asyncio.Task[None]] = set()

            async def one(client: Any, topic: str, seq: int) -> None:
                nonlocal acked
                stamp = f"{seq}:{time.time_ns()}:".encode()
                payload = stamp + b"x" * (PAYLOAD_BYTES - len(stamp))
                try:
                    await client.publish(topic, payload, qos=1, timeout=10)
                    acked += 1
                except bus.MqttError:
                    failed.append(seq)
                finally:
                    inflight.release()

            while (now := time.monotonic()) - start < duration_s:
                while sent < rate * (now - start):  # on schedule, whatever the loop's delays
                    bed = sent % beds
                    kind = "numerics" if (sent // beds) % 4 == 0 else "waveform"
                    client = clients[bed % len(clients)]
                    await inflight.acquire()
                    task = asyncio.create_task(
                        one(client, f"eicu/v1/site-{bed % 5}/bed-{bed}/{kind}", sent)
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    sent += 1
                next_tick = start + (int((now - start) / tick_s) + 1) * tick_s
                await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            published_s = time.monotonic() - start
            await asyncio.gather(*list(tasks), return_exceptions=True)
            acked_s = time.monotonic() - start
        return {
            "sent": sent,
            "acked": acked,
            "failed": failed,
            "published_s": published_s,
            "acked_s": acked_s,
        }

    import contextlib

    @contextlib.asynccontextmanager
    async def contextlib_stack(urls: list[str]) -> Any:
        async with contextlib.AsyncExitStack() as stack:
            clients = []
            for i, url in enumerate(urls):
                settings = MqttSettings.from_url(url, client_id=f"bench-gateway-{i}")
                clients.append(
                    await stack.enter_async_context(
                        bus.Client(settings, max_inflight_messages=2000, timeout=10)
                    )
                )
            yield clients

    result = asyncio.run(main())
    print("RESULT " + json.dumps(result), flush=True)


# --- the consumer process ------------------------------------------------------------------------


def consumer_main(url: str, partitions: int, topic_filter: str | None) -> None:
    """Reads every partition with manual acknowledgement; prints ``COUNT n`` as it goes and a
    JSON summary after ``STOP`` on stdin."""
    from eicu.bus.partitioned import PartitionConsumer
    from eicu.config import MqttSettings

    async def main() -> dict[str, Any]:
        settings = MqttSettings.from_url(url, client_id="bench-worker")
        consumers = [
            await PartitionConsumer(settings, k, topic_filter=topic_filter).connect()
            for k in range(partitions)
        ]
        seen: set[int] = set()
        latencies_ms: list[float] = []
        duplicates = 0

        async def read(consumer: PartitionConsumer) -> None:
            nonlocal duplicates
            async for message in consumer:
                now = time.time_ns()
                seq_text, stamp, _ = message.payload.split(b":", 2)
                seq = int(seq_text)
                if seq in seen:
                    duplicates += 1
                else:
                    seen.add(seq)
                    latencies_ms.append((now - int(stamp)) / 1e6)
                consumer.ack(message)

        readers = [asyncio.create_task(read(c)) for c in consumers]
        print("READY", flush=True)
        cpu0 = time.process_time()
        loop = asyncio.get_running_loop()
        stop = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.readline))
        while not stop.done():
            print(f"COUNT {len(seen)}", flush=True)
            await asyncio.wait({stop}, timeout=0.2)
        cpu_s = time.process_time() - cpu0
        for c in consumers:
            await c.close()
        await asyncio.gather(*readers, return_exceptions=True)
        latencies_ms.sort()

        def pct(q: float) -> float:
            if not latencies_ms:
                return float("nan")
            return latencies_ms[min(len(latencies_ms) - 1, int(q / 100 * len(latencies_ms)))]

        return {
            "seen": sorted(seen),
            "duplicates": duplicates,
            "cpu_s": cpu_s,
            "p50_ms": pct(50),
            "p99_ms": pct(99),
        }

    result = asyncio.run(main())
    print("RESULT " + json.dumps(result), flush=True)


# --- the run -------------------------------------------------------------------------------------


def _child(role: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", role, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _until(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited before {prefix}")
        if line.startswith(prefix):
            return line[len(prefix) :].strip()


def run(
    name: str,
    gateway_urls: list[str],
    consumer_url: str,
    broker_pids: list[int],
    partitions: int,
    topic_filter: str | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    consumer = _child("consumer", consumer_url, str(partitions), topic_filter or "")
    gateway = _child(
        "gateway", ",".join(gateway_urls), str(args.rate), str(args.duration), str(args.beds)
    )
    try:
        _until(consumer, "READY")
        _until(gateway, "READY")
        broker_cpu0 = cpu_seconds(broker_pids)
        assert gateway.stdin is not None and consumer.stdin is not None
        gateway.stdin.write("go\n")
        gateway.stdin.flush()
        pub = json.loads(_until(gateway, "RESULT "))
        deadline = time.monotonic() + DRAIN_S
        count = 0
        while count < pub["acked"] and time.monotonic() < deadline:
            count = int(_until(consumer, "COUNT "))
        broker_cpu = cpu_seconds(broker_pids) - broker_cpu0
        consumer.stdin.write("STOP\n")
        consumer.stdin.flush()
        con = json.loads(_until(consumer, "RESULT "))
    finally:
        for proc in (gateway, consumer):
            if proc.poll() is None:
                proc.terminate()
            proc.wait(10)
    failed = set(pub["failed"])
    acked_ids = set(range(pub["sent"])) - failed
    seen = set(con["seen"])
    lost = len(acked_ids - seen)
    received = len(seen)
    return {
        "broker": name,
        "sent": pub["sent"],
        "acked_per_s": pub["acked"] / pub["acked_s"],
        "received": received,
        "lost": lost,
        "duplicates": con["duplicates"],
        "p50_ms": con["p50_ms"],
        "p99_ms": con["p99_ms"],
        "broker_cpu_s_per_1000": broker_cpu / max(received, 1) * 1000,
        "consumer_cpu_us_per_msg": con["cpu_s"] / max(received, 1) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=3000.0, help="messages a second")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of publishing")
    parser.add_argument("--beds", type=int, default=300)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--brokers", nargs="+", default=["mosquitto", "nats"])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, *rest = args.child
        if role == "gateway":
            gateway_main(rest[0].split(","), float(rest[1]), float(rest[2]), int(rest[3]))
        else:
            consumer_main(rest[0], int(rest[1]), rest[2] or None)
        return

    from eicu.devservices import Mosquitto, NatsCluster

    load_before = os.getloadavg()[0]
    results = []
    for broker in args.brokers:
        if broker == "mosquitto":
            mosquitto = Mosquitto().start()
            try:
                assert mosquitto.proc is not None
                results.append(
                    run(
                        "mosquitto",
                        [mosquitto.url],
                        mosquitto.url,
                        [mosquitto.proc.pid],
                        1,
                        "eicu/v1/#",
                        args,
                    )
                )
            finally:
                mosquitto.cleanup()
        elif broker == "nats":
            cluster = NatsCluster(partitions=args.partitions).start()
            try:
                pids = [node.pid for node in cluster.nodes if node.pid is not None]
                results.append(
                    run(
                        f"nats x3 ({args.partitions} partitions)",
                        cluster.urls,
                        cluster[1].url,
                        pids,
                        args.partitions,
                        None,
                        args,
                    )
                )
            finally:
                cluster.cleanup()
        else:
            raise SystemExit(f"unknown broker {broker!r}")

    print(
        f"\n{args.rate:.0f} msg/s offered for {args.duration:.0f} s, {PAYLOAD_BYTES} B, "
        f"{args.beds} beds, QoS 1, manual acknowledgement; {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (others' work included)"
    )
    header = (
        f"{'broker':26} {'acked/s':>8} {'sent':>7} {'recv':>7} {'lost':>5} {'dup':>5} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'brk s/1k':>9} {'cons us/msg':>11}"
    )
    print(header)
    for r in results:
        print(
            f"{r['broker']:26} {r['acked_per_s']:8.0f} {r['sent']:7d} {r['received']:7d} "
            f"{r['lost']:5d} {r['duplicates']:5d} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} "
            f"{r['broker_cpu_s_per_1000']:9.3f} {r['consumer_cpu_us_per_msg']:11.0f}"
        )


if __name__ == "__main__":
    main()
