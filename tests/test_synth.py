"""The synthetic monitor: exact streaming, reproducibility, morphology, numerics, scenarios."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy.signal import butter, filtfilt, find_peaks, hilbert, welch

from simulators import _synth_kernels as K
from simulators.scenarios import SEPSIS_END, make_plan
from simulators.synth import (
    ABP_TABLE,
    BREATH_TABLE,
    DEFAULT_FS_HZ,
    ECG_TABLE_II,
    ECG_TABLE_T0_S,
    ECG_TABLE_V,
    MOTION_NOISE,
    SCENARIOS,
    TABLE_FS_HZ,
    WHITE_NOISE,
    BedSynth,
    BedSynthBank,
)

FS = DEFAULT_FS_HZ


def run(sim: BedSynth, seconds: float, chunk_s: float = 1.0) -> dict[str, NDArray[np.float64]]:
    """Generate ``seconds`` in chunks and join them."""
    parts: dict[str, list[NDArray[np.float64]]] = {k: [] for k in sim.fs_hz}
    left = seconds
    while left > 1e-12:
        step = min(chunk_s, left)
        for k, v in sim.waveforms(step).items():
            parts[k].append(v)
        left -= step
    return {k: np.concatenate(v) for k, v in parts.items()}


def times(sim: BedSynth, key: str, n: int, t0_s: float = 0.0) -> NDArray[np.float64]:
    return t0_s + np.arange(n) / sim.fs_hz[key]


def num(values: dict[str, float | None], key: str) -> float:
    """A numeric that must be present."""
    value = values[key]
    assert value is not None, key
    return value


def episode(sim: BedSynth, label: str) -> tuple[float, float]:
    (ep,) = [e for e in sim.plan.episodes if e.label == label]
    return ep.start_s, ep.end_s


# --- streaming -------------------------------------------------------------------------------


SHORT = {"onset_s": 3.0, "duration_s": 4.0}


@pytest.mark.parametrize(
    "scenario", ["af", "artefact", "asystole", "spo2_off", "vt", "vf", "pvc", "bigeminy", "paced"]
)
def test_any_chunking_gives_identical_samples(scenario: str) -> None:
    seconds = 50.0  # covers the motion artefact, which follows the lead-off by 40 s
    whole = run(BedSynth(scenario, 7, **SHORT), seconds, chunk_s=seconds)
    for chunk_s in (0.25, 1.0, 3.7):
        parts = run(BedSynth(scenario, 7, **SHORT), seconds, chunk_s=chunk_s)
        for key in whole:
            assert np.array_equal(parts[key], whole[key], equal_nan=True), (chunk_s, key)


def test_numerics_do_not_depend_on_chunking() -> None:
    a, b = BedSynth("vt", 2, **SHORT), BedSynth("vt", 2, **SHORT)
    run(a, 6.0, chunk_s=0.25)
    run(b, 6.0, chunk_s=6.0)
    assert a.numerics() == b.numerics()


def test_numerics_without_rendering_the_waveforms_are_the_same() -> None:
    """``SynthGroup.tick_numerics`` (the alarm-burden runs) skips the waveforms: every bed's
    numerics, times and connection are those of ``tick``, and the waveforms after a skip are
    those after rendering."""
    from eicu.models import BedKey
    from simulators.beds import SynthGroup
    from simulators.scenarios import SCENARIOS

    beds = [BedKey("sim", f"bed{i:02d}") for i in range(len(SCENARIOS))]

    def group() -> SynthGroup:
        seeds = list(range(1, len(beds) + 1))
        return SynthGroup(beds, list(SCENARIOS), seeds, 1_800_000_000_000_000, time_scale=30.0)

    rendered, skipped = group(), group()
    for _ in range(90):
        ticks = rendered.tick(1.0)
        fast = skipped.tick_numerics(1.0)
        assert [w for _, w, _, _ in fast] == [None] * len(beds)
        assert [(b, n, c) for b, _, n, c in fast] == [(b, n, c) for b, _, n, c in ticks]
    after_skip = skipped.bank.waveforms(2.0)
    for key, x in rendered.bank.waveforms(2.0).items():
        assert np.array_equal(after_skip[key], x, equal_nan=True), key


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, 1.3, allow_nan=False), min_size=1, max_size=12))
def test_sample_counts_are_exact_for_every_rate(chunks: list[float]) -> None:
    sim = BedSynth("stable", 1, fs_hz={"PLETH": 100.0, "RESP": 25.0})
    totals = dict.fromkeys(sim.fs_hz, 0)
    t = 0.0
    for c in chunks:
        block = sim.waveforms(c)
        t += c
        for key, fs in sim.fs_hz.items():
            totals[key] += block[key].shape[0]
            assert totals[key] == math.floor(t * fs + 1e-9)
    assert sim.t_s == pytest.approx(t)


def test_quarter_seconds_at_62_5_hz_carry_the_fraction() -> None:
    sim = BedSynth("stable", 0)
    counts = [sim.waveforms(0.25)["RESP"].shape[0] for _ in range(8)]
    assert counts == [15, 16, 15, 16, 16, 15, 16, 16]  # floor(k * 15.625) steps; 125 in 2 s
    assert [sim.waveforms(0.25)["ECG_II"].shape[0] for _ in range(4)] == [62, 63, 62, 63]


def test_same_seed_same_signals_other_seed_other_patient() -> None:
    a = run(BedSynth("stable", 11), 10.0)
    b = run(BedSynth("stable", 11), 10.0)
    c = run(BedSynth("stable", 12), 10.0)
    for key in a:
        assert np.array_equal(a[key], b[key])
        assert not np.allclose(a[key], c[key])


def test_a_bank_bed_equals_the_single_bed() -> None:
    scen, seeds = ["stable", "vt", "artefact"], [3, 4, 5]
    bank = BedSynthBank(scen, seeds, **SHORT)
    singles = [BedSynth(s, seed, **SHORT) for s, seed in zip(scen, seeds, strict=True)]
    for _ in range(12):
        block = bank.waveforms(0.5)
        for b, sim in enumerate(singles):
            own = sim.waveforms(0.5)
            for key in own:
                assert np.array_equal(block[key][b], own[key], equal_nan=True)
    assert bank.numerics() == [sim.numerics() for sim in singles]
    assert bank.truth(2) == singles[2].truth


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        BedSynth("nope")
    with pytest.raises(ValueError, match="fs_hz"):
        BedSynth(fs_hz={"ECG_II": 5.0})
    with pytest.raises(ValueError, match="fs_hz"):
        BedSynth(fs_hz={"CVP": 125.0})
    with pytest.raises(ValueError, match="time_scale"):
        BedSynth(time_scale=0.0)
    with pytest.raises(ValueError, match="n_seconds"):
        BedSynth().waveforms(-1.0)
    with pytest.raises(ValueError, match="n_seconds"):
        BedSynth().waveforms(math.nan)
    with pytest.raises(ValueError, match="seed"):
        BedSynthBank(["stable"], [1, 2])
    with pytest.raises(ValueError, match="seed"):
        BedSynth(seed=-1)


# --- morphology and consistency ---------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["stable", "af", "vt", "sepsis", "pvc", "paced"])
def test_truth_beats_are_the_r_peaks(scenario: str) -> None:
    sim = BedSynth(scenario, 5, time_scale=100.0)
    x = run(sim, 90.0)["ECG_II"]
    fs = sim.fs_hz["ECG_II"]
    beats = sim.truth_beats(1.0, 89.0).t_s
    assert beats.size > 80
    half = round(0.06 * fs)
    offsets = []
    for t in beats:
        i = round(t * fs)
        offsets.append(int(np.argmax(x[i - half : i + half + 1])) - half)
    assert max(abs(o) for o in offsets) <= 2  # within 8 ms at 250 Hz


def simple_qrs_detector(x: NDArray[np.float64], fs: float) -> NDArray[np.float64]:
    """Band-pass 5-20 Hz, smoothed squared slope, peaks 220 ms apart; R at the largest swing."""
    b, a = butter(2, [5.0 / (fs / 2), 20.0 / (fs / 2)], btype="band")
    y = filtfilt(b, a, x)
    w = round(0.1 * fs)
    energy = np.convolve(np.gradient(y) ** 2, np.ones(w) / w, "same")
    peaks, _ = find_peaks(energy, height=0.2 * np.percentile(energy, 99), distance=round(0.22 * fs))
    r = [max(p - w, 0) + int(np.argmax(np.abs(y[max(p - w, 0) : p + w]))) for p in peaks]
    return np.array(r) / fs


@pytest.mark.parametrize("scenario", ["stable", "sepsis", "af", "asystole", "bigeminy", "paced"])
def test_a_plain_qrs_detector_finds_exactly_the_truth_beats(scenario: str) -> None:
    sim = BedSynth(scenario, 4, time_scale=120.0)
    x = run(sim, 180.0)["ECG_II"]
    found = simple_qrs_detector(x, sim.fs_hz["ECG_II"])
    found = found[(found > 2.0) & (found < 178.0)]
    truth = sim.truth_beats(2.0, 178.0).t_s
    tp = sum(bool(np.any(np.abs(found - t) <= 0.05)) for t in truth)
    true_found = sum(bool(np.any(np.abs(truth - f) <= 0.05)) for f in found)
    assert tp / truth.size >= 0.995 and true_found / found.size >= 0.995


def test_leads_differ_and_have_physiological_amplitudes() -> None:
    sim = BedSynth("stable", 8)
    w = run(sim, 20.0)
    ii, v = w["ECG_II"], w["ECG_V"]
    assert 0.7 < np.ptp(ii) < 2.5 and 0.7 < np.ptp(v) < 2.5
    assert abs(float(np.corrcoef(ii, v)[0, 1])) < 0.6
    assert np.max(ii) > -np.min(ii)  # dominant R in II
    assert -np.min(v) > np.max(v)  # dominant S in V


def test_heart_rate_numeric_matches_the_beats() -> None:
    for scenario, seed in (("stable", 1), ("af", 2), ("vt", 3)):
        sim = BedSynth(scenario, seed)
        for _ in range(12):
            run(sim, 7.0)
            beats = sim.truth_beats(sim.t_s - 12.0, sim.t_s).t_s
            expected = 60.0 / np.mean(np.diff(beats[-9:]))
            hr = sim.numerics()["HR"]
            assert hr is not None and abs(hr - expected) <= 1.0, (scenario, sim.t_s)


def test_respiration_numeric_matches_the_resp_wave() -> None:
    for seed in range(3):
        sim = BedSynth("stable", seed)
        x = run(sim, 60.0)["RESP"]
        fs = sim.fs_hz["RESP"]
        peaks, _ = find_peaks(x, prominence=0.3 * np.ptp(x), distance=round(1.0 * fs))
        breath_s = np.diff(peaks[-5:]) / fs
        rr = sim.numerics()["RR"]
        assert rr is not None and abs(rr - 60.0 / breath_s.mean()) <= 2.0


def test_pulses_follow_the_qrs_after_a_transit_delay_and_numerics_match() -> None:
    sim = BedSynth("stable", 4)
    w = run(sim, 30.0)
    beats = sim.truth_beats(10.0, 28.0).t_s
    for key, low, high in (("ABP", 0.15, 0.45), ("PLETH", 0.2, 0.6)):
        fs = sim.fs_hz[key]
        x = w[key]
        delays = []
        for t in beats:
            i = round(t * fs)
            delays.append(np.argmax(x[i : i + round(0.6 * fs)]) / fs)
        assert low < np.median(delays) < high, key
        # the foot: the minimum just before the upstroke, 150-250 ms after the R peak
        feet = [np.argmin(x[round(t * fs) : round((t + 0.3) * fs)]) / fs for t in beats]
        assert 0.14 <= np.median(feet) <= 0.26, key
    abp = w["ABP"][-round(5 * sim.fs_hz["ABP"]) :]
    n = sim.numerics()
    assert n["ABP_SYS"] is not None and n["ABP_DIA"] is not None and n["ABP_MEAN"] is not None
    assert abs(n["ABP_SYS"] - np.max(abp)) < 6.0
    assert abs(n["ABP_DIA"] - np.min(abp)) < 6.0
    assert n["ABP_DIA"] < n["ABP_MEAN"] < n["ABP_SYS"]
    assert abs(n["ABP_MEAN"] - np.mean(abp)) < 5.0
    assert abs(num(n, "PR") - num(n, "HR")) <= 3.0  # windows lag by a beat


def test_templates_start_and_end_at_zero() -> None:
    for table in (ECG_TABLE_II, ECG_TABLE_V):
        assert not np.any(table[:, 0]) and not np.any(table[:, -1])
        assert np.abs(table[:, :2]).max() < 1e-7 and np.abs(table[:, -2:]).max() < 1e-7
    assert ABP_TABLE[0] == 0.0 and BREATH_TABLE[0] == 0.0 and BREATH_TABLE[-1] == 0.0


def test_abp_has_a_dicrotic_notch() -> None:
    peak = int(np.argmax(ABP_TABLE))
    after = ABP_TABLE[peak:]
    notch = int(np.argmin(after[: int(0.8 * after.size)]))
    assert notch > 0 and np.max(after[notch:]) > after[notch] + 0.02  # a rise after the notch


def test_numerics_are_there_from_the_first_moment() -> None:
    sim = BedSynth("stable", 2)
    n = sim.numerics()
    assert all(n[k] is not None for k in ("HR", "PR", "SPO2", "RR", "TEMP", "ABP_SYS"))
    assert "NIBP_SYS" not in n


def test_nibp_arrives_on_schedule_only() -> None:
    sim = BedSynth("stable", 3, nibp_interval_s=60.0, nibp_first_s=20.0)
    seen = []
    for second in range(1, 150):
        sim.waveforms(1.0)
        n = sim.numerics()
        if "NIBP_SYS" in n:
            seen.append(second)
            assert n["NIBP_SYS"] is not None and n["ABP_SYS"] is not None
            assert abs(n["NIBP_SYS"] - n["ABP_SYS"]) < 12.0
    assert seen == [20, 80, 140]
    rare = BedSynth("stable", 3, nibp_interval_s=60.0, nibp_first_s=20.0)
    rare.waveforms(150.0)  # readings at 20, 80 and 140 s: only the latest is reported
    assert "NIBP_SYS" in rare.numerics() and "NIBP_SYS" not in rare.numerics()


# --- scenarios -----------------------------------------------------------------------------


def test_stable_patients_are_healthy_and_differ_by_seed() -> None:
    values = []
    for seed in range(6):
        sim = BedSynth("stable", seed)
        run(sim, 30.0)
        n = sim.numerics()
        assert sim.truth == []
        assert 55 <= num(n, "HR") <= 95 and 10 <= num(n, "RR") <= 20
        assert 94 <= num(n, "SPO2") <= 100 and 36.0 <= num(n, "TEMP") <= 37.8
        assert 95 <= num(n, "ABP_SYS") <= 145 and num(n, "ACVPU") == 0.0 and num(n, "O2") == 0.0
        values.append(n["HR"])
    assert len(set(values)) > 3


def news2(n: dict[str, float | None]) -> int:
    """NEWS2 (RCP 2017), SpO2 scale 1, from a complete set of numerics."""

    def band(x: float, table: list[tuple[float, float, int]]) -> int:
        return next(p for lo, hi, p in table if lo <= x <= hi)

    inf = math.inf
    rr = band(num(n, "RR"), [(-inf, 8, 3), (9, 11, 1), (12, 20, 0), (21, 24, 2), (25, inf, 3)])
    spo2 = band(num(n, "SPO2"), [(-inf, 91, 3), (92, 93, 2), (94, 95, 1), (96, inf, 0)])
    sbp = band(
        num(n, "ABP_SYS"),
        [(-inf, 90, 3), (91, 100, 2), (101, 110, 1), (111, 219, 0), (220, inf, 3)],
    )
    hr = band(
        num(n, "HR"),
        [(-inf, 40, 3), (41, 50, 1), (51, 90, 0), (91, 110, 1), (111, 130, 2), (131, inf, 3)],
    )
    temp = band(
        num(n, "TEMP"),
        [(-inf, 35.0, 3), (35.1, 36.0, 1), (36.1, 38.0, 0), (38.1, 39.0, 1), (39.1, inf, 2)],
    )
    o2 = 2 if n["O2"] == 1.0 else 0
    acvpu = 3 if (n["ACVPU"] or 0.0) > 0 else 0
    return rr + spo2 + sbp + hr + temp + o2 + acvpu


def test_sepsis_deteriorates_to_its_documented_end_state() -> None:
    sim = BedSynth("sepsis", 6, time_scale=120.0)
    run(sim, 5.0)
    start = sim.numerics()
    assert news2(start) <= 3
    onset_s, end_s = episode(sim, "SEPSIS")
    assert (onset_s, end_s) == (600.0 / 120.0, (600.0 + 6 * 3600.0) / 120.0)
    trend = []
    while sim.t_s < end_s + 10.0:
        run(sim, 10.0, chunk_s=2.5)
        trend.append(sim.numerics())
    end = trend[-1]
    assert abs(num(end, "HR") - SEPSIS_END.hr_bpm) <= 6
    assert abs(num(end, "RR") - SEPSIS_END.rr_bpm) <= 3
    assert abs(num(end, "SPO2") - SEPSIS_END.spo2_pct) <= 2
    assert abs(num(end, "ABP_SYS") - SEPSIS_END.sys_mmhg) <= 8
    assert abs(num(end, "TEMP") - SEPSIS_END.temp_c) <= 0.2
    assert end["O2"] == 1.0 and end["ACVPU"] == 1.0
    assert news2(end) >= 7
    hr = [num(n, "HR") for n in trend]
    assert hr[len(hr) // 2] > num(start, "HR") and hr[-1] > hr[len(hr) // 2]


def test_af_is_irregular_without_p_waves_and_with_a_pulse_deficit() -> None:
    for seed in range(3):
        sim = BedSynth("af", seed)
        w = run(sim, 150.0)
        onset_s, end_s = episode(sim, "AFIB")
        assert (onset_s, end_s) == (60.0, math.inf)
        beats = sim.truth_beats()
        sinus = beats.t_s[(beats.t_s > 5.0) & (beats.t_s < onset_s)]
        af = beats.t_s[beats.t_s >= onset_s]
        assert set(beats.kind[beats.t_s >= onset_s].tolist()) == {1}
        cv = lambda t: float(np.std(np.diff(t)) / np.mean(np.diff(t)))  # noqa: E731
        assert cv(sinus) < 0.07 and cv(af) > 0.15
        x, fs = w["ECG_II"], sim.fs_hz["ECG_II"]
        assert p_wave_mv(x, fs, sinus[1:]) > 0.07
        assert abs(p_wave_mv(x, fs, af[1:-2])) < 0.03
        # fibrillatory waves: the T-Q segments of long intervals are no longer quiet
        noise_mv = 0.012 * sim.plan.patient.ecg_gain[1]  # the white noise of lead V
        assert tq_activity_mv(w["ECG_V"], fs, af, 0.1) > 3.0 * noise_mv
        pulses = beats.pulse[beats.t_s >= onset_s]
        assert 0 < np.count_nonzero(~pulses) < 0.3 * pulses.size
        n = sim.numerics()
        assert n["PR"] is not None and n["HR"] is not None and n["PR"] <= n["HR"]


def p_wave_mv(x: NDArray[np.float64], fs: float, beats: NDArray[np.float64]) -> float:
    """Ensemble P-wave amplitude: the mean 140-190 ms before R above the PR-segment chord."""
    rows = []
    for t in beats:
        i = round(t * fs)
        seg = x[i - round(0.30 * fs) : i - round(0.05 * fs) + 1]
        chord = np.linspace(seg[0], seg[-1], seg.size)
        rows.append(seg - chord)
    m = np.mean(rows, axis=0)
    t = np.arange(m.size) / fs - 0.30
    return float(m[(t >= -0.19) & (t <= -0.14)].mean())


def tq_activity_mv(
    x: NDArray[np.float64], fs: float, beats: NDArray[np.float64], before_next_s: float
) -> float:
    """RMS of the linearly detrended T-Q gaps (0.45 s after an R to ``before_next_s`` before
    the next R), which hold only noise in sinus rhythm."""
    parts = []
    for a, b in itertools.pairwise(beats):
        seg = x[round((a + 0.45) * fs) : round((b - before_next_s) * fs)]
        if seg.size >= round(0.1 * fs):
            tt = np.arange(seg.size)
            parts.append(seg - np.polyval(np.polyfit(tt, seg, 1), tt))
    assert len(parts) >= 5
    return float(np.sqrt(np.mean(np.concatenate(parts) ** 2)))


def qrs_width_s(x: NDArray[np.float64], fs: float, t_s: float) -> float:
    """Span around R where the (3-point smoothed) slope exceeds 25 % of the beat's steepest."""
    i = round(t_s * fs)
    seg = np.convolve(x[i - round(0.15 * fs) : i + round(0.15 * fs) + 1], np.ones(3) / 3, "same")
    d = np.abs(np.diff(seg))[2:-2]
    idx = np.nonzero(d > 0.25 * d.max())[0]
    return float((idx[-1] - idx[0] + 1) / fs)


