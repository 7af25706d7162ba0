"""The alarm state machine: delays, SatSeconds, hysteresis, latching, acknowledgement, audio pause,
escalation, snapshot and restore; fixed cases from the definitions, then random sequences."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from eicu.alarm_model import AlarmCondition, AlarmEvent, AlarmState, Priority
from eicu.alarms.policy import AlarmPolicy, load_policy, override
from eicu.alarms.rules import rhythm_conditions, vital_conditions
from eicu.alarms.state import AlarmStateMachine
from eicu.models import BedKey

BED = BedKey("site-a", "bed-1")
BED2 = BedKey("site-a", "bed-2")
POLICY = load_policy()
S = 1_000_000
T0 = 1_700_000_000 * S


def spo2(value: float, at_us: int, bed: BedKey = BED, policy: AlarmPolicy = POLICY) -> list[Any]:
    """The SPO2_LOW condition the rules report for a fresh SpO2 value."""
    got = vital_conditions(bed, policy, at_us, {"SPO2": (value, at_us)})
    return [c for c in got if c.kind == "SPO2_LOW"]


def rhythm(label: str, active: bool, at_us: int, bed: BedKey = BED) -> list[AlarmCondition]:
    out = rhythm_conditions(bed, POLICY, at_us, [label] if active else [])
    return [c for c in out.conditions if c.kind == label]


def states(events: list[AlarmEvent]) -> list[tuple[str, AlarmState, Priority, str]]:
    return [(e.kind, e.state, e.priority, e.actor) for e in events]


def test_spo2_delay_then_start() -> None:
    m = AlarmStateMachine(POLICY)
    events: list[AlarmEvent] = []
    for i in range(15):  # 88 % every second, t = 0 .. 14 s
        events += m.observe(spo2(88, T0 + i * S), T0 + i * S)
    assert events == [] and m.alarms() == []  # 14 s < 15 s delay
    (started,) = m.observe(spo2(88, T0 + 15 * S), T0 + 15 * S)
    assert (started.kind, started.state, started.priority) == (
        "SPO2_LOW",
        AlarmState.ACTIVE,
        "medium",
    )
    assert started.time_us == T0 + 15 * S and started.actor == "engine"
    # Named after the first report of the episode (the data time of the first value below 90 %).
    assert started.alarm_id == f"site-a/bed-1/SPO2_LOW/{T0}"


def test_pending_condition_that_ends_is_forgotten() -> None:
    m = AlarmStateMachine(POLICY)
    for i in range(10):
        m.observe(spo2(88, T0 + i * S), T0 + i * S)
    m.observe(spo2(95, T0 + 10 * S), T0 + 10 * S)
    events = []
    for i in range(11, 25):  # a new onset at 11 s: 14 s later it is still pending
        events += m.observe(spo2(88, T0 + i * S), T0 + i * S)
    assert events == []
    assert m.observe(spo2(88, T0 + 26 * S), T0 + 26 * S)[0].state is AlarmState.ACTIVE


def test_hysteresis_on_clearing() -> None:
    m = AlarmStateMachine(POLICY)
    m.observe(spo2(88, T0), T0)
    m.observe(spo2(88, T0 + 15 * S), T0 + 15 * S)
    assert m.observe(spo2(91, T0 + 16 * S), T0 + 16 * S) == []  # 91 < 90 + 2: still on
    assert m.alarms()[0].condition_present
    (cleared,) = m.observe(spo2(92, T0 + 17 * S), T0 + 17 * S)
    assert cleared.state is AlarmState.CLEARED and m.alarms() == []


def test_escalation_and_latching_of_a_high_alarm() -> None:
    m = AlarmStateMachine(POLICY)
    m.observe(spo2(88, T0), T0)
    (start,) = m.observe(spo2(88, T0 + 15 * S), T0 + 15 * S)
    (ack,) = m.acknowledge(start.alarm_id, "nurse.wu", T0 + 16 * S)
    assert (ack.state, ack.actor) == (AlarmState.ACKNOWLEDGED, "nurse.wu")
    (esc,) = m.observe(spo2(84, T0 + 17 * S), T0 + 17 * S)  # worse: below 85 %
    assert (esc.state, esc.priority) == (AlarmState.ACTIVE, Priority.HIGH)
    assert "escalated" in esc.reason and esc.alarm_id == start.alarm_id
    assert m.alarm(start.alarm_id).acknowledged_by is None
    assert m.observe(spo2(87, T0 + 18 * S), T0 + 18 * S) == []  # never de-escalates
    (latched,) = m.observe(spo2(97, T0 + 19 * S), T0 + 19 * S)
    assert (latched.state, latched.priority) == (AlarmState.LATCHED, Priority.HIGH)
    for i in range(20, 300, 10):  # stays latched however long the value is normal
        assert m.observe(spo2(97, T0 + i * S), T0 + i * S) == []
    assert m.alarms()[0].state is AlarmState.LATCHED
    (cleared,) = m.acknowledge(start.alarm_id, "dr.li", T0 + 300 * S)
    assert (cleared.state, cleared.actor) == (AlarmState.CLEARED, "dr.li")
    assert m.alarms() == []


def test_vtach_latches_returns_and_clears_after_acknowledgement() -> None:
    m = AlarmStateMachine(POLICY)
    (start,) = m.observe(rhythm("VTACH", True, T0), T0)  # no delay
    assert (start.state, start.priority) == (AlarmState.ACTIVE, Priority.HIGH)
    (latched,) = m.observe(rhythm("VTACH", False, T0 + S), T0 + S)
    assert latched.state is AlarmState.LATCHED
    (again,) = m.observe(rhythm("VTACH", True, T0 + 2 * S), T0 + 2 * S)
    assert again.state is AlarmState.ACTIVE and again.alarm_id == start.alarm_id
    (ack,) = m.acknowledge(start.alarm_id, "dr.li", T0 + 3 * S)
    assert ack.state is AlarmState.ACKNOWLEDGED
    assert m.acknowledge(start.alarm_id, "dr.li", T0 + 4 * S) == []  # already acknowledged
    (cleared,) = m.observe(rhythm("VTACH", False, T0 + 5 * S), T0 + 5 * S)
    assert (cleared.state, cleared.actor) == (AlarmState.CLEARED, "engine")
    with pytest.raises(KeyError):
        m.acknowledge(start.alarm_id, "dr.li", T0 + 6 * S)


def test_medium_alarm_does_not_latch() -> None:
    m = AlarmStateMachine(POLICY)
    m.observe(rhythm("AFIB", True, T0), T0)
    (end,) = m.observe(rhythm("AFIB", False, T0 + S), T0 + S)
    assert end.state is AlarmState.CLEARED


def test_audio_pause_is_bounded_and_the_alarm_sounds_again() -> None:
    m = AlarmStateMachine(POLICY)
    (start,) = m.observe(rhythm("VTACH", True, T0), T0)
    (paused,) = m.pause_audio(BED, "nurse.wu", T0 + S, duration_s=600)
    assert paused.audio_paused_until_us == T0 + S + 120 * S  # limited to 120 s
    assert paused.actor == "nurse.wu" and "limit 120" in paused.reason
    alarm = m.alarm(start.alarm_id)
    assert not alarm.sounding(T0 + 120 * S) and alarm.sounding(T0 + 121 * S)
    assert m.tick(T0 + 120 * S) == []
    (again,) = m.tick(T0 + 121 * S)
    assert (again.state, again.reason, again.audio_paused_until_us) == (
        AlarmState.ACTIVE,
        "audio pause ended",
        None,
    )


def test_latched_alarm_sounds_again_after_its_pause() -> None:
    m = AlarmStateMachine(POLICY)
    (start,) = m.observe(rhythm("ASYSTOLE", True, T0), T0)
    m.observe(rhythm("ASYSTOLE", False, T0 + 2 * S), T0 + 2 * S)
    (paused,) = m.pause_audio(start.alarm_id, "nurse.wu", T0 + 3 * S, duration_s=30)
    assert paused.state is AlarmState.LATCHED
    (again,) = m.tick(T0 + 33 * S)
    assert (again.state, again.reason) == (AlarmState.LATCHED, "audio pause ended")
    assert m.alarm(start.alarm_id).sounding(T0 + 33 * S)


def test_pause_of_an_acknowledged_alarm_ends_silently() -> None:
    m = AlarmStateMachine(POLICY)
    (start,) = m.observe(rhythm("VTACH", True, T0), T0)
    m.pause_audio(start.alarm_id, "nurse.wu", T0, duration_s=60)
    m.acknowledge(start.alarm_id, "nurse.wu", T0 + 10 * S)
    assert m.tick(T0 + 100 * S) == []
    assert m.pause_audio(BED, "nurse.wu", T0 + 100 * S, 60) == []  # nothing sounds


def test_per_bed_policy() -> None:
    bed_policy, _ = override(POLICY, BED2, "SPO2_LOW", "delay_s", 5, user="dr.li", now_us=T0)
    m = AlarmStateMachine(POLICY)
    m.set_policy(BED2, bed_policy)
    events = []
    for i in range(6):
        t = T0 + i * S
        events += m.observe([*spo2(88, t), *spo2(88, t, BED2)], t)
    assert [(e.bed, e.time_us) for e in events] == [(BED2, T0 + 5 * S)]


def test_sat_seconds() -> None:
    # Nellcor SatSeconds: the alarm starts when depth below the limit x time reaches the budget.
    policy, _ = override(POLICY, BED, "SPO2_LOW", "sat_seconds", 50, user="dr.li", now_us=T0)
    m = AlarmStateMachine(policy)
    events: list[AlarmEvent] = []
    for i in range(6):  # 80 %: 10 below the limit -> 50 %·s after 5 s
        events += m.observe(spo2(80, T0 + i * S, policy=policy), T0 + i * S)
    assert [(e.state, e.time_us) for e in events] == [(AlarmState.ACTIVE, T0 + 5 * S)]
    m2 = AlarmStateMachine(policy)
    times = []
    for i in range(60):  # 89 %: 1 below -> 50 s
        times += [e.time_us for e in m2.observe(spo2(89, T0 + i * S, policy=policy), T0 + i * S)]
    assert times == [T0 + 50 * S]


def sat_run(
    values: list[float], budget: float = 50, restart_at: int | None = None
) -> list[tuple[int, str]]:
    """Feed one SpO2 value a second to a bed with a SatSeconds budget; (second, reason) starts.

    With ``restart_at`` the machine is snapshot and restored from JSON before that second."""
    policy, _ = override(POLICY, BED, "SPO2_LOW", "sat_seconds", budget, user="dr.li", now_us=T0)
    m = AlarmStateMachine(policy)
    out = []
    for i, v in enumerate(values):
        t = T0 + i * S
        if i == restart_at:
            m = AlarmStateMachine.restore(json.loads(json.dumps(m.snapshot())))
        events = m.observe(spo2(v, t, policy=policy), t)
        out += [(i, e.reason) for e in events if e.reason.startswith("started")]
    return out


def test_sat_seconds_index_drains_inside_the_limit() -> None:
    # 80 % for 4 s: 10, 20, 30 %·s; two seconds at 95 % add the last 10 then take 5 off (35);
    # back at 80 %: 30, 40, 50 -> the alarm starts at second 8 (a reset index would say 10)
    starts = sat_run([80, 80, 80, 80, 95, 95, 80, 80, 80, 80, 80])
    assert [i for i, _ in starts] == [8]
    assert sat_run([80, 80, 80, 80, 95, 95, 80, 80, 80, 80, 80], restart_at=5) == starts
    assert "50.0 %·s" in starts[0][1]


def test_sat_seconds_three_violations_within_a_minute() -> None:
    dip = [89.0, 89.0, 95.0, 95.0, 95.0, 95.0]  # 2 %·s in, then fully drained
    starts = sat_run(dip * 3, budget=100)
    assert [i for i, _ in starts] == [12]  # the third violation starts at second 12
    assert "3 limit violations" in starts[0][1]
    assert sat_run(dip * 3, budget=100, restart_at=10) == starts
    spaced = dip + [95.0] * 30 + dip + [95.0] * 30 + dip  # violations 36 s apart: 72 s for 3
    assert sat_run(spaced, budget=100) == []


def test_inputs_checked() -> None:
    m = AlarmStateMachine(POLICY)
    m.tick(T0)
    with pytest.raises(ValueError, match="time went back"):
        m.tick(T0 - 1)
    with pytest.raises(ValueError, match="duration_s"):
        m.pause_audio(BED, "nurse.wu", T0, 0)
    with pytest.raises(ValueError, match="user"):
        m.acknowledge("site-a/bed-1/VTACH/1", "", T0)
    with pytest.raises(KeyError):
        m.acknowledge("site-a/bed-1/VTACH/1", "dr.li", T0)
    with pytest.raises(KeyError):
        m.pause_audio("nonsense", "dr.li", T0, 10)
    odd = AlarmCondition(BED, "MAGIC", "physiological", "high", T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="MAGIC"):
        m.observe([odd], T0)


def test_a_refused_call_changes_nothing() -> None:
    m = AlarmStateMachine(POLICY)
    (start,) = m.observe(rhythm("VTACH", True, T0), T0)
    m.pause_audio(BED, "nurse.wu", T0, 10)
    before = m.snapshot()
    odd = AlarmCondition(BED, "MAGIC", start.category, start.priority, T0 + 20 * S)
    with pytest.raises(ValueError):
        m.observe([*rhythm("VTACH", False, T0 + 20 * S), odd], T0 + 20 * S)
    with pytest.raises(KeyError):
        m.acknowledge("site-a/bed-1/VTACH/1", "dr.li", T0 + 20 * S)
    with pytest.raises(KeyError):
        m.pause_audio("site-a/bed-1/VTACH/1", "dr.li", T0 + 20 * S, 10)
    assert m.snapshot() == before  # the due end of the pause was not swallowed either
    (again,) = m.tick(T0 + 20 * S)
    assert again.reason == "audio pause ended"


def test_snapshot_restores_active_and_latched_alarms() -> None:
    m = AlarmStateMachine(POLICY)
    m.observe(rhythm("VTACH", True, T0), T0)
    m.observe(rhythm("VTACH", False, T0 + S), T0 + S)
    m.observe(rhythm("AFIB", True, T0 + S), T0 + S)
    restored = AlarmStateMachine.restore(json.loads(json.dumps(m.snapshot())))
    assert restored.alarms() == m.alarms()
    assert [(a.kind, a.state) for a in restored.alarms()] == [
        ("VTACH", AlarmState.LATCHED),
        ("AFIB", AlarmState.ACTIVE),
    ]
    with pytest.raises(ValueError, match="format"):
        AlarmStateMachine.restore({"format": 99})


# ---- random sequences -------------------------------------------------------------------------

KINDS = ("SPO2_LOW", "VTACH", "AFIB", "HR_HIGH", "LEAD_OFF")
SAT_POLICY, _ = override(POLICY, BED2, "SPO2_LOW", "sat_seconds", 30, user="dr.li", now_us=0)
SCALE = {"SPO2_LOW": (80.0, 15.0), "HR_HIGH": (110.0, 60.0)}  # value = offset + span * level


def make_condition(bed: BedKey, kind: str, level: float, at_us: int) -> AlarmCondition:
    """A condition as the rules report it; ``level`` in 0..1 spans each kind's range."""
    cp = (SAT_POLICY if bed == BED2 else POLICY).condition(kind)
    if kind not in SCALE or cp.limit is None:
        return AlarmCondition(bed, kind, cp.category, cp.priority, at_us, present=level < 0.5)
    offset, span = SCALE[kind]
    value = round(offset + span * level, 1)
    present = cp.beyond(value, cp.limit)
    priority = cp.priority
    if present and cp.escalate_limit is not None and cp.beyond(value, cp.escalate_limit):
        priority = cp.escalate_priority or priority
    return AlarmCondition(
        bed, kind, cp.category, priority, at_us, present=present, value=value, limit=cp.limit
    )


