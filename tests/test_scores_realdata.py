"""NEWS2 assembled on real ICU stays (PhysioNet/CinC Challenge 2012 set-a), checked by hand.

Skipped when the data folder is absent. Reads the first stays straight from the tar.
"""

from __future__ import annotations

import numpy as np
import pytest

from eicu.datasets import challenge2012_outcomes, challenge2012_stays
from eicu.scores import NEWS2, AssemblyPolicy, assemble_arrays, assemble_news2
from tests.conftest import require_data
from tests.test_scores_tables import (
    naive_news2_hr,
    naive_news2_rr,
    naive_news2_sbp,
    naive_news2_spo2,
    naive_news2_temp,
)

pytestmark = pytest.mark.realdata

MIN_US = 60_000_000
POLICY = AssemblyPolicy(
    max_age_s={"HR": 5400.0, "RR": 5400.0, "SPO2": 5400.0, "ABP_SYS": 5400.0,
               "NIBP_SYS": 5400.0, "TEMP": 14400.0, "ACVPU": 43200.0, "O2": 43200.0,
               "FIO2": 43200.0},
    sources={"rr": ("RR",), "spo2": ("SPO2",), "on_oxygen": ("O2", "FIO2"),
             "sbp": ("ABP_SYS", "NIBP_SYS"), "hr": ("HR",), "acvpu": ("ACVPU",),
             "temp_c": ("TEMP",)},
)  # fmt: skip
NAMES = {"HR": "HR", "RespRate": "RR", "SaO2": "SPO2", "Temp": "TEMP", "SysABP": "ABP_SYS",
         "NISysABP": "NIBP_SYS", "FiO2": "FIO2", "MechVent": "O2", "GCS": "ACVPU"}  # fmt: skip


def series_of(raw):
    out = {}
    for name, key in NAMES.items():
        if name in raw:
            t, v = raw[name]
            keep = v > 0
            t, v = t[keep], v[keep]
            if name == "FiO2":
                v = v * 100
            if name == "GCS":
                v = np.where(v >= 15, 0.0, np.where(v >= 11, 2.0, np.where(v >= 6, 3.0, 4.0)))
            out[key] = (t, v)
    return out


def naive_latest(series, minute):
    """Plain Python: the last recorded value at or before ``minute`` of each parameter."""
    latest = {}
    for key, (t, v) in series.items():
        last = None
        for ti, vi in zip(t.tolist(), v.tolist(), strict=True):
            if ti <= minute:
                last = (vi, int(ti) * MIN_US)
        if last is not None:
            latest[key] = last
    return latest


def naive_components(latest, minute):
    """Score each NEWS2 part by hand from the chart, or None when it cannot be used."""

    def fresh(key, limit_min):
        if key not in latest:
            return None
        v, t_us = latest[key]
        return v if minute - t_us / MIN_US <= limit_min else None

    def chart(v, naive, tenth=False):
        if v is None:
            return None
        lo, hi = (10, 46) if tenth else (0, 350)
        if not lo <= v <= hi:
            return None  # impossible: not scored
        s = v * (10 if tenth else 1)
        f = int(np.floor(s))
        if abs(s - f - 0.5) <= 1e-9:
            return max(naive(f), naive(f + 1))
        return naive(int(np.floor(s + 0.5)))

    sbp = fresh("ABP_SYS", 90)
    if sbp is None:
        sbp = fresh("NIBP_SYS", 90)
    o2_votes = []  # oxygen wins: MechVent recorded, or FiO2 above 21 %
    if fresh("O2", 720) is not None:
        o2_votes.append(fresh("O2", 720))
    fio2 = fresh("FIO2", 720)
    if fio2 is not None:
        o2_votes.append(1.0 if fio2 > 21 else 0.0)
    on_oxygen = max(o2_votes) if o2_votes else None
    spo2 = fresh("SPO2", 90)
    acvpu = fresh("ACVPU", 720)
    return {
        "rr": chart(fresh("RR", 90), naive_news2_rr),
        "spo2": None if spo2 is None else chart(spo2, lambda x: naive_news2_spo2(x, 1, False)),
        "on_oxygen": None if on_oxygen is None else (2 if on_oxygen else 0),
        "sbp": chart(sbp, naive_news2_sbp),
        "hr": chart(fresh("HR", 90), naive_news2_hr),
        "acvpu": None if acvpu is None else (0 if acvpu == 0 else 3),
        "temp_c": chart(fresh("TEMP", 240), naive_news2_temp, tenth=True),
    }


@pytest.fixture(scope="module")
def stays():
    root = require_data("challenge2012/set-a.tar.gz", "challenge2012/Outcomes-a.txt")
    path = root / "challenge2012" / "set-a.tar.gz"
    return list(challenge2012_stays(path, limit=12)), challenge2012_outcomes(
        root / "challenge2012" / "Outcomes-a.txt"
    )


def test_first_stay_first_observation(stays):
    (rid, raw), *_ = stays[0]
    assert rid == 132539
    latest = naive_latest(series_of(raw), 7)
    r = assemble_news2(latest, 7 * MIN_US, POLICY)
    # 00:07: GCS 15, HR 73, NISysABP 147, RespRate 19, Temp 35.1; no saturation, no FiO2
    assert r.components == {
        "rr": 0, "spo2": None, "on_oxygen": None, "sbp": 0, "hr": 0, "acvpu": 0, "temp_c": 1,
    }  # fmt: skip
    assert (r.complete, r.partial_total, r.missing) == (False, 1, ("spo2", "on_oxygen"))
    assert r.sources["sbp"] == "NIBP_SYS"


def test_assembly_on_real_stays_matches_a_hand_reading(stays):
    stay_list, outcomes = stays
    checked = 0
    for rid, raw in stay_list:
        assert rid in outcomes
        series = series_of(raw)
        if not series:
            continue
        minutes = np.unique(np.concatenate([t for t, _ in series.values()]))[:40]
        values, times = {}, {}
        for key, (t, v) in series.items():
            idx = np.searchsorted(t, minutes, side="right") - 1
            values[key] = np.where(idx >= 0, v[np.maximum(idx, 0)], np.nan)
            times[key] = np.where(idx >= 0, t[np.maximum(idx, 0)], 0).astype(np.int64) * MIN_US
        batch = assemble_arrays(NEWS2, values, times, minutes.astype(np.int64) * MIN_US, POLICY)
        for i, minute in enumerate(minutes.tolist()):
            latest = naive_latest(series, minute)
            want = naive_components(latest, minute)
            got = batch.row(i)
            assert got.components == want, f"stay {rid} at minute {minute}"
            assert got == assemble_news2(latest, int(minute) * MIN_US, POLICY)
            checked += 1
    assert checked > 200
