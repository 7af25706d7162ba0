"""The alarm stage of the engine: each bed's rules, the alarm state machine, the audit trail in
the durable outbox, and escalation when an on-call rota is configured.

A bed is evaluated as its data arrives: the service is a consumer of the engine's router, and a
numerics or status message marks its bed for evaluation at once (the router's call only notes
the bed; the evaluation runs in :meth:`AlarmService.run`). A bed with a pending condition is
evaluated again the moment the condition will have lasted its delay, so an alarm starts when its
delay is over, not at the next message or second. Every second, the beds not evaluated in that
second are evaluated too (a silent bed's data-stale and offline conditions, audio pauses ending).

The state machine's snapshot is kept beside the outbox (written atomically whenever an alarm
changes), so active and latched alarms survive a restart.

Time comes from an injected :class:`~eicu.clock.Clock` (the real one by default), so a test moves
it instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from alerting.outbox import Outbox
from eicu.alarm_model import AlarmCondition, AlarmEvent, AlarmState
from eicu.alarms.policy import AlarmPolicy, load_policy
from eicu.alarms.ranking import events_most_urgent_first
from eicu.alarms.report import BurdenReport, burden
from eicu.alarms.rules import DataTimes, evaluate_bed, vital_conditions
from eicu.alarms.state import Alarm, AlarmStateMachine
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.models import AlarmAck, AlarmCommand, BedKey, Frame, NumericsFrame, StatusFrame
from eicu.store.base import NumericSample

log = logging.getLogger(__name__)

BURDEN_WINDOW_S = 24 * 3600.0
RECENT_MAX = 500  # events kept in AlarmService.recent
# The most of the engine's input delay taken off values' ages; beyond it, values count as missing
# bed by bed again.
INPUT_DELAY_TOLERANCE_S = 60.0


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
        # The alarm burden of the alarms started in the last BURDEN_WINDOW_S (eicu.alarms.report).
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
        self.acknowledgements = Counter(
            "eicu_alarm_acknowledgements",
            "Acknowledgements from a page receipt, the remote ICU or a dashboard of its own "
            "process, by source (page, mqtt, dashboard) and outcome "
            "(accepted, already: nothing left to acknowledge, not_live: no such live alarm, "
            "refused: the clock went back)",
            ["source", "outcome"],
            registry=registry,
        )
        self.evaluation_errors = Counter(
            "eicu_alarm_evaluation_errors",
            "Beds whose rules failed on one evaluation (their alarms left as they were)",
            registry=registry,
        )
        self.suppressed = Counter(
            "eicu_alarms_suppressed",
            "Arrhythmia conditions that verification against other signals called false",
            ["kind"],
            registry=registry,
        )


class AlarmService:
    """Runs the rules for every bed the engine knows; see :mod:`eicu.alarms.rules`."""

    def __init__(
        self,
        engine: Any,  # ingest.engine.Engine (not imported: alerting depends on eicu only)
        outbox: Outbox,
        policy: AlarmPolicy | None = None,
        *,
        snapshot_path: Path | None = None,
        on_events: Callable[[list[AlarmEvent]], None] | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self.outbox = outbox
        self.policy = policy or load_policy()
        self._snapshot_path = snapshot_path or outbox.path.with_suffix(".state.json")
        self.machine = self._restore()
        restored = self.machine.default_policy
        if policy is not None and restored.to_dict() != policy.to_dict():
            # A policy given (a site's own file) is in force, whatever was before a restart.
            log.info(
                "alarm policy %s v%d in force (the saved state had %s v%d)",
                policy.name, policy.version, restored.name, restored.version,
            )  # fmt: skip
            self.machine.set_default_policy(policy)
        self._on_events = on_events
        self.metrics = AlarmMetrics(registry or engine.metrics.registry)
        # The latest events, newest last (the dashboard's alarm list), from the audit trail, so
        # the list is the same after a restart.
        self.recent: list[AlarmEvent] = [s.event for s in outbox.latest_events(RECENT_MAX)]
        self._dirty: set[BedKey] = set()  # beds with new data, to evaluate at once
        self._due: list[tuple[int, BedKey]] = []  # heap: when a bed's pending condition is due
        self._scheduled: dict[BedKey, int] = {}  # the due time of each bed in the heap
        self._evaluated_us: dict[BedKey, int] = {}
        self._wake = asyncio.Event()

    def __call__(self, frame: Frame, state: object) -> None:
        """A router consumer: note the bed of a numerics or status message for evaluation."""
        if isinstance(frame, NumericsFrame):
            self._dirty.add(frame.bed)
        elif isinstance(frame, StatusFrame):
            if frame.bed is not None:
                self._dirty.add(BedKey(frame.site, frame.bed))
            else:
                self._dirty.update(BedKey(frame.site, bed) for bed in frame.beds)
        else:
            return
        self._wake.set()

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

    def evaluate(self, now_us: int, beds: Iterable[BedKey] | None = None) -> list[AlarmEvent]:
        """One pass of the rules over ``beds`` (default: every bed) at ``now_us``; returns the
        alarm events."""
        engine = self._engine
        conditions: list[AlarmCondition] = []
        known = engine.router.beds
        chosen = list(known) if beds is None else [b for b in beds if b in known]
        # Values that are late because the engine reads its input late are judged on the
        # engine's reading position, up to a limit; the delay itself is shown and measured
        # (eicu_ingest_input_delay_seconds), not raised bed by bed.
        delay_us = min(engine.router.input_delay_us(now_us), int(INPUT_DELAY_TOLERANCE_S * 1e6))
        for bed in chosen:
            state = known[bed]
            self._evaluated_us[bed] = now_us
            derived = engine.signals.derived.get(bed)
            scores = engine.scores.beds.get(bed)
            try:
                out = evaluate_bed(
                    bed,
                    # The bed's own limits where an intensivist set them, else the site's.
                    self.machine.policy_for(bed),
                    now_us,
                    latest=state.latest,
                    status=state.status_at(now_us),
                    last_seen_us=state.last_seen_us,
                    rhythms=tuple(derived.rhythms) if derived else (),
                    quality=dict(derived.quality) if derived else {},
                    news2=scores.news2 if scores else None,
                    deterioration=scores.deterioration if scores else None,
                    verify=engine.signals.verifier(bed),
                    clock_us=state.device_now_us(now_us) - delay_us,
                    unacknowledged=self.machine.unacknowledged(bed),
                    tracked=self.machine.tracked(bed),
                    clock_fault=state.clock_fault_at(now_us),
                    new_bed=state.new,
                    times=DataTimes(
                        status_us=state.status_us or None,
                        last_data_us=state.last_data_us(),
                        rhythm_us=dict(derived.rhythm_us) if derived else {},
                        quality_us=dict(derived.quality_us) if derived else {},
                        news2_us=scores.news2_us if scores else None,
                        clock_fault_us=state.device_now_us(state.clock_fault_us)
                        if state.clock_fault_us
                        else None,
                    ),
                )
            except Exception:
                # One bed's fault leaves that bed's alarms as they were, not every bed's.
                self.metrics.evaluation_errors.inc()
                log.exception("alarm rules failed for %s; its alarms are left as they were", bed)
                continue
            conditions.extend(out.conditions)
            for suppressed in out.suppressed:
                self.metrics.suppressed.labels(kind=suppressed.condition.kind).inc()
        events = self.machine.observe(conditions, now_us)
        events.extend(self.machine.tick(now_us))
        # Recorded and handed on most urgent alarm first: of the alarms that start together,
        # the most severe condition is paged first.
        events = events_most_urgent_first(events, self.machine.policy_for)
        if events:
            self._record(events)
        for bed in chosen:
            due_us = self.machine.due_us(bed)
            if due_us is not None and self._scheduled.get(bed) != due_us:
                self._scheduled[bed] = due_us
                heapq.heappush(self._due, (due_us, bed))
        return events

    def replay_limits(self, bed: BedKey, samples: Iterable[NumericSample]) -> list[str]:
        """Judge a bed taken over from another worker on its recent stored numerics (oldest
        first) with a machine of its own, as the last owner judged them, and take from it the
        limit conditions still under way (``AlarmStateMachine.seed``): a limit exceeded for part
        of its condition delay before the takeover keeps its onset. Returns the kinds seeded."""
        policy = self.machine.policy_for(bed)
        kinds = {c.kind for c in policy.conditions.values() if c.rule == "vital"}
        replayed = AlarmStateMachine(policy)
        latest: dict[str, tuple[float | None, int]] = {}
        by_time: dict[int, list[NumericSample]] = {}
        for sample in samples:
            if sample.bed == bed:
                by_time.setdefault(sample.ts_us, []).append(sample)
        for t_us in sorted(by_time):
            for sample in by_time[t_us]:
                latest[sample.key] = (sample.value, t_us)
            found = vital_conditions(bed, policy, t_us, latest)
            replayed.observe([c for c in found if c.kind in kinds], t_us)
        seeded = self.machine.seed(bed, replayed)
        if seeded:
            log.info("%s taken over with conditions under way: %s", bed, ", ".join(seeded))
        return seeded

    def hand_over(self, bed: BedKey) -> None:
        """Stop judging ``bed`` (its partition moved to another worker): no event, no page."""
        self._dirty.discard(bed)
        self._scheduled.pop(bed, None)
        self._evaluated_us.pop(bed, None)
        gone = self.machine.hand_over(bed)
        if gone:
            log.info("%s handed over with %d live alarms", bed, len(gone))

    def adopt(self, bed: BedKey, trail: Iterable[AlarmEvent]) -> list[Alarm]:
        """Take over ``bed``'s live alarms from the audit trail another worker left (its
        partition moved here; see ``AlarmStateMachine.adopt``): they go on here under their
        own ids, their events join this outbox's trail (the same events, the same ids), and the
        bed is judged at once. Nothing is paged from here: the caller resumes the escalations
        where they stood."""
        trail = [e for e in trail if e.bed == bed]
        adopted = self.machine.adopt(bed, trail)
        if adopted:
            ids = {a.alarm_id for a in adopted}
            self.outbox.record_many([e for e in trail if e.alarm_id in ids])
            self._save()
            self._count_active()
            log.info("%s taken over with %d live alarms", bed, len(adopted))
        self._dirty.add(bed)
        self._wake.set()
        return adopted

    def _take_due(self, now_us: int, every_us: int) -> set[BedKey]:
        """The beds to evaluate now: new data, a pending condition due, or (with ``every_us``)
        not evaluated for that long."""
        beds, self._dirty = self._dirty, set()
        while self._due and self._due[0][0] <= now_us:
            due_us, bed = heapq.heappop(self._due)
            if self._scheduled.get(bed) == due_us:
                del self._scheduled[bed]
            beds.add(bed)
        if every_us:
            last = self._evaluated_us
            beds.update(b for b in self._engine.router.beds if now_us - last.get(b, 0) >= every_us)
        return beds

    def acknowledge(self, alarm_id: str, user: str, now_us: int) -> list[AlarmEvent]:
        events = self.machine.acknowledge(alarm_id, user, now_us)
        self._record(events)
        return events

    def acknowledge_page(self, alarm_id: str, user: str) -> list[AlarmEvent]:
        """A recipient acknowledged a page of the alarm (``Dispatcher.on_acknowledged``)."""
        return self._acknowledge_from("page", alarm_id, user)

    def acknowledge_remote(self, ack: AlarmAck) -> list[AlarmEvent]:
        """The remote ICU acknowledged an alarm of one of its beds over MQTT. The audit trail
        names the user and the site the acknowledgement came from (``user@site``)."""
        return self._acknowledge_from("mqtt", ack.alarm_id, f"{ack.user}@{ack.bed.site}")

    def _acknowledge_from(self, source: str, alarm_id: str, user: str) -> list[AlarmEvent]:
        try:
            events = self.acknowledge(alarm_id, user, self._clock.now_us())
        except KeyError:
            self.metrics.acknowledgements.labels(source=source, outcome="not_live").inc()
            log.warning(
                "acknowledgement (%s) by %s of %s: no such live alarm", source, user, alarm_id
            )
            return []
        except ValueError as exc:
            self.metrics.acknowledgements.labels(source=source, outcome="refused").inc()
            log.error("acknowledgement (%s) by %s of %s refused: %s", source, user, alarm_id, exc)
            return []
        outcome = "accepted" if events else "already"
        self.metrics.acknowledgements.labels(source=source, outcome=outcome).inc()
        log.info("alarm %s acknowledged by %s (%s)", alarm_id, user, source)
        return events

    def command(self, cmd: AlarmCommand) -> tuple[list[AlarmEvent], str | None, str]:
        """A dashboard's change (acknowledge, pause) made at the service's time: (the events,
        None, "") or ([], error, why) with error ``not_live`` (no such live alarm) or
        ``refused`` (the state machine refused it: the clock went back)."""
        now_us = self._clock.now_us()
        target: BedKey | str = cmd.alarm_id if cmd.alarm_id is not None else cmd.bed
        error: str | None
        try:
            if cmd.action == "ack":
                assert cmd.alarm_id is not None  # the wire refuses an ack without one
                events = self.acknowledge(cmd.alarm_id, cmd.user, now_us)
            else:
                events = self.pause_audio(target, cmd.user, now_us, cmd.duration_s)
        except KeyError:
            outcome, error, why = "not_live", "not_live", f"{target} is not a live alarm"
        except ValueError as exc:
            outcome, error, why = "refused", "refused", str(exc)
        else:
            outcome, error, why = ("accepted" if events else "already"), None, ""
        if cmd.action == "ack":
            self.metrics.acknowledgements.labels(source="dashboard", outcome=outcome).inc()
        log.info("alarm %s of %s by %s (dashboard): %s", cmd.action, target, cmd.user, outcome)
        return (events if error is None else []), error, why

    def pause_audio(
        self, target: BedKey | str, user: str, now_us: int, duration_s: float
    ) -> list[AlarmEvent]:
        events = self.machine.pause_audio(target, user, now_us, duration_s)
        self._record(events)
        return events

    def _record(self, events: list[AlarmEvent]) -> None:
        self.outbox.record_many(events)  # durable before anyone is told, in one transaction
        for event in events:
            self.metrics.events.labels(state=event.state.value).inc()
        self._save()
        self._count_active()
        self.recent.extend(events)
        del self.recent[:-RECENT_MAX]
        if self._on_events is not None:
            self._on_events(events)

    def _count_active(self) -> None:
        counts: dict[str, int] = {}
        for alarm in self.machine.alarms():
            if alarm.state != AlarmState.CLEARED:
                counts[alarm.priority.value] = counts.get(alarm.priority.value, 0) + 1
        for priority in ("high", "medium", "low"):
            self.metrics.active.labels(priority=priority).set(counts.get(priority, 0))

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
        """Evaluate beds as their data arrives and their conditions fall due, and every bed at
        least every ``interval_s``, until cancelled."""
        clock = self._clock
        next_sweep = next_burden = clock.monotonic_s()
        every_us = int(interval_s * 1e6)
        while True:
            self._wake.clear()
            started = clock.monotonic_s()
            sweep = started >= next_sweep
            if sweep:
                next_sweep = started + interval_s
            now_us = clock.now_us()
            try:
                beds = self._take_due(now_us, every_us if sweep else 0)
                if beds or sweep:
                    self.evaluate(now_us, beds)
            except Exception:
                log.exception("alarm evaluation failed; retrying at the next data or second")
            if started >= next_burden:
                next_burden = started + burden_every_s
                try:
                    self.update_burden(clock.now_us())
                except Exception:
                    log.exception("alarm burden not updated")
            wait_s = next_sweep - clock.monotonic_s()
            if self._due:
                wait_s = min(wait_s, (self._due[0][0] - clock.now_us()) / 1e6 + 0.001)
            if wait_s > 0 and not self._wake.is_set():
                await clock.wait(self._wake, wait_s)
            else:
                await asyncio.sleep(0)  # let the ingest run between evaluations
