"""Causal IIR filtering that restarts after gaps.

``sos_filter_step`` runs cascaded biquads (transposed direct form II, the layout of
``scipy.signal.sosfilt``) over one chunk, carrying the filter state between chunks. A NaN sample
passes through as NaN and resets the state; the first sample after a gap becomes the new
reference level, subtracted from the input so that the restart does not ring.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from eicu.kernels._fastmath import FASTMATH


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _sos_filter_step(
    x: NDArray[np.float64],
    sos: NDArray[np.float64],
    zi: NDArray[np.float64],
    ref: NDArray[np.float64],
) -> NDArray[np.float64]:
    """ref[0] is the reference level, ref[1] is 1.0 while in a gap (or before the first sample)."""
    out = np.empty_like(x)
    n_sec = sos.shape[0]
    for k in range(x.shape[0]):
        xv = x[k]
        if math.isnan(xv):
            if ref[1] == 0.0:
                ref[1] = 1.0
                zi[:, :] = 0.0
            out[k] = np.nan
            continue
        if ref[1] != 0.0:
            ref[1] = 0.0
            ref[0] = xv
        u = xv - ref[0]
        for s in range(n_sec):
            y = sos[s, 0] * u + zi[s, 0]
            zi[s, 0] = sos[s, 1] * u - sos[s, 4] * y + zi[s, 1]
            zi[s, 1] = sos[s, 2] * u - sos[s, 5] * y
            u = y
        out[k] = u
    return out