# The world changes ('set'), the engine evaluates every second ('run'), the data can go silent
# ('silent': time passes with no report), clinicians acknowledge and pause audio.
# levels at the interesting places too: SpO2 80, 83, 86, 89, 90.1 (hysteresis), 92, 95 %
level = st.one_of(
    st.sampled_from([0.0, 0.2, 0.4, 0.6, 0.67, 0.8, 1.0]), st.floats(0, 1, allow_nan=False)
)
set_op = st.tuples(st.just("set"), st.sampled_from([BED, BED2]), st.sampled_from(KINDS), level)
op = st.one_of(
    set_op,
    set_op,
    set_op,
    st.tuples(st.just("run"), st.integers(1, 20)),
    st.tuples(st.just("silent"), st.integers(1, 200 * S)),
    st.tuples(st.just("ack"), st.integers(0, 5), st.sampled_from(["nurse.wu", "dr.li"])),
    st.tuples(
        st.just("pause"),
        st.one_of(st.sampled_from([BED, BED2]), st.integers(0, 5)),
        st.floats(1, 600, allow_nan=False),
    ),
)


@dataclass
class Run:
    machine: AlarmStateMachine
    now_us: int = T0
    world: dict[tuple[BedKey, str], float] = field(default_factory=dict)


Step = tuple[list[AlarmEvent], list[AlarmCondition], int]


