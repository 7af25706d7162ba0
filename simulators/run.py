"""Runs simulated beds behind simulated gateways, in real time or faster."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from eicu import wire
from eicu.config import MqttSettings
from eicu.models import BedKey, StatusFrame
from simulators.beds import BedSource, ReplayBed, SynthBed
from simulators.gateway import Gateway, Outgoing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationPlan:
    site: str = "sim"
    beds: int = 1
    duration_s: float = 60.0
    scenario: str = "stable"  # a scenario name, or "mix" to cycle through all of them
    speed: float = 1.0
    frame_s: float = 0.25
    beds_per_gateway: int = 16
    replay: Path | None = None
    seed: int = 0
    time_scale: float = 1.0
    first_bed: int = 1


def make_sources(plan: SimulationPlan, start_us: int) -> list[BedSource]:
    sources: list[BedSource] = []
    for i in range(plan.beds):
        bed = BedKey(plan.site, f"bed{plan.first_bed + i:03d}")
        if plan.replay is not None:
            sources.append(ReplayBed(bed, plan.replay, start_us, offset_s=97.0 * i))
        else:
            from simulators.synth import SCENARIOS

            scenario = SCENARIOS[i % len(SCENARIOS)] if plan.scenario == "mix" else plan.scenario
            sources.append(SynthBed(bed, scenario, plan.seed + i, start_us, plan.time_scale))
    return sources


async def simulate(
    mqtt: MqttSettings, plan: SimulationPlan, stop: asyncio.Event | None = None
) -> dict[str, object]:
    """Publish every bed's streams for ``plan.duration_s`` simulated seconds; return the summary
    of what the broker acknowledged: ``{"beds": {"site/bed": {"messages", "samples"}}}``."""
    start_us = time.time_ns() // 1000
    sources = make_sources(plan, start_us)
    gateways: list[tuple[Gateway, list[BedSource]]] = []
    for g in range(0, len(sources), plan.beds_per_gateway):
        group = sources[g : g + plan.beds_per_gateway]
        gw = Gateway(
            mqtt, plan.site, f"gw{g // plan.beds_per_gateway + 1:03d}", [s.bed.bed for s in group]
        )
        gateways.append((gw, group))
    senders = [asyncio.create_task(gw.run(), name=f"gateway[{gw.name}]") for gw, _ in gateways]
    for gw, group in gateways:
        gw.status("online", start_us)
        for src in group:
            _bed_status(gw, src.bed, "online", start_us)
    drivers = [
        asyncio.create_task(_drive(gw, group, plan, stop), name=f"beds[{gw.name}]")
        for gw, group in gateways
    ]
    try:
        await asyncio.gather(*drivers)
        for gw, _ in gateways:
            await gw.close()
        await asyncio.wait_for(asyncio.gather(*senders), timeout=60.0)
    finally:
        for task in (*drivers, *senders):
            task.cancel()
    beds: dict[str, dict[str, int]] = {}
    dropped = 0
    for gw, group in gateways:
        dropped += gw.dropped
        for src in group:
            c = gw.counts.get(src.bed.bed)
            beds[str(src.bed)] = {
                "messages": c.messages if c else 0,
                "samples": c.samples if c else 0,
            }
    summary: dict[str, object] = {"beds": beds}
    if dropped:
        summary["dropped"] = dropped
    return summary


def _bed_status(gw: Gateway, bed: BedKey, state: str, ts_us: int) -> None:
    frame = StatusFrame(bed.site, state, ts_us, bed=bed.bed)  # type: ignore[arg-type]
    gw.send(Outgoing(wire.status_topic(bed), wire.encode_status(frame), None, 0, retain=True))


async def _drive(
    gw: Gateway, group: list[BedSource], plan: SimulationPlan, stop: asyncio.Event | None
) -> None:
    interval_s = plan.frame_s / plan.speed
    n_ticks = round(plan.duration_s / plan.frame_s)
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    online = {src.bed: True for src in group}
    for k in range(n_ticks):
        if stop is not None and stop.is_set():
            return
        delay = t_start + k * interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for src in group:
            frame, numerics = src.tick(plan.frame_s)
            is_on = src.connected()
            ts_us = gw_time_us(frame, numerics)
            if is_on != online[src.bed]:
                online[src.bed] = is_on
                _bed_status(
                    gw, src.bed, "online" if is_on else "offline", ts_us or time.time_ns() // 1000
                )
            if not is_on:
                continue  # the bed's gateway link is down: these samples never leave the bedside
            if numerics is not None:
                gw.send(
                    Outgoing(
                        wire.numerics_topic(src.bed),
                        wire.encode_numerics(numerics),
                        src.bed,
                        numerics.n_values,
                    )
                )
            if frame is not None:
                gw.send(
                    Outgoing(
                        wire.waveform_topic(src.bed),
                        wire.encode_waveform(frame),
                        src.bed,
                        frame.n_samples,
                    )
                )


def gw_time_us(frame: object, numerics: object) -> int | None:
    for f in (frame, numerics):
        t = getattr(f, "t0_us", None) or getattr(f, "ts_us", None)
        if t:
            return int(t)
    return None
