"""The default policy's alarm burden on simulated beds: a stable bed's second-to-second noise
pages nobody, while every bed on the sepsis course still alarms on its NEWS2.

The beds' numerics are routed straight into a real engine (no broker) and its alarm service is
evaluated once a simulated second; see benchmarks/alarm_burden.py for the figures."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import pytest

from alerting.model import AlarmState, Category
from alerting.policy import AlarmPolicy, load_policy
from alerting.state import AlarmStateMachine
from eicu.config import IngestSettings, MqttSettings
from eicu.models import BedKey
from eicu.store import open_store
from ingest.engine import Engine
from simulators.beds import SynthGroup

pytestmark = pytest.mark.slow
T0_US = 1_800_000_000_000_000


async def raised(
    tmp_path: Path, policy: AlarmPolicy, scenario: str, beds: int, minutes: float, scale: float
) -> dict[str, set[BedKey]]:
    """Alarm kind -> the beds on which it started, over ``minutes`` of simulated time."""
    store = open_store(f"sqlite:///{tmp_path / 'eicu.sqlite'}")
    await store.open()
    engine = Engine(
        MqttSettings(),
        IngestSettings(spool_dir=tmp_path / "spool", analyse_signals=False),
        store,
        alarms_outbox=tmp_path / "alarms.db",
    )
    assert engine.alarms is not None
    engine.alarms.policy = policy
    engine.alarms.machine = AlarmStateMachine(policy)
    keys = [BedKey("sim", f"bed{i:02d}") for i in range(beds)]
    group = SynthGroup(keys, [scenario] * beds, list(range(1, beds + 1)), T0_US, time_scale=scale)
    started: dict[str, set[BedKey]] = collections.defaultdict(set)
    for second in range(1, int(minutes * 60) + 1):
        now_us = T0_US + second * 1_000_000
        for _bed, _wave, numerics, _connected in group.tick(1.0):
            if numerics is not None:
                engine.router.route(dataclasses.replace(numerics, received_us=now_us))
        for event in engine.alarms.evaluate(now_us):
            if event.state == AlarmState.ACTIVE and event.category == Category.PHYSIOLOGICAL:
                started[event.kind].add(event.bed)
    engine.alarms.outbox.close()
    await store.close()
    return started


async def test_stable_beds_raise_no_physiological_alarm(tmp_path: Path) -> None:
    started = await raised(tmp_path, load_policy(), "stable", beds=20, minutes=20, scale=1.0)
    assert dict(started) == {}


async def test_every_sepsis_bed_still_alarms_on_its_news2(tmp_path: Path) -> None:
    # the 6 h sepsis course in 30 min
    started = await raised(tmp_path, load_policy(), "sepsis", beds=10, minutes=30, scale=12.0)
    assert len(started["NEWS2_HIGH"]) == 10
    assert len(started["DETERIORATION"]) == 10
