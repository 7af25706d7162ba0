"""The default policy's alarm burden on simulated beds: a stable bed's second-to-second noise
pages nobody, while every bed on the sepsis course still alarms on its NEWS2.

The beds' numerics are routed straight into a real engine (no broker) and its alarm service is
evaluated once a simulated second; see benchmarks/alarm_burden.py for the figures."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from eicu.alarms.policy import AlarmPolicy, load_policy
from eicu.models import BedKey
from ingest.offline import physiological_alarm_starts
from simulators.beds import SynthGroup

pytestmark = pytest.mark.slow
T0_US = 1_800_000_000_000_000


async def raised(
    tmp_path: Path, policy: AlarmPolicy, scenario: str, beds: int, minutes: float, scale: float
) -> dict[str, set[BedKey]]:
    """Alarm kind -> the beds on which it started, over ``minutes`` of simulated time."""
    keys = [BedKey("sim", f"bed{i:02d}") for i in range(beds)]
    group = SynthGroup(keys, [scenario] * beds, list(range(1, beds + 1)), T0_US, time_scale=scale)
    started: dict[str, set[BedKey]] = collections.defaultdict(set)
    events = physiological_alarm_starts(policy, group, T0_US, int(minutes * 60), tmp_path)
    async for _second, event in events:
        started[event.kind].add(event.bed)
    return started


async def test_stable_beds_raise_no_physiological_alarm(tmp_path: Path) -> None:
    started = await raised(tmp_path, load_policy(), "stable", beds=20, minutes=20, scale=1.0)
    assert dict(started) == {}


async def test_every_sepsis_bed_still_alarms_on_its_news2(tmp_path: Path) -> None:
    # the 6 h sepsis course in 30 min
    started = await raised(tmp_path, load_policy(), "sepsis", beds=10, minutes=30, scale=12.0)
    assert len(started["NEWS2_HIGH"]) == 10
    assert len(started["DETERIORATION"]) == 10
