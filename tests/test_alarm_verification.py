"""Alarm verification: the ECG decides when it is reliable; other signals only when it is not.

Written from the rule (docs/signal.md, "Alarm verification"): a lead is usable when its quality
is good for half the window and its baseline SQI (basSQI, Behar et al. 2013) is at least 0.9;
the ECG is reliable when a lead is usable and usable leads agree on the beats (bSQI-style F1 of
0.8 within 150 ms). A pulse present during VT changes nothing about a VT alarm on reliable ECG.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from eicu.signal.alarms import (
    BASELINE_SQI_MIN,
    LeadEvidence,
    PulseEvidence,
    _lowest_kurtosis,
    baseline_sqi,
    decide,
    kurtosis_sqi,
    usable_leads,
    verify_alarm,
)
from eicu.signal.events import Event, RhythmFlag
from eicu.signal.pipeline import BedSignalPipeline
from tests.synthetic import ecg_from_rr, pulse_from_beats

# A lead of good quality showing sinus rhythm at 75/min with narrow QRS complexes.
SINUS = LeadEvidence(
    signal="ECG_II",
    n_beats=10,
    good_frac=1.0,
    max_vt_run=0,
    fib_windows=0,
    max_rr_s=0.85,
    min_rr_s=0.75,
    fast_run_bpm=78.0,
    fast_run_abnormal=0,
    fast_run_corr=0.98,
    n_ventricular=0,
    max_v_3s=0,
    rr_cv=0.03,
    rate_bpm=75.0,
    agreement=0.97,
    baseline_sqi=0.99,
    qrs_width_ms=80.0,
)
# The same lead during a run of wide ventricular beats at 150/min after sinus beats.
VT_RUN = replace(
    SINUS,
    n_beats=16,
    max_vt_run=8,
    n_ventricular=8,
    max_v_3s=7,
    rr_cv=0.3,
    rate_bpm=150.0,
    min_rr_s=0.4,
    qrs_width_ms=150.0,
)
REGULAR_PULSE = PulseEvidence("ABP", 10, 1.0, 0.9, 75.0, 0.02)


def test_a_regular_pulse_changes_nothing_about_vt_on_reliable_ecg() -> None:
    decision = decide("VTACH", [VT_RUN, replace(VT_RUN, signal="ECG_V")], [REGULAR_PULSE])
    assert decision.true_alarm is True, decision.reason
    # a monomorphic VT is regular and its beats may not be called ventricular: still wide
    regular_wide = replace(
        SINUS, n_ventricular=0, max_v_3s=0, rr_cv=0.02, qrs_width_ms=160.0, fast_run_bpm=150.0
    )
    assert decide("VTACH", [regular_wide], [REGULAR_PULSE]).true_alarm is True
    # nor about VF on a usable lead showing fibrillatory windows
    fib = replace(SINUS, fib_windows=3, n_beats=2, rr_cv=float("inf"))
    assert decide("VFIB", [fib], [REGULAR_PULSE]).true_alarm is True


def test_reliable_ecg_decides_alone() -> None:
    # every usable lead organised, narrow, without a ventricular beat: false, pulse or not
    assert decide("VTACH", [SINUS, replace(SINUS, signal="ECG_V")], []).true_alarm is False
    # one usable lead that cannot rule out a run keeps the alarm
    assert decide("VTACH", [SINUS, replace(VT_RUN, signal="ECG_V")], []).true_alarm is True
    # a single ventricular beat, an irregular window at VT's rate, an unmeasured width at VT's
    # rate, too few beats: not ruled out
    fast = replace(SINUS, fast_run_bpm=130.0, rate_bpm=125.0, min_rr_s=0.46)
    for ld in (
        replace(SINUS, n_ventricular=1, max_v_3s=1),
        replace(fast, rr_cv=0.25),
        replace(fast, qrs_width_ms=float("nan")),
        replace(SINUS, n_beats=2),
    ):
        assert decide("VTACH", [ld], [REGULAR_PULSE]).true_alarm is True
    assert decide("VFIB", [SINUS], []).true_alarm is False
    assert decide("ASYSTOLE", [SINUS], []).true_alarm is False
    assert decide("TACHY", [SINUS], []).true_alarm is False
    assert decide("BRADY", [SINUS], []).true_alarm is False
    # AF on reliable ECG is the ECG's call: a regular pulse does not overrule it; a window in
    # which every usable lead beats regularly is no AF
    af = replace(SINUS, rr_cv=0.22, kurtosis=9.0)
    assert decide("AFIB", [af], [REGULAR_PULSE]).true_alarm is True
    assert decide("AFIB", [replace(af, rr_cv=0.03)], []).true_alarm is False


def test_no_vt_where_every_usable_lead_is_slower_than_vt_without_a_ventricular_beat() -> None:
    """VT is a ventricular rhythm at 100/min or faster (VT_BPM; the policy's VTACH: 5 beats at
    >= 100/min). A usable lead on which no run of 5 beats reaches that rate and no beat is
    called ventricular shows no VT, whatever its regularity or QRS width (atrial fibrillation
    at 75/min, bundle-branch block): the alarm is false. At VT's rate a wide complex (or one
    whose width is unknown) is VT until shown otherwise, and an irregular window may hide a run
    the beat classifier missed: those alarms stand."""
    slow_af = replace(SINUS, rr_cv=0.25, min_rr_s=0.6, max_rr_s=1.2)
    slow_bbb_af = replace(slow_af, qrs_width_ms=160.0)
    for ld in (slow_af, slow_bbb_af, replace(slow_af, qrs_width_ms=float("nan"))):
        assert decide("VTACH", [ld, replace(ld, signal="ECG_V")], []).true_alarm is False
    # a regular wide-complex tachycardia with no beat called ventricular: VT until shown otherwise
    wct = replace(SINUS, fast_run_bpm=118.0, rate_bpm=117.0, min_rr_s=0.5, qrs_width_ms=146.0)
    fast_af = replace(slow_af, fast_run_bpm=130.0, rate_bpm=110.0, min_rr_s=0.45)
    for ld in (
        wct,
        fast_af,  # irregular at VT's rate, narrow: a missed run is not ruled out
        replace(slow_af, fast_run_bpm=100.0),  # exactly VT's rate
        replace(slow_af, n_ventricular=1, max_v_3s=1),  # a ventricular beat
        replace(slow_af, fib_windows=1),  # a fibrillatory window
        replace(slow_af, n_beats=4, fast_run_bpm=0.0),  # no run of 5 beats to measure
    ):
        assert decide("VTACH", [ld], [REGULAR_PULSE]).true_alarm is True, ld
    # one usable lead slow and clean, the other at VT's rate with ventricular beats: stands
    assert decide("VTACH", [slow_af, replace(VT_RUN, signal="ECG_V")], []).true_alarm is True


def test_af_is_judged_only_on_leads_that_look_like_ecg() -> None:
    """Noise that both detectors follow passes as beats of good quality; its kurtosis is that
    of noise (about 3), where an ECG's sharp QRS complexes give more than 5 (kSQI)."""
    noise_beats = replace(SINUS, rr_cv=0.3, kurtosis=3.1)
    decision = decide("AFIB", [noise_beats], [REGULAR_PULSE])
    assert decision.true_alarm is False and "unreliable ECG" in decision.reason
    irregular_pulse = PulseEvidence("PLETH", 10, 1.0, 1.2, 95.0, 0.25)
    assert decide("AFIB", [noise_beats], [irregular_pulse]).true_alarm is True
    # kurtosis does not judge the ECG of a lethal rhythm: VT and VF have low kurtosis too
    assert decide("VTACH", [replace(VT_RUN, kurtosis=2.5)], [REGULAR_PULSE]).true_alarm is True


