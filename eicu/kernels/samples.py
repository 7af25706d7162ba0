"""Raw int16 samples to physical units in one pass.

Exact IEEE arithmetic (no fastmath): each value is ``(float(raw) - baseline) / gain``, the
result numpy gives for the same expression, and the raw value -32768 (no valid sample) becomes
NaN.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

INVALID_RAW = -32768


@numba.njit(cache=True, nogil=True)
def _to_physical(raw, baseline, gain):
    out = np.empty(raw.shape[0], dtype=np.float64)
    for i in range(raw.shape[0]):
        v = raw[i]
        out[i] = np.nan if v == INVALID_RAW else (np.float64(v) - baseline) / gain
    return out


def to_physical(raw: NDArray[np.int16], baseline: int, gain: float) -> NDArray[np.float64]:
    """``(raw - baseline) / gain`` as float64, NaN where ``raw`` is -32768; ``raw`` 1-D int16."""
    return _to_physical(raw, float(baseline), float(gain))


NONFINITE_NAN = 1
NONFINITE_INF = 2


@numba.njit(cache=True, nogil=True)
def _nonfinite(x):
    flags = 0
    for i in range(x.shape[0]):
        v = x[i]
        if v != v:
            flags |= NONFINITE_NAN
        elif v == np.inf or v == -np.inf:
            flags |= NONFINITE_INF
            if flags == NONFINITE_NAN | NONFINITE_INF:
                break
    return flags


def nonfinite(x: NDArray[np.float64]) -> int:
    """What a 1-D float64 array holds besides numbers, in one pass: ``NONFINITE_NAN`` when a
    value is NaN, ``NONFINITE_INF`` when one is +-inf (0: every value is finite)."""
    return int(_nonfinite(x))


@numba.njit(cache=True, nogil=True)
def _ring_write(buf, total, values):
    """Write ``values`` into the circular ``buf`` after the ``total`` samples written before
    (the oldest overwritten; only the last ``len(buf)`` of a longer chunk kept)."""
    cap = buf.shape[0]
    n = values.shape[0]
    first = max(0, n - cap)
    for i in range(first, n):
        buf[(total + i) % cap] = values[i]
