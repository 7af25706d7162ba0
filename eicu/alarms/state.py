"""The alarm state machine: one alarm at most per (bed, condition kind), driven by conditions,
acknowledgements, audio pauses and time. Deterministic: time comes only from ``now_us``.

Life of an alarm (states from :class:`eicu.alarm_model.AlarmState`):

- A condition reported present starts a pending onset. The alarm starts (ACTIVE) once the
  condition has stayed present for the condition's ``delay_s``; a pending condition reported
  ended is forgotten.
- A condition with a ``sat_seconds`` budget (SpO2) keeps the SatSeconds limit-violation index
  instead: each report's value holds until the next report; below the limit it adds depth x
  seconds, inside the limit it takes distance x seconds back off, never below zero. The alarm
  starts when the index reaches the budget, or at the third limit violation within 60 s.
- A condition reported ended while its value is still inside the clearing hysteresis band does
  not end the alarm. Otherwise the alarm ends: CLEARED, or LATCHED when it latches (the policy
  says so, or its priority is high) and is not yet acknowledged.
- ``acknowledge``: ACTIVE -> ACKNOWLEDGED (the condition is still present), LATCHED -> CLEARED.
  ACKNOWLEDGED -> CLEARED when the condition ends.
- A latched alarm whose condition returns is ACTIVE again (same alarm).
- A condition reported at a higher priority than its alarm's (e.g. SpO2 below 85 %) escalates
  the alarm; an acknowledged alarm that escalates is ACTIVE again and sounds. An alarm's priority
  never falls while it lasts.
- ``pause_audio`` silences sounding alarms (ACTIVE, LATCHED) for at most the policy's
  ``audio_pause_max_s``; when the pause ends and the alarm is still unacknowledged it sounds
  again (an event says so).

Every change yields an :class:`eicu.alarm_model.AlarmEvent` naming who made it and when.

An alarm's id comes from its data: ``{site}/{bed}/{kind}/{onset_us}``, where ``onset_us`` is the
``time_us`` (the bed-clock time of the data) of the condition report that began the episode: the
first present report after the condition was absent (or, for SatSeconds, after its index was
back at zero). The same reports give the same ids in any process and whenever they are judged;
``observe`` of reports already seen changes nothing. An episode that begins after an alarm of the
same bed and kind has ended is a new alarm with a new id: should its onset not be later than the
last alarm's (a device clock set back, a rhythm given back by a more serious one), it takes the
microsecond after.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from eicu.alarm_model import AlarmCondition, AlarmEvent, AlarmState, Category, Priority
from eicu.alarms.policy import PRIORITY_RANK, AlarmPolicy, ConditionPolicy, parse_policy
from eicu.models import BedKey

SNAPSHOT_FORMAT: Final = 1
ENGINE: Final = "engine"
# Part of the SatSeconds method: three or more limit violations within 60 s start the alarm even
# when the index has not reached its budget (Nellcor OxiMax N-600x operator's manual, "Using
# SatSeconds"; GE CARESCAPE ONE user manual, "Nellcor OxiMax SatSeconds alarm management").
SAT_SECONDS_REPEATS: Final = 3
SAT_SECONDS_REPEAT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Alarm:
    """A live alarm (not yet cleared), as seen from outside."""

    alarm_id: str
    bed: BedKey
    kind: str
    category: Category
    priority: Priority
    state: AlarmState
    started_us: int
    condition_present: bool
    value: float | None
    detail: str
    acknowledged_by: str | None
    acknowledged_us: int | None
    audio_paused_until_us: int | None

    def sounding(self, now_us: int) -> bool:
        """Whether the alarm signal is audible now: unacknowledged and not paused."""
        if self.state not in (AlarmState.ACTIVE, AlarmState.LATCHED):
            return False
        return self.audio_paused_until_us is None or now_us >= self.audio_paused_until_us


@dataclass(slots=True)
class _Alarm:
    alarm_id: str
    category: Category
    priority: Priority
    state: AlarmState
    started_us: int
    condition_present: bool
    value: float | None
    detail: str
    acknowledged_by: str | None = None
    acknowledged_us: int | None = None
    audio_paused_until_us: int | None = None


@dataclass(slots=True)
class _Track:
    """One (bed, kind): the pending onset and, once started, the alarm."""

    onset_us: int | None = None  # first report of the current run of present reports
    episode_us: int | None = None  # data time of the report that began the episode (the id)
    last_us: int | None = None  # the latest report (sat_seconds: present or not)
    last_value: float | None = None
    area: float = 0.0  # sat_seconds: the limit-violation index, in unit·s
    violations: list[int] = field(default_factory=list)  # sat_seconds: starts of violations
    alarm: _Alarm | None = None

    def idle(self) -> bool:
        return (
            self.alarm is None
            and self.onset_us is None
            and self.area == 0.0
            and not self.violations
        )


class _TrackTable(dict[tuple[BedKey, str], _Track]):
    """The tracks by (bed, kind), with the kinds each bed has a track of kept beside them: the
    alarm service asks once a second per bed which of its conditions are under way, and a bed
    has tracks of few of its policy's kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[BedKey, set[str]] = {}

    def __setitem__(self, key: tuple[BedKey, str], track: _Track) -> None:
        super().__setitem__(key, track)
        self.kinds.setdefault(key[0], set()).add(key[1])

    def __delitem__(self, key: tuple[BedKey, str]) -> None:
        super().__delitem__(key)
        self._unindex(key)

    def pop(self, key: tuple[BedKey, str], *default: Any) -> Any:
        if key in self:
            self._unindex(key)
        return super().pop(key, *default)

    def _unindex(self, key: tuple[BedKey, str]) -> None:
        kinds = self.kinds.get(key[0])
        if kinds is not None:
            kinds.discard(key[1])
            if not kinds:
                del self.kinds[key[0]]

    def of(self, bed: BedKey) -> Iterator[tuple[str, _Track]]:
        """``bed``'s tracks, by kind."""
        for kind in tuple(self.kinds.get(bed, ())):
            yield kind, self[(bed, kind)]