def test_kurtosis_sqi_from_its_definition() -> None:
    fs = 250.0
    x, _ = ecg_from_rr(np.full(12, 0.8), fs)
    y = x[: round(8 * fs)] - x[: round(8 * fs)].mean()
    assert kurtosis_sqi(y) > 5.0
    gauss = np.random.default_rng(3).normal(0.0, 1.0, 20_000)
    assert kurtosis_sqi(gauss) == pytest.approx(3.0, abs=0.15)
    sine = np.sin(np.linspace(0, 40 * np.pi, 4000))
    assert kurtosis_sqi(sine) == pytest.approx(1.5, abs=0.02)
    assert np.isnan(kurtosis_sqi(np.zeros(100)))
    assert np.isnan(kurtosis_sqi(None))


@pytest.mark.parametrize("seconds", [4.0, 5.3, 8.0, 9.9])
@pytest.mark.parametrize("fs", [125.0, 250.0, 360.0])
def test_baseline_sqi_is_behars_ratio_of_welchs_spectrum(seconds: float, fs: float) -> None:
    """basSQI (Behar et al. 2013) from its definition: 1 - the power below 1 Hz over the power
    below 40 Hz of Welch's spectrum (2 s Hann segments, half overlapping), here taken from
    scipy's Welch as the reference, on an ECG with baseline wander and on noise."""
    from scipy import signal as sps

    def reference(x: np.ndarray) -> float:
        f, p = sps.welch(x - x.mean(), fs=fs, nperseg=round(2.0 * fs))
        return 1.0 - float(p[f < 1.0].sum()) / float(p[f < 40.0].sum())

    n = round(seconds * fs)
    ecg, _ = ecg_from_rr(np.full(16, 0.7), fs, noise_mv=0.02)
    t = np.arange(n) / fs
    rng = np.random.default_rng(round(fs + seconds))
    for x in (
        ecg[:n],
        ecg[:n] + 0.8 * np.sin(2 * np.pi * 0.3 * t),
        rng.normal(0.0, 1.0, n),
        np.cumsum(rng.normal(0.0, 0.1, n)),
    ):
        assert baseline_sqi(x, fs) == pytest.approx(reference(x), rel=1e-9, abs=1e-12)
    short = ecg[: round(4.0 * fs) - 1]
    assert np.isnan(baseline_sqi(short, fs))
    gap = ecg[:n].copy()
    gap[5] = np.nan
    assert np.isnan(baseline_sqi(gap, fs))
    assert np.isnan(baseline_sqi(np.zeros(n), fs))


