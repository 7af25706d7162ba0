"""The alarm rules: derived values in, conditions out; missing or stale data is never normal."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eicu.alarm_model import AlarmCondition, Category, Priority
from eicu.alarms.policy import load_policy, override
from eicu.alarms.rules import (
    RuleOutput,
    bed_conditions,
    evaluate_bed,
    probe_conditions,
    rhythm_conditions,
    score_conditions,
    vital_conditions,
)
from eicu.models import BedKey
from eicu.scores.deterioration import DeteriorationSignal
from eicu.scores.evaluate import ScoreResult
from eicu.signal.pipeline import BedSignalPipeline

BED = BedKey("site-a", "bed-7")
POLICY = load_policy()
NOW = 1_000_000_000_000  # device time, us
S = 1_000_000


def by_kind(conditions: tuple[AlarmCondition, ...] | list[AlarmCondition]) -> dict[str, bool]:
    kinds = [c.kind for c in conditions]
    assert len(kinds) == len(set(kinds)), kinds  # one verdict per condition and evaluation
    return {c.kind: c.present for c in conditions}


def news2(total: int | None, band: str | None, min_band: str, partial: int) -> ScoreResult:
    return ScoreResult(
        definition="NEWS2",
        total=total,
        partial_total=partial,
        components={},
        band=band,
        min_band=min_band,
        response=None,
        monitoring=None,
        complete=total is not None,
    )


def test_spo2_below_limit_and_escalation() -> None:
    got = vital_conditions(BED, POLICY, NOW, {"SPO2": (88.0, NOW - S)})
    spo2 = next(c for c in got if c.kind == "SPO2_LOW")
    assert spo2.present and spo2.value == 88.0 and spo2.limit == 90.0
    assert spo2.priority is Priority.MEDIUM and spo2.category is Category.PHYSIOLOGICAL
    assert spo2.time_us == NOW - S  # device time of the value
    deep = vital_conditions(BED, POLICY, NOW, {"SPO2": (84.0, NOW)})
    assert next(c for c in deep if c.kind == "SPO2_LOW").priority is Priority.HIGH
    at_limit = vital_conditions(BED, POLICY, NOW, {"SPO2": (90.0, NOW)})
    assert by_kind(at_limit) == {"SPO2_LOW": False}  # 90 is not below 90


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("HR", 131.0, {"HR_HIGH": True, "HR_LOW": False, "HR_UNAVAILABLE": False}),
        ("HR", 49.0, {"HR_HIGH": False, "HR_LOW": True, "HR_UNAVAILABLE": False}),
        ("HR", 80.0, {"HR_HIGH": False, "HR_LOW": False, "HR_UNAVAILABLE": False}),
        ("RR", 31.0, {"RR_HIGH": True, "RR_LOW": False, "RR_UNAVAILABLE": False}),
        ("RR", 7.0, {"RR_HIGH": False, "RR_LOW": True, "RR_UNAVAILABLE": False}),
        ("TEMP", 38.6, {"TEMP_HIGH": True, "TEMP_UNAVAILABLE": False}),
        ("NIBP_SYS", 85.0, {"SBP_HIGH": False, "SBP_LOW": True, "SBP_UNAVAILABLE": False}),
        ("ABP_SYS", 190.0, {"SBP_HIGH": True, "SBP_LOW": False, "SBP_UNAVAILABLE": False}),
    ],
)
def test_vital_limits(key: str, value: float, expected: dict[str, bool]) -> None:
    assert by_kind(vital_conditions(BED, POLICY, NOW, {key: (value, NOW)})) == expected


def test_abp_before_nibp_and_nibp_kept_longer() -> None:
    latest: dict[str, tuple[float | None, int]] = {
        "ABP_SYS": (120.0, NOW),
        "NIBP_SYS": (80.0, NOW - 600 * S),
    }
    got = {c.kind: c for c in vital_conditions(BED, POLICY, NOW, latest)}
    assert not got["SBP_LOW"].present and got["SBP_LOW"].value == 120.0
    latest["ABP_SYS"] = (None, NOW)  # the arterial line is gone: the 10-min-old cuff is used
    got = {c.kind: c for c in vital_conditions(BED, POLICY, NOW, latest)}
    assert got["SBP_LOW"].present and got["SBP_LOW"].value == 80.0
    assert not got["SBP_UNAVAILABLE"].present


@pytest.mark.parametrize(
    "entry",
    [(None, NOW), (140.0, NOW - 31 * S)],  # missing value; older than max_age_s (30 s)
    ids=["missing", "stale"],
)
def test_missing_or_stale_value_is_technical_never_normal(entry: tuple[float | None, int]) -> None:
    got = vital_conditions(BED, POLICY, NOW, {"HR": entry})
    assert by_kind(got) == {"HR_UNAVAILABLE": True}  # no HR_HIGH/HR_LOW verdict at all
    c = got[0]
    assert c.category is Category.TECHNICAL and "HR" in c.detail


def test_parameter_never_sent_is_not_monitored() -> None:
    assert vital_conditions(BED, POLICY, NOW, {}) == []
    assert by_kind(vital_conditions(BED, POLICY, NOW, {"HR": (80.0, NOW)})) == {
        "HR_HIGH": False,
        "HR_LOW": False,
        "HR_UNAVAILABLE": False,
    }


def test_spo2_probe_off() -> None:
    def probe(latest: dict[str, tuple[float | None, int]], quality: dict[str, str]) -> bool:
        got = by_kind(probe_conditions(BED, POLICY, NOW, latest, quality))
        return got["SPO2_PROBE_OFF"]

    assert probe({"SPO2": (None, NOW)}, {})
    assert probe({"SPO2": (97.0, NOW - 60 * S)}, {})
    assert probe({"SPO2": (97.0, NOW)}, {"PLETH": "missing"})
    assert not probe({"SPO2": (97.0, NOW)}, {"PLETH": "good"})
    assert not probe({"SPO2": (97.0, NOW)}, {"PLETH": "noisy"})
    # the vital rule leaves SpO2 availability to the probe rule and says nothing about SPO2_LOW
    assert vital_conditions(BED, POLICY, NOW, {"SPO2": (None, NOW)}) == []


def test_lead_off_only_when_every_lead_has_no_signal() -> None:
    def lead_off(quality: dict[str, str]) -> dict[str, bool]:
        return by_kind(probe_conditions(BED, POLICY, NOW, {}, quality))

    assert lead_off({"ECG_II": "missing", "ECG_V": "flat"}) == {"LEAD_OFF": True}
    assert lead_off({"ECG_II": "missing", "ECG_V": "noisy"}) == {"LEAD_OFF": False}
    assert lead_off({"PLETH": "good"}) == {"SPO2_PROBE_OFF": False}
    assert lead_off({}) == {}


def test_bed_offline_and_data_stale() -> None:
    seen = NOW - 5 * S
    ok = {"BED_STANDBY": False, "DEVICE_CLOCK": False}
    assert by_kind(bed_conditions(BED, POLICY, NOW, "online", seen)) == {
        "BED_OFFLINE": False,
        "DATA_STALE": False,
        **ok,
    }
    assert by_kind(bed_conditions(BED, POLICY, NOW, "online", NOW - 11 * S)) == {
        "BED_OFFLINE": False,
        "DATA_STALE": True,
        **ok,
    }
    assert by_kind(bed_conditions(BED, POLICY, NOW, "offline", NOW - 11 * S)) == {
        "BED_OFFLINE": True,
        "DATA_STALE": False,
        **ok,
    }
    assert bed_conditions(BED, POLICY, NOW, "unknown", 0) == []
    assert by_kind(bed_conditions(BED, POLICY, NOW, "standby", NOW - 600 * S)) == {
        "BED_OFFLINE": False,
        "DATA_STALE": False,
        "BED_STANDBY": True,
        "DEVICE_CLOCK": False,
    }
    standby = evaluate_bed(
        BED,
        POLICY,
        NOW,
        latest={"HR": (None, NOW - 600 * S)},
        status="standby",
        last_seen_us=NOW - 600 * S,
    )
    # In standby a missing value is expected: its technical condition ends.
    assert by_kind(standby.conditions) == {
        "BED_OFFLINE": False,
        "DATA_STALE": False,
        "BED_STANDBY": True,
        "DEVICE_CLOCK": False,
        "HR_UNAVAILABLE": False,
    }


def test_standby_never_hides_live_physiological_data() -> None:
    """IEC 60601-1-8 inactivation states silence alarm signals, not the detection of alarm
    conditions, and are shown; a bed said to be in standby whose monitor still sends fresh
    values is monitored, and its physiological conditions stand."""
    latest = {"HR": (180.0, NOW - S), "SPO2": (80.0, NOW - S), "RR": (None, NOW - S)}
    out = evaluate_bed(
        BED,
        POLICY,
        NOW,
        latest=latest,
        status="standby",
        last_seen_us=NOW - S,
        quality={"ECG_II": "missing", "PLETH": "missing"},
        rhythms=("ASYSTOLE",),
    )
    got = by_kind(out.conditions)
    assert got["HR_HIGH"] and got["SPO2_LOW"] and got["BED_STANDBY"]
    # Sensors off are expected in standby: technical conditions end; no live ECG, no rhythm.
    assert got["SPO2_PROBE_OFF"] is False and got["LEAD_OFF"] is False
    assert got["RR_UNAVAILABLE"] is False and "ASYSTOLE" not in got


def test_device_clock_fault_is_a_technical_condition() -> None:
    out = evaluate_bed(
        BED,
        POLICY,
        NOW,
        latest={"HR": (80.0, NOW)},
        status="online",
        last_seen_us=NOW,
        clock_fault="device time 2335 s ahead",
    )
    conditions = {c.kind: c for c in out.conditions}
    assert conditions["DEVICE_CLOCK"].present
    assert conditions["DEVICE_CLOCK"].category.value == "technical"
    assert conditions["DEVICE_CLOCK"].detail == "device time 2335 s ahead"
    assert conditions["HR_HIGH"].present is False  # the bed's other rules still run


def test_silent_bed_reports_only_bed_conditions() -> None:
    out = evaluate_bed(
        BED,
        POLICY,
        NOW,
        latest={"HR": (40.0, NOW - 20 * S), "SPO2": (80.0, NOW - 20 * S)},
        status="online",
        last_seen_us=NOW - 20 * S,
        rhythms=["VTACH"],
    )
    assert by_kind(out.conditions) == {
        "BED_OFFLINE": False,
        "DATA_STALE": True,
        "BED_STANDBY": False,
        "DEVICE_CLOCK": False,
    }


def test_rhythm_priorities_and_verification() -> None:
    plain = rhythm_conditions(BED, POLICY, NOW, ["VTACH", "AFIB"])
    got = {c.kind: c for c in plain.conditions}
    assert got["VTACH"].present and got["VTACH"].priority is Priority.HIGH
    assert got["VTACH"].verified is None
    assert got["AFIB"].present and got["AFIB"].priority is Priority.MEDIUM
    assert not got["ASYSTOLE"].present and not got["PAUSE"].present

    calls: list[str] = []

    def verify(label: str) -> bool | None:
        calls.append(label)
        return {"VTACH": False, "AFIB": True}.get(label)

    out = rhythm_conditions(BED, POLICY, NOW, ["VTACH", "AFIB", "BRADY"], verify)
    assert sorted(calls) == ["AFIB", "BRADY", "VTACH"]  # only active flags are verified
    kinds = {c.kind: c for c in out.conditions}
    assert "VTACH" not in kinds  # suppressed: no verdict, its alarm state is left alone
    assert kinds["AFIB"].verified is True and kinds["BRADY"].verified is None
    assert [(s.condition.kind, s.condition.verified) for s in out.suppressed] == [("VTACH", False)]
    assert "verification" in out.suppressed[0].reason


def test_pipeline_verify_alarm_can_be_passed_directly() -> None:
    pipeline = BedSignalPipeline({"ECG_II": 250.0, "PLETH": 125.0})

    @dataclass(frozen=True)
    class Decision:
        true_alarm: bool
        reason: str

    out = rhythm_conditions(BED, POLICY, NOW, ["ASYSTOLE"], pipeline.verify_alarm)
    decision = pipeline.verify_alarm("ASYSTOLE")
    if decision.true_alarm:
        (c,) = (c for c in out.conditions if c.kind == "ASYSTOLE")
        assert c.verified is True and decision.reason in c.detail
    else:
        assert out.suppressed[0].reason == decision.reason
    false = rhythm_conditions(BED, POLICY, NOW, ["VFIB"], lambda _: Decision(False, "pulse seen"))
    assert [s.reason for s in false.suppressed] == ["pulse seen"]


def test_news2_bands() -> None:
    def kinds(result: ScoreResult) -> dict[str, bool]:
        return by_kind(score_conditions(BED, POLICY, NOW, result, None))

    assert kinds(news2(3, "low-medium", "low-medium", 3)) == {
        "NEWS2_MEDIUM": False,
        "NEWS2_HIGH": False,
    }
    assert kinds(news2(5, "medium", "medium", 5)) == {"NEWS2_MEDIUM": True, "NEWS2_HIGH": False}
    assert kinds(news2(8, "high", "high", 8)) == {"NEWS2_MEDIUM": True, "NEWS2_HIGH": True}
    # incomplete: only what the lower bound proves; the rest is unknown, not 'ended'
    assert kinds(news2(None, None, "low", 2)) == {}
    assert kinds(news2(None, None, "medium", 5)) == {"NEWS2_MEDIUM": True}
    high = score_conditions(BED, POLICY, NOW, news2(7, "high", "high", 7), None)
    assert next(c for c in high if c.kind == "NEWS2_HIGH").priority is Priority.HIGH


def test_deterioration() -> None:
    signal = DeteriorationSignal(
        time_us=NOW - S, active=True, reasons=("NEWS2 rose by 3",), news2=6, news2_rise=3, trends={}
    )
    (c,) = score_conditions(BED, POLICY, NOW, None, signal)
    assert (c.kind, c.present, c.priority, c.time_us) == (
        "DETERIORATION",
        True,
        Priority.LOW,
        NOW - S,
    )
    assert c.detail == "NEWS2 rose by 3"


def test_override_moves_the_limit_for_that_bed_only() -> None:
    bed_policy, _ = override(POLICY, BED, "SPO2_LOW", "limit", 88, user="dr.li", now_us=NOW)
    latest: dict[str, tuple[float | None, int]] = {"SPO2": (89.0, NOW)}
    assert by_kind(vital_conditions(BED, POLICY, NOW, latest))["SPO2_LOW"]
    assert not by_kind(vital_conditions(BED, bed_policy, NOW, latest))["SPO2_LOW"]


values = st.one_of(st.none(), st.floats(0, 350, allow_nan=False))
ages_s = st.floats(0, 4000, allow_nan=False)
keys = st.sampled_from(["HR", "SPO2", "RR", "ABP_SYS", "NIBP_SYS", "TEMP"])


@settings(max_examples=200, deadline=None)
@given(
    latest=st.dictionaries(keys, st.tuples(values, ages_s), max_size=6),
    status=st.sampled_from(["online", "offline", "standby", "unknown"]),
    silent_s=st.floats(0, 60, allow_nan=False),
    quality=st.dictionaries(
        st.sampled_from(["ECG_II", "ECG_V", "PLETH", "ABP"]),
        st.sampled_from(["good", "missing", "flat", "saturated", "noisy"]),
    ),
    rhythms=st.sets(st.sampled_from(["ASYSTOLE", "BRADY", "TACHY", "VTACH", "VFIB", "AFIB"])),
)
def test_no_missing_or_stale_value_is_ever_called_normal(
    latest: dict[str, tuple[float | None, float]],
    status: str,
    silent_s: float,
    quality: dict[str, str],
    rhythms: set[str],
) -> None:
    numerics = {k: (v, NOW - int(age * S)) for k, (v, age) in latest.items()}
    out: RuleOutput = evaluate_bed(
        BED,
        POLICY,
        NOW,
        latest=numerics,
        status=status,
        last_seen_us=NOW - int(silent_s * S),
        rhythms=rhythms,
        quality=quality,
    )
    by_kind(out.conditions)
    for c in out.conditions:
        cp = POLICY.condition(c.kind)
        if cp.rule != "vital":
            continue
        # a verdict on a limit rests on a fresh value of one of the condition's parameters
        assert c.value is not None
        assert any(
            (v := numerics.get(k)) is not None
            and v[0] == c.value
            and NOW - v[1] <= POLICY.max_age_s[k] * S
            for k in cp.params
        )
        assert c.present == cp.beyond(c.value, cp.limit or 0.0)
    for c in out.conditions:
        cp = POLICY.condition(c.kind)
        if cp.rule == "unavailable":
            fresh = any(
                numerics.get(k, (None, 0))[0] is not None
                and NOW - numerics[k][1] <= POLICY.max_age_s[k] * S
                for k in cp.params
            )
            assert c.present == (not fresh and status != "standby")


def test_of_overlapping_arrhythmias_only_the_most_serious_sounds() -> None:
    """Arrhythmia alarm chains: VT is also a fast rhythm and asystole a long pause, so while the
    more serious condition is present the lesser one of its chain is reported ended."""

    def present(rhythms: list[str], verify: object = None) -> set[str]:
        out = rhythm_conditions(BED, POLICY, NOW, rhythms, verify)  # type: ignore[arg-type]
        return {c.kind for c in out.conditions if c.present}

    assert present(["VTACH", "TACHY"]) == {"VTACH"}
    assert present(["VFIB", "VTACH", "TACHY"]) == {"VFIB"}
    assert present(["ASYSTOLE", "PAUSE", "BRADY"]) == {"ASYSTOLE"}
    assert present(["TACHY"]) == {"TACHY"} and present(["PAUSE", "BRADY"]) == {"PAUSE", "BRADY"}
    assert present(["AFIB", "TACHY"]) == {"AFIB", "TACHY"}  # not one chain
    out = rhythm_conditions(BED, POLICY, NOW, ["VTACH", "TACHY"])
    (tachy,) = (c for c in out.conditions if c.kind == "TACHY")
    assert not tachy.present and "VTACH" in tachy.detail
    # a VT alarm that verification calls false does not silence the fast-rhythm alarm
    assert present(["VTACH", "TACHY"], lambda label: label != "VTACH") == {"TACHY"}


def test_an_unacknowledged_greater_alarm_keeps_the_lesser_one_quiet() -> None:
    """The VT flag may drop for a moment (or verification doubt one window) while the fast
    rhythm goes on: as long as the VT alarm is unacknowledged, no extreme-tachycardia alarm."""
    out = rhythm_conditions(BED, POLICY, NOW, ["TACHY"], unacknowledged={"VTACH"})
    (tachy,) = (c for c in out.conditions if c.kind == "TACHY")
    assert not tachy.present and tachy.detail == "superseded by VTACH"
    out = rhythm_conditions(BED, POLICY, NOW, ["TACHY"], unacknowledged={"AFIB", "HR_HIGH"})
    assert {c.kind for c in out.conditions if c.present} == {"TACHY"}


def test_absent_conditions_are_reported_only_for_the_kinds_under_way_when_asked() -> None:
    """``tracked`` (the kinds with an alarm or a pending onset) leaves out the reports that a
    rhythm or limit condition is absent for every other kind; present ones always come."""
    latest = {"HR": (80.0, NOW), "SPO2": (85.0, NOW)}
    full = by_kind(
        evaluate_bed(BED, POLICY, NOW, latest=latest, status="online", last_seen_us=NOW).conditions
    )
    assert full["HR_HIGH"] is False and full["VTACH"] is False and full["SPO2_LOW"] is True
    out = evaluate_bed(
        BED, POLICY, NOW, latest=latest, status="online", last_seen_us=NOW, tracked={"HR_HIGH"}
    )
    lean = by_kind(out.conditions)
    assert lean["HR_HIGH"] is False and lean["SPO2_LOW"] is True
    assert "VTACH" not in lean and "HR_LOW" not in lean
    assert {k for k, present in full.items() if present} == {
        k for k, present in lean.items() if present
    }
    rhythm = rhythm_conditions(BED, POLICY, NOW, ["VTACH"], tracked={"TACHY"})
    assert {c.kind: c.present for c in rhythm.conditions} == {"VTACH": True, "TACHY": False}


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.one_of(st.none(), st.floats(20, 220, allow_nan=False)),  # HR
            st.one_of(st.none(), st.floats(70, 100, allow_nan=False)),  # SpO2
            st.sets(st.sampled_from(["ASYSTOLE", "BRADY", "TACHY", "VTACH", "VFIB", "AFIB"])),
            st.integers(1, 8),  # seconds to the next evaluation
        ),
        min_size=1,
        max_size=40,
    )
)
def test_leaving_out_absent_conditions_of_untracked_kinds_changes_no_alarm(
    steps: list[tuple[float | None, float | None, set[str], int]],
) -> None:
    """Two state machines judge the same bed, one fed every condition, one fed the absent ones
    only for the kinds it tracks (as the alarm service does): the same events, in order."""
    from eicu.alarms.state import AlarmStateMachine

    every, lean = AlarmStateMachine(POLICY), AlarmStateMachine(POLICY)
    now = NOW
    latest: dict[str, tuple[float | None, int]] = {}
    for hr, spo2, rhythms, dt_s in steps:
        now += dt_s * S
        if hr is not None:
            latest["HR"] = (hr, now)
        if spo2 is not None:
            latest["SPO2"] = (spo2, now)
        events = []
        for machine, tracked in ((every, None), (lean, lean.tracked(BED))):
            out = evaluate_bed(
                BED,
                POLICY,
                now,
                latest=latest,
                status="online",
                last_seen_us=now,
                rhythms=rhythms,
                unacknowledged=machine.unacknowledged(BED),
                tracked=tracked,
            )
            events.append(machine.observe(list(out.conditions), now))
        assert events[0] == events[1]
        assert every.unacknowledged(BED) == lean.unacknowledged(BED)
        assert every.due_us(BED) == lean.due_us(BED)
        for machine in (every, lean):
            assert machine.tracked(BED) == {kind for _, kind in machine._tracks}
    # The index of the kinds under way follows the tracks through a restart and a hand-over.
    restored = AlarmStateMachine.restore(lean.snapshot())
    assert restored.tracked(BED) == {kind for _, kind in restored._tracks} <= lean.tracked(BED)
    assert restored.unacknowledged(BED) == lean.unacknowledged(BED)
    lean.hand_over(BED)
    assert lean.tracked(BED) == frozenset() and lean.unacknowledged(BED) == set()
    assert lean.due_us(BED) is None