def p_residual_mv(
    x: NDArray[np.float64], fs: float, r_s: NDArray[np.float64], at_s: NDArray[np.float64]
) -> float:
    """Mean of x at each time minus x at the same phase of the previous ventricular cycle."""
    out = []
    for t in at_s:
        k = int(np.searchsorted(r_s, t, side="right")) - 1
        if 1 <= k < r_s.size - 1:
            out.append(x[round(t * fs)] - x[round((r_s[k - 1] + t - r_s[k]) * fs)])
    return float(np.mean(out))


def test_vt_is_fast_and_wide_and_pressure_falls() -> None:
    for seed in range(3):
        sim = BedSynth("vt", seed)
        w = run(sim, 100.0)
        start_s, end_s = episode(sim, "VTACH")
        beats = sim.truth_beats()
        inside = (beats.t_s >= start_s) & (beats.t_s < end_s)
        assert set(beats.kind[inside].tolist()) == {2} and set(beats.kind[~inside].tolist()) == {0}
        vt = beats.t_s[inside]
        assert 150.0 <= 60.0 / np.mean(np.diff(vt)) <= 200.0
        x, fs = w["ECG_II"], sim.fs_hz["ECG_II"]
        assert min(qrs_width_s(x, fs, t) for t in vt[1:-1]) > 0.12
        # detectable: a plain detector run on the run alone finds every complex
        run_x = x[round((start_s + 1.0) * fs) : round((end_s - 1.0) * fs)]
        found = simple_qrs_detector(run_x, fs) + start_s + 1.0
        truth = vt[(vt > start_s + 2.0) & (vt < end_s - 2.0)]
        found = found[(found > start_s + 2.0) & (found < end_s - 2.0)]
        assert found.size == truth.size and np.max(np.abs(found - truth)) <= 0.05
        # AV dissociation: sinus P waves at their own rate, seen once the (regular) ventricular
        # activity of the previous cycle is subtracted
        p_s = np.array(sim.plan.dissociated_p_s(start_s, end_s))
        assert p_s.size > 20
        assert p_residual_mv(x, fs, vt, p_s) > 0.08
        assert abs(p_residual_mv(x, fs, vt, p_s - 0.1)) < 0.04
        normal = beats.t_s[(beats.t_s > 5.0) & (beats.t_s < start_s - 1.0)]
        assert max(qrs_width_s(x, fs, t) for t in normal) < 0.12
        abp, fa = w["ABP"], sim.fs_hz["ABP"]
        before = abp[round((start_s - 10) * fa) : round(start_s * fa)]
        late = abp[round((end_s - 10) * fa) : round(end_s * fa)]
        assert np.max(late) < np.max(before) - 20.0
    # the numerics during the run
    sim = BedSynth("vt", 0)
    run(sim, 80.0)
    n = sim.numerics()
    assert 150 <= num(n, "HR") <= 200 and num(n, "ABP_SYS") < 100
    assert sim.truth[0].label == "VTACH"