def test_lowest_kurtosis_is_the_least_of_its_two_second_segments_newest_first() -> None:
    fs = 250.0
    x, _ = ecg_from_rr(np.full(14, 0.8), fs, noise_mv=0.01)
    y = x[: round(9.3 * fs)]  # 4 whole 2 s segments from the end, 1.3 s before them left out
    n = round(2.0 * fs)
    expected = min(kurtosis_sqi(y[e - n : e]) for e in range(y.shape[0], n - 1, -n))
    assert _lowest_kurtosis(y, fs) == pytest.approx(expected, rel=1e-9)
    noisy = y.copy()
    noisy[-300:] = np.random.default_rng(1).normal(0.0, 1.0, 300)
    assert _lowest_kurtosis(noisy, fs) < _lowest_kurtosis(y, fs)
    gap = y.copy()
    gap[y.shape[0] - 4 * n + 10] = np.nan  # in the oldest whole segment
    assert np.isnan(_lowest_kurtosis(gap, fs))
    gap_before = y.copy()
    gap_before[: y.shape[0] - 4 * n] = np.nan  # only before the whole segments
    assert _lowest_kurtosis(gap_before, fs) == pytest.approx(expected, rel=1e-9)
    assert np.isnan(_lowest_kurtosis(y[: n - 1], fs))
    assert np.isnan(_lowest_kurtosis(None, fs))


