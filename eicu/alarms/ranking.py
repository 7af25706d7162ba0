"""Which alarm comes first: the one order of alarms that every view and sender uses.

The census headline of a bed (and so its colour), the bed view's alarm list, the alarm tone and
the order of the pages sent in one evaluation all take "the" alarm of a bed, or a list of
alarms, in this order (most urgent first):

1. priority: high, then medium, then low (IEC 60601-1-8);
2. unacknowledged (active or latched) before acknowledged: an acknowledged alarm has someone
   on it;
3. physiological before technical;
4. the condition's clinical severity, as the alarm policy lists it (``severity``, see
   :mod:`eicu.alarms.policy`): asystole, ventricular fibrillation, ventricular tachycardia and the
   extreme rates before the other physiological conditions;
5. condition still present before ended (latched);
6. the newest first; then bed and kind, so the order is total.

Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority
from eicu.alarms.policy import PRIORITY_RANK, AlarmPolicy
from eicu.alarms.state import Alarm
from eicu.models import BedKey

PolicyFor = Callable[[BedKey], AlarmPolicy]
_UNACKNOWLEDGED: Final = (AlarmState.ACTIVE, AlarmState.LATCHED)


def alarm_key(alarm: Alarm, policy: AlarmPolicy) -> tuple[int, int, int, int, int, int, str, str]:
    """The sort key of one alarm under its bed's policy: smaller is more urgent."""
    return (
        -PRIORITY_RANK[alarm.priority],
        0 if alarm.state in _UNACKNOWLEDGED else 1,
        int(alarm.category is Category.TECHNICAL),
        policy.severity_rank(alarm.kind),
        0 if alarm.condition_present else 1,
        -alarm.started_us,
        str(alarm.bed),
        alarm.kind,
    )


def most_urgent_first(alarms: Iterable[Alarm], policy_for: PolicyFor) -> list[Alarm]:
    """The alarms (of any beds) most urgent first; ``policy_for(bed)`` gives a bed's policy."""
    return sorted(alarms, key=lambda a: alarm_key(a, policy_for(a.bed)))


def headlines(alarms: Iterable[Alarm], policy_for: PolicyFor) -> dict[BedKey, Alarm]:
    """The most urgent live (not cleared) alarm of each bed that has one."""
    top: dict[BedKey, Alarm] = {}
    for alarm in most_urgent_first(
        (a for a in alarms if a.state is not AlarmState.CLEARED), policy_for
    ):
        top.setdefault(alarm.bed, alarm)
    return top


def events_most_urgent_first(
    events: Iterable[AlarmEvent], policy_for: PolicyFor
) -> list[AlarmEvent]:
    """Events of one evaluation reordered alarm by alarm so that the most urgent alarm's come
    first (its page is the first sent); the events of one alarm keep their order.

    An alarm is ranked by the highest priority among its events here, then as
    :func:`alarm_key` ranks a live alarm (unacknowledged first, category, severity)."""
    events = list(events)
    top: dict[tuple[BedKey, str], Priority] = {}
    stopped: set[tuple[BedKey, str]] = set()
    for e in events:
        key = (e.bed, e.kind)
        if key not in top or PRIORITY_RANK[e.priority] > PRIORITY_RANK[top[key]]:
            top[key] = e.priority
        if e.state in (AlarmState.ACKNOWLEDGED, AlarmState.CLEARED):
            stopped.add(key)
        else:
            stopped.discard(key)

    def rank(e: AlarmEvent) -> tuple[int, int, int, int]:
        key = (e.bed, e.kind)
        return (
            -PRIORITY_RANK[top[key]],
            int(key in stopped),
            int(e.category is Category.TECHNICAL),
            policy_for(e.bed).severity_rank(e.kind),
        )

    return sorted(events, key=rank)  # stable: one alarm's events keep their order