@pytest.mark.parametrize("recovers", [True, False])
def test_asystole_is_flat_without_pulses(recovers: bool) -> None:
    duration_s = 8.0 if recovers else math.inf
    sim = BedSynth("asystole", 9, duration_s=duration_s)
    w = run(sim, 90.0)
    start_s, end_s = episode(sim, "ASYSTOLE")
    beats = sim.truth_beats().t_s
    before = beats[beats < start_s]
    after = beats[beats >= start_s]
    if recovers:
        assert after[0] == end_s and after.size > 20
    else:
        assert after.size == 0
    gap_end = after[0] if after.size else sim.t_s
    assert gap_end - before[-1] > 4.0
    x, fs = w["ECG_II"], sim.fs_hz["ECG_II"]
    quiet = x[round((before[-1] + 0.6) * fs) : round((gap_end - 0.35) * fs)]
    assert np.ptp(quiet) < 0.35  # no QRS: baseline wander and noise only
    peaks, _ = find_peaks(x, height=0.6)
    peak_s = peaks / fs
    assert not np.any((peak_s > before[-1] + 0.1) & (peak_s < gap_end - 0.1))
    abp = w["ABP"][round((before[-1] + 5.0) * 125) : round((gap_end - 0.1) * 125)]
    assert np.max(abp) < 35.0
    probe = BedSynth("asystole", 9, duration_s=duration_s)
    run(probe, start_s + 6.0)
    n = probe.numerics()
    assert n["HR"] == 0.0 and n["PR"] == 0.0 and n["SPO2"] is None


