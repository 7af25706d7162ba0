"""Irregularity of a window of RR intervals: the atrial-fibrillation features of
:func:`eicu.signal.rhythm.af_features`, computed once a beat on every monitored bed.

:func:`_af_features` leaves out the marked (ventricular) intervals, then premature-beat pairs
(a short interval followed by a long one: below ``PAIR_SHORT`` and above ``PAIR_LONG`` times
the median), then the ``TRIM`` longest and shortest of the rest, and reports the normalised
RMSSD and the Shannon entropy of a ``BINS``-bin histogram of what is left, and the
turning-point ratio of the intervals before trimming (Dash et al., Ann Biomed Eng
37(9):1701-1709, 2009). The histogram's bins are NumPy's (``numpy.histogram(x, bins=16)``:
equal bins from the smallest to the largest value, the last one closed), computed without
fast-math so that a value on a bin edge falls where NumPy puts it.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

PAIR_SHORT = 0.85
PAIR_LONG = 1.10
TRIM = 8
BINS = 16
MIN_INTERVALS = 24

AF_NRMSSD = 0
AF_SHANNON = 1
AF_TPR = 2
N_AF = 3


@numba.njit(cache=True, nogil=True)
def _histogram_entropy(x: NDArray[np.float64], n: int) -> float:
    """Shannon entropy of ``numpy.histogram(x[:n], bins=BINS)`` over log(BINS)."""
    first = x[0]
    last = x[0]
    for i in range(n):
        first = min(first, x[i])
        last = max(last, x[i])
    if first == last:
        first -= 0.5
        last += 0.5
    step = (last - first) / BINS
    norm = BINS / (last - first)
    hist = np.zeros(BINS, dtype=np.int64)
    for i in range(n):
        v = x[i]
        j = int((v - first) * norm)
        if j == BINS:
            j -= 1
        lo = first + j * step
        hi = last if j + 1 == BINS else first + (j + 1) * step
        if v < lo:
            j -= 1
        elif v >= hi and j != BINS - 1:
            j += 1
        hist[j] += 1
    h = 0.0
    for j in range(BINS):
        if hist[j] > 0:
            p = hist[j] / n
            h -= p * math.log(p)
    return h / math.log(BINS)


@numba.njit(cache=True, nogil=True)
def _af_features(
    rr_in: NDArray[np.float64], left_out: NDArray[np.bool_], out: NDArray[np.float64]
) -> None:
    """``out`` = (normalised RMSSD, entropy, turning-point ratio) of ``rr_in`` without the
    intervals marked in ``left_out`` (length 0: none marked, else the length of ``rr_in``);
    all 0 when fewer than ``MIN_INTERVALS`` are left after leaving out the marked ones or the
    premature-beat pairs. ``rr_in`` must be finite (the caller checks: a NaN has no bin)."""
    for j in range(N_AF):
        out[j] = 0.0
    n_in = rr_in.shape[0]
    rr = np.empty(n_in)
    m = 0
    for i in range(n_in):
        if left_out.shape[0] == 0 or not left_out[i]:
            rr[m] = rr_in[i]
            m += 1
    if m < MIN_INTERVALS:
        return
    med = np.median(rr[:m])
    drop = np.zeros(m, dtype=np.bool_)
    for i in range(m - 1):
        if rr[i] < PAIR_SHORT * med and rr[i + 1] > PAIR_LONG * med:
            drop[i] = True
            drop[i + 1] = True
    kept = np.empty(m)
    k = 0
    for i in range(m):
        if not drop[i]:
            kept[k] = rr[i]
            k += 1
    if k < MIN_INTERVALS:
        return
    order = np.sort(kept[:k])
    lo = order[TRIM]
    hi = order[k - 1 - TRIM]
    core = np.empty(k)
    c = 0
    for i in range(k):
        if lo <= kept[i] <= hi:
            core[c] = kept[i]
            c += 1
    if c > 1:
        sd = 0.0
        s = 0.0
        for i in range(c):
            s += core[i]
        for i in range(c - 1):
            d = core[i + 1] - core[i]
            sd += d * d
        out[AF_NRMSSD] = math.sqrt(sd / (c - 1)) / (s / c)
    out[AF_SHANNON] = _histogram_entropy(core, c)
    turning = 0
    for i in range(1, k - 1):
        a = kept[i]
        if (a > kept[i - 1] and a > kept[i + 1]) or (a < kept[i - 1] and a < kept[i + 1]):
            turning += 1
    out[AF_TPR] = turning / (k - 2)