def test_the_pipeline_gathers_the_evidence_once_per_state_and_judges_each_label_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bed judged for several labels at one moment (VTACH and TACHY in VT) gathers its 8 s of
    evidence once; once any signal moves on, it gathers again. Every decision is the one a
    fresh gathering gives."""
    import eicu.signal.alarms as alarms

    fs = 250.0
    x, r_idx = ecg_from_rr(np.concatenate([np.full(20, 0.8), np.full(20, 0.4)]), fs)
    n = (x.shape[0] // 250) * 250
    abp = pulse_from_beats(r_idx // 2, n // 2, 125.0)
    p = BedSignalPipeline({"ECG_II": fs, "ECG_V": fs, "ABP": 125.0})
    calls = []
    real = alarms.gather
    monkeypatch.setattr(alarms, "gather", lambda *a, **k: calls.append(1) or real(*a, **k))
    for i in range(0, n, 250):
        p.push("ECG_II", x[i : i + 250], i)
        p.push("ECG_V", 0.7 * x[i : i + 250], i)
        p.push("ABP", abp[i // 2 : i // 2 + 125], i // 2)
        if i % 500 == 0 and i > 2500:
            before = len(calls)
            for label in ("VTACH", "TACHY", "ASYSTOLE", "AFIB"):
                mine = p.verify_alarm(label)
                fresh = alarms.verify_alarm(p, label)
                assert repr(mine) == repr(fresh), label  # (NaN fields compare unequal)
            assert len(calls) - before == 1 + 4  # once for the four, once each fresh
    assert p.verify_alarm("PAUSE") is None


def test_noise_on_every_lead_lets_a_regular_pulse_reject() -> None:
    noisy = replace(VT_RUN, good_frac=0.2)
    drifting = replace(VT_RUN, baseline_sqi=BASELINE_SQI_MIN - 0.2)
    for leads in ([noisy], [noisy, replace(noisy, signal="ECG_V")], [drifting], []):
        assert usable_leads(leads) == []
        for label in ("VTACH", "VFIB", "AFIB"):
            decision = decide(label, leads, [REGULAR_PULSE])
            assert decision.true_alarm is False and "unreliable ECG" in decision.reason
            # without a regular pulse of good quality nothing silences it
            assert decide(label, leads, []).true_alarm is True
            irregular = PulseEvidence("PLETH", 10, 1.0, 1.2, 95.0, 0.25)
            poor = PulseEvidence("PLETH", 10, 0.2, 0.9, 75.0, 0.02)
            assert decide(label, leads, [irregular, poor]).true_alarm is True
    assert decide("ASYSTOLE", [noisy], [REGULAR_PULSE]).true_alarm is False
    assert decide("ASYSTOLE", [noisy], []).true_alarm is True
    assert decide("BRADY", [noisy], [REGULAR_PULSE]).true_alarm is False


def test_leads_of_good_quality_that_disagree_make_the_ecg_unreliable() -> None:
    a = replace(VT_RUN, agreement=0.4)
    b = replace(VT_RUN, signal="ECG_V", agreement=0.4)
    assert usable_leads([a, b]) == []
    assert decide("VTACH", [a, b], [REGULAR_PULSE]).true_alarm is False
    # also when one of them is left out for its baseline: one of the two is wrong
    assert usable_leads([a, replace(b, baseline_sqi=0.5)]) == []
    # agreeing leads, or a single usable lead beside a noisy one, are reliable
    assert len(usable_leads([VT_RUN, replace(VT_RUN, signal="ECG_V")])) == 2
    assert usable_leads([VT_RUN, replace(b, good_frac=0.1)]) == [VT_RUN]
    assert decide("VTACH", [VT_RUN, replace(b, good_frac=0.1)], [REGULAR_PULSE]).true_alarm


def test_baseline_sqi_from_its_definition() -> None:
    fs = 250.0
    x, _ = ecg_from_rr(np.full(12, 0.8), fs)
    x = x[: round(8 * fs)]
    assert baseline_sqi(x, fs) > BASELINE_SQI_MIN
    t = np.arange(x.shape[0]) / fs
    drift = x + 2.0 * np.sin(2 * np.pi * 0.3 * t)  # slow movement ten times the beats
    assert baseline_sqi(drift, fs) < 0.5
    assert np.isnan(baseline_sqi(x[: round(2 * fs)], fs))  # too short
    gap = x.copy()
    gap[100] = np.nan
    assert np.isnan(baseline_sqi(gap, fs))
    assert np.isnan(baseline_sqi(np.zeros(2000), fs))
    assert np.isnan(baseline_sqi(None, fs))


def _vt_bed_with_regular_pulses() -> tuple[BedSignalPipeline, list[Event]]:
    fs = 250.0
    normal, _ = ecg_from_rr(np.full(40, 0.8), fs)
    wide, _ = ecg_from_rr(np.full(14, 0.42), fs, qrs_width_s=0.14, p_wave=False, start_s=0.3)
    x = np.concatenate([normal, -wide])
    x = x[: (x.shape[0] // 250) * 250]
    # an arterial line beating regularly at 75/min throughout, VT or not
    abp = pulse_from_beats(np.arange(60, x.shape[0] // 2, 100), x.shape[0] // 2, 125.0)
    p = BedSignalPipeline({"ECG_II": fs, "ECG_V": fs, "ABP": 125.0})
    events: list[Event] = []
    for i in range(0, x.shape[0], 125):
        events += p.push("ECG_II", x[i : i + 125], i)
        events += p.push("ECG_V", -0.7 * x[i : i + 125], i)
    for j in range(0, abp.shape[0], 125):
        events += p.push("ABP", abp[j : j + 125], j)
    return p, events


def test_vt_with_a_regular_arterial_pulse_stays_a_true_alarm() -> None:
    p, events = _vt_bed_with_regular_pulses()
    assert any(isinstance(e, RhythmFlag) and e.label == "VTACH" for e in events)
    abp = [pu for pu in verify_alarm(p, "VTACH").pulses if pu.signal == "ABP"]
    assert abp and abp[0].rr_cv < 0.05 and abp[0].good_frac == 1.0  # a perfect pulse
    decision = verify_alarm(p, "VTACH")
    assert decision.true_alarm is True, decision.reason
    assert all(not ld.baseline_sqi < BASELINE_SQI_MIN for ld in decision.leads)


@pytest.mark.parametrize("label", ["SNEEZE", "PAUSE"])
def test_unknown_alarms_are_refused_by_name(label: str) -> None:
    with pytest.raises(ValueError, match=label):
        decide(label, [SINUS], [])