def test_breathing_goes_on_and_memory_stays_bounded_without_beats() -> None:
    sim = BedSynth("asystole", 3, duration_s=math.inf)
    w = run(sim, 300.0)
    resp = w["RESP"][-round(30.0 * sim.fs_hz["RESP"]) :]
    assert np.ptp(resp) > 0.5 * sim.plan.patient.resp_amp
    bank = sim._bank
    for rows in (bank.ecg, bank.beats, bank.abp, bank.ppg, bank.breaths):
        assert int(rows.count[0]) <= 64


def test_artefact_lead_off_is_nan_exactly_and_pulses_continue() -> None:
    sim = BedSynth("artefact", 2)
    w = run(sim, 110.0, chunk_s=0.3)
    off_start, off_end = episode(sim, "LEAD_OFF")
    art_start, art_end = episode(sim, "ARTEFACT")
    for key in ("ECG_II", "ECG_V"):
        t = times(sim, key, w[key].size)
        assert np.array_equal(np.isnan(w[key]), (t >= off_start) & (t < off_end)), key
        x = w[key]
        noisy = x[(t > art_start + 1.0) & (t < art_end - 1.0)]
        calm = x[(t > 10.0) & (t < off_start)]
        assert np.std(noisy) > 2.0 * np.std(calm)
        diff_std = np.std(np.diff(noisy)) / np.std(np.diff(calm))
        assert diff_std > 1.5  # broadband: fast changes too
    for key in ("PLETH", "ABP"):
        t = times(sim, key, w[key].size)
        assert not np.isnan(w[key]).any()
        x = w[key][(t > art_start) & (t < art_end)]
        peaks, _ = find_peaks(x, prominence=0.5 * np.ptp(x), distance=round(0.3 * sim.fs_hz[key]))
        beats = sim.truth_beats(art_start, art_end)
        assert abs(peaks.size - np.count_nonzero(beats.pulse)) <= 2, key
    probe = BedSynth("artefact", 2)
    run(probe, off_start + 2.0)
    n = probe.numerics()
    assert n["HR"] is None and n["PR"] is not None and n["SPO2"] is not None


