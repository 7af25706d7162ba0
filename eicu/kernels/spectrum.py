"""Windows of ECG prepared for comparison and spectral analysis, and the shape of a spectrum.

- :func:`_hann_centred`: a window without its mean, times a taper, ready for the FFT (the
  fibrillation features of :func:`eicu.signal.rhythm.fibrillation_features`);
- :func:`_band_shape`: the dominant frequency of a power spectrum within a search band and the
  share of a wider band's power within a given distance of it;
- :func:`_detrended`: a window without its mean and its linear trend (the P-wave window of
  :meth:`eicu.signal.pipeline._SignalState.atrial_corr`: baseline movement is not atrial
  activity);
- :func:`_match_and_follow`: the better cosine similarity of a window with two references, the
  second a running mean that the window then moves.

Each returns "unknown" (False or NaN) where a sample is missing instead of propagating NaN.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from eicu.kernels._fastmath import FASTMATH


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _mean_if_whole(x: NDArray[np.float64]) -> float:
    """The mean of ``x``; NaN when a sample is missing or there is none."""
    s = 0.0
    for i in range(x.shape[0]):
        v = x[i]
        if math.isnan(v):
            return math.nan
        s += v
    return s / x.shape[0] if x.shape[0] > 0 else math.nan


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _hann_centred(
    x: NDArray[np.float64], taper: NDArray[np.float64], out: NDArray[np.float64]
) -> bool:
    """``out = (x - mean(x)) * taper``; False (``out`` undefined) when a sample is missing."""
    m = _mean_if_whole(x)
    if math.isnan(m):
        return False
    for i in range(x.shape[0]):
        out[i] = (x[i] - m) * taper[i]
    return True


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _band_shape(
    spec: NDArray[np.complex128],
    f: NDArray[np.float64],
    band_lo: float,
    band_hi: float,
    search_lo: float,
    search_hi: float,
    near_hz: float,
) -> tuple[float, float]:
    """(dominant frequency, concentration) of the power ``|spec|^2`` at frequencies ``f``: the
    frequency of the highest power within [search_lo, search_hi] (the first of equal ones) and
    the share of the power within [band_lo, band_hi] that lies within ``near_hz`` of it. NaN
    and NaN when the band holds no power."""
    total = 0.0
    best = -1.0
    fd = math.nan
    for k in range(spec.shape[0]):
        z = spec[k]
        p = z.real * z.real + z.imag * z.imag
        fk = f[k]
        if band_lo <= fk <= band_hi:
            total += p
        if search_lo <= fk <= search_hi and p > best:
            best = p
            fd = fk
    if not total > 0.0 or math.isnan(fd):
        return math.nan, math.nan
    near = 0.0
    for k in range(spec.shape[0]):
        fk = f[k]
        if fd - near_hz <= fk <= fd + near_hz:
            z = spec[k]
            near += z.real * z.real + z.imag * z.imag
    return fd, near / total


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _detrended(w: NDArray[np.float64], out: NDArray[np.float64]) -> bool:
    """``out`` = ``w`` without its mean and without its least-squares projection on a ramp from
    -1 to 1 (the linear trend); False (``out`` undefined) when a sample is missing or the
    window holds fewer than 2 samples."""
    n = w.shape[0]
    m = _mean_if_whole(w)
    if n < 2 or math.isnan(m):
        return False
    step = 2.0 / (n - 1)
    sr = 0.0
    rr = 0.0
    for i in range(n):
        r = -1.0 + i * step
        d = w[i] - m
        out[i] = d
        sr += d * r
        rr += r * r
    k = sr / rr
    for i in range(n):
        out[i] -= (-1.0 + i * step) * k
    return True


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _cosine(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    ab = 0.0
    aa = 0.0
    bb = 0.0
    for i in range(a.shape[0]):
        ab += a[i] * b[i]
        aa += a[i] * a[i]
        bb += b[i] * b[i]
    den = math.sqrt(aa * bb)
    return ab / den if den > 0.0 else math.nan


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _match_and_follow(
    seg: NDArray[np.float64],
    last: NDArray[np.float64],
    mean: NDArray[np.float64],
    rate: float,
) -> float:
    """The larger cosine similarity of ``seg`` with ``last`` and with ``mean`` (NaN where a
    reference is all zeros), then ``mean`` moves by ``rate`` of the difference towards ``seg``."""
    c1 = _cosine(seg, last)
    c2 = _cosine(seg, mean)
    for i in range(seg.shape[0]):
        mean[i] += (seg[i] - mean[i]) * rate
    if math.isnan(c1):
        return c2
    if math.isnan(c2):
        return c1
    return max(c1, c2)
