"""Replay stored numerics through the rules and the alarm state machine under a policy, to see
how a change of limits or delays changes the alarm burden before it reaches a ward.

The replay steps through the window once per ``step_s`` (one second, as the engine does), feeding
each bed the values whose device time has come; the device time also stands for the time the
value was received. Only numerics are replayed: the vital-limit conditions and their technical
conditions (unavailable, probe off), the data-stale rule, and the NEWS2-band conditions, with the
bed's NEWS2 assembled at each step from its stored values as the engine's score stage assembles
it (an incomplete score reports only the bands its lower bound proves). Rhythm and
signal-quality conditions need the waveforms, and deterioration the score stage's trend
tracker; they are not part of a replay. Nobody
acknowledges anything in a replay, and it stops at the last stored value (a window's end after
the data is not silence). The load is the number of alarms started, per kind and the highest
priority each reached (see :func:`eicu.alarms.report.summarize`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from eicu.alarm_model import AlarmCondition, AlarmEvent, Priority
from eicu.alarms.policy import AlarmPolicy
from eicu.alarms.report import summarize
from eicu.alarms.rules import evaluate_bed
from eicu.alarms.state import AlarmStateMachine
from eicu.errors import ScoreInputError
from eicu.models import BedKey
from eicu.scores import AssemblyPolicy, assemble_news2
from eicu.scores.evaluate import ScoreResult
from eicu.store.base import NumericSample, Store


class Replay:
    """A replay under one policy, fed in time order (a window read piece by piece keeps memory
    bounded): :meth:`feed` values, :meth:`run` the steps they complete, and ``run(final=True)``
    after the last."""

    def __init__(self, policy: AlarmPolicy, *, step_s: float = 1.0) -> None:
        if step_s <= 0:
            raise ValueError(f"need step_s > 0, got {step_s}")
        self.policy = policy
        self.events: list[AlarmEvent] = []
        self._machine = AlarmStateMachine(policy)
        self._step_us = int(step_s * 1e6)
        self._latest: dict[BedKey, dict[str, tuple[float | None, int]]] = {}
        self._last_seen_us: dict[BedKey, int] = {}
        self._pending: deque[NumericSample] = deque()
        self._now_us: int | None = None  # the next step
        self._fed_us: int | None = None  # the latest value fed
        self._assembly = AssemblyPolicy()  # the score stage's
        self._scores = any(c.rule == "news2" for c in policy.conditions.values())

    def _news2(
        self, values: dict[str, tuple[float | None, int]], now_us: int
    ) -> ScoreResult | None:
        if not self._scores:
            return None
        try:
            return assemble_news2(values, now_us, self._assembly)
        except ScoreInputError:  # as in the score stage: no score rather than a made-up one
            return None

    def feed(self, samples: Iterable[NumericSample]) -> None:
        """Values in time order, none older than those fed before."""
        for s in samples:
            if self._fed_us is not None and s.ts_us < self._fed_us:
                raise ValueError(f"values out of time order at {s.ts_us} < {self._fed_us}")
            if self._now_us is None:
                self._now_us = s.ts_us
            self._fed_us = s.ts_us
            self._pending.append(s)

    def run(self, *, final: bool = False) -> list[AlarmEvent]:
        """Evaluate the steps before the latest value fed (more values of that time may follow),
        and with ``final`` the step at it too; returns the new events."""
        if self._now_us is None or self._fed_us is None:
            return []
        new: list[AlarmEvent] = []
        now_us = self._now_us
        while now_us < self._fed_us or (final and now_us == self._fed_us):
            while self._pending and self._pending[0].ts_us <= now_us:
                s = self._pending.popleft()
                self._latest.setdefault(s.bed, {})[s.key] = (s.value, s.ts_us)
                self._last_seen_us[s.bed] = max(self._last_seen_us.get(s.bed, 0), s.ts_us)
            conditions: list[AlarmCondition] = []
            for bed, values in self._latest.items():
                out = evaluate_bed(
                    bed,
                    self.policy,
                    now_us,
                    latest=values,
                    status="online",
                    last_seen_us=self._last_seen_us[bed],
                    news2=self._news2(values, now_us),
                )
                conditions.extend(out.conditions)
            new.extend(self._machine.observe(conditions, now_us))
            new.extend(self._machine.tick(now_us))
            now_us += self._step_us
        self._now_us = now_us
        self.events.extend(new)
        return new


def replay(
    samples: Iterable[NumericSample],
    policy: AlarmPolicy,
    start_us: int,
    end_us: int,
    *,
    step_s: float = 1.0,
) -> list[AlarmEvent]:
    """The alarm events the engine would have produced from these numerics under ``policy``."""
    if end_us <= start_us:
        raise ValueError(f"need start < end, got {start_us}, {end_us}")
    run = Replay(policy, step_s=step_s)
    run.feed(sorted((s for s in samples if start_us <= s.ts_us < end_us), key=lambda s: s.ts_us))
    return run.run(final=True)


@dataclass(frozen=True, slots=True)
class AlarmLoad:
    """Alarms started under one policy, by (kind, highest priority)."""

    policy: str
    counts: dict[tuple[str, Priority], int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "alarms": self.total,
            "by_kind": [
                {"kind": kind, "priority": priority.value, "alarms": n}
                for (kind, priority), n in sorted(self.counts.items())
            ],
        }


def alarm_load(policy: AlarmPolicy, events: Iterable[AlarmEvent]) -> AlarmLoad:
    counts: dict[tuple[str, Priority], int] = {}
    for alarm in summarize(events):
        key = (alarm.kind, alarm.priority)
        counts[key] = counts.get(key, 0) + 1
    return AlarmLoad(f"{policy.name} v{policy.version}", counts)


async def replay_store(
    store: Store,
    policies: Sequence[AlarmPolicy],
    start_us: int,
    end_us: int,
    *,
    step_s: float = 1.0,
    chunk_s: float = 3600.0,
) -> list[AlarmLoad]:
    """Read the window's numerics from ``store`` a chunk at a time and replay them under each
    policy; one load per policy, in order."""
    if end_us <= start_us or chunk_s <= 0:
        raise ValueError(f"need start < end and chunk_s > 0, got {start_us}, {end_us}, {chunk_s}")
    runs = [Replay(p, step_s=step_s) for p in policies]
    chunk_us = int(chunk_s * 1e6)
    for a_us in range(start_us, end_us, chunk_us):
        samples = await store.numerics(a_us, min(a_us + chunk_us, end_us))
        for run in runs:
            run.feed(samples)
            await asyncio.to_thread(run.run)
    for run in runs:
        run.run(final=True)
    return [alarm_load(run.policy, run.events) for run in runs]


def format_comparison(load: AlarmLoad, baseline: AlarmLoad) -> str:
    """One line per kind and priority: alarms under the baseline, under the policy, the change."""
    keys = sorted(set(load.counts) | set(baseline.counts))
    width = max([len(baseline.policy), len(load.policy), 8])
    lines = [
        f"{'kind':<18} {'priority':<8} {baseline.policy:>{width}} {load.policy:>{width}} change"
    ]
    for kind, priority in keys:
        a = baseline.counts.get((kind, priority), 0)
        b = load.counts.get((kind, priority), 0)
        lines.append(f"{kind:<18} {priority.value:<8} {a:>{width}} {b:>{width}} {b - a:+d}")
    a, b = baseline.total, load.total
    lines.append(f"{'all':<27} {a:>{width}} {b:>{width}} {b - a:+d}")
    return "\n".join(lines)
