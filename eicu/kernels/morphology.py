"""Per-beat QRS morphology: width and correlation with a running template of dominant beats.

The width is the span over which the absolute slope of the (0.5-40 Hz filtered) ECG stays above
``slope_frac`` of its maximum within ``pre_n`` samples before and ``post_n`` after the fiducial
point. The template is the mean of the first ``n_init`` beats, then follows narrow beats that
resemble it (exponential update), so that it tracks the dominant (usually supraventricular)
morphology.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from eicu.kernels._fastmath import FASTMATH

RELEARN_CORR = 0.7


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _pearson(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    n = a.shape[0]
    ma = 0.0
    mb = 0.0
    for i in range(n):
        ma += a[i]
        mb += b[i]
    ma /= n
    mb /= n
    sab = 0.0
    saa = 0.0
    sbb = 0.0
    for i in range(n):
        da = a[i] - ma
        db = b[i] - mb
        sab += da * db
        saa += da * da
        sbb += db * db
    if saa <= 0.0 or sbb <= 0.0:
        return np.nan
    return sab / math.sqrt(saa * sbb)


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _qrs_width_n(seg: NDArray[np.float64], slope_frac: float) -> float:
    n = seg.shape[0]
    mx = 0.0
    for i in range(n - 1):
        d = abs(seg[i + 1] - seg[i])
        if d > mx:
            mx = d
    if mx <= 0.0:
        return np.nan
    thr = slope_frac * mx
    first = -1
    last = -1
    for i in range(n - 1):
        if abs(seg[i + 1] - seg[i]) >= thr:
            if first < 0:
                first = i
            last = i + 1
    return float(last - first)


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _steepness(seg: NDArray[np.float64]) -> float:
    """Largest absolute first difference over the peak-to-peak amplitude (NaN when flat)."""
    lo = seg[0]
    hi = seg[0]
    mx = 0.0
    for i in range(seg.shape[0]):
        lo = min(lo, seg[i])
        hi = max(hi, seg[i])
        if i > 0:
            mx = max(mx, abs(seg[i] - seg[i - 1]))
    if hi <= lo:
        return np.nan
    return mx / (hi - lo)


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _has_nan(a: NDArray[np.float64]) -> bool:
    return bool(np.isnan(a).any())


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _beat_features(
    y: NDArray[np.float64],
    y0: int,
    fids: NDArray[np.int64],
    pre_n: int,
    post_n: int,
    shift_n: int,
    slope_frac: float,
    template: NDArray[np.float64],
    tstate: NDArray[np.int64],
    n_init: int,
    narrow_n: float,
    relearn_n: int,
    out_width_n: NDArray[np.float64],
    out_corr: NDArray[np.float64],
    out_width_ratio: NDArray[np.float64],
    out_steep_ratio: NDArray[np.float64],
) -> None:
    """tstate[0]: beats averaged into the template so far; tstate[1]: beats in a row that
    correlated below ``RELEARN_CORR`` (at ``relearn_n`` of them the dominant beat has changed,
    e.g. a new bundle-branch block or pacing, and the template is learnt again).

    The correlation is the best over shifts of up to ``shift_n`` samples either way, and the
    template follows the best-aligned segment; a beat whose window (with the shifts) is not
    wholly inside ``y`` or holds a NaN gets NaN for all.

    Once the template is learnt, each beat is also compared with it by width (ratio of the
    widths) and by steepness (ratio of the largest slope over the peak-to-peak amplitude):
    ventricular beats are wider and, for their size, less steep than the dominant beat.
    """
    span = pre_n + post_n
    for b in range(fids.shape[0]):
        lo = fids[b] - y0 - pre_n
        out_width_n[b] = np.nan
        out_corr[b] = np.nan
        out_width_ratio[b] = np.nan
        out_steep_ratio[b] = np.nan
        if lo - shift_n < 0 or lo + span + shift_n > y.shape[0]:
            continue
        if _has_nan(y[lo - shift_n : lo + span + shift_n]):
            continue
        seg = y[lo : lo + span]
        w = _qrs_width_n(seg, slope_frac)
        out_width_n[b] = w
        t = tstate[0]
        if t < n_init:
            for i in range(span):
                template[i] = (template[i] * t + seg[i]) / (t + 1)
            tstate[0] = t + 1
            if t > 0:
                out_corr[b] = _pearson(seg, template)
            continue
        best_c = -2.0
        best_lo = lo
        for sh in range(-shift_n, shift_n + 1):
            c = _pearson(y[lo + sh : lo + sh + span], template)
            if c > best_c:
                best_c = c
                best_lo = lo + sh
        out_corr[b] = best_c
        tw = _qrs_width_n(template, slope_frac)
        if tw > 0.0:
            out_width_ratio[b] = w / tw
        ts = _steepness(template)
        if ts > 0.0:
            out_steep_ratio[b] = _steepness(seg) / ts
        tstate[1] = tstate[1] + 1 if best_c < RELEARN_CORR else 0
        if tstate[1] >= relearn_n:
            tstate[0] = 0
            tstate[1] = 0
            template[:] = 0.0
        elif best_c > 0.9 and w < narrow_n:
            for i in range(span):
                template[i] = 0.95 * template[i] + 0.05 * y[best_lo + i]