def test_spo2_probe_off_blanks_pleth_and_saturation() -> None:
    sim = BedSynth("spo2_off", 4)
    start_s, end_s = episode(sim, "SPO2_PROBE_OFF")
    w = {k: [] for k in sim.fs_hz}  # type: dict[str, list[NDArray[np.float64]]]
    states = []
    for _ in range(100):
        for k, v in sim.waveforms(1.0).items():
            w[k].append(v)
        n = sim.numerics()
        states.append((sim.t_s, n["SPO2"], n["PR"]))
    pleth = np.concatenate(w["PLETH"])
    t = times(sim, "PLETH", pleth.size)
    assert np.array_equal(np.isnan(pleth), (t >= start_s) & (t < end_s))
    assert not np.isnan(np.concatenate(w["ABP"])).any()
    for t_s, spo2, pr in states:
        inside = start_s <= t_s < end_s
        assert (spo2 is None) == inside and (pr is None) == inside


def test_disconnect_goes_offline_and_back() -> None:
    sim = BedSynth("disconnect", 1)
    start_s, end_s = episode(sim, "GATEWAY_OFFLINE")
    grid = np.arange(0.0, 150.0, 0.5)
    online = np.array([sim.connected(t) for t in grid])
    assert np.array_equal(online, (grid < start_s) | (grid >= end_s))
    assert sim.truth == []
    run(sim, start_s + 1.0)
    assert [e.label for e in sim.truth] == ["GATEWAY_OFFLINE"]


def test_every_scenario_runs_and_events_fall_in_the_first_minutes() -> None:
    for scenario in SCENARIOS:
        plan = make_plan(scenario, 0, time_scale=120.0)
        for ep in plan.episodes:
            assert 0.0 < ep.start_s <= 180.0, (scenario, ep)
        sim = BedSynth(scenario, 0, time_scale=120.0)
        w = run(sim, 5.0)
        assert all(v.shape[0] == math.floor(5.0 * sim.fs_hz[k]) for k, v in w.items())


# --- kernels against naive twins -------------------------------------------------------------


def naive_add_templates(out, n0, fs, ev_t, ev_kind, ev_amp, count, table, t0, table_fs):
    for b in range(out.shape[0]):
        for i in range(out.shape[1]):
            t = (n0 + i) / fs
            for k in range(count[b]):
                start = ev_t[b, k] + t0[ev_kind[b, k]]
                j = math.floor((t - start) * table_fs + 0.5)
                if 0 <= j < table.shape[1] and start <= t:
                    out[b, i] += ev_amp[b, k] * table[ev_kind[b, k], j]


