"""The streaming beat detector: chunked equals whole, known truth, gaps, real records."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eicu.signal.beats import BeatDetector, detect_beats
from eicu.signal.records import read_beat_annotations, read_record, wfdb_module
from tests.conftest import require_data
from tests.naive_detector import naive_detect
from tests.synthetic import ecg_from_rr, pulse_from_beats


def _match(ref: np.ndarray, test: np.ndarray, tol: int) -> tuple[int, int, int]:
    """(tp, fn, fp) with one-to-one matching within tol samples."""
    used = np.zeros(test.shape[0], dtype=bool)
    tp = 0
    for r in ref:
        j = np.searchsorted(test, r - tol)
        while j < test.shape[0] and test[j] <= r + tol:
            if not used[j]:
                used[j] = True
                tp += 1
                break
            j += 1
    return tp, ref.shape[0] - tp, test.shape[0] - tp


def _push_chunks(det: BeatDetector, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    out = []
    i = 0
    k = 0
    while i < x.shape[0]:
        n = sizes[k % len(sizes)]
        out.append(det.push(x[i : i + n]).sample)
        i += n
        k += 1
    return np.concatenate(out)


def _irregular_rr(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.45, 1.3, n)


@pytest.mark.parametrize("fs_hz", [125.0, 250.0, 360.0, 500.0])
def test_synthetic_ecg_every_beat_found(fs_hz: float) -> None:
    x, truth = ecg_from_rr(_irregular_rr(120, 1), fs_hz, noise_mv=0.02)
    beats = detect_beats(x, fs_hz)
    tp, fn, fp = _match(truth, beats, round(0.05 * fs_hz))
    assert fn == 0 and fp == 0, (tp, fn, fp)


def test_synthetic_tachycardia_and_bradycardia() -> None:
    fs = 250.0
    rr = np.concatenate([np.full(40, 0.33), np.full(20, 1.9), np.full(40, 0.8)])
    x, truth = ecg_from_rr(rr, fs)
    _tp, fn, fp = _match(truth, detect_beats(x, fs), round(0.05 * fs))
    assert (fn, fp) == (0, 0)


def test_flat_line_gives_no_beats() -> None:
    assert detect_beats(np.zeros(25_000), 250.0).shape == (0,)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=800), min_size=1, max_size=6),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_chunked_equals_whole_synthetic(sizes: list[int], seed: int) -> None:
    fs = 250.0
    x, _ = ecg_from_rr(_irregular_rr(40, seed), fs, noise_mv=0.05, seed=seed)
    rng = np.random.default_rng(seed)
    if seed % 2:
        a = int(rng.integers(0, x.shape[0] - 600))
        x[a : a + int(rng.integers(1, 600))] = np.nan
    whole = BeatDetector.ecg(fs).push(x).sample
    chunked = _push_chunks(BeatDetector.ecg(fs), x, sizes)
    np.testing.assert_array_equal(whole, chunked)


def test_chunked_equals_whole_pulse() -> None:
    fs = 125.0
    beat_idx = np.cumsum(np.random.default_rng(3).integers(70, 130, 80))
    x = pulse_from_beats(beat_idx, int(beat_idx[-1] + fs), fs)
    whole = BeatDetector.pulse(fs).push(x).sample
    chunked = _push_chunks(BeatDetector.pulse(fs), x, [13, 125, 250, 31])
    np.testing.assert_array_equal(whole, chunked)
    tp, fn, fp = _match(beat_idx, whole, round(0.35 * fs))
    assert fn <= 1 and fp == 0, (tp, fn, fp)  # the first pulse may fall in the settling time


def test_gap_places_no_beat_inside_and_recovers() -> None:
    fs = 250.0
    x, truth = ecg_from_rr(np.full(80, 0.8), fs)
    a, b = 5000, 7500
    x[a:b] = np.nan
    beats = detect_beats(x, fs)
    assert not np.any((beats >= a) & (beats < b))
    later = truth[truth > b + 4 * fs]
    _tp, fn, _ = _match(later, beats[beats > b + 4 * fs], round(0.05 * fs))
    assert fn == 0


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="fs_hz"):
        BeatDetector.ecg(0.0)
    with pytest.raises(ValueError, match="too low"):
        BeatDetector.ecg(20.0)
    det = BeatDetector.ecg(250.0)
    with pytest.raises(ValueError, match="1-D"):
        det.push(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="inf"):
        det.push(np.array([0.0, np.inf]))


@pytest.mark.realdata
def test_mitdb_chunked_equals_whole_and_accuracy() -> None:
    root = require_data("mitdb/101.hea")
    rec = read_record(root / "mitdb" / "101")
    ref = read_beat_annotations(root / "mitdb" / "101")
    x = rec.signals[:, 0]
    whole = BeatDetector.ecg(rec.fs_hz).push(x).sample
    chunked = _push_chunks(BeatDetector.ecg(rec.fs_hz), x, [90])  # 0.25 s chunks
    np.testing.assert_array_equal(whole, chunked)
    cmp = wfdb_module().processing.compare_annotations(ref, whole, int(0.15 * rec.fs_hz))
    assert cmp.tp / (cmp.tp + cmp.fn) > 0.995
    assert cmp.tp / (cmp.tp + cmp.fp) > 0.995


def _naive_compare(x: np.ndarray, det_whole: BeatDetector, det_naive: BeatDetector) -> None:
    got = det_whole.push(x)
    want_beats, want_at = naive_detect(x, det_naive)
    np.testing.assert_array_equal(got.sample, want_beats)
    np.testing.assert_array_equal(got.decided_at, want_at)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000), gap=st.booleans())
def test_detector_matches_naive_twin_on_synthetic_ecg(seed: int, gap: bool) -> None:
    rng = np.random.default_rng(seed)
    rr = np.concatenate([rng.uniform(0.35, 1.4, 25), [float(rng.uniform(2.0, 6.0))]])
    x, _ = ecg_from_rr(rr, 250.0, noise_mv=float(rng.uniform(0.0, 0.1)), seed=seed)
    if gap:
        a = int(rng.integers(0, x.shape[0] - 300))
        x[a : a + int(rng.integers(1, 300))] = np.nan
    _naive_compare(x, BeatDetector.ecg(250.0), BeatDetector.ecg(250.0))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000))
def test_detector_matches_naive_twin_on_noise_and_pulses(seed: int) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, 3000) * (rng.random(3000) < 0.05)  # sparse spikes
    _naive_compare(noise, BeatDetector.ecg(360.0), BeatDetector.ecg(360.0))
    beat_idx = np.cumsum(rng.integers(60, 140, 40))
    abp = pulse_from_beats(beat_idx, int(beat_idx[-1] + 125), 125.0)
    _naive_compare(abp, BeatDetector.pulse(125.0), BeatDetector.pulse(125.0))


@pytest.mark.realdata
def test_detector_matches_naive_twin_on_mitdb() -> None:
    root = require_data("mitdb/203.hea")
    x = read_record(root / "mitdb" / "203", sampto=360 * 40).signals[:, 0]
    _naive_compare(x, BeatDetector.ecg(360.0), BeatDetector.ecg(360.0))


def test_alternative_ecg_detector_matches_naive_and_finds_beats() -> None:
    from eicu.signal.beats import ECG_ALT_CONFIG

    x, truth = ecg_from_rr(_irregular_rr(60, 4), 250.0, noise_mv=0.02)
    _naive_compare(x, BeatDetector(250.0, ECG_ALT_CONFIG), BeatDetector(250.0, ECG_ALT_CONFIG))
    found = BeatDetector(250.0, ECG_ALT_CONFIG).push(x).sample
    _tp, fn, fp = _match(truth, found, round(0.05 * 250.0))
    assert fn == 0 and fp == 0