def apply(run: Run, step: tuple[Any, ...]) -> list[Step]:
    """Apply one op; return (events, conditions reported, time) for each call it made."""
    m = run.machine
    name = step[0]
    if name == "set":
        run.world[(step[1], step[2])] = step[3]
        return []
    if name == "run":
        out: list[Step] = []
        for _ in range(step[1]):
            run.now_us += S
            conditions = [
                make_condition(bed, kind, level, run.now_us)
                for (bed, kind), level in run.world.items()
            ]
            out.append((m.observe(conditions, run.now_us), conditions, run.now_us))
        return out
    if name == "silent":
        run.now_us += step[1]
        return [(m.tick(run.now_us), [], run.now_us)]
    live = m.alarms()
    if name == "ack":
        if not live:
            return []
        chosen = live[step[1] % len(live)].alarm_id
        return [(m.acknowledge(chosen, step[2], run.now_us), [], run.now_us)]
    target = step[1]
    if isinstance(target, int):
        if not live:
            return []
        target = live[target % len(live)].alarm_id
    return [(m.pause_audio(target, "nurse.wu", run.now_us, step[2]), [], run.now_us)]


def new_machine() -> AlarmStateMachine:
    m = AlarmStateMachine(POLICY)
    m.set_policy(BED2, SAT_POLICY)
    return m


