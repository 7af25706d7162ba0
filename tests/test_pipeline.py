"""The per-bed pipeline on synthetic rhythms with known truth, gaps, chunking and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eicu.signal.alarms import VERIFIED_LABELS, PulseEvidence, decide, verify_alarm
from eicu.signal.events import Beat, Event, HeartRate, Quality, RhythmFlag, VentricularRun
from eicu.signal.pipeline import BedSignalPipeline
from eicu.signal.rhythm import af_features
from tests.synthetic import ecg_from_rr, ecg_with_ventricular_beats, pulse_from_beats

FS = 250.0


def run(x: np.ndarray, chunk_s: float = 0.5, key: str = "ECG_II", fs: float = FS) -> list[Event]:
    p = BedSignalPipeline({key: fs})
    n = max(1, round(chunk_s * fs))
    events: list[Event] = []
    for i in range(0, x.shape[0], n):
        events.extend(p.push(key, x[i : i + n], i))
    return events


def flags(events: list[Event], label: str) -> list[RhythmFlag]:
    return [e for e in events if isinstance(e, RhythmFlag) and e.label == label]


def starts(events: list[Event], label: str) -> list[float]:
    return [f.time_s for f in flags(events, label) if f.state == "start"]


def test_sinus_rhythm_raises_no_flag_and_reports_rate() -> None:
    x, truth = ecg_from_rr(np.full(100, 0.8), FS, noise_mv=0.01)
    ev = run(x)
    assert not [e for e in ev if isinstance(e, RhythmFlag)]
    hr = [e.hr_bpm for e in ev if isinstance(e, HeartRate)]
    assert len(hr) >= len(truth) - 3
    assert np.allclose(hr, 75.0, atol=1.5)
    beats = [e for e in ev if isinstance(e, Beat)]
    assert all(b.ventricular is False for b in beats[10:])


def test_extreme_bradycardia_after_five_beats_below_40() -> None:
    rr = np.concatenate([np.full(20, 0.8), np.full(10, 1.8), np.full(10, 0.8)])
    x, truth = ecg_from_rr(rr, FS)
    ev = run(x)
    (start,) = starts(ev, "BRADY")
    # the run starts at the first beat with a rate below 40: beat 21 (0-based)
    assert start == pytest.approx(truth[21] / FS, abs=0.1)
    ends = [f.time_s for f in flags(ev, "BRADY") if f.state == "end"]
    assert ends and ends[0] == pytest.approx(truth[31] / FS, abs=0.1)


def test_four_slow_beats_are_not_bradycardia() -> None:
    rr = np.concatenate([np.full(20, 0.8), np.full(4, 1.8), np.full(10, 0.8)])
    x, _ = ecg_from_rr(rr, FS)
    assert starts(run(x), "BRADY") == []


def test_extreme_tachycardia_needs_17_beats_above_140() -> None:
    for n_fast, expected in ((16, 0), (30, 1)):
        rr = np.concatenate([np.full(20, 0.8), np.full(n_fast, 0.38), np.full(10, 0.8)])
        x, _ = ecg_from_rr(rr, FS)
        assert len(starts(run(x), "TACHY")) == expected, n_fast


def test_asystole_and_pause() -> None:
    rr = np.concatenate([np.full(20, 0.8), [6.0], np.full(10, 0.8)])
    x, truth = ecg_from_rr(rr, FS, noise_mv=0.005)
    ev = run(x)
    last = truth[20] / FS
    assert starts(ev, "PAUSE") == [pytest.approx(last + 3.0, abs=0.1)]
    assert starts(ev, "ASYSTOLE") == [pytest.approx(last + 4.0, abs=0.1)]
    ends = [f.time_s for f in flags(ev, "ASYSTOLE") if f.state == "end"]
    assert ends == [pytest.approx(truth[21] / FS, abs=0.1)]


def test_a_gap_is_not_asystole() -> None:
    x, _ = ecg_from_rr(np.full(60, 0.8), FS)
    x[5000:7500] = np.nan
    ev = run(x)
    assert starts(ev, "ASYSTOLE") == []
    assert starts(ev, "PAUSE") == []
    verdicts = [e.verdict for e in ev if isinstance(e, Quality)]
    assert "missing" in verdicts and verdicts[-1] == "good"


def test_missing_chunk_index_is_a_gap() -> None:
    x, _ = ecg_from_rr(np.full(60, 0.8), FS)
    p = BedSignalPipeline({"ECG_II": FS})
    ev = p.push("ECG_II", x[:5000], 0) + p.push("ECG_II", x[7500:], 7500)
    assert starts(ev, "ASYSTOLE") == []
    assert not [e for e in ev if isinstance(e, Beat) and 5000 <= e.sample < 7500]
    assert p.next_index("ECG_II") == x.shape[0]


def test_ventricular_tachycardia_run() -> None:
    fs = FS
    normal, _ = ecg_from_rr(np.full(40, 0.8), fs)
    wide, _ = ecg_from_rr(np.full(12, 0.42), fs, qrs_width_s=0.14, p_wave=False, start_s=0.3)
    wide = -wide  # different axis and width: ventricular morphology
    x = np.concatenate([normal, wide, normal])
    ev = run(x)
    (start,) = starts(ev, "VTACH")
    assert normal.shape[0] / fs - 0.2 < start < normal.shape[0] / fs + 3.0


def _sinus_and_ventricular(
    parts: list[tuple[int, float, bool]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ECG of consecutive parts (beats, interval before each in s, ventricular); returns
    (signal, R peaks, whether each beat is ventricular)."""
    rr = np.concatenate([np.full(n, r) for n, r, _ in parts])
    vent = np.concatenate([np.full(n, v) for n, _, v in parts])
    vent = np.concatenate([[False], vent])  # the first beat opens the record
    x, r_idx = ecg_with_ventricular_beats(rr, vent, FS)
    return x, r_idx, vent


