"""A worker process that shares partitions through NATS and prints what it gains and loses, for
the tests that SIGKILL it: ``python -m tests.ownership_worker <servers,...> <worker id>
<partitions> <ttl_s> <bucket>``. Each line: ``gain <k> <time>`` or ``lose <k> <time>``, the time
from ``time.monotonic()`` (the same clock for every process of the machine)."""

from __future__ import annotations

import asyncio
import sys
import time

from eicu.bus.ownership import NatsOwnership


async def main(servers: str, worker_id: str, partitions: int, ttl_s: float, bucket: str) -> None:
    ownership = NatsOwnership(
        servers.split(","),
        worker_id,
        partitions,
        ttl_s=ttl_s,
        bucket=bucket,
        workers_bucket=f"{bucket}-workers",
    )

    async def on_gain(k: int) -> None:
        print(f"gain {k} {time.monotonic()}", flush=True)

    async def on_lose(k: int) -> None:
        print(f"lose {k} {time.monotonic()}", flush=True)

    await ownership.run(on_gain, on_lose)


if __name__ == "__main__":
    servers, worker_id, partitions, ttl_s, bucket = sys.argv[1:6]
    asyncio.run(main(servers, worker_id, int(partitions), float(ttl_s), bucket))