class Model:
    """The definitions, restated: when may an alarm start, and what must have happened."""

    def __init__(self) -> None:
        self.run_start: dict[tuple[BedKey, str], int] = {}  # current run of present reports
        self.area: dict[tuple[BedKey, str], float] = {}  # SatSeconds limit-violation index
        self.violations: dict[tuple[BedKey, str], list[int]] = {}
        self.last: dict[tuple[BedKey, str], tuple[int, float | None]] = {}
        self.live: dict[tuple[BedKey, str], str] = {}
        self.history: dict[str, list[AlarmEvent]] = {}

    def report(self, c: AlarmCondition, cp: Any, now_us: int) -> None:
        key = (c.bed, c.kind)
        if key in self.live:
            return  # a live alarm: onset and index no longer matter
        if cp.sat_seconds is None:
            if not c.present:
                self.run_start.pop(key, None)
            elif key not in self.run_start:
                self.run_start[key] = now_us
            return
        # SatSeconds: each report's value holds until the next; below the limit it adds
        # depth x seconds, inside it subtracts distance x seconds, never below zero
        if key in self.last:
            t, v = self.last[key]
            self.area[key] = max(0.0, self.area.get(key, 0.0) + (cp.limit - v) * (now_us - t) / S)
        recent = [x for x in self.violations.get(key, []) if now_us - x <= 60 * S]
        if c.present and key not in self.run_start:
            self.run_start[key] = now_us
            recent.append(now_us)
        elif not c.present:
            self.run_start.pop(key, None)
        self.violations[key] = recent
        self.last[key] = (now_us, c.value)

    def event(self, e: AlarmEvent) -> None:
        key = (e.bed, e.kind)
        if e.reason.startswith("started"):
            self.live[key] = e.alarm_id
        elif e.state is AlarmState.CLEARED:
            del self.live[key]
            for table in (self.run_start, self.area, self.violations, self.last):
                table.pop(key, None)


