"""The alarm stage of the engine: every second, each bed's rules, the alarm state machine, the
audit trail in the durable outbox, and escalation when an on-call rota is configured.

The state machine's snapshot is kept beside the outbox (written atomically whenever an alarm
changes), so active and latched alarms survive a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from alerting.model import AlarmCondition, AlarmEvent, AlarmState
from alerting.outbox import Outbox
from alerting.policy import AlarmPolicy, load_policy
from alerting.report import BurdenReport, burden
from alerting.rules import evaluate_bed
from alerting.state import AlarmStateMachine
from eicu.models import BedKey

log = logging.getLogger(__name__)

BURDEN_WINDOW_S = 24 * 3600.0


class AlarmMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "eicu_alarm_events",
            "Alarm state changes, by kind of change",
            ["state"],
            registry=registry,
        )
        self.active = Gauge(
            "eicu_alarms_active", "Alarms not cleared, by priority", ["priority"], registry=registry
        )
        # The alarm burden of the alarms started in the last BURDEN_WINDOW_S (alerting.report).
        self.burden_alarms = Gauge(
            "eicu_alarm_burden_alarms",
            "Alarms started in the last 24 h, by bed, kind and highest priority",
            ["site", "bed", "kind", "priority"],
            registry=registry,
        )
        self.burden_acknowledged = Gauge(
            "eicu_alarm_burden_acknowledged_ratio",
            "Share of the alarms started in the last 24 h that a clinician acknowledged",
            registry=registry,
        )
        self.burden_time_to_ack = Gauge(
            "eicu_alarm_burden_time_to_ack_seconds",
            "Time from start to acknowledgement of the alarms started in the last 24 h",
            ["quantile"],
            registry=registry,
        )
        self.suppressed = Counter(
            "eicu_alarms_suppressed",
            "Arrhythmia conditions that verification against other signals called false",
            ["kind"],
            registry=registry,
        )


class AlarmService:
    """Runs the rules for every bed the engine knows; see :mod:`alerting.rules`."""

    def __init__(
        self,
        engine: Any,  # ingest.engine.Engine (not imported: alerting depends on eicu only)
        outbox: Outbox,
        policy: AlarmPolicy | None = None,
        *,
        snapshot_path: Path | None = None,
        on_events: Callable[[list[AlarmEvent]], None] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._engine = engine
        self.outbox = outbox
        self.policy = policy or load_policy()
        self._snapshot_path = snapshot_path or outbox.path.with_suffix(".state.json")
        self.machine = self._restore()
        self._on_events = on_events
        self.metrics = AlarmMetrics(registry or engine.metrics.registry)
        self.recent: list[AlarmEvent] = []

    def _restore(self) -> AlarmStateMachine:
        if self._snapshot_path.exists():
            try:
                data = json.loads(self._snapshot_path.read_text())
                machine = AlarmStateMachine.restore(data)
                log.info("restored %d alarms from %s", len(machine.alarms()), self._snapshot_path)
                return machine
            except (ValueError, KeyError, TypeError) as exc:
                log.error(
                    "alarm snapshot %s unreadable (%s); starting empty", self._snapshot_path, exc
                )
        return AlarmStateMachine(self.policy)

    def _save(self) -> None:
        tmp = self._snapshot_path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump(self.machine.snapshot(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self._snapshot_path)

    def evaluate(self, now_us: int) -> list[AlarmEvent]:
        """One pass of the rules over every bed at ``now_us``; returns the alarm events."""
        engine = self._engine
        conditions: list[AlarmCondition] = []
        for bed, state in list(engine.router.beds.items()):
            derived = engine.signals.derived.get(bed)
            scores = engine.scores.beds.get(bed)
            out = evaluate_bed(
                bed,
                self.policy,
                now_us,
                latest=state.latest,
                status=state.status,
                last_seen_us=state.last_seen_us,
                rhythms=tuple(derived.rhythms) if derived else (),
                quality=dict(derived.quality) if derived else {},
                news2=scores.news2 if scores else None,
                deterioration=scores.deterioration if scores else None,
                verify=engine.signals.verifier(bed),
            )
            conditions.extend(out.conditions)
            for suppressed in out.suppressed:
                self.metrics.suppressed.labels(kind=suppressed.condition.kind).inc()
        events = self.machine.observe(conditions, now_us)
        events.extend(self.machine.tick(now_us))
        if events:
            self._record(events)
        return events

    def acknowledge(self, alarm_id: str, user: str, now_us: int) -> list[AlarmEvent]:
        events = self.machine.acknowledge(alarm_id, user, now_us)
        self._record(events)
        return events

    def pause_audio(
        self, target: BedKey | str, user: str, now_us: int, duration_s: float
    ) -> list[AlarmEvent]:
        events = self.machine.pause_audio(target, user, now_us, duration_s)
        self._record(events)
        return events

    def _record(self, events: list[AlarmEvent]) -> None:
        for event in events:
            self.outbox.record(event)  # durable before anyone is told
            self.metrics.events.labels(state=event.state.value).inc()
        self._save()
        counts: dict[str, int] = {}
        for alarm in self.machine.alarms():
            if alarm.state != AlarmState.CLEARED:
                counts[alarm.priority.value] = counts.get(alarm.priority.value, 0) + 1
        for priority in ("high", "medium", "low"):
            self.metrics.active.labels(priority=priority).set(counts.get(priority, 0))
        self.recent.extend(events)
        del self.recent[:-500]
        if self._on_events is not None:
            self._on_events(events)

    def update_burden(self, now_us: int) -> BurdenReport:
        """Set the burden gauges from the audit trail of the alarms started in the last
        :data:`BURDEN_WINDOW_S` before ``now_us``; returns the report they come from."""
        since_us = now_us - int(BURDEN_WINDOW_S * 1e6)
        stored = self.outbox.events(started_since_us=since_us)
        report = burden(s.event for s in stored)
        m = self.metrics
        m.burden_alarms.clear()
        totals: dict[tuple[str, str, str, str], int] = {}
        for row in report.rows:  # the window may span two days: summed over them
            key = (row.site, row.bed, row.kind, row.priority.value)
            totals[key] = totals.get(key, 0) + row.alarms
        for (site, bed, kind, priority), n in totals.items():
            m.burden_alarms.labels(site=site, bed=bed, kind=kind, priority=priority).set(n)
        share = report.overall.acknowledged_share
        m.burden_acknowledged.set(math.nan if share is None else share)
        for quantile, value in (("0.5", report.overall.median_s), ("0.9", report.overall.p90_s)):
            m.burden_time_to_ack.labels(quantile=quantile).set(math.nan if value is None else value)
        return report

    async def run(self, interval_s: float = 1.0, burden_every_s: float = 60.0) -> None:
        next_burden = time.monotonic()
        while True:
            started = time.monotonic()
            try:
                self.evaluate(time.time_ns() // 1000)
            except Exception:
                log.exception("alarm evaluation failed; retrying next second")
            if started >= next_burden:
                next_burden = started + burden_every_s
                try:
                    self.update_burden(time.time_ns() // 1000)
                except Exception:
                    log.exception("alarm burden not updated")
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
