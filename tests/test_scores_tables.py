"""Every band of every parameter, checked against the published tables written down here.

The charts are transcribed independently of eicu/scores/definitions.py, as slow obvious
``naive_*`` functions (if/elif chains read straight off the chart), and compared on every value
of the chart's grid over the whole physically possible range, on every boundary, and on
hypothesis-drawn values.

Sources: RCP NEWS2 (2017) Chart 1 (scoring), Charts 3-4 (thresholds, response, monitoring);
Subbe et al., QJM 2001;94:521-526, Table 1 (MEWS); Seymour et al., JAMA 2016;315:762-774
(qSOFA).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eicu.scores import mews, news2, qsofa

# ---------------------------------------------------------------- NEWS2 Chart 1, by hand


def naive_news2_rr(rr: int) -> int:
    if rr <= 8:
        return 3
    if rr <= 11:
        return 1
    if rr <= 20:
        return 0
    if rr <= 24:
        return 2
    return 3


def naive_news2_spo2(spo2: int, scale: int, on_oxygen: bool) -> int:
    if scale == 1:
        if spo2 <= 91:
            return 3
        if spo2 <= 93:
            return 2
        if spo2 <= 95:
            return 1
        return 0
    # scale 2
    if spo2 <= 83:
        return 3
    if spo2 <= 85:
        return 2
    if spo2 <= 87:
        return 1
    if spo2 <= 92:
        return 0
    if not on_oxygen:  # >= 93 on air
        return 0
    if spo2 <= 94:
        return 1
    if spo2 <= 96:
        return 2
    return 3


def naive_news2_o2(on_oxygen: bool) -> int:
    return 2 if on_oxygen else 0


def naive_news2_sbp(sbp: int) -> int:
    if sbp <= 90:
        return 3
    if sbp <= 100:
        return 2
    if sbp <= 110:
        return 1
    if sbp <= 219:
        return 0
    return 3


def naive_news2_hr(hr: int) -> int:
    if hr <= 40:
        return 3
    if hr <= 50:
        return 1
    if hr <= 90:
        return 0
    if hr <= 110:
        return 1
    if hr <= 130:
        return 2
    return 3


def naive_news2_acvpu(acvpu: str) -> int:
    return 0 if acvpu == "A" else 3  # C, V, P, U


def naive_news2_temp(tenths: int) -> int:
    # temperature on the chart's 0.1 °C grid, in tenths
    if tenths <= 350:
        return 3
    if tenths <= 360:
        return 1
    if tenths <= 380:
        return 0
    if tenths <= 390:
        return 1
    return 2


def naive_news2_band(total: int, top: int) -> str:
    if total >= 7:
        return "high"
    if total >= 5:
        return "medium"
    if top == 3:
        return "low-medium"
    return "low"


def naive_news2_monitoring(total: int, top: int) -> str:
    # Chart 4
    if total >= 7:
        return "continuous monitoring of vital signs"
    if total >= 5 or top == 3:
        return "minimum 1-hourly"
    if total >= 1:
        return "minimum 4-6-hourly"
    return "minimum 12-hourly"


# ---------------------------------------------------------------- MEWS (Subbe 2001), by hand


def naive_mews_sbp(sbp: int) -> int:
    if sbp <= 70:
        return 3
    if sbp <= 80:
        return 2
    if sbp <= 100:
        return 1
    if sbp <= 199:
        return 0
    return 2


def naive_mews_hr(hr: int) -> int:
    if hr <= 40:
        return 2
    if hr <= 50:
        return 1
    if hr <= 100:
        return 0
    if hr <= 110:
        return 1
    if hr <= 129:
        return 2
    return 3


def naive_mews_rr(rr: int) -> int:
    if rr < 9:
        return 2
    if rr <= 14:
        return 0
    if rr <= 20:
        return 1
    if rr <= 29:
        return 2
    return 3


def naive_mews_temp(tenths: int) -> int:
    if tenths < 350:
        return 2
    if tenths <= 384:
        return 0
    return 2


def naive_mews_acvpu(acvpu: str) -> int:
    return {"A": 0, "C": 1, "V": 1, "P": 2, "U": 3}[acvpu]


# ---------------------------------------------------------------- qSOFA (Seymour 2016), by hand


def naive_qsofa(rr: int, sbp: int, acvpu: str) -> int:
    return int(rr >= 22) + int(sbp <= 100) + int(acvpu != "A")


ACVPU = ["A", "C", "V", "P", "U"]
NORMAL = {"rr": 16, "spo2": 98, "on_oxygen": False, "sbp": 120, "hr": 70, "acvpu": "A"}
NORMAL_T = 37.0


def _grid(low: float, high: float, step: float = 1.0) -> np.ndarray:
    n = round((high - low) / step)
    return np.round(low + step * np.arange(n + 1), 1)


# ---------------------------------------------------------------- NEWS2 exhaustive


@pytest.mark.parametrize(
    ("name", "low", "high", "naive"),
    [
        ("rr", 0, 150, naive_news2_rr),
        ("sbp", 0, 350, naive_news2_sbp),
        ("hr", 0, 350, naive_news2_hr),
    ],
)
def test_news2_integer_parameters_every_value(name, low, high, naive):
    values = _grid(low, high)
    kw = {**NORMAL, "temp_c": NORMAL_T, name: values}
    out = news2(**kw)
    expected = np.array([naive(int(v)) for v in values])
    np.testing.assert_array_equal(out.components[name], expected)
    np.testing.assert_array_equal(out.total, expected)  # the other parameters score 0


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("on_oxygen", [False, True])
def test_news2_spo2_every_value_both_scales(scale, on_oxygen):
    values = _grid(0, 100)
    out = news2(**{**NORMAL, "temp_c": NORMAL_T, "spo2": values, "on_oxygen": on_oxygen},
                spo2_scale=scale)  # fmt: skip
    expected = np.array([naive_news2_spo2(int(v), scale, on_oxygen) for v in values])
    np.testing.assert_array_equal(out.components["spo2"], expected)
    np.testing.assert_array_equal(out.components["on_oxygen"], naive_news2_o2(on_oxygen))
    np.testing.assert_array_equal(out.total, expected + naive_news2_o2(on_oxygen))


def test_news2_spo2_scale2_published_rows():
    # The Chart 1 scale 2 rows quoted in words: 88-92 and >=93 on air score 0; on oxygen
    # 93-94 -> 1, 95-96 -> 2, >=97 -> 3.
    for spo2, air, oxygen in [
        (83, 3, 3), (84, 2, 2), (85, 2, 2), (86, 1, 1), (87, 1, 1), (88, 0, 0), (92, 0, 0),
        (93, 0, 1), (94, 0, 1), (95, 0, 2), (96, 0, 2), (97, 0, 3), (100, 0, 3),
    ]:  # fmt: skip
        assert news2(spo2=spo2, on_oxygen=False, spo2_scale=2).components["spo2"] == air
        assert news2(spo2=spo2, on_oxygen=True, spo2_scale=2).components["spo2"] == oxygen


def test_news2_temperature_every_tenth():
    values = _grid(10.0, 46.0, 0.1)
    out = news2(**NORMAL, temp_c=values)
    expected = np.array([naive_news2_temp(round(v * 10)) for v in values])
    np.testing.assert_array_equal(out.components["temp_c"], expected)


@pytest.mark.parametrize(
    ("temp_c", "points"),
    [(35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1), (39.1, 2)],
)
def test_news2_temperature_boundaries(temp_c, points):
    assert news2(temp_c=temp_c).components["temp_c"] == points


def test_news2_consciousness():
    for level, ordinal in zip(ACVPU, range(5), strict=True):
        assert news2(acvpu=level).components["acvpu"] == naive_news2_acvpu(level)
        assert news2(acvpu=ordinal).components["acvpu"] == naive_news2_acvpu(level)
        assert news2(acvpu=level.lower()).components["acvpu"] == naive_news2_acvpu(level)


def test_news2_air_or_oxygen():
    for value, points in [(False, 0), (True, 2), (0, 0), (1, 2), ("air", 0), ("oxygen", 2)]:
        assert news2(on_oxygen=value).components["on_oxygen"] == points


def test_news2_worked_example_from_the_brief():
    r = news2(rr=22, spo2=95, on_oxygen=False, sbp=105, hr=112, acvpu="A", temp_c=38.4)
    # rr 21-24: 2; SpO2 94-95: 1; air: 0; SBP 101-110: 1; pulse 111-130: 2; A: 0; 38.1-39.0: 1
    assert r.components == {
        "rr": 2, "spo2": 1, "on_oxygen": 0, "sbp": 1, "hr": 2, "acvpu": 0, "temp_c": 1,
    }  # fmt: skip
    assert r.total == 7
    assert r.band == "high"
    assert r.response == "emergency response"
    assert r.complete
    assert r.definition == "news2/rcp-2017"


# Every combination of aggregate 0..20 and a single red score: Charts 3 and 4.
def _news2_case(total: int, red: bool):
    """Inputs whose sub-scores sum to ``total`` with (red) or without a single 3."""
    # Build from parts: pick sub-scores greedily, respecting each parameter's possible points.
    options = {
        "rr": {0: 16, 1: 10, 2: 22, 3: 30},
        "spo2": {0: 98, 1: 95, 2: 92, 3: 85},
        "on_oxygen": {0: False, 2: True},
        "sbp": {0: 120, 1: 105, 2: 95, 3: 80},
        "hr": {0: 70, 1: 100, 2: 120, 3: 140},
        "acvpu": {0: "A", 3: "V"},
        "temp_c": {0: 37.0, 1: 38.5, 2: 39.5, 3: 34.0},
    }
    chosen = {k: 0 for k in options}
    remaining = total
    if red:
        chosen["rr"] = 3
        remaining -= 3
    for key in options:
        if red and key == "rr":
            continue
        cap = max(p for p in options[key] if red or p < 3)
        take = max((p for p in options[key] if p <= min(cap, remaining)), default=0)
        chosen[key] = take
        remaining -= take
    if remaining != 0:
        return None
    return {k: options[k][p] for k, p in chosen.items()}, chosen


# Without a 3 the most NEWS2 can reach is 6 parameters x 2 = 12; with one it is 3..20.
@pytest.mark.parametrize(
    ("total", "red"), [(t, False) for t in range(13)] + [(t, True) for t in range(3, 21)]
)
def test_news2_band_and_monitoring(total, red):
    case = _news2_case(total, red)
    assert case is not None
    kwargs, chosen = case
    r = news2(**kwargs)
    assert r.components == chosen
    assert r.total == total
    top = max(chosen.values())
    assert r.band == naive_news2_band(total, top)
    assert r.monitoring == naive_news2_monitoring(total, top)


# ---------------------------------------------------------------- MEWS exhaustive


@pytest.mark.parametrize(
    ("name", "low", "high", "naive"),
    [
        ("rr", 0, 150, naive_mews_rr),
        ("sbp", 0, 350, naive_mews_sbp),
        ("hr", 0, 350, naive_mews_hr),
    ],
)
def test_mews_integer_parameters_every_value(name, low, high, naive):
    values = _grid(low, high)
    base = {"rr": 12, "sbp": 120, "hr": 70, "temp_c": 37.0, "acvpu": "A"}
    out = mews(**{**base, name: values})
    expected = np.array([naive(int(v)) for v in values])
    np.testing.assert_array_equal(out.components[name], expected)
    np.testing.assert_array_equal(out.total, expected)


def test_mews_temperature_and_consciousness():
    values = _grid(10.0, 46.0, 0.1)
    out = mews(sbp=120, hr=70, rr=12, acvpu="A", temp_c=values)
    expected = np.array([naive_mews_temp(round(v * 10)) for v in values])
    np.testing.assert_array_equal(out.components["temp_c"], expected)
    for level in ACVPU:
        assert mews(acvpu=level).components["acvpu"] == naive_mews_acvpu(level)


def test_mews_bands():
    assert mews(sbp=120, hr=70, rr=12, temp_c=37.0, acvpu="A").band == "low"
    r = mews(sbp=75, hr=105, rr=22, temp_c=37.0, acvpu="A")  # 2 + 1 + 2
    assert (r.total, r.band) == (5, "high")
    r = mews(sbp=75, hr=105, rr=16, temp_c=37.0, acvpu="A")  # 2 + 1 + 1
    assert (r.total, r.band) == (4, "low")


# ---------------------------------------------------------------- qSOFA exhaustive


def test_qsofa_every_combination_near_the_thresholds():
    rr = np.repeat(np.arange(15, 30), 5 * 40)
    sbp = np.tile(np.repeat(np.arange(80, 120), 5), 15)
    acvpu = np.tile(np.arange(5), 15 * 40)
    out = qsofa(rr=rr, sbp=sbp, acvpu=acvpu)
    expected = np.array(
        [naive_qsofa(a, b, ACVPU[c]) for a, b, c in zip(rr, sbp, acvpu, strict=True)]
    )
    np.testing.assert_array_equal(out.total, expected)
    np.testing.assert_array_equal(out.band(), np.where(expected >= 2, "positive", "negative"))


# ---------------------------------------------------------------- hypothesis: arbitrary values


def _charted_worst(value: float, tenth: bool, naive) -> int:
    """The documented charting rule, by hand: nearest grid point, ties to the worse score."""
    s = value * (10 if tenth else 1)
    f = math.floor(s)
    if abs(s - f - 0.5) <= 1e-9:
        return max(naive(f), naive(f + 1))
    return naive(math.floor(s + 0.5))


@settings(max_examples=300, deadline=None)
@given(
    rr=st.floats(0, 150),
    spo2=st.floats(0, 100),
    sbp=st.floats(0, 350),
    hr=st.floats(0, 350),
    temp_c=st.floats(10, 46),
    acvpu=st.sampled_from(ACVPU),
    on_oxygen=st.booleans(),
    scale=st.sampled_from([1, 2]),
)
def test_news2_matches_the_chart_on_any_value(rr, spo2, sbp, hr, temp_c, acvpu, on_oxygen, scale):
    r = news2(rr=rr, spo2=spo2, on_oxygen=on_oxygen, sbp=sbp, hr=hr, acvpu=acvpu, temp_c=temp_c,
              spo2_scale=scale)  # fmt: skip
    expected = {
        "rr": _charted_worst(rr, False, naive_news2_rr),
        "spo2": _charted_worst(spo2, False, lambda v: naive_news2_spo2(v, scale, on_oxygen)),
        "on_oxygen": naive_news2_o2(on_oxygen),
        "sbp": _charted_worst(sbp, False, naive_news2_sbp),
        "hr": _charted_worst(hr, False, naive_news2_hr),
        "acvpu": naive_news2_acvpu(acvpu),
        "temp_c": _charted_worst(temp_c, True, naive_news2_temp),
    }
    assert r.components == expected
    assert r.total == sum(expected.values())
    assert r.band == naive_news2_band(r.total, max(expected.values()))


@settings(max_examples=200, deadline=None)
@given(
    rr=st.floats(0, 150),
    sbp=st.floats(0, 350),
    hr=st.floats(0, 350),
    temp_c=st.floats(10, 46),
    acvpu=st.sampled_from(ACVPU),
)
def test_mews_and_qsofa_match_the_tables_on_any_value(rr, sbp, hr, temp_c, acvpu):
    r = mews(sbp=sbp, hr=hr, rr=rr, temp_c=temp_c, acvpu=acvpu)
    expected = {
        "sbp": _charted_worst(sbp, False, naive_mews_sbp),
        "hr": _charted_worst(hr, False, naive_mews_hr),
        "rr": _charted_worst(rr, False, naive_mews_rr),
        "temp_c": _charted_worst(temp_c, True, naive_mews_temp),
        "acvpu": naive_mews_acvpu(acvpu),
    }
    assert r.components == expected
    assert r.band == ("high" if sum(expected.values()) >= 5 else "low")
    q = qsofa(rr=rr, sbp=sbp, acvpu=acvpu)
    assert q.total == _charted_worst(
        rr, False, lambda v: naive_qsofa(v, 120, "A")
    ) + _charted_worst(sbp, False, lambda v: naive_qsofa(0, v, "A")) + int(acvpu != "A")