def alarm_id(bed: BedKey, kind: str, onset_us: int) -> str:
    """The id of the alarm of ``kind`` on ``bed`` whose episode began with data at ``onset_us``
    (bed clock): ``{site}/{bed}/{kind}/{onset_us}``."""
    return f"{bed}/{kind}/{onset_us}"


class AlarmStateMachine:
    """All alarms of all beds. ``policy`` applies to every bed without one of its own."""

    def __init__(
        self, policy: AlarmPolicy, bed_policies: Mapping[BedKey, AlarmPolicy] | None = None
    ) -> None:
        self._policy = policy
        self._bed_policies: dict[BedKey, AlarmPolicy] = dict(bed_policies or {})
        self._tracks = _TrackTable()
        # The onset of the latest alarm of each (bed, kind), so that a new episode's id is new.
        self._last_onset: dict[tuple[BedKey, str], int] = {}
        self._now_us: int | None = None
        # No audio pause ends before this (None: no pause), so a tick is cheap when none is due.
        self._pause_due_us: int | None = None

    # -- policy

    def policy_for(self, bed: BedKey) -> AlarmPolicy:
        return self._bed_policies.get(bed, self._policy)

    @property
    def default_policy(self) -> AlarmPolicy:
        """The policy of every bed without one of its own."""
        return self._policy

    def set_default_policy(self, policy: AlarmPolicy) -> None:
        """Use ``policy`` from now on for every bed without one of its own (a restored state
        under the policy configured now)."""
        self._policy = policy

    def set_policy(self, bed: BedKey, policy: AlarmPolicy) -> None:
        """Use ``policy`` for ``bed`` from now on (see eicu.alarms.policy.override)."""
        self._bed_policies[bed] = policy

    def hand_over(self, bed: BedKey) -> list[Alarm]:
        """Stop tracking ``bed`` without an event: another process judges it from now on (its
        partition moved). Returns the alarms it had, for the log; their history stays in the
        audit trail, and the new owner names the same condition the same (deterministic ids)."""
        gone = [
            self._view(b, kind, t.alarm)
            for (b, kind), t in self._tracks.items()
            if b == bed and t.alarm is not None
        ]
        for key in [key for key in self._tracks if key[0] == bed]:
            del self._tracks[key]
        for key in [key for key in self._last_onset if key[0] == bed]:
            del self._last_onset[key]
        self._bed_policies.pop(bed, None)
        return gone

    def seed(self, bed: BedKey, replayed: AlarmStateMachine) -> list[str]:
        """Take from ``replayed`` (a machine that judged the bed's recent stored data, as the
        last owner of the bed did) the conditions of ``bed`` still under way there, for the
        kinds this machine tracks nothing of: their onset, episode and limit-violation index,
        as pending conditions. A condition still present then starts its alarm here once its
        delay has run from its data's onset, named after it, rather than its delay starting
        again. Conditions that ended in the replay are not taken. Returns the kinds seeded."""
        seeded = []
        for (b, kind), t in replayed._tracks.items():
            if b != bed or (b, kind) in self._tracks or t.idle():
                continue
            if t.alarm is not None and not t.alarm.condition_present:
                continue
            onset_us = t.onset_us
            if onset_us is None and t.alarm is not None:
                onset_us = t.alarm.started_us
            self._tracks[(b, kind)] = _Track(
                onset_us=onset_us,
                episode_us=t.episode_us,
                last_us=t.last_us,
                last_value=t.last_value,
                area=t.area,
                violations=list(t.violations),
            )
            seeded.append(kind)
        return seeded

    def adopt(self, bed: BedKey, trail: Iterable[AlarmEvent]) -> list[Alarm]:
        """Take over ``bed``'s live alarms from its audit trail (the events another process
        recorded before the bed's partition moved here): each alarm whose last event is not
        ``cleared`` goes on here under its own id, in the state, priority, acknowledgement and
        audio pause that event gives, so a condition still present raises nothing new and one
        that ends latches or clears that alarm. A kind this machine already tracks for the bed
        keeps its own track. The events carry no value or detail: the next report brings them.
        Events of other beds are ignored. Returns the alarms adopted."""
        latest: dict[str, AlarmEvent] = {}
        first_us: dict[str, int] = {}
        for event in sorted((e for e in trail if e.bed == bed), key=lambda e: e.time_us):
            latest[event.alarm_id] = event
            first_us.setdefault(event.alarm_id, event.time_us)
        adopted = []
        for aid, event in latest.items():
            try:
                _, kind, onset_us = self._find(aid)
            except KeyError:
                continue
            last_onset = self._last_onset.get((bed, kind))
            if last_onset is None or onset_us > last_onset:
                self._last_onset[(bed, kind)] = onset_us
            if event.state is AlarmState.CLEARED or (bed, kind) in self._tracks:
                continue
            acknowledged = event.state is AlarmState.ACKNOWLEDGED
            a = _Alarm(
                alarm_id=aid,
                category=event.category,
                priority=event.priority,
                state=event.state,
                started_us=first_us[aid],
                condition_present=event.state is not AlarmState.LATCHED,
                value=None,
                detail="",
                acknowledged_by=event.actor if acknowledged else None,
                acknowledged_us=event.time_us if acknowledged else None,
                audio_paused_until_us=event.audio_paused_until_us,
            )
            self._tracks[(bed, kind)] = _Track(episode_us=onset_us, alarm=a)
            until_us = a.audio_paused_until_us
            due_us = self._pause_due_us
            if until_us is not None and (due_us is None or until_us < due_us):
                self._pause_due_us = until_us
            adopted.append(self._view(bed, kind, a))
        return adopted

    # -- queries

    def alarms(self) -> list[Alarm]:
        """Every live alarm, in the order they were first tracked."""
        return [
            self._view(bed, kind, t.alarm)
            for (bed, kind), t in self._tracks.items()
            if t.alarm is not None
        ]

    def unacknowledged(self, bed: BedKey) -> set[str]:
        """The condition kinds of ``bed`` whose alarm is active or latched."""
        live = (AlarmState.ACTIVE, AlarmState.LATCHED)
        conditions = self.policy_for(bed).conditions
        return {
            kind
            for kind, t in self._tracks.of(bed)
            if t.alarm is not None and t.alarm.state in live and kind in conditions
        }

    def tracked(self, bed: BedKey) -> frozenset[str]:
        """The condition kinds of ``bed`` with anything under way: an alarm, a pending onset,
        a limit-violation index. A condition that is not present changes nothing for any other
        kind (:meth:`observe` passes it over)."""
        return frozenset(self._tracks.kinds.get(bed, ()))

    def due_us(self, bed: BedKey) -> int | None:
        """When the earliest pending condition of ``bed`` will have lasted its condition delay
        (None when none is pending): an evaluation of the bed at that time can start its alarm.
        SatSeconds conditions are left out: their index grows only with reports."""
        due: int | None = None
        conditions = self.policy_for(bed).conditions
        for kind, t in self._tracks.of(bed):
            cp = conditions.get(kind)
            if (
                cp is None
                or t.alarm is not None
                or t.onset_us is None
                or cp.sat_seconds is not None
            ):
                continue
            at_us = t.onset_us + math.ceil(cp.delay_s * 1e6)
            due = at_us if due is None else min(due, at_us)
        return due

    def alarm(self, alarm_id: str) -> Alarm:
        """The live alarm ``alarm_id``; KeyError when it is not live."""
        bed, kind, _ = self._find(alarm_id)
        track = self._tracks.get((bed, kind))
        if track is None or track.alarm is None or track.alarm.alarm_id != alarm_id:
            raise KeyError(alarm_id)
        return self._view(bed, kind, track.alarm)

    # -- inputs

    def observe(self, conditions: Iterable[AlarmCondition], now_us: int) -> list[AlarmEvent]:
        """Apply the rules' conditions seen at ``now_us``; return the events, in order.

        Nothing changes when a condition is not in its bed's policy (ValueError).
        """
        checked = []
        policies: dict[BedKey, Mapping[str, ConditionPolicy]] = {}
        for c in conditions:
            of_bed = policies.get(c.bed)
            if of_bed is None:
                of_bed = policies[c.bed] = self.policy_for(c.bed).conditions
            cp = of_bed.get(c.kind)
            if cp is None:
                raise ValueError(f"condition {c.kind!r} of bed {c.bed} is not in its policy")
            checked.append((c, cp))
        events = self.tick(now_us)
        tracks = self._tracks
        for c, cp in checked:
            key = (c.bed, c.kind)
            track = tracks.get(key)
            if track is None:
                if not c.present:
                    continue
                track = tracks[key] = _Track()
            if c.present:
                events.extend(self._present(c, cp, track, now_us))
            else:
                events.extend(self._ended(c, cp, track, now_us))
            if track.idle():
                self._tracks.pop(key, None)
        return events

    def tick(self, now_us: int) -> list[AlarmEvent]:
        """Advance time: audio pauses that end make unacknowledged alarms sound again."""
        self._check_time(now_us)
        self._now_us = now_us
        events: list[AlarmEvent] = []
        if self._pause_due_us is None or now_us < self._pause_due_us:
            return events
        next_due: int | None = None
        for (bed, kind), t in self._tracks.items():
            a = t.alarm
            if a is None or a.audio_paused_until_us is None:
                continue
            if now_us < a.audio_paused_until_us:
                until_us = a.audio_paused_until_us
                next_due = until_us if next_due is None else min(next_due, until_us)
                continue
            a.audio_paused_until_us = None
            if a.state in (AlarmState.ACTIVE, AlarmState.LATCHED):
                events.append(self._event(bed, kind, a, now_us, ENGINE, "audio pause ended"))
        self._pause_due_us = next_due
        return events

    def acknowledge(self, alarm_id: str, user: str, now_us: int) -> list[AlarmEvent]:
        """A clinician acknowledges a live alarm. KeyError when ``alarm_id`` is not live."""
        if not user:
            raise ValueError("an acknowledgement needs the user who makes it")
        self._check_time(now_us)
        bed, kind, _ = self._find(alarm_id)
        track = self._tracks.get((bed, kind))
        a = None if track is None else track.alarm
        if track is None or a is None or a.alarm_id != alarm_id:
            raise KeyError(alarm_id)
        events = self.tick(now_us)
        if a.state is AlarmState.ACKNOWLEDGED:
            return events
        a.audio_paused_until_us = None
        if a.state is AlarmState.LATCHED:
            a.state = AlarmState.CLEARED
            events.append(
                self._event(bed, kind, a, now_us, user, "acknowledged after the condition ended")
            )
            self._forget(bed, kind, track)
            return events
        a.state = AlarmState.ACKNOWLEDGED
        a.acknowledged_by = user
        a.acknowledged_us = now_us
        events.append(self._event(bed, kind, a, now_us, user, "acknowledged"))
        return events

    def pause_audio(
        self, target: BedKey | str, user: str, now_us: int, duration_s: float
    ) -> list[AlarmEvent]:
        """Silence the sounding alarms of a bed, or one alarm by id, for ``duration_s``.

        The pause is cut to the bed policy's ``audio_pause_max_s``. Alarms that start later are
        not paused. KeyError when an alarm id is not live.
        """
        if not user:
            raise ValueError("an audio pause needs the user who makes it")
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"duration_s must be a finite number > 0, got {duration_s}")
        self._check_time(now_us)
        if isinstance(target, BedKey):
            bed = target
            chosen = [
                (kind, t.alarm)
                for (b, kind), t in self._tracks.items()
                if b == bed and t.alarm is not None
            ]
        else:
            bed, kind, _ = self._find(target)
            track = self._tracks.get((bed, kind))
            if track is None or track.alarm is None or track.alarm.alarm_id != target:
                raise KeyError(target)
            chosen = [(kind, track.alarm)]
        events = self.tick(now_us)
        max_s = self.policy_for(bed).audio_pause_max_s
        pause_s = min(duration_s, max_s)
        reason = f"audio paused for {pause_s:g} s"
        if pause_s < duration_s:
            reason += f" (asked {duration_s:g} s, limit {max_s:g} s)"
        for kind, a in chosen:
            if a.state not in (AlarmState.ACTIVE, AlarmState.LATCHED):
                continue
            a.audio_paused_until_us = until_us = now_us + math.floor(pause_s * 1e6)
            if self._pause_due_us is None or until_us < self._pause_due_us:
                self._pause_due_us = until_us
            events.append(self._event(bed, kind, a, now_us, user, reason))
        return events

    # -- persistence

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain JSON-able data (see :meth:`restore`)."""
        tracks = []
        for (bed, kind), t in self._tracks.items():
            a = t.alarm
            tracks.append(
                {
                    "bed": str(bed),
                    "kind": kind,
                    "onset_us": t.onset_us,
                    "episode_us": t.episode_us,
                    "last_us": t.last_us,
                    "last_value": t.last_value,
                    "area": t.area,
                    "violations": list(t.violations),
                    "alarm": None
                    if a is None
                    else {
                        "alarm_id": a.alarm_id,
                        "category": a.category.value,
                        "priority": a.priority.value,
                        "state": a.state.value,
                        "started_us": a.started_us,
                        "condition_present": a.condition_present,
                        "value": a.value,
                        "detail": a.detail,
                        "acknowledged_by": a.acknowledged_by,
                        "acknowledged_us": a.acknowledged_us,
                        "audio_paused_until_us": a.audio_paused_until_us,
                    },
                }
            )
        return {
            "format": SNAPSHOT_FORMAT,
            "now_us": self._now_us,
            "policy": self._policy.to_dict(),
            "bed_policies": [
                {"bed": str(bed), "policy": p.to_dict()} for bed, p in self._bed_policies.items()
            ],
            "tracks": tracks,
            "last_onsets": [
                {"bed": str(bed), "kind": kind, "onset_us": onset_us}
                for (bed, kind), onset_us in self._last_onset.items()
            ],
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> AlarmStateMachine:
        """The state machine a :meth:`snapshot` was taken of, ready to continue."""
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown alarm snapshot format {data.get('format')!r}")
        machine = cls(
            parse_policy(data["policy"]),
            {BedKey.parse(e["bed"]): parse_policy(e["policy"]) for e in data["bed_policies"]},
        )
        machine._now_us = data["now_us"]
        for e in data.get("last_onsets", ()):
            machine._last_onset[(BedKey.parse(e["bed"]), e["kind"])] = e["onset_us"]
        for e in data["tracks"]:
            raw = e["alarm"]
            alarm = None
            if raw is not None:
                alarm = _Alarm(
                    alarm_id=raw["alarm_id"],
                    category=Category(raw["category"]),
                    priority=Priority(raw["priority"]),
                    state=AlarmState(raw["state"]),
                    started_us=raw["started_us"],
                    condition_present=raw["condition_present"],
                    value=raw["value"],
                    detail=raw["detail"],
                    acknowledged_by=raw["acknowledged_by"],
                    acknowledged_us=raw["acknowledged_us"],
                    audio_paused_until_us=raw["audio_paused_until_us"],
                )
            machine._tracks[(BedKey.parse(e["bed"]), e["kind"])] = _Track(
                onset_us=e["onset_us"],
                episode_us=e.get("episode_us", e["onset_us"]),
                last_us=e["last_us"],
                last_value=e["last_value"],
                area=e["area"],
                violations=list(e["violations"]),
                alarm=alarm,
            )
            if alarm is not None and alarm.audio_paused_until_us is not None:
                until_us = alarm.audio_paused_until_us
                if machine._pause_due_us is None or until_us < machine._pause_due_us:
                    machine._pause_due_us = until_us
        return machine

    # -- internals

    def _present(
        self, c: AlarmCondition, cp: ConditionPolicy, t: _Track, now_us: int
    ) -> list[AlarmEvent]:
        a = t.alarm
        if a is None:
            if t.episode_us is None:
                t.episode_us = c.time_us
            if cp.sat_seconds is not None:
                self._sat_seconds(cp, t, now_us, c.value, present=True)
            elif t.onset_us is None:
                t.onset_us = now_us
            if t.onset_us is None:  # for mypy: both branches above set it
                raise RuntimeError("pending condition without onset")
            if cp.sat_seconds is not None:
                due = t.area >= cp.sat_seconds or len(t.violations) >= SAT_SECONDS_REPEATS
                why = (
                    f"{len(t.violations)} limit violations within {SAT_SECONDS_REPEAT_S:g} s"
                    if t.area < cp.sat_seconds
                    else f"{t.area:.1f} %·s below the limit (budget {cp.sat_seconds:g})"
                )
            else:
                due = now_us - t.onset_us >= cp.delay_s * 1e6
                why = f"present for {(now_us - t.onset_us) / 1e6:g} s"
            if not due:
                return []
            onset_us = c.time_us if t.episode_us is None else t.episode_us
            last_us = self._last_onset.get((c.bed, c.kind))
            if last_us is not None and onset_us <= last_us:
                onset_us = t.episode_us = last_us + 1
            self._last_onset[(c.bed, c.kind)] = onset_us
            t.alarm = a = _Alarm(
                alarm_id=alarm_id(c.bed, c.kind, onset_us),
                category=c.category,
                priority=c.priority,
                state=AlarmState.ACTIVE,
                started_us=now_us,
                condition_present=True,
                value=c.value,
                detail=c.detail,
            )
            return [self._event(c.bed, c.kind, a, now_us, ENGINE, f"started: {why}")]
        a.condition_present = True
        a.value, a.detail = c.value, c.detail
        reasons = []
        if PRIORITY_RANK[c.priority] > PRIORITY_RANK[a.priority]:
            a.priority = c.priority
            reasons.append(f"escalated to {c.priority}")
            if a.state is AlarmState.ACKNOWLEDGED:
                a.state = AlarmState.ACTIVE
                a.acknowledged_by = a.acknowledged_us = None
            a.audio_paused_until_us = None
        if a.state is AlarmState.LATCHED:
            a.state = AlarmState.ACTIVE
            reasons.append("condition present again")
        if not reasons:
            return []
        return [self._event(c.bed, c.kind, a, now_us, ENGINE, "; ".join(reasons))]

    def _ended(
        self, c: AlarmCondition, cp: ConditionPolicy, t: _Track, now_us: int
    ) -> list[AlarmEvent]:
        a = t.alarm
        if a is None:
            if cp.sat_seconds is not None and c.value is not None:
                self._sat_seconds(cp, t, now_us, c.value, present=False)
                if t.area == 0.0 and not t.violations:
                    t.episode_us = None
            else:
                t.onset_us = t.episode_us = t.last_us = t.last_value = None
                t.area = 0.0
                t.violations = []
            return []
        if not a.condition_present:
            return []
        if c.value is not None and cp.in_hysteresis(c.value):
            return []  # back inside the limit, not yet far enough to clear
        a.condition_present = False
        a.value = c.value
        latches = cp.latching or a.priority is Priority.HIGH
        if a.state is AlarmState.ACTIVE and latches:
            a.state = AlarmState.LATCHED
            return [self._event(c.bed, c.kind, a, now_us, ENGINE, "condition ended; latched")]
        a.state = AlarmState.CLEARED
        event = self._event(c.bed, c.kind, a, now_us, ENGINE, "condition ended")
        self._forget(c.bed, c.kind, t)
        return [event]

    def _check_time(self, now_us: int) -> None:
        if self._now_us is not None and now_us < self._now_us:
            raise ValueError(f"time went back: now_us {now_us} < {self._now_us}")

    def _forget(self, bed: BedKey, kind: str, t: _Track) -> None:
        t.alarm = None
        t.onset_us = t.episode_us = t.last_us = t.last_value = None
        t.area = 0.0
        t.violations = []
        self._tracks.pop((bed, kind), None)

    @staticmethod
    def _sat_seconds(
        cp: ConditionPolicy, t: _Track, now_us: int, value: float | None, *, present: bool
    ) -> None:
        """Update the SatSeconds limit-violation index with one report.

        The previous report's value is held until this one: below the limit it adds its depth
        times the seconds, inside the limit it takes its distance from the limit times the
        seconds back off, down to zero. A present report after one that was not starts a new
        violation; violations older than the repeat window are dropped.
        """
        limit = cp.limit if cp.limit is not None else 0.0
        if t.last_us is not None and t.last_value is not None:
            t.area = max(0.0, t.area + (limit - t.last_value) * (now_us - t.last_us) / 1e6)
        t.violations = [v for v in t.violations if now_us - v <= SAT_SECONDS_REPEAT_S * 1e6]
        if present and t.onset_us is None:
            t.onset_us = now_us
            t.violations.append(now_us)
        elif not present:
            t.onset_us = None
        t.last_us, t.last_value = now_us, value

    def _find(self, alarm_id: str) -> tuple[BedKey, str, int]:
        parts = alarm_id.split("/")
        if len(parts) != 4:
            raise KeyError(alarm_id)
        try:
            return BedKey(parts[0], parts[1]), parts[2], int(parts[3])
        except ValueError:
            raise KeyError(alarm_id) from None

    @staticmethod
    def _view(bed: BedKey, kind: str, a: _Alarm) -> Alarm:
        return Alarm(
            alarm_id=a.alarm_id,
            bed=bed,
            kind=kind,
            category=a.category,
            priority=a.priority,
            state=a.state,
            started_us=a.started_us,
            condition_present=a.condition_present,
            value=a.value,
            detail=a.detail,
            acknowledged_by=a.acknowledged_by,
            acknowledged_us=a.acknowledged_us,
            audio_paused_until_us=a.audio_paused_until_us,
        )

    @staticmethod
    def _event(
        bed: BedKey, kind: str, a: _Alarm, now_us: int, actor: str, reason: str
    ) -> AlarmEvent:
        return AlarmEvent(
            alarm_id=a.alarm_id,
            bed=bed,
            kind=kind,
            priority=a.priority,
            category=a.category,
            state=a.state,
            time_us=now_us,
            actor=actor,
            reason=reason,
            audio_paused_until_us=a.audio_paused_until_us,
        )
