"""Signal-quality indexes over a window of samples.

For one window: the fraction of missing samples (NaN), the range (max - min) of the present
samples, the fraction of present samples sitting at the window's extreme values (clipping at an
amplifier or converter limit shows as a plateau there), and a high-frequency index: the energy
of the second difference over that of the first difference (about 0.1-0.5 for a clean ECG at
250 Hz, 3 for white noise).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from eicu.kernels._fastmath import FASTMATH

N_SQI = 4
SQI_NAN_FRAC = 0
SQI_RANGE = 1
SQI_CLIP_FRAC = 2
SQI_HF = 3


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _window_sqi(x: NDArray[np.float64], out: NDArray[np.float64]) -> None:
    n = x.shape[0]
    n_ok = 0
    lo = np.inf
    hi = -np.inf
    for i in range(n):
        v = x[i]
        if not math.isnan(v):
            n_ok += 1
            if v < lo:
                lo = v
            if v > hi:
                hi = v
    out[SQI_NAN_FRAC] = 1.0 - n_ok / n if n > 0 else 1.0
    if n_ok == 0:
        out[SQI_RANGE] = np.nan
        out[SQI_CLIP_FRAC] = np.nan
        out[SQI_HF] = np.nan
        return
    out[SQI_RANGE] = hi - lo
    n_clip = 0
    if hi > lo:
        for i in range(n):
            v = x[i]
            if v <= lo or v >= hi:
                n_clip += 1
    out[SQI_CLIP_FRAC] = n_clip / n_ok
    e1 = 0.0
    e2 = 0.0
    for i in range(2, n):
        a = x[i]
        b = x[i - 1]
        c = x[i - 2]
        if math.isnan(a) or math.isnan(b) or math.isnan(c):
            continue
        d1 = a - b
        d2 = a - 2.0 * b + c
        e1 += d1 * d1
        e2 += d2 * d2
    out[SQI_HF] = e2 / e1 if e1 > 0.0 else np.nan


def window_sqi(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """The indexes of one window, in the order SQI_NAN_FRAC, SQI_RANGE, SQI_CLIP_FRAC, SQI_HF."""
    arr = np.ascontiguousarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"need a non-empty 1-D window, got shape {arr.shape}")
    out = np.empty(N_SQI, dtype=np.float64)
    _window_sqi(arr, out)
    return out


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _match_count(a: NDArray[np.int64], b: NDArray[np.int64], tol: int) -> int:
    """Beats of ``a`` matched one-to-one to beats of ``b`` within ``tol`` samples (both sorted)."""
    i = 0
    j = 0
    n = 0
    while i < a.shape[0] and j < b.shape[0]:
        d = a[i] - b[j]
        if abs(d) <= tol:
            n += 1
            i += 1
            j += 1
        elif d < 0:
            i += 1
        else:
            j += 1
    return n


def beat_agreement(a: NDArray[np.int64], b: NDArray[np.int64], tol: int) -> float:
    """F1 agreement of two beat series (1 = identical within ``tol``; NaN when both empty).

    After the bSQI of Li, Mark and Clifford (Physiol Meas 29:15-32, 2008), scored here as F1.
    """
    aa = np.ascontiguousarray(a, dtype=np.int64)
    bb = np.ascontiguousarray(b, dtype=np.int64)
    if aa.ndim != 1 or bb.ndim != 1 or tol < 0:
        raise ValueError("need two 1-D sorted beat index arrays and tol >= 0")
    if aa.shape[0] + bb.shape[0] == 0:
        return float("nan")
    m = _match_count(aa, bb, int(tol))
    return 2.0 * m / (aa.shape[0] + bb.shape[0])


@numba.njit(cache=True, nogil=True)
def _window_span(s, at, i0, i1, lo, hi, t):
    """Of the entries ``i0:i1`` of a beat list whose samples ``s`` and known-at times ``at``
    both only grow: the span of those with ``lo <= s < hi`` known by ``t`` (``at <= t``)."""
    a = i0 + np.searchsorted(s[i0:i1], lo)
    b = i0 + np.searchsorted(s[i0:i1], hi)
    known = i0 + np.searchsorted(at[i0:i1], t, side="right")
    return a, max(a, min(b, known))


@numba.njit(cache=True, nogil=True)
def _window_agreement(a_s, a_at, a0, a1, b_s, b_at, b0, b1, lo, hi, t, tol, min_beats):
    """:func:`beat_agreement` of two detectors' beats in ``[lo, hi)`` known by ``t`` (beat
    lists as in :func:`_window_span`); NaN when they hold fewer than ``min_beats`` together."""
    ia, ja = _window_span(a_s, a_at, a0, a1, lo, hi, t)
    ib, jb = _window_span(b_s, b_at, b0, b1, lo, hi, t)
    n = (ja - ia) + (jb - ib)
    if n < min_beats or n == 0:
        return np.nan
    return 2.0 * _match_count(a_s[ia:ja], b_s[ib:jb], tol) / n


@numba.njit(cache=True, nogil=True)
def _window_median(s, at, v, i0, i1, lo, hi, t, min_n):
    """The median of the values ``v`` of the beats in ``[lo, hi)`` known by ``t`` (beat lists
    as in :func:`_window_span`; the mean of the middle two for an even count); NaN when fewer
    than ``min_n`` or when one is NaN."""
    i, j = _window_span(s, at, i0, i1, lo, hi, t)
    n = j - i
    if n < min_n or n == 0:
        return np.nan
    w = np.sort(v[i:j])
    if np.isnan(w[n - 1]):  # sorted: NaN last
        return np.nan
    h = n // 2
    return w[h] if n % 2 else (w[h - 1] + w[h]) / 2.0
