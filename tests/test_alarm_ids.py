"""Alarm ids come from the data: ``{site}/{bed}/{kind}/{onset_us}``, the onset being the bed-clock
time of the data that began the condition's episode. The same data gives the same ids in any
state machine and whenever it is judged; observing it again changes nothing; a new episode is a
new alarm with a new id."""

from __future__ import annotations

import json

from eicu.alarm_model import AlarmCondition, AlarmEvent, AlarmState
from eicu.alarms.policy import load_policy
from eicu.alarms.rules import DataTimes, RuleOutput, evaluate_bed, vital_conditions
from eicu.alarms.state import AlarmStateMachine, alarm_id
from eicu.models import BedKey

BED = BedKey("site-a", "bed-1")
POLICY = load_policy()
S = 1_000_000
T0 = 1_700_000_000 * S  # the bed's clock
HR_DELAY_S = 10  # HR_HIGH's condition delay in the default policy


def hr(value: float, ts_us: int, now_us: int) -> list[AlarmCondition]:
    """The HR_HIGH condition the rules report at ``now_us`` for an HR value sent at ``ts_us``."""
    got = vital_conditions(BED, POLICY, now_us, {"HR": (value, ts_us)})
    return [c for c in got if c.kind == "HR_HIGH"]


def ids(events: list[AlarmEvent]) -> list[str]:
    return sorted({e.alarm_id for e in events})


def judge_hr(values: list[tuple[int, float]], lag_us: int, again: int = 0) -> list[AlarmEvent]:
    """A fresh machine judging HR samples (bed time, value), each ``lag_us`` after it was taken
    (a process behind its input) and ``again`` more times before the next sample (a process
    that judges its beds more often)."""
    m = AlarmStateMachine(POLICY)
    events: list[AlarmEvent] = []
    for ts_us, value in values:
        for k in range(again + 1):
            now_us = ts_us + lag_us + k * 1_000_000 // (again + 2)
            events += m.observe(hr(value, ts_us, now_us), now_us)
    return events


def test_the_same_data_gives_the_same_alarm_ids_whenever_it_is_judged() -> None:
    # 120/min for 5 s, 140/min for 30 s, 110/min for 10 s, 150/min for 30 s: two episodes.
    values = [(T0 + i * S, 120.0) for i in range(5)]
    values += [(T0 + (5 + i) * S, 140.0) for i in range(30)]
    values += [(T0 + (35 + i) * S, 110.0) for i in range(10)]
    values += [(T0 + (45 + i) * S, 150.0) for i in range(30)]
    prompt = judge_hr(values, lag_us=0)
    late = judge_hr(values, lag_us=7 * S + 123)  # another process, 7 s behind
    often = judge_hr(values, lag_us=2 * S, again=3)
    first, second = alarm_id(BED, "HR_HIGH", T0 + 5 * S), alarm_id(BED, "HR_HIGH", T0 + 45 * S)
    assert ids(prompt) == ids(late) == ids(often) == sorted([first, second])
    assert first == f"site-a/bed-1/HR_HIGH/{T0 + 5 * S}"
    # The alarms started at different wall times, under the same ids.
    started = [
        next(e.time_us for e in events if e.state is AlarmState.ACTIVE) for events in (prompt, late)
    ]
    assert started[0] != started[1]


def test_observing_the_same_data_again_changes_nothing() -> None:
    m = AlarmStateMachine(POLICY)
    for i in range(HR_DELAY_S + 1):
        m.observe(hr(140, T0 + i * S, T0 + i * S), T0 + i * S)
    (alarm,) = m.alarms()
    assert alarm.alarm_id == alarm_id(BED, "HR_HIGH", T0)
    before = m.snapshot()
    last = hr(140, T0 + HR_DELAY_S * S, T0 + HR_DELAY_S * S)
    assert m.observe(last, T0 + HR_DELAY_S * S) == []  # the same report at the same time
    assert m.observe(last, T0 + 20 * S) == []  # and later
    assert m.observe(last + last, T0 + 20 * S) == []  # twice in one call
    assert [a.alarm_id for a in m.alarms()] == [alarm.alarm_id]
    # A machine restored from its snapshot (a process taking over) sees the same.
    restored = AlarmStateMachine.restore(json.loads(json.dumps(before)))
    assert restored.observe(last, T0 + 20 * S) == []
    assert [a.alarm_id for a in restored.alarms()] == [alarm.alarm_id]


