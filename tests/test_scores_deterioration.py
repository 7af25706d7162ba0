"""Deterioration signal on synthetic trends: rising NEWS2, HR/RR drifting above baseline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eicu.errors import ConfigError
from eicu.scores import news2
from eicu.scores.deterioration import (
    DeteriorationConfig,
    DeteriorationTracker,
    TrendParam,
    theil_sen_slope,
)

S = 1_000_000
T0 = 1_700_000_000 * S
MIN = 60 * S
H = 3600 * S


def minute_series(hours: float, hr, rr, seed=0):
    """Samples once a minute; hr/rr are functions of hours since start, plus noise."""
    rng = np.random.default_rng(seed)
    n = int(hours * 60)
    t = T0 + np.arange(n, dtype=np.int64) * MIN
    th = np.arange(n) / 60.0
    return (
        t,
        hr(th) + rng.normal(0, 3, n),
        rr(th) + rng.normal(0, 1, n),
    )


def first_active(tracker, t, hr, rr, chunk=5):
    """Feed in chunks; return (time, reasons) of the first active signal, or None."""
    for i in range(0, t.size, chunk):
        sig = tracker.feed(t[i : i + chunk], {"HR": hr[i : i + chunk], "RR": rr[i : i + chunk]})
        if sig.active:
            return sig.time_us, sig.reasons
    return None


def test_a_stable_patient_gives_no_signal():
    t, hr, rr = minute_series(24, lambda h: 80 + 0 * h, lambda h: 16 + 0 * h)
    tracker = DeteriorationTracker()
    assert first_active(tracker, t, hr, rr) is None
    st_hr = tracker.signal().trends["HR"]
    assert st_hr.baseline == pytest.approx(80, abs=1.5)
    assert st_hr.slope_per_h == pytest.approx(0, abs=1.0)


def test_heart_rate_drift_is_signalled_before_the_news2_threshold():
    # baseline 70 for 3 h, then +8 /min per hour (+2 per 15-min bin = 0.5 sigma at the floor of
    # 4 /min): the CUSUM adds 0.5 (k - 1) for the k-th bin and passes 5 after 6 bins (1.5 h)
    def hr(h):
        return 70 + 8 * np.clip(h - 3, 0, None)

    t, hrs, rrs = minute_series(8, hr, lambda h: 16 + 0 * h, seed=1)
    found = first_active(DeteriorationTracker(), t, hrs, rrs, chunk=1)
    assert found is not None
    when, reasons = found
    assert reasons == ("HR_up",)
    hours = (when - T0) / H
    assert 3.25 < hours <= 3 + 7 * 0.25  # 6 bins after the onset, + the bin that closes them
    assert hr(hours) < 91  # NEWS2 scores a pulse of 91 or more


def test_respiration_drift_inside_the_normal_news2_band():
    # 14 -> 20 breaths/min over 4 h: NEWS2 scores 0 throughout (12-20), the trend is found
    def rr(h):
        return 14 + 1.5 * np.clip(h - 2.5, 0, 4)

    t, hrs, rrs = minute_series(9, lambda h: 75 + 0 * h, rr, seed=2)
    found = first_active(DeteriorationTracker(), t, hrs, rrs)
    assert found is not None
    when, reasons = found
    assert reasons == ("RR_up",)
    assert rr((when - T0) / H) <= 20
    assert news2(rr=rr((when - T0) / H)).components["rr"] == 0


def test_chunking_does_not_change_the_result():
    t, hrs, rrs = minute_series(7, lambda h: 80 + 6 * np.clip(h - 3, 0, None), lambda h: 16 + 0 * h)
    whole = DeteriorationTracker()
    sig_whole = whole.feed(t, {"HR": hrs, "RR": rrs})
    rng = np.random.default_rng(5)
    cuts = np.sort(rng.choice(np.arange(1, t.size), 40, replace=False))
    chunked = DeteriorationTracker()
    sig = None
    for a, b in itertools.pairwise([0, *cuts.tolist(), t.size]):
        sig = chunked.feed(t[a:b], {"HR": hrs[a:b], "RR": rrs[a:b]})
    assert sig == sig_whole


def test_adding_samples_then_asking_is_feeding_them() -> None:
    t, hrs, rrs = minute_series(5, lambda h: 80 + 8 * np.clip(h - 2, 0, None), lambda h: 16 + 0 * h)
    fed = DeteriorationTracker()
    added = DeteriorationTracker()
    for i in range(t.size):  # one numerics message at a time, as the score stage feeds them
        want = fed.feed([t[i]], {"HR": [hrs[i]], "RR": [rrs[i]]})
        assert added.add([t[i]], {"HR": [hrs[i]], "RR": [rrs[i]]}) is None
        assert added.signal() == want
    assert want.active
    with pytest.raises(ValueError, match="time order"):
        added.add([t[0]], {"HR": [80.0]})


def test_gaps_are_not_imputed():
    # stable, then 5 hours without any heart rate, then stable again at the same level
    t, hrs, rrs = minute_series(12, lambda h: 80 + 0 * h, lambda h: 16 + 0 * h, seed=4)
    hrs[(t >= T0 + 4 * H) & (t < T0 + 9 * H)] = np.nan
    tracker = DeteriorationTracker()
    assert first_active(tracker, t, hrs, rrs) is None
    # the gap left no bins: about 7 h of 15-min bins were scored, not 12
    assert tracker.signal().trends["HR"].baseline is not None


def test_sparse_hourly_charting_still_builds_a_baseline():
    t = T0 + np.arange(12, dtype=np.int64) * H
    hr = np.array([80, 82, 79, 81, 80, 83, 90, 96, 102, 108, 112, 118], dtype=float)
    tracker = DeteriorationTracker()
    sig = tracker.feed(t, {"HR": hr})
    assert sig.trends["HR"].baseline == pytest.approx(80.5)
    assert sig.active and sig.reasons == ("HR_up",)
    assert sig.trends["RR"].baseline is None  # no RR fed: no baseline, no signal


def test_news2_rise_of_two_within_the_window():
    tracker = DeteriorationTracker()
    low = news2(rr=16, spo2=97, on_oxygen=False, sbp=120, hr=95, acvpu="A", temp_c=37.0)  # 1
    two = news2(rr=16, spo2=97, on_oxygen=False, sbp=105, hr=95, acvpu="A", temp_c=37.0)  # 2
    three = news2(rr=16, spo2=95, on_oxygen=False, sbp=105, hr=95, acvpu="A", temp_c=37.0)  # 3
    assert (low.total, two.total, three.total) == (1, 2, 3)
    assert not tracker.feed_score(T0, low).active
    assert not tracker.feed_score(T0 + H, two).active
    sig = tracker.feed_score(T0 + 2 * H, three)
    assert sig.active and sig.reasons == ("news2_rise",) and sig.news2_rise == 2
    # at 7.5 h the 1 and the 2 have left the 6 h window: 3 against the 3 of 2 h is no rise
    sig = tracker.feed_score(T0 + 15 * H // 2, three)
    assert not sig.active and sig.news2_rise == 0
    # after 6 h without a complete score there is nothing to rise from
    sig = tracker.feed_score(T0 + 14 * H, three)
    assert not sig.active and sig.news2_rise is None


def test_an_incomplete_news2_counts_as_its_lower_bound():
    tracker = DeteriorationTracker()
    base = news2(rr=16, spo2=97, on_oxygen=False, sbp=120, hr=70, acvpu="A", temp_c=37.0)
    tracker.feed_score(T0, base)  # 0, complete
    partial = news2(rr=22, spo2=97, on_oxygen=False, sbp=120, hr=70, acvpu="A")  # no temp: >= 2
    sig = tracker.feed_score(T0 + H, partial)
    assert sig.active and sig.news2 == 2 and sig.news2_rise == 2
    # an incomplete score never becomes the baseline: a partial 0 cannot hide a later rise
    tracker = DeteriorationTracker()
    tracker.feed_score(T0, news2(rr=16))  # incomplete
    sig = tracker.feed_score(T0 + H, base)
    assert sig.news2_rise is None and not sig.active


def test_a_downward_trend_configured_for_systolic_pressure():
    cfg = DeteriorationConfig(trends={"NIBP_SYS": TrendParam("down", min_sigma=5.0)})
    t = T0 + np.arange(16, dtype=np.int64) * (30 * MIN)
    sbp = np.array([130, 128, 131, 129, 130, 127, 124, 120, 116, 112, 109, 105, 102, 100, 98, 96.0])
    tracker = DeteriorationTracker(cfg)
    states = [tracker.feed(t[i : i + 1], {"NIBP_SYS": sbp[i : i + 1]}) for i in range(t.size)]
    fired = [s.time_us for s in states if s.active]
    assert fired, "a steady fall of 30 mmHg should be signalled"
    first = int(np.searchsorted(t, fired[0]))
    assert sbp[first] > 110  # before NEWS2 scores any point for systolic (<= 110)
    assert states[first].reasons == ("NIBP_SYS_down",)


def test_reset_baseline_after_review():
    t = T0 + np.arange(12, dtype=np.int64) * H
    hr = np.array([80, 82, 79, 81, 80, 83, 90, 96, 102, 108, 112, 118], dtype=float)
    tracker = DeteriorationTracker()
    assert tracker.feed(t, {"HR": hr}).active
    tracker.reset_baseline()
    t2 = t[-1] + np.arange(1, 8, dtype=np.int64) * H
    sig = tracker.feed(t2, {"HR": np.full(7, 118.0)})
    assert not sig.active  # the new level is the new baseline


def test_bad_input_is_refused():
    tracker = DeteriorationTracker()
    with pytest.raises(ValueError, match="time order"):
        tracker.feed(np.array([T0 + MIN, T0]), {"HR": np.array([80.0, 81.0])})
    tracker.feed(np.array([T0 + H]), {"HR": np.array([80.0])})
    with pytest.raises(ValueError, match="time order"):
        tracker.feed(np.array([T0]), {"HR": np.array([80.0])})
    with pytest.raises(ValueError, match="shape"):
        tracker.feed(np.array([T0 + 2 * H, T0 + 3 * H]), {"HR": np.array([80.0])})
    with pytest.raises(ValueError, match="NEWS2"):
        from eicu.scores import mews

        tracker.feed_score(T0, mews(rr=12))
    with pytest.raises(ConfigError, match="bin_s"):
        DeteriorationConfig(bin_s=0)
    with pytest.raises(ConfigError, match="trends"):
        DeteriorationConfig(trends={"PULSE": TrendParam("up", 1.0)})


def naive_theil_sen(t, y):
    slopes = [
        (y[j] - y[i]) / (t[j] - t[i])
        for i in range(len(t))
        for j in range(i + 1, len(t))
        if t[j] != t[i]
    ]
    return float(np.median(slopes)) if slopes else float("nan")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.floats(-100, 100)), min_size=2, max_size=20))
def test_theil_sen_matches_the_naive_twin(points):
    t = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points])
    got = theil_sen_slope(t, y)
    want = naive_theil_sen(t, y)
    if np.isnan(want):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_one_sample_at_a_time_is_the_same_as_arrays_of_one() -> None:
    """``add_one`` (the score stage's path, one numerics message) against ``add`` with arrays
    of one sample: the same signal after every message, through baselines, bins and NaNs."""
    rng = np.random.default_rng(7)
    ones, arrays = DeteriorationTracker(), DeteriorationTracker()
    t0 = 1_700_000_000_000_000
    n = 5 * 3600
    hr = 70 + 5 * rng.standard_normal(n) + np.linspace(0, 45, n)
    rr = 16 + 2 * rng.standard_normal(n)
    hr[rng.random(n) < 0.05] = np.nan
    signalled = 0
    for i in range(0, n, 3):
        t = t0 + i * 1_000_000
        h = None if rng.random() < 0.03 else float(hr[i])
        values = {"HR": h, "RR": float(rr[i]), "SPO2": 97.0}
        ones.add_one(t, values)
        arrays.add([t], {"HR": [np.nan if h is None else h], "RR": [float(rr[i])]})
        a, b = ones.signal(), arrays.signal()
        assert a == b, i
        signalled += a.active
    assert signalled > 0, "the rising heart rate is signalled"
    with pytest.raises(ValueError, match="time order"):
        ones.add_one(t0, {"HR": 80.0})
