"""Small statistics on short runs of numbers (a few beats' intervals or correlations), in plain
Python: ``numpy.median`` costs tens of microseconds per call on a list of eight, this a few."""

from __future__ import annotations

import math
from collections.abc import Iterable


def median(values: Iterable[float]) -> float:
    """The median, equal to ``numpy.median``'s (the mean of the two middle values for an even
    count; NaN when a value is NaN or there are none)."""
    s = sorted(values)  # in any order where a NaN is: it is looked for next
    n = len(s)
    if n == 0:
        return math.nan
    for v in s:
        if v != v:
            return math.nan
    h = n // 2
    return float(s[h]) if n % 2 else (float(s[h - 1]) + float(s[h])) / 2.0