def naive_add_cycles(out, n0, fs, foot, sys_s, lo, pp, tau, floor, count, table, gain):
    for b in range(out.shape[0]):
        if count[b] == 0:
            continue
        for i in range(out.shape[1]):
            t = (n0 + i) / fs
            started = [k for k in range(count[b]) if foot[b, k] <= t]
            k = started[-1] if started else 0
            u = t - foot[b, k]
            if u < 0:
                v = lo[b, k]
            elif u < sys_s[b, k]:
                v = (
                    lo[b, k]
                    + pp[b, k] * table[math.floor(u / sys_s[b, k] * (table.size - 1) + 0.5)]
                )
            else:
                top = lo[b, k] + pp[b, k] * table[-1]
                v = floor[b] + (top - floor[b]) * math.exp(-(u - sys_s[b, k]) / tau[b, k])
            out[b, i] += gain[b] * v


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 400), st.integers(1, 120))
def test_kernels_match_naive_twins(seed: int, n0: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    beds, cap, fs = 2, 6, 250.0
    ev_t = np.sort(rng.uniform(0.0, 2.5, (beds, cap)), axis=1)
    kind = rng.integers(0, ECG_TABLE_II.shape[0], (beds, cap))
    amp = rng.uniform(0.5, 1.5, (beds, cap))
    count = rng.integers(0, cap + 1, beds)
    fast = np.zeros((beds, n))
    slow = np.zeros((beds, n))
    args = (ev_t, kind, amp, count, ECG_TABLE_II, ECG_TABLE_T0_S, TABLE_FS_HZ)
    K.add_templates(fast, n0, fs, *args)
    naive_add_templates(slow, n0, fs, *args)
    # a sample exactly on the edge of a template's support may round either way; the
    # templates are zero there to within 1e-7 mV
    np.testing.assert_allclose(fast, slow, atol=1e-7)

    foot = np.cumsum(rng.uniform(0.3, 1.0, (beds, cap)), axis=1) - 0.5
    sys_s = rng.uniform(0.15, 0.3, (beds, cap))
    lo, pp = rng.uniform(60, 80, (beds, cap)), rng.uniform(20, 50, (beds, cap))
    tau = rng.uniform(0.5, 2.0, (beds, cap))
    floor, gain = np.full(beds, 18.0), rng.uniform(0.5, 2.0, beds)
    for table in (ABP_TABLE, BREATH_TABLE):
        fast = np.zeros((beds, n))
        slow = np.zeros((beds, n))
        cyc = (foot, sys_s, lo, pp, tau, floor, count, table, gain)
        K.add_cycles(fast, n0, fs / 2, *cyc)
        naive_add_cycles(slow, n0, fs / 2, *cyc)
        np.testing.assert_allclose(fast, slow, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.1, 5.0), min_size=0, max_size=15),
    st.floats(0.0, 8.0),
)
def test_rates_match_a_naive_monitor(intervals: list[float], extra_s: float) -> None:
    t = np.cumsum([0.0, *intervals])
    now = float(t[-1]) + extra_s
    got = K.rates_bpm(t[None, :], np.array([t.size]), now, 8, 0.2, 3.0)[0]
    iv = np.diff(t)[-8:]
    iv = iv[(iv >= 0.2) & (iv <= 3.0)]
    limit = max(4.0, 2.5 * iv.mean()) if iv.size else 4.0
    if extra_s > limit:
        assert got == 0.0
    elif iv.size == 0:
        assert math.isnan(got)
    else:
        assert got == math.floor(60.0 / iv.mean() + 0.5) or abs(got - 60.0 / iv.mean()) <= 0.5


