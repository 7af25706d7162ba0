"""Each kernel against a slow, obvious twin, on fixed and hypothesis-drawn inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import signal as sps

from eicu.kernels.intervals import N_AF, _af_features
from eicu.kernels.morphology import _beat_features
from eicu.kernels.spectrum import _band_shape, _detrended, _hann_centred, _match_and_follow
from eicu.kernels.sqi import (
    _match_count,
    _window_agreement,
    _window_median,
    beat_agreement,
    window_sqi,
)
from eicu.signal.filters import SosFilter
from eicu.signal.stats import median

SOS = sps.butter(2, [5.0, 15.0], "bandpass", fs=250.0, output="sos")

finite = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False)
maybe_nan = st.one_of(finite, st.just(float("nan")))


def naive_sos_filter(x: np.ndarray, sos: np.ndarray) -> np.ndarray:
    """Transposed direct form II, restarting (state 0, new reference) after every NaN run."""
    out = []
    z = [[0.0, 0.0] for _ in range(sos.shape[0])]
    ref = None
    for v in x:
        if math.isnan(v):
            out.append(float("nan"))
            z = [[0.0, 0.0] for _ in range(sos.shape[0])]
            ref = None
            continue
        if ref is None:
            ref = v
        u = v - ref
        for s, (b0, b1, b2, _a0, a1, a2) in enumerate(sos):
            y = b0 * u + z[s][0]
            z[s][0] = b1 * u - a1 * y + z[s][1]
            z[s][1] = b2 * u - a2 * y
            u = y
        out.append(u)
    return np.array(out)


def test_filter_matches_scipy_without_gaps() -> None:
    x = np.random.default_rng(0).normal(size=2000).cumsum()
    got = SosFilter(SOS).step(x)
    want = sps.sosfilt(SOS, x - x[0])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(x=arrays(np.float64, st.integers(1, 300), elements=maybe_nan), cut=st.integers(0, 300))
def test_filter_matches_naive_and_chunks(x: np.ndarray, cut: int) -> None:
    want = naive_sos_filter(x, SOS)
    f = SosFilter(SOS)
    got = np.concatenate([f.step(x[:cut]), f.step(x[cut:])])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, equal_nan=True)


def test_filter_rejects_bad_sos() -> None:
    with pytest.raises(ValueError, match="shape"):
        SosFilter(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="a0"):
        SosFilter(np.ones((1, 6)) * 2.0)


def naive_window_sqi(x: np.ndarray) -> list[float]:
    ok = [v for v in x if not math.isnan(v)]
    nan_frac = 1.0 - len(ok) / len(x)
    if not ok:
        return [nan_frac, math.nan, math.nan, math.nan]
    lo, hi = min(ok), max(ok)
    clip = sum(1 for v in ok if hi > lo and v in (lo, hi)) / len(ok)
    e1 = e2 = 0.0
    for i in range(2, len(x)):
        a, b, c = x[i], x[i - 1], x[i - 2]
        if math.isnan(a) or math.isnan(b) or math.isnan(c):
            continue
        e1 += (a - b) ** 2
        e2 += (a - 2 * b + c) ** 2
    return [nan_frac, hi - lo, clip, e2 / e1 if e1 > 0 else math.nan]


@settings(max_examples=80, deadline=None)
@given(x=arrays(np.float64, st.integers(1, 200), elements=maybe_nan))
def test_window_sqi_matches_naive(x: np.ndarray) -> None:
    np.testing.assert_allclose(window_sqi(x), naive_window_sqi(x), rtol=1e-9, equal_nan=True)


def test_window_sqi_fixed_cases() -> None:
    flat = window_sqi(np.full(100, 3.0))
    assert flat[1] == 0.0 and flat[2] == 0.0
    clipped = window_sqi(np.concatenate([np.full(50, 5.0), np.linspace(0, 5, 50)]))
    assert clipped[2] > 0.5
    noise = window_sqi(np.random.default_rng(1).normal(size=5000))
    assert 2.5 < noise[3] < 3.5  # white noise: E[d2^2] / E[d1^2] = 6 / 2
    with pytest.raises(ValueError, match="non-empty"):
        window_sqi(np.array([]))


def naive_match_count(a: list[int], b: list[int], tol: int) -> int:
    i = j = n = 0
    while i < len(a) and j < len(b):
        if abs(a[i] - b[j]) <= tol:
            n, i, j = n + 1, i + 1, j + 1
        elif a[i] < b[j]:
            i += 1
        else:
            j += 1
    return n


@settings(max_examples=80, deadline=None)
@given(
    a=st.lists(st.integers(0, 5000), max_size=40, unique=True),
    b=st.lists(st.integers(0, 5000), max_size=40, unique=True),
    tol=st.integers(0, 60),
)
def test_match_count_matches_naive(a: list[int], b: list[int], tol: int) -> None:
    a, b = sorted(a), sorted(b)
    got = _match_count(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), tol)
    assert got == naive_match_count(a, b, tol)


def test_beat_agreement() -> None:
    a = np.array([100, 300, 500])
    assert beat_agreement(a, a + 5, 10) == 1.0
    assert beat_agreement(a, np.array([100, 900]), 10) == pytest.approx(2 * 1 / 5)
    assert math.isnan(beat_agreement(np.array([]), np.array([]), 10))


@st.composite
def decided_beats(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beats as a detector reports them: samples rising, each known at a time that never falls
    and never comes before its sample; with a value (NaN at times) each."""
    gaps = draw(st.lists(st.integers(1, 400), max_size=30))
    s = np.cumsum(np.array([0, *gaps], dtype=np.int64))[1:] + draw(st.integers(0, 500))
    lags = draw(st.lists(st.integers(0, 300), min_size=len(gaps), max_size=len(gaps)))
    at = np.maximum.accumulate(s + np.array(lags, dtype=np.int64)) if len(gaps) else s.copy()
    v = np.array(draw(st.lists(maybe_nan, min_size=len(gaps), max_size=len(gaps))))
    return s, at, v.astype(np.float64)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), lo=st.integers(0, 8000), width=st.integers(0, 4000), t=st.integers(0, 12000))
