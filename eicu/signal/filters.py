"""Streaming filters that own the state of :mod:`eicu.kernels.filters`."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy import signal as sps

from eicu.kernels.filters import _sos_filter_step


def bandpass_sos(order: int, lo_hz: float, hi_hz: float, fs_hz: float) -> NDArray[np.float64]:
    """Butterworth band-pass second-order sections (``scipy.signal.butter``), designed once per
    set of arguments (every bed's pipeline asks for the same few); a fresh copy each call."""
    return _bandpass_sos(int(order), float(lo_hz), float(hi_hz), float(fs_hz)).copy()


@lru_cache(maxsize=256)
def _bandpass_sos(order: int, lo_hz: float, hi_hz: float, fs_hz: float) -> NDArray[np.float64]:
    sos = sps.butter(order, [lo_hz, hi_hz], "bandpass", fs=fs_hz, output="sos")
    return np.ascontiguousarray(sos, dtype=np.float64)


class SosFilter:
    """A streaming filter with its state; ``step(chunk)`` returns the filtered chunk."""

    def __init__(self, sos: NDArray[np.float64]) -> None:
        s = np.ascontiguousarray(sos, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != 6 or s.shape[0] == 0:
            raise ValueError(f"sos must have shape (n_sections, 6), got {s.shape}")
        if not np.allclose(s[:, 3], 1.0):
            raise ValueError("sos sections must be normalised with a0 == 1")
        self.sos = s
        self.zi = np.zeros((s.shape[0], 2), dtype=np.float64)
        self.ref = np.array([0.0, 1.0])

    def step(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        arr = np.ascontiguousarray(x, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"samples must be 1-D, got shape {arr.shape}")
        return _sos_filter_step(arr, self.sos, self.zi, self.ref)
