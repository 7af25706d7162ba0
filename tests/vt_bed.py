"""A simulated VT bed fed into an engine, and a rota that pages a nurse then a physician over
webhooks: shared by the tests of escalation in the engine and in a delivery process."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from ingest.engine import Engine
from simulators.beds import SynthGroup
from tests.alarm_servers import HookServer, Request

ACK_TIMEOUT_S = 3  # the nurse's timeout for a high-priority alarm


def rota_doc(hook: HookServer, site: str = "s") -> dict[str, object]:
    timeouts = {"high": ACK_TIMEOUT_S, "medium": 120, "low": 600}
    return {
        "version": 1,
        "delivery_timeout_s": 5,
        "sites": {
            site: {
                "levels": [
                    {
                        "role": "bedside_nurse",
                        "ack_timeout_s": timeouts,
                        "contacts": [
                            {
                                "name": "nurse-li",
                                "channel": "webhook",
                                "address": hook.url("/nurse"),
                            }
                        ],
                    },
                    {
                        "role": "on_call_physician",
                        "ack_timeout_s": timeouts,
                        "contacts": [
                            {"name": "dr-chen", "channel": "webhook", "address": hook.url("/phys")}
                        ],
                    },
                ]
            }
        },
    }


def pages(hook: HookServer, path: str) -> list[Request]:
    """High-priority pages for the VT bed (VTACH, or TACHY for its rate) accepted at ``path``."""
    return [
        r
        for r in hook.requests
        if r.path == path and r.status == 200 and r.body["priority"] == "high"
    ]


async def feed_until(
    engine: Engine, group: SynthGroup, check: Callable[[], bool], timeout_s: float
) -> None:
    """Route the simulated bed's frames as their time comes (the backlog at once), letting the
    engine's own alarm loop evaluate on the wall clock, until ``check()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met while feeding the simulated bed")
        now_us = time.time_ns() // 1000
        while group._start_us + int(group.bank.t_s * 1e6) <= now_us - 250_000:
            for _bed, frame, numerics, on in group.tick(0.25):
                if not on:
                    continue
                for f in (numerics, frame):
                    if f is not None:
                        rx = getattr(f, "t0_us", None) or getattr(f, "ts_us", 0)
                        engine.router.route(dataclasses.replace(f, received_us=rx))
        await asyncio.sleep(0.1)
