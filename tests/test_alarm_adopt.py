"""A bed taken over by another process (its partition moved): the new owner adopts the bed's
live alarms from the audit trail, so an alarm goes on under its own id, is never raised a second
time for the same episode, and ends (latched or cleared, as its policy says) when its condition
ends: no missed, no repeated and no orphaned alarm across a takeover."""

from __future__ import annotations

from dataclasses import replace

from eicu.alarm_model import AlarmEvent, AlarmState, Priority
from eicu.alarms.state import Alarm, AlarmStateMachine
from tests.test_alarm_state import BED, BED2, POLICY, T0, S, rhythm, spo2


def _unvalued(alarms: list[Alarm]) -> list[Alarm]:
    """The alarms without the value and detail of their latest report (the audit trail does
    not carry them; the new owner's next report does)."""
    return [replace(a, value=None, detail="") for a in alarms]


def _trail(m: AlarmStateMachine, steps: list[tuple[list, int]]) -> list[AlarmEvent]:
    events: list[AlarmEvent] = []
    for conditions, at_us in steps:
        events += m.observe(conditions, at_us)
    return events


def test_an_active_alarm_goes_on_under_its_id_and_ends_with_its_condition() -> None:
    old = AlarmStateMachine(POLICY)
    trail = _trail(old, [(spo2(88, T0 + i * S), T0 + i * S) for i in range(20)])
    (started,) = trail
    new = AlarmStateMachine(POLICY)
    (adopted,) = new.adopt(BED, trail)
    assert _unvalued([adopted]) == _unvalued([old.alarm(started.alarm_id)])
    assert new.alarms() == _unvalued(old.alarms())
    # Still present: the same alarm, no new event (no second page, no new id).
    assert new.observe(spo2(87, T0 + 30 * S), T0 + 30 * S) == []
    # Ended (outside the hysteresis band): the adopted alarm clears, under its own id.
    (end,) = new.observe(spo2(96, T0 + 31 * S), T0 + 31 * S)
    assert (end.alarm_id, end.state) == (started.alarm_id, AlarmState.CLEARED)
    assert new.alarms() == []


def test_a_lethal_rhythm_alarm_adopted_latches_and_needs_an_acknowledgement() -> None:
    old = AlarmStateMachine(POLICY)
    trail = _trail(old, [(rhythm("VTACH", True, T0), T0)])
    new = AlarmStateMachine(POLICY)
    new.adopt(BED, trail)
    (latched,) = new.observe(rhythm("VTACH", False, T0 + 5 * S), T0 + 5 * S)
    assert (latched.state, latched.priority) == (AlarmState.LATCHED, Priority.HIGH)
    assert latched.alarm_id == trail[0].alarm_id
    (back,) = new.observe(rhythm("VTACH", True, T0 + 6 * S), T0 + 6 * S)
    assert (back.state, back.alarm_id) == (AlarmState.ACTIVE, trail[0].alarm_id)
    new.observe(rhythm("VTACH", False, T0 + 7 * S), T0 + 7 * S)
    (cleared,) = new.acknowledge(trail[0].alarm_id, "dr.li", T0 + 8 * S)
    assert cleared.state is AlarmState.CLEARED


def test_acknowledgement_latching_and_audio_pause_are_kept() -> None:
    old = AlarmStateMachine(POLICY)
    trail = _trail(old, [(spo2(88, T0 + i * S), T0 + i * S) for i in range(16)])
    trail += old.acknowledge(trail[0].alarm_id, "nurse.wu", T0 + 17 * S)
    trail += _trail(old, [(rhythm("VTACH", True, T0 + 18 * S), T0 + 18 * S)])
    trail += old.pause_audio(BED, "nurse.wu", T0 + 19 * S, 60)
    trail += _trail(old, [(rhythm("VTACH", False, T0 + 20 * S), T0 + 20 * S)])
    new = AlarmStateMachine(POLICY)
    new.adopt(BED, trail)
    assert new.alarms() == _unvalued(old.alarms())
    spo2_alarm, vtach = sorted(new.alarms(), key=lambda a: a.kind)
    assert (spo2_alarm.state, spo2_alarm.acknowledged_by) == (AlarmState.ACKNOWLEDGED, "nurse.wu")
    assert vtach.state is AlarmState.LATCHED and not vtach.sounding(T0 + 21 * S)
    # The pause ends when it would have: the latched alarm sounds again, from the new owner.
    (again,) = new.tick(T0 + 79 * S)
    assert again.alarm_id == vtach.alarm_id and new.alarm(vtach.alarm_id).sounding(T0 + 79 * S)


def test_alarms_over_are_not_adopted_and_a_new_episode_gets_a_new_id() -> None:
    old = AlarmStateMachine(POLICY)
    trail = _trail(old, [(rhythm("AFIB", True, T0), T0), (rhythm("AFIB", False, T0 + S), T0 + S)])
    assert [e.state for e in trail] == [AlarmState.ACTIVE, AlarmState.CLEARED]
    new = AlarmStateMachine(POLICY)
    assert new.adopt(BED, trail) == [] and new.alarms() == []
    # Events of another bed, and events given out of order, change nothing of this bed.
    other = AlarmStateMachine(POLICY)
    (elsewhere,) = other.observe(rhythm("VTACH", True, T0, bed=BED2), T0)
    assert new.adopt(BED, [*reversed(trail), elsewhere]) == []
    (again,) = new.observe(rhythm("AFIB", True, T0 + 2 * S), T0 + 2 * S)
    assert again.alarm_id not in {e.alarm_id for e in trail}


def test_what_the_new_owner_already_tracks_wins() -> None:
    old = AlarmStateMachine(POLICY)
    trail = _trail(old, [(rhythm("VTACH", True, T0), T0)])
    new = AlarmStateMachine(POLICY)
    (own,) = new.observe(rhythm("VTACH", True, T0 + S), T0 + S)
    assert new.adopt(BED, trail) == []
    assert [a.alarm_id for a in new.alarms()] == [own.alarm_id]


def test_adopt_then_continue_equals_continue() -> None:
    """With no condition pending at the takeover, the new owner judges what follows exactly as
    the old one would have: the same events, the same ids."""
    steps = [(spo2(88, T0 + i * S), T0 + i * S) for i in range(16)]
    steps += [(rhythm("VTACH", True, T0 + 16 * S), T0 + 16 * S)]
    steps += [(rhythm("VTACH", False, T0 + 17 * S), T0 + 17 * S)]
    later = [(spo2(84, T0 + 20 * S), T0 + 20 * S), (spo2(97, T0 + 21 * S), T0 + 21 * S)]
    later += [(rhythm("VTACH", True, T0 + 22 * S), T0 + 22 * S)]
    later += [(rhythm("VTACH", False, T0 + 23 * S), T0 + 23 * S)]
    old = AlarmStateMachine(POLICY)
    trail = _trail(old, steps)
    new = AlarmStateMachine(POLICY)
    new.adopt(BED, trail)
    assert _trail(new, later) == _trail(old, later)
    assert new.alarms() == old.alarms()