def test_a_new_episode_is_a_new_alarm_with_a_new_id() -> None:
    m = AlarmStateMachine(POLICY)
    started: list[str] = []
    t = T0
    for episode in range(2):
        for _ in range(HR_DELAY_S + 1):
            started += [e.alarm_id for e in m.observe(hr(140, t, t), t)]
            t += S
        cleared = m.observe(hr(80, t, t), t)  # medium: not latching, cleared at once
        assert [e.state for e in cleared] == [AlarmState.CLEARED], episode
        t += S
    assert len(started) == 2 and started[0] != started[1]
    assert started[1] == alarm_id(BED, "HR_HIGH", T0 + (HR_DELAY_S + 2) * S)


def test_an_episode_that_begins_with_the_data_of_an_ended_alarm_gets_a_new_id() -> None:
    """A rhythm flag given way to a more serious one and back keeps its first sample: when its
    alarm was acknowledged and cleared in between, the new alarm still gets its own id."""
    m = AlarmStateMachine(POLICY)
    flag_us = T0 - 3 * S  # the flag's first sample

    def vtach(present: bool, now_us: int) -> list[AlarmEvent]:
        out = evaluate_bed(
            BED,
            POLICY,
            now_us,
            latest={"HR": (160.0, now_us)},
            status="online",
            last_seen_us=now_us,
            rhythms=["VTACH"] if present else [],
            quality={"ECG_II": "good"},
            times=DataTimes(rhythm_us={"VTACH": flag_us} if present else {}),
        )
        return m.observe([c for c in out.conditions if c.kind == "VTACH"], now_us)

    (first,) = vtach(True, T0)
    assert first.alarm_id == alarm_id(BED, "VTACH", flag_us)
    (latched,) = vtach(False, T0 + S)
    assert latched.state is AlarmState.LATCHED
    (cleared,) = m.acknowledge(first.alarm_id, "nurse", T0 + 2 * S)
    assert cleared.state is AlarmState.CLEARED
    (again,) = vtach(True, T0 + 3 * S)  # the same flag, the same first sample
    assert again.state is AlarmState.ACTIVE
    assert again.alarm_id == alarm_id(BED, "VTACH", flag_us + 1)
    # Kept over a restart: the next episode's id is new there too.
    restored = AlarmStateMachine.restore(json.loads(json.dumps(m.snapshot())))
    assert restored.alarm(again.alarm_id).alarm_id == again.alarm_id


def _evaluate(now_us: int, times: DataTimes, **inputs: object) -> RuleOutput:
    args: dict[str, object] = {
        "latest": {"HR": (72.0, T0), "SPO2": (97.0, T0)},
        "status": "online",
        "last_seen_us": T0,
        "quality": {"ECG_II": "good", "PLETH": "good"},
    }
    args.update(inputs)
    return evaluate_bed(BED, POLICY, now_us, times=times, **args)  # type: ignore[arg-type]


def test_the_rules_time_each_condition_by_its_data_not_by_the_judgement() -> None:
    """Each condition kind carries the bed-clock time of the data that shows it, so two
    evaluations of the same data at different times report the same times."""
    times = DataTimes(
        status_us=T0 - 40 * S,
        last_data_us=T0,
        rhythm_us={"VFIB": T0 - 2 * S},
        quality_us={"ECG_II": T0 - 6 * S, "ECG_V": T0 - 5 * S, "PLETH": T0 - 4 * S},
        news2_us=T0 - S,
    )
    for now_us in (T0 + 31 * S, T0 + 95 * S):
        by_kind = {
            c.kind: c
            for c in _evaluate(
                now_us,
                times,
                latest={"HR": (72.0, T0), "SPO2": (97.0, T0 - 100 * S)},
                rhythms=["VFIB"],
                quality={"ECG_II": "flat", "ECG_V": "missing", "PLETH": "missing"},
                last_seen_us=now_us,
            ).conditions
            if c.present
        }
        assert by_kind["VFIB"].time_us == T0 - 2 * S
        assert by_kind["LEAD_OFF"].time_us == T0 - 5 * S  # the last lead lost
        # No fresh SpO2 since its value's max age (30 s), before the pleth went missing.
        assert by_kind["SPO2_PROBE_OFF"].time_us == T0 - 100 * S + 30 * S
        assert by_kind["HR_UNAVAILABLE"].time_us == T0 + 30 * S
        assert "HR_HIGH" not in by_kind
    # The bed's silence counts from its newest sample, its status from the status message.
    stale = _evaluate(T0 + 30 * S, times, last_seen_us=T0).conditions
    (data_stale,) = [c for c in stale if c.kind == "DATA_STALE" and c.present]
    assert data_stale.time_us == T0 + 10 * S
    offline = _evaluate(T0 + 30 * S, times, status="offline").conditions
    (bed_offline,) = [c for c in offline if c.kind == "BED_OFFLINE" and c.present]
    assert bed_offline.time_us == T0 - 40 * S