def _episodes(events: list[Event], label: str) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for f in flags(events, label):
        if f.state == "start":
            out.append((f.time_s, np.inf))
        else:
            out[-1] = (out[-1][0], f.time_s)
    return out


def _called(events: list[Event], r_idx: np.ndarray, signal: str | None = None) -> list[str | None]:
    """The class of the detected beat within 50 ms of each R peak (None when none), on
    ``signal`` (None: any)."""
    beats = sorted(
        (e.sample, e.beat_class)
        for e in events
        if isinstance(e, Beat) and (signal is None or e.signal == signal)
    )
    at = np.array([s for s, _ in beats])
    out: list[str | None] = []
    for r in r_idx.tolist():
        j = int(np.argmin(np.abs(at - r)))
        out.append(beats[j][1] if abs(int(at[j]) - r) <= round(0.05 * FS) else None)
    return out


def test_six_wide_beats_at_150_per_minute_are_a_ventricular_run_and_vt() -> None:
    x, r_idx, vent = _sinus_and_ventricular([(40, 0.8, False), (6, 0.4, True), (20, 0.8, False)])
    ev = run(x)
    runs = [e for e in ev if isinstance(e, VentricularRun)]
    first = r_idx[np.flatnonzero(vent)[0]] / FS
    ((run_,),) = ([r for r in runs if r.n_beats >= 3],)
    assert run_.n_beats == 6 and run_.label == "RUN" and run_.vt
    assert run_.time_s == pytest.approx(first, abs=0.05)
    assert run_.rate_bpm == pytest.approx(150.0, abs=3.0)
    ((start, end),) = _episodes(ev, "VTACH")
    assert start == pytest.approx(first, abs=0.05)
    assert end == pytest.approx(r_idx[np.flatnonzero(vent)[-1] + 1] / FS, abs=0.05)


def test_sixty_seconds_of_vt_are_vt_the_whole_time() -> None:
    """A long run of wide beats at a ventricular-tachycardia rate never becomes the patient's
    dominant beat: VT (and sustained VT from 30 s) lasts as long as the run."""
    x, r_idx, vent = _sinus_and_ventricular([(30, 0.8, False), (150, 0.4, True), (30, 0.8, False)])
    ev = run(x)
    iv = np.flatnonzero(vent)
    first, last, last_next = r_idx[iv[0]] / FS, r_idx[iv[-1]] / FS, r_idx[iv[-1] + 1] / FS
    ((start, end),) = _episodes(ev, "VTACH")
    assert start == pytest.approx(first, abs=0.05)
    assert last < end <= last_next + 0.05  # at the first beat after the run
    ((s_start, s_end),) = _episodes(ev, "VT_SUSTAINED")
    assert s_start == pytest.approx(first + 30.0, abs=0.5)
    assert s_end == pytest.approx(end, abs=0.05)
    assert _called(ev, r_idx[iv]).count("V") >= len(iv) - 1


