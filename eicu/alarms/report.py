"""Alarm burden from the outbox's audit trail: how many alarms each bed raised per day, of which
kind and priority, how many were acknowledged, and how long acknowledgement took.

Pure: events in, figures out. An alarm is counted once, on the UTC day its first event (its
start) happened, at the highest priority it reached. It counts as acknowledged when a clinician
(an actor other than ``engine``) acknowledged it: the event that moves it to ``acknowledged``
(from active) or to ``cleared`` (from latched). Time to acknowledge runs from the alarm's start
to that first acknowledgement. Percentiles interpolate linearly between the closest ranks
(``numpy.percentile``'s default).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from eicu.alarm_model import AlarmEvent, AlarmState, Priority

ENGINE_ACTOR = "engine"
_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2}
_ACK_STATES = (AlarmState.ACKNOWLEDGED, AlarmState.CLEARED)


@dataclass(frozen=True, slots=True)
class AlarmSummary:
    """One alarm's life as the audit trail tells it (times in us since the epoch)."""

    alarm_id: str
    site: str
    bed: str
    kind: str
    priority: Priority
    started_us: int
    acknowledged_us: int | None
    acknowledged_by: str | None

    @property
    def day(self) -> str:
        return datetime.fromtimestamp(self.started_us / 1e6, UTC).date().isoformat()

    @property
    def time_to_ack_s(self) -> float | None:
        if self.acknowledged_us is None:
            return None
        return (self.acknowledged_us - self.started_us) / 1e6


def summarize(events: Iterable[AlarmEvent]) -> list[AlarmSummary]:
    """Each alarm's start, highest priority and first acknowledgement, in order of start."""
    first: dict[str, AlarmEvent] = {}
    priority: dict[str, Priority] = {}
    ack: dict[str, AlarmEvent] = {}
    for event in events:
        aid = event.alarm_id
        if aid not in first:
            first[aid] = event
            priority[aid] = event.priority
        elif _RANK[event.priority] > _RANK[priority[aid]]:
            priority[aid] = event.priority
        if aid not in ack and event.actor != ENGINE_ACTOR and event.state in _ACK_STATES:
            ack[aid] = event
    out = [
        AlarmSummary(
            alarm_id=aid,
            site=e.bed.site,
            bed=e.bed.bed,
            kind=e.kind,
            priority=priority[aid],
            started_us=e.time_us,
            acknowledged_us=ack[aid].time_us if aid in ack else None,
            acknowledged_by=ack[aid].actor if aid in ack else None,
        )
        for aid, e in first.items()
    ]
    out.sort(key=lambda a: (a.started_us, a.alarm_id))
    return out


@dataclass(frozen=True, slots=True)
class BurdenRow:
    """Alarms of one kind and priority that one bed raised on one UTC day."""

    day: str
    site: str
    bed: str
    kind: str
    priority: Priority
    alarms: int
    acknowledged: int


@dataclass(frozen=True, slots=True)
class AckStats:
    alarms: int
    acknowledged: int
    median_s: float | None  # time to acknowledge, of the acknowledged alarms
    p90_s: float | None

    @property
    def acknowledged_share(self) -> float | None:
        return self.acknowledged / self.alarms if self.alarms else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "alarms": self.alarms,
            "acknowledged": self.acknowledged,
            "acknowledged_share": self.acknowledged_share,
            "time_to_ack_s": {"median": self.median_s, "p90": self.p90_s},
        }


def ack_stats(alarms: Iterable[AlarmSummary]) -> AckStats:
    alarms = list(alarms)
    waits = [a.time_to_ack_s for a in alarms if a.time_to_ack_s is not None]
    if not waits:
        return AckStats(len(alarms), 0, None, None)
    median_s, p90_s = (float(q) for q in np.percentile(np.asarray(waits), [50.0, 90.0]))
    return AckStats(len(alarms), len(waits), median_s, p90_s)


@dataclass(frozen=True, slots=True)
class BurdenReport:
    rows: list[BurdenRow]
    overall: AckStats
    by_priority: dict[Priority, AckStats]
    beds: int
    days: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "beds": self.beds,
            "days": self.days,
            "overall": self.overall.to_dict(),
            "by_priority": {p.value: s.to_dict() for p, s in self.by_priority.items()},
            "rows": [
                {
                    "day": r.day,
                    "site": r.site,
                    "bed": r.bed,
                    "kind": r.kind,
                    "priority": r.priority.value,
                    "alarms": r.alarms,
                    "acknowledged": r.acknowledged,
                }
                for r in self.rows
            ],
        }


def burden(events: Iterable[AlarmEvent]) -> BurdenReport:
    """The alarm-burden report of an audit trail (events in recorded order)."""
    alarms = summarize(events)
    counts: dict[tuple[str, str, str, str, Priority], list[int]] = {}
    for a in alarms:
        row = counts.setdefault((a.day, a.site, a.bed, a.kind, a.priority), [0, 0])
        row[0] += 1
        row[1] += a.acknowledged_us is not None
    rows = [
        BurdenRow(day, site, bed, kind, priority, n, acked)
        for (day, site, bed, kind, priority), (n, acked) in sorted(
            counts.items(), key=lambda kv: (*kv[0][:4], -_RANK[kv[0][4]])
        )
    ]
    by_priority = {
        p: ack_stats(a for a in alarms if a.priority == p)
        for p in Priority
        if any(a.priority == p for a in alarms)
    }
    return BurdenReport(
        rows=rows,
        overall=ack_stats(alarms),
        by_priority=by_priority,
        beds=len({(a.site, a.bed) for a in alarms}),
        days=len({a.day for a in alarms}),
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _share(stats: AckStats) -> str:
    share = stats.acknowledged_share
    return "-" if share is None else f"{100 * share:.1f} %"


def format_report(report: BurdenReport) -> str:
    """The report as text: the totals, per priority, then one line per bed, day, kind."""
    o = report.overall
    lines = [
        f"{o.alarms} alarms on {report.beds} beds over {report.days} days; "
        f"acknowledged {o.acknowledged} ({_share(o)}); time to acknowledge "
        f"median {_seconds(o.median_s)}, p90 {_seconds(o.p90_s)}",
    ]
    for p, s in report.by_priority.items():
        lines.append(
            f"  {p.value:<7} {s.alarms:>6} alarms, acknowledged {_share(s)}, "
            f"median {_seconds(s.median_s)}, p90 {_seconds(s.p90_s)}"
        )
    if report.rows:
        lines.append(f"{'day':<11} {'bed':<24} {'kind':<18} {'priority':<8} alarms  acked")
    for r in report.rows:
        where = f"{r.site}/{r.bed}"
        lines.append(
            f"{r.day:<11} {where:<24} {r.kind:<18} {r.priority.value:<8} "
            f"{r.alarms:>6} {r.acknowledged:>6}"
        )
    return "\n".join(lines)
