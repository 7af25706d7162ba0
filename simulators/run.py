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
from simulators.beds import BedGroup, ReplayBed, SynthGroup
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
    replay_offset_s: float = 0.0  # where in the record the first replayed bed starts
    seed: int = 0
    time_scale: float = 1.0
    first_bed: int = 1
    events_at_s: float | None = None  # every scenario's event this long after the start
    drain_timeout_s: float = 60.0  # how long to wait at the end for the broker to acknowledge
    coded: bool = False  # waveform samples compressed by the project's codec (wire.FLAG_CODED)


def make_groups(plan: SimulationPlan, start_us: int) -> list[BedGroup]:
    """The beds of the plan, one group per gateway."""
    beds = [BedKey(plan.site, f"bed{plan.first_bed + i:03d}") for i in range(plan.beds)]
    groups: list[BedGroup] = []
    for g in range(0, len(beds), plan.beds_per_gateway):
        chunk = beds[g : g + plan.beds_per_gateway]
        if plan.replay is not None:
            groups.extend(
                ReplayBed(
                    bed, plan.replay, start_us, offset_s=plan.replay_offset_s + 97.0 * (g + i)
                )
                for i, bed in enumerate(chunk)
            )
            continue
        from simulators.synth import SCENARIOS

        index = range(g, g + len(chunk))
        scenarios = [
            SCENARIOS[i % len(SCENARIOS)] if plan.scenario == "mix" else plan.scenario
            for i in index
        ]
        seeds = [plan.seed + plan.first_bed + i for i in index]
        groups.append(
            SynthGroup(chunk, scenarios, seeds, start_us, plan.time_scale, plan.events_at_s)
        )
    return groups


async def simulate(
    mqtt: MqttSettings, plan: SimulationPlan, stop: asyncio.Event | None = None
) -> dict[str, object]:
    """Publish every bed's streams for ``plan.duration_s`` simulated seconds; return the summary
    of what the broker acknowledged: ``{"beds": {"site/bed": {"messages", "samples"}}}``, and
    ``start_us``, the device time (µs since the epoch) of the simulation's start, from which
    ``plan.events_at_s`` counts."""
    start_us = time.time_ns() // 1000
    groups = make_groups(plan, start_us)
    gateways: list[tuple[Gateway, list[BedGroup]]] = []
    if mqtt.username is not None:
        # A gateway account is one connection (the broker binds its client id to its name):
        # every bed goes through one gateway of that name.
        bed_names = [b.bed for grp in groups for b in grp.beds]
        gateways.append((Gateway(mqtt, plan.site, mqtt.username, bed_names), groups))
    per_gateway = plan.beds_per_gateway if plan.replay else 1
    for g in range(0, len(groups) if mqtt.username is None else 0, max(1, per_gateway)):
        members = groups[g : g + per_gateway]
        bed_names = [b.bed for grp in members for b in grp.beds]
        # named after its first bed, so gateways of several simulator processes never share an id
        gw = Gateway(mqtt, plan.site, f"gw-{bed_names[0]}", bed_names)
        gateways.append((gw, members))
    senders = [asyncio.create_task(gw.run(), name=f"gateway[{gw.name}]") for gw, _ in gateways]
    for gw, members in gateways:
        gw.status("online", start_us)
        for grp in members:
            for bed in grp.beds:
                _bed_status(gw, bed, "online", start_us)
    drivers = [
        asyncio.create_task(_drive(gw, members, plan, stop), name=f"beds[{gw.name}]")
        for gw, members in gateways
    ]
    unsent = 0
    try:
        await asyncio.gather(*drivers)
        for gw, _ in gateways:
            await gw.close()
        if not await _drained(senders, gateways, plan.drain_timeout_s):
            unsent = sum(len(gw.outbox) for gw, _ in gateways)
            log.error(
                "%d messages not acknowledged by the broker at %s; giving up",
                unsent,
                mqtt.url,
            )
    finally:
        for task in (*drivers, *senders):
            task.cancel()
    beds: dict[str, dict[str, int]] = {}
    dropped = 0
    for gw, members in gateways:
        dropped += gw.dropped
        for grp in members:
            for bed in grp.beds:
                c = gw.counts.get(bed.bed)
                beds[str(bed)] = {
                    "messages": c.messages if c else 0,
                    "samples": c.samples if c else 0,
                }
    summary: dict[str, object] = {"beds": beds, "start_us": start_us}
    if dropped:
        summary["dropped"] = dropped  # outbox overflow: never published
    if unsent:
        summary["unsent"] = unsent  # never acknowledged by the broker
    return summary


NO_BROKER_GRACE_S = 5.0  # at the end, with no gateway connected this long, nothing will drain


async def _drained(
    senders: list[asyncio.Task[None]],
    gateways: list[tuple[Gateway, list[BedGroup]]],
    timeout_s: float,
) -> bool:
    """Whether every gateway published what it holds within ``timeout_s``; gives up sooner
    when no gateway has been connected for :data:`NO_BROKER_GRACE_S` (no broker to drain to)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    unconnected_since: float | None = None
    remaining: set[asyncio.Task[None]] = set(senders)
    while remaining and loop.time() < deadline:
        _done, remaining = await asyncio.wait(
            remaining, timeout=min(0.5, max(0.0, deadline - loop.time()))
        )
        if any(gw.connected.is_set() for gw, _ in gateways):
            unconnected_since = None
        elif unconnected_since is None:
            unconnected_since = loop.time()
        elif loop.time() - unconnected_since >= NO_BROKER_GRACE_S:
            return False
    return not remaining


def _bed_status(gw: Gateway, bed: BedKey, state: str, ts_us: int) -> None:
    frame = StatusFrame(bed.site, state, ts_us, bed=bed.bed)  # type: ignore[arg-type]
    gw.send(Outgoing(wire.status_topic(bed), wire.encode_status(frame), None, 0, retain=True))


async def _drive(
    gw: Gateway, members: list[BedGroup], plan: SimulationPlan, stop: asyncio.Event | None
) -> None:
    interval_s = plan.frame_s / plan.speed
    n_ticks = round(plan.duration_s / plan.frame_s)
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    online: dict[BedKey, bool] = {bed: True for grp in members for bed in grp.beds}
    for k in range(n_ticks):
        if stop is not None and stop.is_set():
            return
        delay = t_start + k * interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for grp in members:
            for bed, frame, numerics, is_on in grp.tick(plan.frame_s):
                if is_on != online[bed]:
                    online[bed] = is_on
                    ts_us = gw_time_us(frame, numerics) or time.time_ns() // 1000
                    _bed_status(gw, bed, "online" if is_on else "offline", ts_us)
                if not is_on:
                    continue  # the bed's link is down: these samples never leave the bedside
                if numerics is not None:
                    payload = wire.encode_numerics(numerics)
                    gw.send(Outgoing(wire.numerics_topic(bed), payload, bed, numerics.n_values))
                if frame is not None:
                    payload = wire.encode_waveform(frame, coded=plan.coded)
                    gw.send(Outgoing(wire.waveform_topic(bed), payload, bed, frame.n_samples))


def gw_time_us(frame: object, numerics: object) -> int | None:
    for f in (frame, numerics):
        t = getattr(f, "t0_us", None) or getattr(f, "ts_us", None)
        if t:
            return int(t)
    return None
