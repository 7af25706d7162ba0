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