def test_a_new_morphology_that_makes_up_two_thirds_of_the_beats_becomes_the_dominant_one() -> None:
    """A lasting change of the patient's own rhythm (a new bundle-branch block, an idioventricular
    rhythm below 100/min) is adopted as the dominant beat once its template has been used twice
    as much as the old dominant one, i.e. once it has made up two thirds of the recent beats
    (use counts forget with a time constant of 512 beats). After 700 beats of the old rhythm its
    count is 512 (1 - e^(-700/512)) = 381; n beats later the old count is 381 e^(-n/512) and the
    new one 512 (1 - e^(-n/512)), twice as much from n = 466. Until then its beats are
    ventricular."""
    x, r_idx, vent = _sinus_and_ventricular([(700, 0.8, False), (800, 0.8, True)])
    called = _called(run(x, chunk_s=2.0), r_idx)
    iv = np.flatnonzero(vent)
    early = called[iv[20] : iv[420]]
    late = called[iv[520] :]
    assert "N" not in early  # ventricular, or unclassifiable while the change confuses the lead
    assert late.count("N") >= 0.95 * len(late)


def test_ventricular_bigeminy_never_becomes_the_dominant_beat() -> None:
    """One ventricular beat after every sinus beat for 20 minutes: half of the beats, never two
    thirds; every premature wide beat stays ventricular."""
    parts = [(300, 0.8, False)] + [(1, 0.5, True), (1, 1.1, False)] * 700
    x, r_idx, vent = _sinus_and_ventricular(parts)
    called = _called(run(x, chunk_s=2.0), r_idx)
    iv = np.flatnonzero(vent)
    v_calls = [called[i] for i in iv]
    assert "N" not in v_calls
    assert v_calls.count("V") >= 0.9 * len(iv)


def test_sinus_rhythm_with_occasional_pvcs_is_not_vt() -> None:
    rng = np.random.default_rng(3)
    n = 240
    vent = rng.random(n) < 0.12
    vent[:12] = False
    vent[1:] &= ~vent[:-1]  # single PVCs, never two in a row
    rr = np.full(n, 0.8)
    rr[vent] = 0.5  # premature, then a compensatory pause
    rr[np.flatnonzero(vent[:-1]) + 1] = 1.1
    x, r_idx = ecg_with_ventricular_beats(rr, np.concatenate([[False], vent]), FS, seed=3)
    ev = run(x)
    assert _episodes(ev, "VTACH") == []
    assert [e for e in ev if isinstance(e, VentricularRun)] == []
    called = np.array([c == "V" for c in _called(ev, r_idx[1:])])
    assert (called[12:] == vent[12:]).all()


def test_ventricular_fibrillation() -> None:
    sinus, _ = ecg_from_rr(np.full(30, 0.8), FS)
    t = np.arange(round(12 * FS)) / FS
    vf = 0.6 * np.sin(2 * np.pi * 5.0 * t) * (1 + 0.2 * np.sin(2 * np.pi * 0.3 * t))
    ev = run(np.concatenate([sinus, vf, sinus]))
    (start,) = starts(ev, "VFIB")
    # the onset is placed at the start of the first 4 s window judged fibrillatory
    assert sinus.shape[0] / FS - 3.0 <= start <= sinus.shape[0] / FS + 4.0
    assert [f for f in flags(ev, "VFIB") if f.state == "end"]


def test_irregular_rhythm_with_p_waves_is_not_atrial_fibrillation() -> None:
    """The same irregular intervals with a P wave before every QRS (sinus arrhythmia, atrial
    ectopy) are not AF: AF has no P waves."""
    rng = np.random.default_rng(7)
    rr = np.concatenate([np.full(80, 0.8), rng.uniform(0.7, 1.3, 200), np.full(40, 0.8)])
    with_p, _ = ecg_from_rr(rr, FS, p_wave=True)
    assert starts(run(with_p), "AFIB") == []
    # without P waves, with disorganised atrial activity on the baseline: AF
    without_p, _ = ecg_from_rr(rr, FS, p_wave=False, noise_mv=0.03)
    assert starts(run(without_p), "AFIB")


def test_sinus_rhythm_is_not_fibrillation() -> None:
    x, _ = ecg_from_rr(np.full(100, 0.5), FS, noise_mv=0.02)
    assert starts(run(x), "VFIB") == []