def test_window_agreement_and_median_match_their_python_twins(
    data: st.DataObject, lo: int, width: int, t: int
) -> None:
    """The pipeline's detector-agreement and pulse-morphology windows: the beats with
    lo <= sample < hi known by t, the ones before ``drop`` already dropped."""
    a_s, a_at, _ = data.draw(decided_beats())
    b_s, b_at, b_v = data.draw(decided_beats())
    a0 = data.draw(st.integers(0, a_s.shape[0]))
    b0 = data.draw(st.integers(0, b_s.shape[0]))
    # the window's edges and time on a beat's own times as often as not
    lo = data.draw(st.sampled_from([lo, *a_s.tolist(), *b_s.tolist()]))
    t = data.draw(st.sampled_from([t, *a_at.tolist(), *b_at.tolist()]))
    hi = data.draw(st.sampled_from([lo + width, *[s for s in b_s.tolist() if s >= lo]]))
    a = [
        s
        for s, at in zip(a_s[a0:].tolist(), a_at[a0:].tolist(), strict=True)
        if lo <= s < hi and at <= t
    ]
    b = [
        s
        for s, at in zip(b_s[b0:].tolist(), b_at[b0:].tolist(), strict=True)
        if lo <= s < hi and at <= t
    ]
    want = float("nan") if len(a) + len(b) < 4 else beat_agreement(np.array(a), np.array(b), 37)
    got = _window_agreement(
        a_s, a_at, a0, a_s.shape[0], b_s, b_at, b0, b_s.shape[0], lo, hi, t, 37, 4
    )
    assert (math.isnan(got) and math.isnan(want)) or got == want
    vals = [
        v
        for s, at, v in zip(b_s[b0:].tolist(), b_at[b0:].tolist(), b_v[b0:].tolist(), strict=True)
        if lo <= s < hi and at <= t
    ]
    want_m = median(vals) if len(vals) >= 3 else float("nan")
    got_m = _window_median(b_s, b_at, b_v, b0, b_s.shape[0], lo, hi, t, 3)
    assert (math.isnan(got_m) and math.isnan(want_m)) or got_m == want_m


def test_window_edges_and_known_time_are_inclusive_where_the_pipeline_says() -> None:
    s = np.array([10, 20, 30, 40, 50], dtype=np.int64)
    at = np.array([15, 25, 35, 45, 55], dtype=np.int64)
    v = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    # lo <= sample < hi, known at or before t
    assert _window_median(s, at, v, 0, 5, 20, 50, 45, 3) == 2.0  # beats 20, 30, 40
    assert math.isnan(_window_median(s, at, v, 0, 5, 20, 50, 44, 3))  # 40 not yet known
    assert _window_median(s, at, v, 0, 5, 10, 50, 55, 3) == 2.5  # four: the middle two
    assert math.isnan(_window_median(s, at, v, 2, 5, 10, 50, 55, 3))  # the first two dropped
    assert _window_agreement(s, at, 0, 5, s + 3, at, 0, 5, 20, 50, 45, 3, 4) == 1.0
    assert math.isnan(_window_agreement(s, at, 0, 5, s + 3, at, 0, 5, 20, 40, 45, 3, 5))


