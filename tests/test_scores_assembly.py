"""Assembly in time: latest values within their maximum age; missing and stale named, never 0."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eicu.errors import ConfigError
from eicu.scores import (
    NEWS2,
    AssemblyPolicy,
    assemble_arrays,
    assemble_mews,
    assemble_news2,
    assemble_qsofa,
    news2,
)

S = 1_000_000  # microseconds per second
NOW = 1_700_000_000 * S


def fresh_bed(**override):
    latest = {
        "RR": (16.0, NOW - 10 * S),
        "SPO2": (97.0, NOW - 10 * S),
        "O2": (0.0, NOW - 3600 * S),
        "NIBP_SYS": (125.0, NOW - 600 * S),
        "HR": (72.0, NOW - 2 * S),
        "ACVPU": (0.0, NOW - 3 * 3600 * S),
        "TEMP": (37.1, NOW - 2 * 3600 * S),
    }
    latest.update(override)
    return {k: v for k, v in latest.items() if v is not None}


def test_all_fresh_is_complete_and_equals_the_direct_score():
    r = assemble_news2(fresh_bed(), NOW)
    direct = news2(rr=16, spo2=97, on_oxygen=0, sbp=125, hr=72, acvpu=0, temp_c=37.1)
    assert r.complete and r.total == direct.total == 0
    assert r.components == direct.components
    assert r.missing == r.stale == r.invalid == ()
    assert r.sources == {
        "rr": "RR", "spo2": "SPO2", "on_oxygen": "O2", "sbp": "NIBP_SYS", "hr": "HR",
        "acvpu": "ACVPU", "temp_c": "TEMP",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("key", "input_name", "limit_s"),
    [
        ("RR", "rr", 300),
        ("SPO2", "spo2", 300),
        ("HR", "hr", 300),
        ("NIBP_SYS", "sbp", 1800),
        ("TEMP", "temp_c", 4 * 3600),
        ("ACVPU", "acvpu", 12 * 3600),
        ("O2", "on_oxygen", 12 * 3600),
    ],
)
def test_each_parameter_goes_stale_after_its_maximum_age(key, input_name, limit_s):
    value = fresh_bed()[key][0]
    at_limit = assemble_news2(fresh_bed(**{key: (value, NOW - limit_s * S)}), NOW)
    assert at_limit.complete
    past = assemble_news2(fresh_bed(**{key: (value, NOW - limit_s * S - 1)}), NOW)
    assert not past.complete
    assert past.total is None and past.band is None
    assert past.components[input_name] is None
    assert past.stale == (input_name,)
    assert past.missing == ()


def test_absent_and_none_are_missing_not_zero():
    r = assemble_news2(fresh_bed(TEMP=None), NOW)
    assert (r.complete, r.missing, r.components["temp_c"]) == (False, ("temp_c",), None)
    r = assemble_news2(fresh_bed(SPO2=(None, NOW)), NOW)  # the monitor said: no valid value
    assert r.missing == ("spo2",)
    r = assemble_news2({}, NOW)
    assert not r.complete and r.partial_total == 0
    assert r.missing == ("rr", "spo2", "on_oxygen", "sbp", "hr", "acvpu", "temp_c")


def test_impossible_values_are_invalid_and_unscored():
    r = assemble_news2(fresh_bed(SPO2=(120.0, NOW)), NOW)
    assert r.invalid == ("spo2",) and r.components["spo2"] is None and not r.complete
    r = assemble_news2(fresh_bed(ACVPU=(1.5, NOW)), NOW)
    assert r.invalid == ("acvpu",)


def test_values_from_the_future_are_not_used():
    ok = assemble_news2(fresh_bed(HR=(72.0, NOW + 30 * S)), NOW)  # within 60 s of clock skew
    assert ok.complete
    r = assemble_news2(fresh_bed(HR=(72.0, NOW + 3600 * S)), NOW)
    assert r.stale == ("hr",)


def test_systolic_prefers_a_fresh_arterial_line_then_the_cuff():
    r = assemble_news2(fresh_bed(ABP_SYS=(95.0, NOW - 5 * S)), NOW)
    assert (r.sources["sbp"], r.components["sbp"]) == ("ABP_SYS", 2)
    # arterial line stale (disconnected): the cuff reading, up to 30 min old, is used
    r = assemble_news2(fresh_bed(ABP_SYS=(95.0, NOW - 900 * S)), NOW)
    assert (r.sources["sbp"], r.components["sbp"]) == ("NIBP_SYS", 0)
    # arterial line reporting no value (flushing): the cuff
    r = assemble_news2(fresh_bed(ABP_SYS=(None, NOW)), NOW)
    assert r.sources["sbp"] == "NIBP_SYS"
    # both too old: stale
    r = assemble_news2(
        fresh_bed(ABP_SYS=(95.0, NOW - 900 * S), NIBP_SYS=(125.0, NOW - 3600 * S)), NOW
    )
    assert r.stale == ("sbp",)


def test_pulse_falls_back_to_the_oximeter():
    r = assemble_news2(fresh_bed(HR=(72.0, NOW - 600 * S), PR=(115.0, NOW - 1 * S)), NOW)
    assert (r.sources["hr"], r.components["hr"]) == ("PR", 2)


def test_oxygen_from_fio2_and_oxygen_wins_a_disagreement():
    r = assemble_news2(fresh_bed(O2=None, FIO2=(40.0, NOW - 60 * S)), NOW)
    assert (r.sources["on_oxygen"], r.components["on_oxygen"]) == ("FIO2", 2)
    r = assemble_news2(fresh_bed(O2=None, FIO2=(21.0, NOW - 60 * S)), NOW)
    assert r.components["on_oxygen"] == 0
    r = assemble_news2(fresh_bed(O2=(0.0, NOW), FIO2=(35.0, NOW)), NOW)
    assert (r.sources["on_oxygen"], r.components["on_oxygen"]) == ("FIO2", 2)
    r = assemble_news2(fresh_bed(O2=(1.0, NOW), FIO2=(21.0, NOW)), NOW)
    assert (r.sources["on_oxygen"], r.components["on_oxygen"]) == ("O2", 2)


def test_scale2_and_partial_band():
    bed = fresh_bed(SPO2=(97.0, NOW), O2=(1.0, NOW), RR=(26.0, NOW))
    r = assemble_news2(bed, NOW, spo2_scale=2)
    assert r.components["spo2"] == 3 and r.total == 3 + 2 + 3
    r = assemble_news2(fresh_bed(RR=(30.0, NOW), SPO2=(85.0, NOW), TEMP=None), NOW)
    assert (r.total, r.partial_total, r.min_band, r.missing) == (None, 6, "medium", ("temp_c",))


def test_mews_and_qsofa_assemble_only_their_inputs():
    bed = fresh_bed(SPO2=None, O2=None, RR=(24.0, NOW), NIBP_SYS=(98.0, NOW))
    q = assemble_qsofa(bed, NOW)
    assert (q.complete, q.total, q.band) == (True, 2, "positive")
    m = assemble_mews(bed, NOW)
    assert m.complete and m.total == 2 + 1  # rr 21-29: 2, sbp 81-100: 1


def test_a_custom_policy():
    policy = AssemblyPolicy(
        max_age_s={
            "HR": 60.0,
            "RR": 60.0,
            "SPO2": 60.0,
            "NIBP_SYS": 900.0,
            "TEMP": 3600.0,
            "ACVPU": 3600.0,
            "O2": 3600.0,
        },
        sources={
            "rr": ("RR",),
            "spo2": ("SPO2",),
            "on_oxygen": ("O2",),
            "sbp": ("NIBP_SYS",),
            "hr": ("HR",),
            "acvpu": ("ACVPU",),
            "temp_c": ("TEMP",),
        },
    )
    r = assemble_news2(fresh_bed(), NOW, policy)
    assert set(r.stale) == {"acvpu", "temp_c"}
    with pytest.raises(ConfigError, match=r"max_age_s\.HR"):
        AssemblyPolicy(max_age_s={"HR": 0.0})
    with pytest.raises(ConfigError, match=r"sources\.hr"):
        AssemblyPolicy(sources={"hr": ("HEART",)})


def test_arrays_of_beds_equal_one_bed_at_a_time():
    rng = np.random.default_rng(3)
    n = 300
    keys = ["RR", "SPO2", "O2", "FIO2", "NIBP_SYS", "ABP_SYS", "HR", "PR", "ACVPU", "TEMP"]
    gen = {
        "RR": lambda: rng.uniform(5, 35, n),
        "SPO2": lambda: rng.uniform(80, 100, n),
        "O2": lambda: rng.integers(0, 2, n).astype(float),
        "FIO2": lambda: rng.uniform(21, 60, n),
        "NIBP_SYS": lambda: rng.uniform(70, 230, n),
        "ABP_SYS": lambda: rng.uniform(70, 230, n),
        "HR": lambda: rng.uniform(30, 160, n),
        "PR": lambda: rng.uniform(30, 160, n),
        "ACVPU": lambda: rng.integers(0, 5, n).astype(float),
        "TEMP": lambda: rng.uniform(34, 41, n),
    }
    values = {}
    times = {}
    for k in keys:
        v = gen[k]()
        v[rng.random(n) < 0.1] = np.nan
        v[rng.random(n) < 0.02] = 500.0  # impossible
        values[k] = v
        times[k] = NOW - rng.integers(-120, 20 * 3600, n) * S
    batch = assemble_arrays(NEWS2, values, times, NOW)
    for i in range(n):
        latest = {
            k: (None if np.isnan(values[k][i]) else float(values[k][i]), int(times[k][i]))
            for k in keys
        }
        assert batch.row(i) == assemble_news2(latest, NOW)


@settings(max_examples=100, deadline=None)
@given(
    hr=st.floats(0, 350),
    age_s=st.integers(-3600, 3600),
    arterial=st.booleans(),
)
def test_never_scores_a_parameter_it_could_not_use(hr, age_s, arterial):
    bed = fresh_bed(HR=(hr, NOW - age_s * S))
    if arterial:
        bed["ABP_SYS"] = (120.0, NOW - age_s * S)
    r = assemble_news2(bed, NOW)
    usable = -60 <= age_s <= 300
    assert r.complete == usable
    assert (r.components["hr"] is None) == (not usable)
    assert ("hr" in r.stale) == (not usable)
    if arterial:
        assert r.sources["sbp"] == ("ABP_SYS" if usable else "NIBP_SYS")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="times_us"):
        assemble_arrays(NEWS2, {"HR": np.array([70.0, 80.0])}, {"HR": np.array([NOW])}, NOW)
    with pytest.raises(ValueError, match="beds"):
        assemble_arrays(
            NEWS2,
            {"HR": np.array([70.0, 80.0]), "RR": np.array([12.0])},
            {"HR": np.array([NOW, NOW]), "RR": np.array([NOW])},
            NOW,
        )


KEYS = ["RR", "SPO2", "O2", "FIO2", "NIBP_SYS", "ABP_SYS", "HR", "PR", "ACVPU", "TEMP"]
reading = st.one_of(
    st.none(),
    st.tuples(
        st.one_of(
            st.none(), st.floats(-10, 400), st.just(float("nan")), st.sampled_from([0.0, 1.0, 4.0])
        ),
        st.integers(-120, 13 * 3600),
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    beds=st.lists(st.fixed_dictionaries({k: reading for k in KEYS}), min_size=1, max_size=8),
    which=st.sampled_from(["news2", "mews", "qsofa"]),
    scale=st.sampled_from([1, 2]),
)
def test_one_bed_path_equals_the_many_bed_path(beds, which, scale):
    from eicu.scores import MEWS, QSOFA, assemble

    definition = {"news2": NEWS2, "mews": MEWS, "qsofa": QSOFA}[which]
    latests = [{k: (r[0], NOW - r[1] * S) for k, r in bed.items() if r is not None} for bed in beds]
    values = {
        k: np.array([b[k][0] if k in b and b[k][0] is not None else np.nan for b in latests])
        for k in KEYS
    }
    times = {k: np.array([b[k][1] if k in b else 0 for b in latests], dtype=np.int64) for k in KEYS}
    batch = assemble_arrays(definition, values, times, NOW, spo2_scale=scale)
    for i, latest in enumerate(latests):
        assert batch.row(i) == assemble(definition, latest, NOW, spo2_scale=scale)
