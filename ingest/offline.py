"""An engine fed straight from simulated beds, without a broker: each simulated second the beds'
numerics are routed in and the alarm service is evaluated under a given policy. The alarm-burden
benchmark (``benchmarks/alarm_burden.py``) and its test run the rules and the state machine this
way, with nothing else in the measurement."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol

from eicu.alarm_model import AlarmEvent, AlarmState, Category
from eicu.alarms.policy import AlarmPolicy
from eicu.alarms.state import AlarmStateMachine
from eicu.config import IngestSettings, MqttSettings
from eicu.models import NumericsFrame
from eicu.store import open_store
from ingest.engine import Engine


class Beds(Protocol):
    """What ``simulators.beds.SynthGroup`` offers: the numerics of the next ``frame_s`` of
    every bed, without their waveforms (the alarm rules here read numerics only)."""

    def tick_numerics(
        self, frame_s: float
    ) -> Sequence[tuple[object, object, NumericsFrame | None, bool]]:
        """Per bed: (bed, None, numerics due now, whether the bed is connected)."""
        ...


async def physiological_alarm_starts(
    policy: AlarmPolicy, beds: Beds, t0_us: int, seconds: int, folder: Path
) -> AsyncIterator[tuple[int, AlarmEvent]]:
    """(second, event) for every physiological alarm event that starts or re-raises an alarm
    (state ACTIVE), over ``seconds`` simulated seconds from ``t0_us``; ``folder`` holds the
    engine's store, spool and outbox."""
    store = open_store(f"sqlite:///{folder / 'eicu.sqlite'}")
    await store.open()
    engine = Engine(
        MqttSettings(),
        IngestSettings(spool_dir=folder / "spool", analyse_signals=False),
        store,
        alarms_outbox=folder / "alarms.db",
    )
    alarms = engine.alarms
    assert alarms is not None
    alarms.policy = policy
    alarms.machine = AlarmStateMachine(policy)
    try:
        for second in range(1, seconds + 1):
            now_us = t0_us + second * 1_000_000
            for _bed, _wave, numerics, _connected in beds.tick_numerics(1.0):
                if numerics is not None:
                    engine.router.route(dataclasses.replace(numerics, received_us=now_us))
            for event in alarms.evaluate(now_us):
                if event.state == AlarmState.ACTIVE and event.category == Category.PHYSIOLOGICAL:
                    yield second, event
    finally:
        alarms.outbox.close()
        await store.close()