def test_atrial_fibrillation_onset_and_offset() -> None:
    """AF: irregularly irregular intervals, no P waves, disorganised atrial activity (here
    noise on the baseline); the regular parts around it are junctional: no P waves either."""
    rng = np.random.default_rng(7)
    rr = np.concatenate([np.full(80, 0.8), rng.uniform(0.4, 1.1, 200), np.full(120, 0.8)])
    x, truth = ecg_from_rr(rr, FS, p_wave=False, noise_mv=0.03)
    ev = run(x)
    (start,) = starts(ev, "AFIB")
    onset = truth[80] / FS
    assert onset - 5.0 <= start <= onset + 40.0
    ends = [f.time_s for f in flags(ev, "AFIB") if f.state == "end"]
    offset = truth[280] / FS
    assert ends and offset - 10.0 <= ends[0] <= offset + 60.0


def test_af_features_separate_regular_from_random() -> None:
    rng = np.random.default_rng(3)
    assert not af_features(np.full(64, 0.8) + rng.normal(0, 0.01, 64)).irregular
    assert af_features(rng.uniform(0.4, 1.1, 64)).irregular
    with pytest.raises(ValueError, match="24"):
        af_features(np.ones(10))
    with pytest.raises(ValueError, match="finite"):
        af_features(np.r_[np.full(40, 0.8), np.nan, np.full(23, 0.8)])


def test_the_pause_rule_from_its_definition() -> None:
    from eicu.signal.classify import full_pause, pause_candidate

    # early (prematurity below 0.95) and clearly unlike the dominant beat (correlation < 0.8)
    assert pause_candidate(0.6, 0.2) and pause_candidate(0.9, -0.9)
    assert not pause_candidate(0.97, 0.2) and not pause_candidate(0.6, 0.85)
    assert not pause_candidate(float("nan"), 0.2) and not pause_candidate(0.6, float("nan"))
    # before + after = 2 dominant intervals within 5 %, the next beat a dominant one
    assert full_pause(0.5, 1.1, 0.8, 0.99) and full_pause(0.5, 1.15, 0.8, 0.95)
    assert not full_pause(0.5, 0.8, 0.8, 0.99)  # the sinus node reset: 1.625 intervals
    assert not full_pause(0.5, 1.25, 0.8, 0.99)  # longer than a full pause: 2.19
    assert not full_pause(0.5, 1.1, 0.8, 0.5) and not full_pause(0.5, 1.1, 0.8, None)