def check_step(run: Run, model: Model, step: tuple[Any, ...]) -> list[Step]:
    """Apply one op and check every definition against what it did."""
    history = model.history
    before = {a.alarm_id: a for a in run.machine.alarms()}
    done = apply(run, step)
    for events, conditions, now_us in done:
        for c in conditions:
            model.report(c, run.machine.policy_for(c.bed).condition(c.kind), now_us)
        for e in events:
            cp = run.machine.policy_for(e.bed).condition(e.kind)
            if e.reason.startswith("started"):
                # nothing starts before its condition delay (or its SatSeconds budget)
                assert e.alarm_id not in history
                key = (e.bed, e.kind)
                if cp.sat_seconds is not None:
                    assert (
                        model.area.get(key, 0.0) >= cp.sat_seconds - 1e-9
                        or len(model.violations[key]) >= 3
                    )
                else:
                    assert e.time_us - model.run_start[key] >= cp.delay_s * S
            else:
                assert e.alarm_id in history
            if e.audio_paused_until_us is not None:  # a pause never exceeds the limit
                assert 0 < e.audio_paused_until_us - e.time_us <= POLICY.audio_pause_max_s * S
            if e.state is AlarmState.CLEARED and e.priority is Priority.HIGH:
                # latching: a high alarm clears only through an acknowledgement
                changes = [x for x in history[e.alarm_id] if "audio" not in x.reason]
                assert e.actor != "engine" or changes[-1].state is AlarmState.ACKNOWLEDGED
            history.setdefault(e.alarm_id, []).append(e)
            model.event(e)
        # a pause that ends on an unacknowledged alarm makes it sound again, with an event
        for alarm_id, a in before.items():
            paused = a.audio_paused_until_us
            if paused is None or paused > now_us:
                continue
            after = {x.alarm_id: x for x in run.machine.alarms()}.get(alarm_id)
            if after is not None and after.state in (AlarmState.ACTIVE, AlarmState.LATCHED):
                assert after.sounding(now_us)
                assert history[alarm_id][-1].audio_paused_until_us is None
    return done


