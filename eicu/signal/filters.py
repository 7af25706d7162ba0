"""Streaming filters that own the state of :mod:`eicu.kernels.filters`."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from eicu.kernels.filters import _sos_filter_step


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
