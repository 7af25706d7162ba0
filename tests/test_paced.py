"""Paced beats: pacer spikes (IEC 60601-2-27 pulses of 0.1-2 ms) make a beat's template paced;
paced beats are a class of their own ("P"), never ventricular ectopy, never a run or VT, and
a paced rhythm is never AF. A wide rhythm without spikes keeps its ventricular calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eicu.kernels import vclass as k
from eicu.signal.classify import BeatClassifier
from eicu.signal.events import Beat, Event, RhythmFlag, VentricularRun
from eicu.signal.pipeline import BedSignalPipeline
from tests.naive_detector import naive_spike_score
from tests.synthetic import ecg_from_rr

FS = 250.0


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(4, 120),
    spike_n=st.integers(1, 5),
    nan_at=st.one_of(st.none(), st.integers(0, 119)),
)
def test_spike_score_matches_naive_twin(
    seed: int, n: int, spike_n: int, nan_at: int | None
) -> None:
    r = np.random.default_rng(seed).normal(size=n).cumsum()
    if nan_at is not None and nan_at < n:
        r[nan_at] = np.nan
    got = k._spike_score(r, 0, n, spike_n)
    want = naive_spike_score(r, spike_n)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, rel=1e-9)


def _with_spikes(x: np.ndarray, r_idx: np.ndarray, every: int = 1, mv: float = 0.8) -> np.ndarray:
    """A pacer pulse of one sample 80 ms before each ``every``-th R peak."""
    y = x.copy()
    for i, r in enumerate(r_idx):
        if i % every == 0:
            y[r - round(0.08 * FS)] += mv
    return y


@pytest.mark.parametrize("width_s", [0.025, 0.06])
def test_a_one_sample_pulse_scores_as_a_spike_and_a_qrs_complex_does_not(width_s: float) -> None:
    x, r_idx = ecg_from_rr(np.full(20, 0.8), FS, qrs_width_s=width_s, noise_mv=0.005, seed=1)
    spiked = _with_spikes(x, r_idx)
    clf = BeatClassifier(FS)
    lo = [int(r) - clf.pre_n for r in r_idx[1:-1]]
    span = clf.pre_n + clf.post_n
    plain = [k._spike_score(x, a, span, 2) for a in lo]
    paced = [k._spike_score(spiked, a, span, 2) for a in lo]
    assert max(plain) < 2.0 < min(paced)


def test_beats_of_a_template_with_spikes_are_paced_and_others_are_not() -> None:
    from scipy import signal as sps

    from eicu.signal.filters import SosFilter

    rr = np.full(80, 0.85)
    x, r_idx = ecg_from_rr(rr, FS, qrs_width_s=0.06, noise_mv=0.005, p_wave=False, seed=2)
    raw = _with_spikes(x, r_idx)
    sos = sps.butter(2, [0.5, 40.0], "bandpass", fs=FS, output="sos")
    y = SosFilter(sos).step(raw)
    fids = r_idx[:-1]
    rr_prev = np.diff(np.concatenate([[-1], fids]))
    rr_prev[0] = -1
    classes, feats = BeatClassifier(FS).classify(y[None, :], [0], fids, rr_prev, raw[None, :])
    assert (classes[10:] == k.C_P).all()
    assert (feats[10:, 0, 8] > 2.0).all()
    # the same beats without the raw samples: no spike can be seen, the rhythm is dominant
    classes, _ = BeatClassifier(FS).classify(y[None, :], [0], fids, rr_prev)
    assert (classes[10:] == k.C_N).all()
    # a lone spiked beat among many plain ones does not make their template paced
    raw1 = _with_spikes(x, r_idx, every=25)
    y1 = SosFilter(sos).step(raw1)
    classes, _ = BeatClassifier(FS).classify(y1[None, :], [0], fids, rr_prev, raw1[None, :])
    assert (classes[10:] == k.C_N).all()


def _run_bed(scenario: str, seconds: float, fs: float | None = None) -> tuple[list[Event], float]:
    from simulators.synth import BedSynth

    sim = BedSynth(scenario, 0, fs_hz=None if fs is None else {"ECG_II": fs})
    f = sim.fs_hz["ECG_II"]
    p = BedSignalPipeline({"ECG_II": f})
    events: list[Event] = []
    i = 0
    for _ in range(round(seconds / 0.25)):
        x = sim.waveforms(0.25)["ECG_II"]
        events += p.push("ECG_II", x, i)
        i += x.shape[0]
    return events, sim.plan.episodes[0].start_s


@pytest.mark.parametrize("fs", [None, 500.0])
def test_simulated_paced_bed_is_paced_not_ventricular_not_af(fs: float | None) -> None:
    events, onset = _run_bed("paced", 150.0, fs)
    beats = [e for e in events if isinstance(e, Beat) and e.beat_class is not None]
    paced = [b for b in beats if b.time_s > onset + 3.0]
    assert len(paced) > 100
    share = sum(b.beat_class == "P" for b in paced) / len(paced)
    assert share > 0.95
    assert not any(b.beat_class == "V" for b in paced)
    assert not any(isinstance(e, VentricularRun) for e in events)
    labels = {e.label for e in events if isinstance(e, RhythmFlag)}
    assert not labels & {"AFIB", "VTACH", "VT_SUSTAINED", "BIGEMINY", "TRIGEMINY"}


def test_a_wide_run_without_spikes_after_paced_beats_is_still_vt() -> None:
    """Pacing, then a fast run of wide complexes that carry no pacer spike: VTACH."""
    rr = np.concatenate([np.full(40, 0.85), np.full(12, 0.4), np.full(10, 0.85)])
    narrow, r_idx = ecg_from_rr(rr, FS, qrs_width_s=0.06, noise_mv=0.005, p_wave=False, seed=4)
    wide, _ = ecg_from_rr(rr, FS, qrs_width_s=0.16, p_wave=False, seed=5)
    x = narrow.copy()
    half = round(0.2 * FS)
    for i, r in enumerate(r_idx):
        if 41 <= i <= 52:  # the run: inverted wide complexes
            x[r - half : r + half] = -wide[r - half : r + half]
        else:  # paced: a pacer pulse 80 ms before the complex
            x[r - round(0.08 * FS)] += 0.8
    p = BedSignalPipeline({"ECG_II": FS})
    events: list[Event] = []
    n = round(0.25 * FS)
    for i in range(0, x.shape[0], n):
        events += p.push("ECG_II", x[i : i + n], i)
    beats = [e for e in events if isinstance(e, Beat) and e.beat_class is not None]
    before = [b for b in beats if b.sample < r_idx[40] - 10]
    run = [b for b in beats if r_idx[41] - 10 <= b.sample <= r_idx[52] + 10]
    assert sum(b.beat_class == "P" for b in before) > 0.8 * len(before)
    assert sum(b.beat_class == "V" for b in run) >= 10
    vt = [e for e in events if isinstance(e, RhythmFlag) and e.label == "VTACH"]
    assert vt and vt[0].state == "start"
    assert r_idx[41] - 10 <= vt[0].sample <= r_idx[44]


PACED_RECORDS = ("102", "104", "107", "217")


def _record_events(record: str) -> tuple[list[Event], np.ndarray, np.ndarray, float]:
    from eicu.signal.records import quiet_wfdb, read_record, wfdb_module
    from tests.conftest import require_data

    root = require_data(f"mitdb/{record}.hea", f"mitdb/{record}.atr")
    wfdb = wfdb_module()
    rec = read_record(root / "mitdb" / record)
    x = rec.signals[:, 0]
    p = BedSignalPipeline({"ECG_II": rec.fs_hz})
    n = round(rec.fs_hz)
    events: list[Event] = []
    for i in range(0, x.shape[0], n):
        events += p.push("ECG_II", x[i : i + n], i)
    with quiet_wfdb():
        ann = wfdb.rdann(str(root / "mitdb" / record), "atr")
    return events, np.asarray(ann.sample), np.asarray(ann.symbol), rec.fs_hz


def _class_at(beats: list[Beat], samples: np.ndarray, tol: int) -> list[str | None]:
    """The class of the detected beat nearest each reference sample (within ``tol``)."""
    det = np.array([b.sample for b in beats])
    out: list[str | None] = []
    for s in samples.tolist():
        j = int(np.searchsorted(det, s))
        near = [i for i in (j - 1, j) if 0 <= i < det.shape[0] and abs(det[i] - s) <= tol]
        out.append(beats[min(near, key=lambda i: abs(det[i] - s))].beat_class if near else None)
    return out


@pytest.mark.realdata
@pytest.mark.parametrize("record", PACED_RECORDS)
def test_mitdb_paced_records_raise_no_af_and_no_vt(record: str) -> None:
    events, _, _, _ = _record_events(record)
    labels = {e.label for e in events if isinstance(e, RhythmFlag)}
    assert "AFIB" not in labels
    assert "VTACH" not in labels


@pytest.mark.realdata
@pytest.mark.parametrize("record", ["102", "104"])
def test_mitdb_paced_beats_with_resolved_spikes_are_paced_not_ventricular(record: str) -> None:
    """Records whose first channel shows the pacer spikes (narrower than the QRS complexes)."""
    events, samples, symbols, fs = _record_events(record)
    beats = sorted(
        (e for e in events if isinstance(e, Beat) and e.beat_class is not None),
        key=lambda b: b.sample,
    )
    paced = samples[symbols == "/"]
    got = _class_at(beats, paced, round(0.15 * fs))
    judged = [c for c in got if c is not None]
    assert len(judged) > 0.95 * paced.shape[0]
    assert judged.count("P") > 0.95 * len(judged)
    assert judged.count("V") < 0.01 * len(judged)