def naive_beat_features(
    y: np.ndarray,
    y0: int,
    fids: list[int],
    pre: int,
    post: int,
    shift: int,
    frac: float,
    n_init: int,
    narrow: float,
    relearn: int,
) -> tuple[list[float], list[float], list[float], list[float]]:
    template = np.zeros(pre + post)
    t = 0
    low = 0
    widths: list[float] = []
    corrs: list[float] = []
    wratios: list[float] = []
    sratios: list[float] = []

    def width_of(seg: np.ndarray) -> float:
        d = np.abs(np.diff(seg))
        above = np.flatnonzero(d >= frac * d.max()) if d.max() > 0 else np.array([])
        return float(above[-1] + 1 - above[0]) if above.size else math.nan

    def steepness(seg: np.ndarray) -> float:
        p2p = seg.max() - seg.min()
        return float(np.abs(np.diff(seg)).max() / p2p) if p2p > 0 else math.nan

    for f in fids:
        lo = f - y0 - pre
        if (
            lo - shift < 0
            or lo + pre + post + shift > len(y)
            or np.isnan(y[lo - shift : lo + pre + post + shift]).any()
        ):
            widths.append(math.nan)
            corrs.append(math.nan)
            wratios.append(math.nan)
            sratios.append(math.nan)
            continue
        seg = y[lo : lo + pre + post]
        w = width_of(seg)
        widths.append(w)

        def pearson(a: np.ndarray, b: np.ndarray) -> float:
            da, db = a - a.mean(), b - b.mean()
            den = math.sqrt((da * da).sum() * (db * db).sum())
            return float((da * db).sum() / den) if den > 0 else math.nan

        if t < n_init:
            template = (template * t + seg) / (t + 1)
            t += 1
            corrs.append(pearson(seg, template) if t > 1 else math.nan)
            wratios.append(math.nan)
            sratios.append(math.nan)
            continue
        shifted = {sh: y[lo + sh : lo + sh + pre + post] for sh in range(-shift, shift + 1)}
        scores = {sh: pearson(a, template) for sh, a in shifted.items()}
        best = max(scores, key=lambda sh: (scores[sh], -sh - shift))  # first of equal maxima
        c = scores[best]
        corrs.append(c)
        tw = width_of(template)
        wratios.append(w / tw if tw > 0 else math.nan)
        ts = steepness(template)
        sratios.append(steepness(seg) / ts if ts > 0 else math.nan)
        low = low + 1 if c < 0.7 else 0
        if low >= relearn:
            t, low, template = 0, 0, np.zeros(pre + post)
        elif c > 0.9 and w < narrow:
            template = 0.95 * template + 0.05 * shifted[best]
    return widths, corrs, wratios, sratios


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_beats=st.integers(1, 40))
def test_beat_features_match_naive(seed: int, n_beats: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.normal(size=3000).cumsum()
    if seed % 3 == 0:
        y[rng.integers(0, 3000)] = np.nan
    fids = sorted(rng.choice(np.arange(0, 3100), size=n_beats, replace=False).tolist())
    pre, post, y0, shift = 30, 40, 50, 3
    template = np.zeros(pre + post)
    tstate = np.zeros(2, dtype=np.int64)
    w = np.empty(n_beats)
    c = np.empty(n_beats)
    wr = np.empty(n_beats)
    sr = np.empty(n_beats)
    _beat_features(
        y,
        y0,
        np.array(fids, dtype=np.int64),
        pre,
        post,
        shift,
        0.15,
        template,
        tstate,
        4,
        30.0,
        3,
        w,
        c,
        wr,
        sr,
    )
    want = naive_beat_features(y, y0, fids, pre, post, shift, 0.15, 4, 30.0, 3)
    np.testing.assert_allclose(w, want[0], equal_nan=True)
    np.testing.assert_allclose(c, want[1], rtol=1e-7, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(wr, want[2], rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(sr, want[3], rtol=1e-7, equal_nan=True)


@settings(max_examples=150, deadline=None)
@given(arrays(np.float64, st.integers(8, 300), elements=maybe_nan))
def test_hann_centred_and_band_shape_match_their_numpy_twins(x: np.ndarray) -> None:
    taper = np.hanning(x.shape[0])
    out = np.empty(x.shape[0])
    ok = _hann_centred(x, taper, out)
    assert ok == (not np.isnan(x).any())
    if not ok:
        return
    want = (x - x.mean()) * taper
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-9)
    spec = np.fft.rfft(want)
    f = np.fft.rfftfreq(x.shape[0], 1.0 / 250.0)
    p = np.abs(spec) ** 2
    band = (f >= 0.5) & (f <= 30.0)
    search = (f >= 1.0) & (f <= 12.0)
    fd, conc = _band_shape(spec, f, 0.5, 30.0, 1.0, 12.0, 1.0)
    total = p[band].sum()
    if not search.any() or not total > 0.0:
        assert math.isnan(fd) and math.isnan(conc)
        return
    # the first of equal maxima, as np.argmax; ties within rounding decide nothing here
    top = p[search].max()
    assert p[search][f[search] == fd][0] >= top * (1 - 1e-9)
    near = (f >= fd - 1.0) & (f <= fd + 1.0)
    assert conc == pytest.approx(p[near].sum() / total, rel=1e-9, abs=1e-12)


def test_band_shape_of_a_pure_tone_is_the_tone_with_all_the_power_near_it() -> None:
    fs = 250.0
    t = np.arange(1000) / fs
    x = np.sin(2 * np.pi * 5.0 * t)
    taper = np.hanning(1000)
    out = np.empty(1000)
    assert _hann_centred(x, taper, out)
    fd, conc = _band_shape(np.fft.rfft(out), np.fft.rfftfreq(1000, 1 / fs), 0.5, 30, 1, 12, 1.0)
    assert fd == pytest.approx(5.0)
    assert conc > 0.99


@settings(max_examples=150, deadline=None)
@given(arrays(np.float64, st.integers(0, 120), elements=maybe_nan))
def test_detrended_removes_mean_and_linear_trend_like_least_squares(w: np.ndarray) -> None:
    out = np.empty(w.shape[0])
    ok = _detrended(w, out)
    assert ok == (w.shape[0] >= 2 and not np.isnan(w).any())
    if not ok:
        return
    ramp = np.linspace(-1.0, 1.0, w.shape[0])
    seg = w - w.mean()
    want = seg - ramp * (np.dot(seg, ramp) / np.dot(ramp, ramp))
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-9)
    # what is left has no mean and no trend
    assert abs(out.sum()) <= 1e-8 * max(1.0, np.abs(w).sum())
    assert abs(np.dot(out, ramp)) <= 1e-8 * max(1.0, np.abs(w).sum())


def test_match_and_follow_takes_the_better_reference_then_moves_the_mean() -> None:
    seg = np.array([1.0, -1.0, 2.0, 0.0])
    last = -seg
    mean = np.array([1.0, -1.0, 2.0, 0.5])
    before = mean.copy()
    c = _match_and_follow(seg, last, mean, 0.25)
    assert c == pytest.approx(
        np.dot(seg, before) / np.sqrt(np.dot(seg, seg) * np.dot(before, before))
    )
    np.testing.assert_allclose(mean, before + 0.25 * (seg - before))
    # a reference of zeros is no match; both of zeros: unknown
    assert _match_and_follow(seg, np.zeros(4), seg.copy(), 0.0) == pytest.approx(1.0)
    assert math.isnan(_match_and_follow(seg, np.zeros(4), np.zeros(4), 0.0))


def naive_af_features(rr: np.ndarray, left_out: np.ndarray) -> tuple[float, float, float]:
    """Leave out the marked intervals, then premature-beat pairs, then the 8 longest and
    shortest; NumPy's statistics and its 16-bin histogram."""
    rr = rr[~left_out]
    if rr.shape[0] < 24:
        return 0.0, 0.0, 0.0
    med = float(np.median(rr))
    pair = (rr[:-1] < 0.85 * med) & (rr[1:] > 1.10 * med)
    drop = np.zeros(rr.shape[0], dtype=bool)
    drop[:-1] |= pair
    drop[1:] |= pair
    rr = rr[~drop]
    if rr.shape[0] < 24:
        return 0.0, 0.0, 0.0
    trimmed = np.sort(rr)[8:-8]
    core = rr[(rr >= trimmed[0]) & (rr <= trimmed[-1])]
    d = np.diff(core)
    nrmssd = float(np.sqrt(np.mean(d * d)) / np.mean(core)) if d.size else 0.0
    hist, _ = np.histogram(core, bins=16)
    p = hist[hist > 0] / core.shape[0]
    shannon = float(-(p * np.log(p)).sum() / np.log(16))
    mid = rr[1:-1]
    turning = ((mid > rr[:-2]) & (mid > rr[2:])) | ((mid < rr[:-2]) & (mid < rr[2:]))
    return nrmssd, shannon, float(turning.sum() / mid.shape[0])


@settings(max_examples=300, deadline=None)
@given(
    st.integers(24, 80).flatmap(
        lambda n: st.tuples(
            arrays(
                np.float64,
                n,
                elements=st.one_of(
                    st.sampled_from([0.4, 0.5, 0.6, 0.75, 0.8, 1.0, 1.2]),
                    st.floats(0.2, 2.0),
                ),
            ),
            arrays(np.bool_, n),
        )
    )
)
def test_af_features_match_numpy(case: tuple[np.ndarray, np.ndarray]) -> None:
    rr, left_out = case
    out = np.empty(N_AF)
    _af_features(rr, left_out, out)
    want = naive_af_features(rr, left_out)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    _af_features(rr, np.zeros(0, dtype=np.bool_), out)
    np.testing.assert_allclose(
        out, naive_af_features(rr, np.zeros(rr.shape[0], dtype=bool)), rtol=1e-12, atol=1e-12
    )
