"""Replay stored numerics through the rules and the alarm state machine under a policy, to see
how a change of limits or delays changes the alarm burden before it reaches a ward.

The replay steps through the window once per ``step_s`` (one second, as the engine does), feeding
each bed the values whose device time has come; the device time also stands for the time the
value was received. Only numerics are replayed: the vital-limit conditions and their technical
conditions (unavailable, probe off) and the data-stale rule. Rhythm, signal-quality and score
conditions need the waveforms and the score stage and are not part of a replay. Nobody
acknowledges anything in a replay, and it stops at the last stored value (a window's end after
the data is not silence). The load is the number of alarms started, per kind and the highest
priority each reached (see :func:`alerting.report.summarize`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from alerting.model import AlarmCondition, AlarmEvent, Priority
from alerting.policy import AlarmPolicy
from alerting.report import summarize
from alerting.rules import evaluate_bed
from alerting.state import AlarmStateMachine
from eicu.models import BedKey
from eicu.store.base import NumericSample, Store


def replay(
    samples: Iterable[NumericSample],
    policy: AlarmPolicy,
    start_us: int,
    end_us: int,
    *,
    step_s: float = 1.0,
) -> list[AlarmEvent]:
    """The alarm events the engine would have produced from these numerics under ``policy``."""
    if end_us <= start_us or step_s <= 0:
        raise ValueError(f"need start < end and step_s > 0, got {start_us}, {end_us}, {step_s}")
    ordered = sorted((s for s in samples if start_us <= s.ts_us < end_us), key=lambda s: s.ts_us)
    if not ordered:
        return []
    machine = AlarmStateMachine(policy)
    latest: dict[BedKey, dict[str, tuple[float | None, int]]] = {}
    last_seen_us: dict[BedKey, int] = {}
    events: list[AlarmEvent] = []
    step_us = int(step_s * 1e6)
    stop_us = ordered[-1].ts_us
    i = 0
    now_us = ordered[0].ts_us
    while now_us <= stop_us:
        while i < len(ordered) and ordered[i].ts_us <= now_us:
            s = ordered[i]
            latest.setdefault(s.bed, {})[s.key] = (s.value, s.ts_us)
            last_seen_us[s.bed] = max(last_seen_us.get(s.bed, 0), s.ts_us)
            i += 1
        conditions: list[AlarmCondition] = []
        for bed, values in latest.items():
            out = evaluate_bed(
                bed,
                policy,
                now_us,
                latest=values,
                status="online",
                last_seen_us=last_seen_us[bed],
            )
            conditions.extend(out.conditions)
        events.extend(machine.observe(conditions, now_us))
        events.extend(machine.tick(now_us))
        now_us += step_us
    return events


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
    store: Store, policy: AlarmPolicy, start_us: int, end_us: int, *, step_s: float = 1.0
) -> AlarmLoad:
    """Read the window's numerics from ``store`` and replay them under ``policy``."""
    samples = await store.numerics(start_us, end_us)
    return alarm_load(policy, replay(samples, policy, start_us, end_us, step_s=step_s))


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