def naive_episode_effects(out, n0, fs, start, end, count, f_hz, amp, noise, off):
    """Fibrillatory waves, then bursts of table noise, then NaN, sample by sample."""
    fw, bursts, blanked = out.copy(), out.copy(), out.copy()
    for b in range(out.shape[0]):
        for i in range(out.shape[1]):
            n = n0 + i
            t = n / fs
            for e in range(count[b]):
                if not start[b, e] <= t < end[b, e]:
                    continue
                fade = min(1.0, t - start[b, e], end[b, e] - t)
                theta = 2 * math.pi * f_hz[b] * t + 0.4 / 0.3 * math.sin(2 * math.pi * 0.3 * t)
                a = amp[b] * fade * (1.0 + 0.3 * math.sin(2 * math.pi * 0.17 * t))
                fw[b, i] += a * (math.sin(theta) + 0.35 * math.sin(2 * theta + 0.7))
                fade = min(1.0, 2 * (t - start[b, e]), 2 * (end[b, e] - t))
                bursts[b, i] += amp[b] * fade * noise[(off[b] + n) % noise.size]
                blanked[b, i] = math.nan
    return fw, bursts, blanked


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 3000), st.integers(1, 300))
def test_episode_kernels_match_naive_twins(seed: int, n0: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    beds, fs = 3, 250.0
    start = rng.uniform(0.0, 14.0, (beds, 2))
    end = start + rng.uniform(0.0, 3.0, (beds, 2))
    end[0, 0] = math.inf
    count = rng.integers(0, 3, beds)
    f_hz, amp = rng.uniform(4.0, 8.0, beds), rng.uniform(0.05, 1.0, beds)
    off = rng.integers(0, 1 << 20, beds)
    base = rng.standard_normal((beds, n))
    want = naive_episode_effects(base, n0, fs, start, end, count, f_hz, amp, MOTION_NOISE, off)
    got = [base.copy(), base.copy(), base.copy()]
    K.add_fwaves(got[0], n0, fs, start, end, count, f_hz, amp)
    K.add_bursts(got[1], n0, fs, start, end, count, amp, MOTION_NOISE, off)
    K.blank(got[2], n0, fs, start, end, count)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    noisy, drift = base.copy(), base.copy()
    K.add_noise(noisy, n0, amp, WHITE_NOISE, off)
    idx = (off[:, None] + n0 + np.arange(n)[None, :]) % WHITE_NOISE.size
    np.testing.assert_array_equal(noisy, base + amp[:, None] * WHITE_NOISE[idx])
    K.add_drift(drift, n0, fs, amp, f_hz, f_hz)
    t = (n0 + np.arange(n)) / fs
    expected = base + amp[:, None] * np.sin(2 * np.pi * f_hz[:, None] * t + f_hz[:, None])
    np.testing.assert_allclose(drift, expected, rtol=1e-12, atol=1e-12)


def test_events_at_puts_every_scenario_event_at_one_moment() -> None:
    """``events_at_s`` moves each scenario's event to the same simulated second; the sepsis
    course (in scenario time) starts then too."""
    from simulators.synth import BedSynthBank

    scenarios = ["vt", "af", "asystole", "sepsis", "spo2_off", "disconnect", "stable"]
    bank = BedSynthBank(scenarios, list(range(len(scenarios))), time_scale=600.0, events_at_s=7.0)
    starts = {p.scenario: [e.start_s for e in p.episodes] for p in bank.plans}
    assert starts == {
        "vt": [7.0], "af": [7.0], "asystole": [7.0], "sepsis": [7.0], "spo2_off": [7.0],
        "disconnect": [7.0], "stable": [],
    }  # fmt: skip
    sepsis = bank.plans[3]
    assert sepsis.episodes[0].end_s == pytest.approx(7.0 + 6 * 3600.0 / 600.0)
    assert BedSynth("sepsis", 3, time_scale=600.0, events_at_s=7.0).plan.episodes[0].start_s == 7.0
    with pytest.raises(ValueError, match="events_at_s"):
        BedSynthBank(["vt"], [1], events_at_s=5.0, onset_s=3.0)


# --- the published features of each simulated rhythm -----------------------------------------


def dominant_hz(
    x: NDArray[np.float64], fs: float, lo_hz: float = 1.0, hi_hz: float = 30.0
) -> float:
    f, p = welch(x - x.mean(), fs, nperseg=1024)
    band = (f >= lo_hz) & (f <= hi_hz)
    return float(f[band][np.argmax(p[band])])


def test_vf_is_chaotic_4_to_10_hz_activity_without_complexes() -> None:
    """Ventricular fibrillation: no QRS complexes, irregular activity whose dominant frequency
    lies in 4-10 Hz (the human VF range), an amplitude that waxes and wanes, no repeating
    period; nothing is ejected, so the arterial pressure falls and SpO2 has no pulse."""
    for seed in range(3):
        sim = BedSynth("vf", seed)
        w = run(sim, 79.0)
        start_s, end_s = episode(sim, "VFIB")
        assert (start_s, end_s) == (60.0, 80.0)
        assert sim.truth_beats(start_s, end_s).t_s.size == 0
        fs = sim.fs_hz["ECG_II"]
        for lead in ("ECG_II", "ECG_V"):
            x = w[lead][round((start_s + 1.0) * fs) : round(79.0 * fs)]
            assert 4.0 <= dominant_hz(x, fs) <= 10.0
            seconds = x[: x.size // round(fs) * round(fs)].reshape(-1, round(fs))
            rms = np.sqrt(np.mean((seconds - seconds.mean(axis=1, keepdims=True)) ** 2, axis=1))
            assert rms.std() / rms.mean() > 0.15  # the amplitude varies
            assert rms.min() > 0.1  # coarse fibrillation: never a flat line
            xc = x - x.mean()
            ac = np.correlate(xc, xc, "full")[xc.size - 1 :] / float(xc @ xc)
            assert ac[round(0.5 * fs) : round(3.0 * fs)].max() < 0.5  # no repeating period
        n = sim.numerics()
        assert n["HR"] == 0.0 and n["SPO2"] is None and num(n, "ABP_SYS") < 50.0
    # sinus rhythm again after the episode (as after defibrillation)
    sim = BedSynth("vf", 0, events_at_s=5.0, duration_s=None)
    run(sim, 40.0)
    after = sim.truth_beats(26.0, 40.0)
    assert after.t_s.size > 10 and set(after.kind.tolist()) == {0}


def test_af_fibrillatory_waves_run_at_350_to_600_per_minute() -> None:
    """f waves of AF at 350-600/min (5.8-10 Hz): the patient's f-wave rate with its frequency
    modulation stays inside the band, checked on the rendered wave's instantaneous rate."""
    fs = 250.0
    for seed in range(20):
        sim = BedSynth("af", seed)
        f0 = sim.plan.patient.fwave_hz
        x = np.zeros((1, round(60 * fs)))
        K.add_fwaves(
            x, 0, fs, np.array([[0.0]]), np.array([[math.inf]]), np.array([1]),
            np.array([f0]), np.array([1.0]),
        )  # fmt: skip
        y = filtfilt(*butter(2, [4.0 / (fs / 2), 11.0 / (fs / 2)], btype="band"), x[0])
        phase = np.unwrap(np.angle(hilbert(y)))
        rate = np.diff(phase)[round(2 * fs) : -round(2 * fs)] * fs / (2 * np.pi) * 60.0
        smooth = np.convolve(rate, np.ones(round(0.25 * fs)) / round(0.25 * fs), "valid")
        assert smooth.min() >= 350.0 and smooth.max() <= 600.0, (seed, f0)


def pvcs(sim: BedSynth, start_s: float, end_s: float) -> tuple[NDArray[np.float64], ...]:
    b = sim.truth_beats(start_s, end_s)
    return b.t_s, b.kind, b.pulse


def test_pvcs_are_premature_wide_with_a_compensatory_pause_and_come_in_couplets() -> None:
    """Premature ventricular complexes (AAMI EC57 class V): wide QRS (>= 120 ms), early
    (coupling interval well below the sinus interval), followed by a full compensatory pause
    (the sinus beats around them two sinus intervals apart), sometimes two in a row (a
    couplet)."""
    couplets = isolated = 0
    for seed in range(3):
        sim = BedSynth("pvc", seed)
        w = run(sim, 240.0)
        onset_s, _ = episode(sim, "PVC")
        x, fs = w["ECG_II"], sim.fs_hz["ECG_II"]
        t, kind, _pulse = pvcs(sim, 2.0, 239.0)
        assert set(kind[t < onset_s].tolist()) == {0}
        v = np.nonzero(kind == 2)[0]
        assert 0.08 < v.size / np.count_nonzero(t >= onset_s) < 0.3
        for i in v:
            if i < 2 or i + 2 >= t.size:
                continue
            assert qrs_width_s(x, fs, t[i]) >= 0.12
            if kind[i - 1] != 0 or kind[i - 2] != 0:
                continue  # the second of a couplet
            sinus_rr = t[i - 1] - t[i - 2]
            assert t[i] - t[i - 1] < 0.7 * sinus_rr  # premature
            after = i + 1 if kind[i + 1] == 0 else i + 2
            couplets += int(kind[i + 1] == 2)
            isolated += int(kind[i + 1] == 0)
            assert kind[after] == 0
            assert t[after] - t[i - 1] == pytest.approx(2.0 * sinus_rr, rel=0.1)  # compensatory
        normal = t[(kind == 0) & (t > 5.0) & (t < onset_s - 1.0)]
        assert max(qrs_width_s(x, fs, s) for s in normal) < 0.12
    assert couplets >= 3 and isolated >= 3 * couplets / 2


def test_bigeminy_alternates_sinus_beats_and_pvcs() -> None:
    sim = BedSynth("bigeminy", 2)
    run(sim, 100.0)
    start_s, end_s = episode(sim, "BIGEMINY")
    t, kind, _pulse = pvcs(sim, start_s + 2.0, end_s)
    assert t.size > 30
    first = int(np.argmax(kind == 2))
    pattern = kind[first:]
    assert set(pattern[0::2].tolist()) == {2} and set(pattern[1::2].tolist()) == {0}
    # the long-short cycle of bigeminy: the pause after a PVC is longer than the coupling
    rr = np.diff(t[first - 1 :])
    rr = rr[: rr.size // 2 * 2]
    assert np.all(rr[0::2] < 0.7 * rr[1::2])
    # sinus rhythm again after the episode
    after = sim.truth_beats(end_s + 2.0, 100.0).kind
    assert after.size > 5 and set(after.tolist()) == {0}


def test_paced_rhythm_has_pacer_spikes_before_wide_complexes() -> None:
    """Ventricular pacing (VVI, 70/min): a regular rate exactly the pacemaker's, a pacer spike
    (one sample, narrow and tall) 80 ms before each wide (>= 120 ms) paced complex, no P
    waves."""
    for seed in range(3):
        sim = BedSynth("paced", seed)
        w = run(sim, 90.0)
        onset_s, _ = episode(sim, "PACED")
        t, kind, _ = pvcs(sim, onset_s + 2.0, 89.0)
        assert set(kind.tolist()) == {3}
        assert np.allclose(np.diff(t), 60.0 / 70.0)
        for lead in ("ECG_II", "ECG_V"):
            x, fs = w[lead], sim.fs_hz[lead]
            gain = sim.plan.patient.ecg_gain[0 if lead == "ECG_II" else 1]
            for r in t[1:-1]:
                i = round((r - 0.080) * fs)
                seg = x[i - 2 : i + 3]
                k = int(np.argmax(seg))
                assert k in (1, 2, 3)  # at the spike's time
                neighbours = np.delete(seg, k)
                assert seg[k] - np.median(neighbours) > 0.4 * gain
        x, fs = w["ECG_II"], sim.fs_hz["ECG_II"]
        smooth = np.convolve(x, np.ones(3) / 3, "same")  # the spike is no part of the QRS
        for r in t[1:-1]:
            i = round(r * fs)
            seg = smooth[i - round(0.06 * fs) : i + round(0.15 * fs)]
            d = np.abs(np.diff(seg))
            idx = np.nonzero(d > 0.15 * d.max())[0]
            assert (idx[-1] - idx[0] + 1) / fs >= 0.12
    # no P wave: the paced complex's template is flat from 300 ms to 100 ms before R
    row = 2 * 3
    tt = ECG_TABLE_T0_S[row] + np.arange(ECG_TABLE_II.shape[1]) / TABLE_FS_HZ
    for table in (ECG_TABLE_II, ECG_TABLE_V):
        assert np.abs(table[row, tt < -0.10]).max() < 0.01


def naive_vf(n0, fs, start, end, count, f_hz, amp, n):
    out = np.zeros((start.shape[0], n))
    tau = 2 * math.pi
    for b in range(start.shape[0]):
        for i in range(n):
            t = (n0 + i) / fs
            for e in range(count[b]):
                if not start[b, e] <= t < end[b, e]:
                    continue
                u = t - start[b, e]
                fade = min(1.0, 2 * u, 2 * (end[b, e] - t))
                th1 = tau * f_hz[b] * u + 0.7 / 0.37 * math.sin(tau * 0.37 * u)
                th1 += 0.4 / 0.13 * math.sin(tau * 0.13 * u + 1.0)
                th2 = tau * 1.45 * f_hz[b] * u + 0.9 / 0.29 * math.sin(tau * 0.29 * u + 0.5)
                e1 = 0.3 + 0.7 * (0.5 + 0.5 * math.sin(tau * 0.19 * u)) * (
                    0.6 + 0.4 * math.sin(tau * 0.53 * u + 2.0)
                )
                e2 = 0.3 + 0.7 * (0.5 + 0.5 * math.sin(tau * 0.23 * u + 1.3)) * (
                    0.6 + 0.4 * math.sin(tau * 0.71 * u + 0.4)
                )
                out[b, i] += amp[b] * fade * (e1 * math.sin(th1) + 0.33 * e2 * math.sin(th2))
    return out


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 3000), st.integers(1, 300))
def test_vf_kernel_matches_its_naive_twin(seed: int, n0: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    beds, fs = 3, 250.0
    start = rng.uniform(0.0, 14.0, (beds, 2))
    end = start + rng.uniform(0.0, 3.0, (beds, 2))
    end[0, 0] = math.inf
    count = rng.integers(0, 3, beds)
    f_hz, amp = rng.uniform(4.0, 8.0, beds), rng.uniform(0.05, 1.0, beds)
    got = np.zeros((beds, n))
    K.add_vf(got, n0, fs, start, end, count, f_hz, amp)
    want = naive_vf(n0, fs, start, end, count, f_hz, amp, n)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