def _unlike_premature_beats(
    after: float, seed: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sinus beats every 0.8 s with, every 8th beat, a premature beat (0.5 s after the beat
    before it) as narrow as the sinus beats but inverted and without a P wave, the next beat
    ``after`` s later. Returns (signal, R peaks, whether each beat is the premature one)."""
    n = 160
    odd = np.zeros(n + 1, dtype=bool)
    odd[24:-8:8] = True
    rr = np.full(n, 0.8)
    rr[odd[1:]] = 0.5
    rr[np.flatnonzero(odd[1:]) + 1] = after
    x, r_idx = ecg_with_ventricular_beats(rr, odd, FS, wide_qrs_s=0.06, seed=seed)
    return x, r_idx, odd


def test_an_unlike_premature_beat_with_a_full_compensatory_pause_is_ventricular() -> None:
    # A ventricular ectopic beat comes early and leaves the sinus node undisturbed: the next
    # sinus beat comes on its own schedule, so the intervals before and after the ectopic beat
    # add up to two sinus intervals (a full compensatory pause). An atrial premature beat
    # resets the sinus node: the next beat follows one sinus interval after it. The intervals
    # before and after a beat are features of ventricular ectopy in de Chazal et al. (IEEE
    # Trans Biomed Eng 51(7):1196-1206, 2004).
    x, r_idx, odd = _unlike_premature_beats(after=1.1)  # 0.5 + 1.1 = 2 x 0.8
    called = np.array(_called(run(x), r_idx))
    assert (called[odd] == "V").all(), called[odd]
    assert (called[~odd][12:] == "N").all()
    x, r_idx, odd = _unlike_premature_beats(after=0.8)  # the sinus node reset
    called = np.array(_called(run(x), r_idx))
    assert (called[odd] == "N").all(), called[odd]
    assert (called[~odd][12:] == "N").all()


def test_asystole_right_after_an_early_beat_is_flagged_at_most_2_s_later() -> None:
    """A beat held back for its pause holds back the rhythm layer: when no beat follows it
    (asystole right after an early beat), the wait ends once the next beat can no longer make
    the pause full, and the asystole flag keeps its onset and comes at most 2 s of data later
    than after an ordinary beat."""

    def first_seen(odd_last: bool) -> tuple[float, float]:
        rr = np.concatenate([np.full(20, 0.8), [0.5 if odd_last else 0.8]])
        odd = np.zeros(rr.shape[0] + 1, dtype=bool)
        odd[-1] = odd_last
        x, r_idx = ecg_with_ventricular_beats(rr, odd, FS, wide_qrs_s=0.06, seed=2)
        x = np.concatenate([x, np.full(round(10 * FS), x[-1])])  # then nothing but baseline
        p = BedSignalPipeline({"ECG_II": FS})
        n = round(0.25 * FS)
        for i in range(0, x.shape[0], n):
            for e in p.push("ECG_II", x[i : i + n], i):
                if isinstance(e, RhythmFlag) and e.label == "ASYSTOLE":
                    return e.time_s - r_idx[-1] / FS, (i + n) / FS - e.time_s
        raise AssertionError("no asystole flag")

    onset_plain, late_plain = first_seen(False)
    onset_held, late_held = first_seen(True)
    assert onset_held == pytest.approx(onset_plain, abs=0.05)
    assert late_held <= late_plain + 2.0, (late_plain, late_held)


@settings(max_examples=8, deadline=None)
@given(chunk_s=st.floats(min_value=0.05, max_value=3.0), after=st.sampled_from([0.8, 1.1, 1.3]))
def test_compensatory_pause_calls_chunked_equal_whole(chunk_s: float, after: float) -> None:
    x, _, _ = _unlike_premature_beats(after=after)
    whole = run(x, chunk_s=x.shape[0] / FS)
    chunked = run(x, chunk_s=chunk_s)
    assert [repr(e) for e in _sorted(chunked)] == [repr(e) for e in _sorted(whole)]
    # beats and ticks reach the consumer in time order, whatever was held back
    samples = [e.sample for e in chunked if isinstance(e, Beat)]
    assert samples == sorted(samples)


def _sorted(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (type(e).__name__, e.sample, repr(e)))


@settings(max_examples=12, deadline=None)
@given(chunk_s=st.floats(min_value=0.05, max_value=3.0), seed=st.integers(0, 100))
def test_pipeline_chunked_equals_whole(chunk_s: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rr = np.concatenate([np.full(30, 0.8), [5.0], rng.uniform(0.4, 1.1, 40), np.full(20, 1.7)])
    x, _ = ecg_from_rr(rr, FS, noise_mv=0.02, seed=seed)
    a = int(rng.integers(0, x.shape[0] - 1000))
    x[a : a + int(rng.integers(1, 1000))] = np.nan
    whole = run(x, chunk_s=x.shape[0] / FS)
    assert [repr(e) for e in _sorted(run(x, chunk_s=chunk_s))] == [repr(e) for e in _sorted(whole)]


def test_multi_rate_bed_and_pulse_rate() -> None:
    x, truth = ecg_from_rr(np.full(60, 0.75), 250.0)
    abp = pulse_from_beats(np.round(truth / 2).astype(np.int64), x.shape[0] // 2, 125.0)
    p = BedSignalPipeline({"ECG_II": 250.0, "ABP": 125.0})
    ev: list[Event] = []
    for i in range(0, x.shape[0] // 250):
        ev += p.push("ECG_II", x[i * 250 : (i + 1) * 250], i * 250)
        ev += p.push("ABP", abp[i * 125 : (i + 1) * 125], i * 125)
    pulse_hr = [e.hr_bpm for e in ev if isinstance(e, HeartRate) and e.signal == "ABP"]
    assert len(pulse_hr) > 40 and np.allclose(pulse_hr, 80.0, atol=2.0)
    pulse_corr = [e.template_corr for e in ev if isinstance(e, Beat) and e.signal == "ABP"]
    assert all(c is not None and c > 0.95 for c in pulse_corr[10:])  # one shape throughout
    abp_verdicts = [e for e in ev if isinstance(e, Quality) and e.signal == "ABP"]
    # (the first window holds the flat lead-in before the first pulse)
    assert [e.verdict for e in abp_verdicts if e.time_s > 4.0] == []
    assert abp_verdicts[-1].verdict == "good"
    assert verify_alarm(p, "VTACH").true_alarm is False  # regular pulses: false VT alarm
    same = (p.verify_alarm("VTACH"), verify_alarm(p, "VTACH"))
    assert same[0].true_alarm == same[1].true_alarm and same[0].reason == same[1].reason
    assert verify_alarm(p, "ASYSTOLE").true_alarm is False


def test_rejects_bad_configuration_and_chunks() -> None:
    with pytest.raises(ValueError, match="unknown signal key"):
        BedSignalPipeline({"EEG": 250.0})
    with pytest.raises(ValueError, match="outside"):
        BedSignalPipeline({"ECG_II": 50.0})
    with pytest.raises(ValueError, match="at least one"):
        BedSignalPipeline({})
    p = BedSignalPipeline({"ECG_II": FS})
    with pytest.raises(ValueError, match="not configured"):
        p.push("ABP", np.zeros(10), 0)
    p.push("ECG_II", np.zeros(100), 0)
    with pytest.raises(ValueError, match="overlapping"):
        p.push("ECG_II", np.zeros(10), 50)
    with pytest.raises(ValueError, match="inf"):
        p.push("ECG_II", np.array([np.inf]), 100)
    with pytest.raises(ValueError, match="unknown alarm"):
        verify_alarm(p, "SNEEZE")


def _verdicts(events: list[Event], signal: str) -> list[str]:
    return [e.verdict for e in events if isinstance(e, Quality) and e.signal == signal]


def test_quality_verdicts_flat_saturated_noisy() -> None:
    x, _ = ecg_from_rr(np.full(40, 0.8), FS)
    n = x.shape[0]
    flat = x.copy()
    flat[n // 3 : n // 3 + 2000] = 0.2
    assert "flat" in _verdicts(run(flat), "ECG_II")
    clipped = np.clip(x * 8.0, -1.0, 1.0)
    assert "saturated" in _verdicts(run(clipped), "ECG_II")
    noisy = x + np.random.default_rng(0).normal(0, 0.5, n)
    assert "noisy" in _verdicts(run(noisy), "ECG_II")
    assert _verdicts(run(x), "ECG_II") == ["good"]


def _bed(
    ecg: np.ndarray, abp: np.ndarray | None, chunk_s: float
) -> tuple[BedSignalPipeline, list[Event]]:
    signals = {"ECG_II": 250.0, "ECG_V": 250.0}
    if abp is not None:
        signals["ABP"] = 125.0
    p = BedSignalPipeline(signals)
    events: list[Event] = []
    n_e = max(2, round(chunk_s * 250.0)) // 2 * 2
    n_a = n_e // 2
    for k in range(0, -(-ecg.shape[0] // n_e)):
        i, j = k * n_e, k * n_a
        events += p.push("ECG_II", ecg[i : i + n_e], i)
        events += p.push("ECG_V", -0.7 * ecg[i : i + n_e], i)
        if abp is not None:
            events += p.push("ABP", abp[j : j + n_a], j)
    return p, events


def test_multi_signal_bed_chunked_equals_whole() -> None:
    x, truth = ecg_from_rr(np.random.default_rng(5).uniform(0.5, 1.0, 60), 250.0, noise_mv=0.02)
    x = x[: (x.shape[0] // 250) * 250]
    abp = pulse_from_beats(truth // 2, x.shape[0] // 2, 125.0)
    abp[1000:1300] = np.nan
    _, a = _bed(x, abp, 1.0)
    _, b = _bed(x, abp, 0.2)
    assert [repr(e) for e in _sorted(a)] == [repr(e) for e in _sorted(b)]  # NaN-safe
    assert {e.signal for e in a if isinstance(e, Beat)} == {"ECG_II", "ECG_V", "ABP"}


@settings(max_examples=6, deadline=None)
@given(chunk_s=st.floats(min_value=0.05, max_value=1.0), after=st.sampled_from([0.8, 1.1]))
def test_two_leads_and_a_pulse_with_beats_held_for_their_pause_chunked_alike(
    chunk_s: float, after: float
) -> None:
    """The leads of a bed arrive in chunks, the primary lead waiting for the second (up to
    1 s). On the second lead the early beats look like the sinus beats, so only their pause
    can make them V on the primary lead; beats held back for it change nothing whatever the
    chunks."""
    x, r_idx, odd = _unlike_premature_beats(after=after)
    n = (x.shape[0] // 250) * 250
    rr = np.diff(r_idx) / FS
    lead_v, _ = ecg_from_rr(rr, FS, noise_mv=0.01, seed=9)  # every beat sinus-shaped here
    leads = {"ECG_II": x[:n], "ECG_V": 0.7 * lead_v[:n]}
    abp = pulse_from_beats(r_idx // 2, n // 2, 125.0)

    def bed(chunk: float) -> list[Event]:
        p = BedSignalPipeline({"ECG_II": FS, "ECG_V": FS, "ABP": 125.0})
        m = max(2, round(chunk * FS)) // 2 * 2
        out: list[Event] = []
        for i in range(0, n, m):
            for key, sig in leads.items():
                out += p.push(key, sig[i : i + m], i)
            out += p.push("ABP", abp[i // 2 : (i + m) // 2], i // 2)
        return out

    second, chunked = bed(1.0), bed(chunk_s)
    assert [repr(e) for e in _sorted(chunked)] == [repr(e) for e in _sorted(second)]
    called = np.array(_called(second, r_idx, "ECG_II"))
    judged = odd[: called.shape[0]]
    assert (called[judged] == ("V" if after == 1.1 else "N")).all(), called[judged]


def test_asystole_alarm_true_without_pulses_false_with_them() -> None:
    x, _ = ecg_from_rr(np.full(40, 0.8), 250.0)
    n_beats = int(x.shape[0] // 250)
    x = np.concatenate([x[: 25 * 250], np.random.default_rng(1).normal(0, 0.005, 8 * 250)])
    flat_abp = np.full(x.shape[0] // 2, 60.0) + np.random.default_rng(2).normal(
        0, 0.3, x.shape[0] // 2
    )
    pulsing = pulse_from_beats(np.arange(40, x.shape[0] // 2, 100), x.shape[0] // 2, 125.0)
    assert n_beats > 25
    p_true, ev = _bed(x, flat_abp, 0.5)
    assert starts(ev, "ASYSTOLE")
    assert verify_alarm(p_true, "ASYSTOLE").true_alarm is True
    p_false, _ = _bed(x, pulsing, 0.5)
    assert verify_alarm(p_false, "ASYSTOLE").true_alarm is False


def test_vt_alarm_true_on_a_ventricular_run_without_regular_pulses() -> None:
    normal, _ = ecg_from_rr(np.full(40, 0.8), 250.0)
    wide, _ = ecg_from_rr(np.full(14, 0.42), 250.0, qrs_width_s=0.14, p_wave=False, start_s=0.3)
    x = np.concatenate([normal, -wide])
    x = x[: (x.shape[0] // 250) * 250]
    p, ev = _bed(x, None, 0.5)
    assert starts(ev, "VTACH")
    decision = verify_alarm(p, "VTACH")
    assert decision.true_alarm is True, decision.reason
    p_sinus, _ = _bed(normal[: (normal.shape[0] // 250) * 250], None, 0.5)
    assert verify_alarm(p_sinus, "VTACH").true_alarm is False


def test_an_af_alarm_is_false_while_a_good_pulse_beats_regularly() -> None:
    """AF is an irregularly irregular ventricular rhythm, and the pulse follows it; a pulse of
    good quality beating regularly through the window says the ECG's irregularity is not AF."""
    regular = PulseEvidence("PLETH", 10, 1.0, 0.9, 75.0, 0.03)
    irregular = PulseEvidence("PLETH", 10, 1.0, 1.2, 95.0, 0.22)
    poor = PulseEvidence("PLETH", 10, 0.2, 0.9, 75.0, 0.03)
    gap = PulseEvidence("ABP", 4, 1.0, 2.5, 60.0, 0.03)
    verdict = decide("AFIB", [], [irregular, regular])
    assert verdict.true_alarm is False and "PLETH" in verdict.reason
    assert decide("AFIB", [], [irregular]).true_alarm is True
    sinus = PulseEvidence("ABP", 10, 1.0, 1.0, 70.0, 0.07)  # respiratory sinus arrhythmia
    assert decide("AFIB", [], [sinus]).true_alarm is False
    # no pulse of good quality, or none beating throughout: the ECG's call stands
    assert decide("AFIB", [], [poor, gap]).true_alarm is True
    assert decide("AFIB", [], []).true_alarm is True
    assert "AFIB" in VERIFIED_LABELS and "PAUSE" not in VERIFIED_LABELS


def test_simulated_vt_bed_is_ventricular_while_the_wide_rhythm_lasts() -> None:
    from simulators.synth import BedSynth

    sim = BedSynth("vt", 0)
    (ep,) = sim.plan.episodes
    p = BedSignalPipeline({"ECG_II": sim.fs_hz["ECG_II"]})
    events: list[Event] = []
    i = 0
    for _ in range(round((ep.end_s + 8.0) / 0.25)):
        x = sim.waveforms(0.25)["ECG_II"]
        events += p.push("ECG_II", x, i)
        i += x.shape[0]
    beats = [e for e in events if isinstance(e, Beat) and e.beat_class is not None]
    inside = [b for b in beats if ep.start_s + 0.3 < b.time_s < ep.end_s - 0.3]
    outside = [b for b in beats if b.time_s < ep.start_s - 0.3 or b.time_s > ep.end_s + 0.7]
    assert inside and all(b.beat_class == "V" and b.ventricular for b in inside)
    assert outside and all(b.beat_class == "N" for b in outside)
    vt = flags(events, "VTACH")
    assert [f.state for f in vt] == ["start", "end"]
    assert ep.start_s - 0.2 <= vt[0].time_s <= ep.start_s + 2.0
    assert ep.end_s - 0.5 <= vt[1].time_s <= ep.end_s + 1.5  # the first sinus beat after it


@pytest.mark.realdata
def test_mitdb_classes_and_ventricular_calls_chunked_equal_whole() -> None:
    from eicu.signal.events import VentricularRun
    from eicu.signal.records import read_record
    from tests.conftest import require_data

    root = require_data("mitdb/119.hea")
    rec = read_record(root / "mitdb" / "119")
    x = rec.signals[: round(360 * rec.fs_hz), 0]  # 6 min of ventricular bigeminy and trigeminy
    whole = run(x, chunk_s=x.shape[0] / rec.fs_hz, fs=rec.fs_hz)
    chunked = run(x, chunk_s=0.25, fs=rec.fs_hz)
    assert [repr(e) for e in _sorted(chunked)] == [repr(e) for e in _sorted(whole)]
    classes = [e.beat_class for e in whole if isinstance(e, Beat)]
    assert classes.count("V") > 50 and classes.count("N") > 200
    assert any(isinstance(e, VentricularRun) for e in whole) or flags(whole, "BIGEMINY")


@pytest.mark.realdata
@pytest.mark.parametrize("record", ["107", "217"])
def test_a_paced_rhythm_is_the_dominant_beat_and_never_vt(record: str) -> None:
    from eicu.signal.records import read_record
    from tests.conftest import require_data

    root = require_data(f"mitdb/{record}.hea")
    rec = read_record(root / "mitdb" / record)
    x = rec.signals[: round(300 * rec.fs_hz), 0]
    ev = run(x, chunk_s=1.0, fs=rec.fs_hz)
    classes = [e.beat_class for e in ev if isinstance(e, Beat) and e.beat_class is not None]
    assert classes.count("N") > 0.8 * len(classes)
    assert flags(ev, "VTACH") == []


@pytest.mark.realdata
def test_mitdb_vfib_only_on_ventricular_tachyarrhythmias_and_on_every_flutter() -> None:
    """On every MIT-BIH record present: at least 90 % of the VFIB episodes lie on annotated
    ventricular flutter, fibrillation or tachycardia (a fast VT judged fibrillatory is still a
    lethal rhythm; the rest come from conducted beats the classifier calls V), and every
    annotated flutter or fibrillation episode is flagged VFIB."""
    from eicu.signal.records import read_record, read_rhythm_episodes
    from tests.conftest import require_data

    root = require_data("mitdb/RECORDS")
    records = (root / "mitdb" / "RECORDS").read_text().split()
    present = [r for r in records if (root / "mitdb" / f"{r}.hea").exists()]
    if not present:
        pytest.skip(f"no MIT-BIH record under {root / 'mitdb'}")
    false_eps: list[tuple[str, float]] = []
    missed: list[tuple[str, float]] = []
    n_eps = 0
    for r in present:
        path = root / "mitdb" / r
        rec = read_record(path)
        x = rec.signals[:, 0]
        n = x.shape[0]
        lethal = [
            ep for label in ("VFL", "VF", "VT") for ep in read_rhythm_episodes(path, label, n)
        ]
        fib = read_rhythm_episodes(path, "VFL", n) + read_rhythm_episodes(path, "VF", n)
        ev = run(x, chunk_s=1.0, fs=rec.fs_hz)
        eps, opened = [], None
        for f in flags(ev, "VFIB"):
            if f.state == "start":
                opened = f.sample
            elif opened is not None:
                eps.append((opened, f.sample))
                opened = None
        if opened is not None:
            eps.append((opened, n))
        n_eps += len(eps)
        for a, b in eps:
            if not any(a < e1 and s1 < b for s1, e1 in lethal):
                false_eps.append((r, a / rec.fs_hz))
        for s1, e1 in fib:
            if not any(a < e1 and s1 < b for a, b in eps):
                missed.append((r, s1 / rec.fs_hz))
    assert len(false_eps) <= 0.1 * n_eps, (false_eps, n_eps)
    assert missed == []