def check_live(run: Run, model: Model) -> None:
    history = model.history
    live = run.machine.alarms()
    assert len({a.alarm_id for a in live}) == len(live)
    assert len({(a.bed, a.kind) for a in live}) == len(live)
    for a in live:
        # never both acknowledged and unacknowledged
        assert a.state in (AlarmState.ACTIVE, AlarmState.LATCHED, AlarmState.ACKNOWLEDGED)
        assert (a.state is AlarmState.ACKNOWLEDGED) == (a.acknowledged_by is not None)
        assert (a.state is AlarmState.LATCHED) == (not a.condition_present)
        if a.audio_paused_until_us is not None:
            assert run.now_us < a.audio_paused_until_us
            assert a.audio_paused_until_us - run.now_us <= POLICY.audio_pause_max_s * S
        # the latest event of a live alarm tells its state and its audio pause
        assert history[a.alarm_id][-1].state is a.state
        assert history[a.alarm_id][-1].audio_paused_until_us == a.audio_paused_until_us
    live_ids = {a.alarm_id for a in live}
    for alarm_id, hist in history.items():
        assert (hist[-1].state is not AlarmState.CLEARED) == (alarm_id in live_ids)


@settings(max_examples=400, deadline=None)
@given(st.lists(op, min_size=10, max_size=60))
def test_invariants_over_random_sequences(ops: list[tuple[Any, ...]]) -> None:
    run = Run(new_machine())
    model = Model()
    for step in ops:
        check_step(run, model, step)
        check_live(run, model)


class AlarmLife(RuleBasedStateMachine):
    """Stateful: the same definitions, with restarts (snapshot -> JSON -> restore) in between,
    against a twin machine that never restarts."""

    def __init__(self) -> None:
        super().__init__()
        self.run = Run(new_machine())
        self.twin = Run(new_machine())
        self.model = Model()

    @rule(step=op)
    def act(self, step: tuple[Any, ...]) -> None:
        assert check_step(self.run, self.model, step) == apply(self.twin, step)

    @rule()
    def restart(self) -> None:
        saved = json.loads(json.dumps(self.run.machine.snapshot()))
        self.run.machine = AlarmStateMachine.restore(saved)

    @invariant()
    def consistent(self) -> None:
        check_live(self.run, self.model)
        assert self.run.machine.snapshot() == self.twin.machine.snapshot()


AlarmLife.TestCase.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)
test_alarm_life = AlarmLife.TestCase


@settings(max_examples=250, deadline=None)
@given(st.lists(op, min_size=5, max_size=50), st.data())
def test_snapshot_restore_continue_equals_continue(
    ops: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(ops)))
    direct = Run(new_machine())
    for step in ops[:cut]:
        apply(direct, step)
    saved = json.loads(json.dumps(direct.machine.snapshot()))
    resumed = Run(AlarmStateMachine.restore(saved), direct.now_us, dict(direct.world))
    assert resumed.machine.snapshot() == saved
    for step in ops[cut:]:
        assert apply(resumed, step) == apply(direct, step)
    assert resumed.machine.snapshot() == direct.machine.snapshot()
    assert resumed.machine.alarms() == direct.machine.alarms()


def test_snapshot_keeps_a_fractional_sat_seconds_area() -> None:
    def feed(m: AlarmStateMachine, start: int, stop: int) -> list[int]:
        times = []
        for i in range(start, stop):
            t = T0 + i * 700_000  # every 0.7 s, 1.3 below the limit: 0.91 %·s a step
            times += [e.time_us for e in m.observe([make_condition(BED2, "SPO2_LOW", 0.58, t)], t)]
        return times

    direct = new_machine()
    resumed_times = feed(direct, 0, 20)
    half = new_machine()
    feed(half, 0, 20)
    resumed = AlarmStateMachine.restore(json.loads(json.dumps(half.snapshot())))
    assert feed(resumed, 20, 60) == feed(direct, 20, 60) != []
    assert resumed_times == []
